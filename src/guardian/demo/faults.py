"""Every fault the simulators can play, and what Guardian should do about each.

One table feeds ``guardian demo --help``, the demo banner and the README, and a test
checks it names every mode the simulators accept, so a new mode cannot go undocumented.
"""

from __future__ import annotations

from typing import NamedTuple


class FaultGuide(NamedTuple):
    sim: str  # "comfyui" or "panel"
    mode: str
    effect: str  # what the simulator does
    expected: str  # what Guardian should do about it


FAULT_GUIDE: tuple[FaultGuide, ...] = (
    FaultGuide("comfyui", "none", "clears the active fault", "nothing: the target is healthy"),
    FaultGuide("comfyui", "crash", "the process exits (after crash_after s)",
               "sees the exit at once and restarts it (cooldown and backoff between attempts)"),
    FaultGuide("comfyui", "hang", "accepts connections, never answers",
               "checks time out; after failure_threshold (3) in a row: restart"),
    FaultGuide("comfyui", "slow", "adds `delay` s to every response",
               "OK but slower while the comfyui check's 3 requests (3 times delay) stay below its"
               " timeout (4 s in the demo: delay ≤ 1 s); above it: failures, then a restart"),
    FaultGuide("comfyui", "error500", "every route answers HTTP 500",
               "failed checks; after failure_threshold in a row: restart"),
    FaultGuide("comfyui", "vram_leak", "free VRAM drops by leak_mb per /system_stats",
               "memory pressure: POST /free first, a restart only if VRAM does not recover"),
    FaultGuide("comfyui", "stuck_running", "the running prompt never ends, ignores /interrupt",
               "the comfyui check says busy (OK) until stuck_running_after, then POST"
               " /interrupt, then a restart; with no job submitted the stuck prompt is the"
               " canary's own: it times out first and opens an incident"),
    FaultGuide("comfyui", "pending_idle", "prompts stay pending, nothing runs",
               "queue stuck after stuck_pending_after: restart"),
    FaultGuide("comfyui", "canary_fail", "every execution ends in an execution_error",
               "the canary fails: incident, escalated after escalation.failures (3) in a row;"
               " no restart (the canary is not a liveness check unless `liveness = true`)"),
    FaultGuide("comfyui", "oom", "executions end in CUDA out of memory",
               "the canary fails; the report's next steps name the CUDA OOM signature"),
    FaultGuide("panel", "none", "clears the active fault", "nothing: the target is healthy"),
    FaultGuide("panel", "crash", "the process exits", "sees the exit at once and restarts it"),
    FaultGuide("panel", "hang", "never answers", "checks time out; then a restart"),
    FaultGuide("panel", "slow", "adds `delay` s to every response",
               "below the timeout: OK but slower; above it: failures, then a restart"),
    FaultGuide("panel", "error500", "/api/health answers HTTP 500",
               "failed checks; after failure_threshold in a row: restart"),
    FaultGuide("panel", "degraded", "/api/health says degraded (HTTP 200)",
               "the target is degraded: shown and logged, no restart"),
    FaultGuide("panel", "unhealthy", "/api/health says unhealthy (HTTP 503)",
               "failed checks; after failure_threshold in a row: restart"),
)


def fault_help() -> str:
    """The table as plain text for ``--help`` (one line per mode)."""
    lines = []
    for g in FAULT_GUIDE:
        lines.append(f"{g.sim} {g.mode}: {g.effect}; Guardian: {g.expected}.")
    return "\n\n".join(lines)


def fault_markdown() -> str:
    """The table as Markdown (README)."""
    rows = ["| sim | mode | what it does | what Guardian should do |", "| --- | --- | --- | --- |"]
    rows += [f"| {g.sim} | `{g.mode}` | {g.effect} | {g.expected} |" for g in FAULT_GUIDE]
    return "\n".join(rows)
