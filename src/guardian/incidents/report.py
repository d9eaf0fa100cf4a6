"""Markdown incident reports: what happened, what was tried, what to do next.

A report is built from the store only (plus a log tail and a system snapshot), so the same
code writes it at escalation inside Guardian and later on demand from the CLI. The log
tail and snapshot taken at escalation are saved in the store, because by the time someone
reads the report the service may have been restarted and its log rotated. The whole text
passes through :func:`redact` last, so a secret in a log line or reason never lands in a
file.

The system snapshot describes the machine, not the target, so reports captured within
``SNAPSHOT_REUSE`` seconds of each other share one (each says when it was taken): 1000
targets escalating together cost one psutil snapshot, not 1000 threads queueing for the
report pool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from guardian.checks.registry import spec
from guardian.config.schema import Config
from guardian.core.clock import Clock, SystemClock
from guardian.incidents.records import (
    ESCALATED_ARTIFACT,
    Incident,
    StoredRecovery,
    StoredResult,
)
from guardian.incidents.redact import MASK, redact
from guardian.incidents.snapshot import SNAPSHOT_DEADLINE, Snapshot, SnapshotFn, system_snapshot
from guardian.incidents.store import Store
from guardian.incidents.tracker import ADOPT_WINDOW
from guardian.support import blocking
from guardian.support.escape import inert, markdown_cell, markdown_inline
from guardian.support.logscan import last_error
from guardian.support.safe_open import write_atomic_text

log = logging.getLogger("guardian.incidents")

LogTail = Callable[[str, int], Awaitable[list[str]]]  # (target, lines) -> oldest first

LOG_ARTIFACT = "log_tail"
SNAPSHOT_ARTIFACT = "snapshot"
MAX_TIMELINE = 500
MAX_LINE = 2000  # characters per quoted log line
SNAPSHOT_REUSE = 30.0  # seconds a captured system snapshot serves further reports


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    pattern: re.Pattern[str]
    steps: tuple[str, ...]


SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "CUDA out of memory",
        re.compile(
            r"CUDA out of memory|torch\.(?:cuda\.)?OutOfMemoryError|CUDA error: out of memory",
            re.I,
        ),
        (
            "Lower the batch size or resolution of the failing workflow.",
            "Start ComfyUI with `--lowvram` (or `--novram`) or enable model offloading.",
            "Check `nvidia-smi` for other processes holding VRAM and stop them.",
            "If VRAM use grows across runs, restart ComfyUI on a schedule and report the leak.",
        ),
    ),
    Signature(
        "Disk critically full",
        re.compile(
            r"No space left on device|ENOSPC|disk (?:is )?full|\bdisk\b.*\bcritical\b"
            r"|There is not enough space on the disk",
            re.I,
        ),
        (
            "Free space on the affected volume: ComfyUI `output/` and `temp/`, old logs,"
            " unused models.",
            "Move model folders to a larger drive (`extra_model_paths.yaml`).",
            "Lower the retention of generated images, then restart the service.",
        ),
    ),
    Signature(
        "Port already in use",
        re.compile(
            r"EADDRINUSE|address already in use|WinError 10048|Errno 98"
            r"|only one usage of each socket address",
            re.I,
        ),
        (
            "Find what holds the port: `netstat -ano | findstr :<port>` (Windows) or"
            " `ss -ltnp 'sport = :<port>'` (Linux).",
            "Stop the stale instance (often a second copy started by hand), then restart.",
            "Or change the port in the service's arguments and in Guardian's check URL.",
        ),
    ),
    Signature(
        "Missing Python module / custom node failed to import",
        re.compile(r"ModuleNotFoundError|No module named|IMPORT FAILED|Cannot import", re.I),
        (
            "Install the custom node's requirements into ComfyUI's own Python:"
            " `python -m pip install -r custom_nodes/<node>/requirements.txt`.",
            "If a node cannot be fixed, move it out of `custom_nodes/` and restart.",
            "After a ComfyUI update, update custom nodes too (ComfyUI-Manager: Update All).",
        ),
    ),
)

_MODULE_RE = re.compile(r"No module named '([\w.]+)'")


def suggestions(
    texts: Iterable[str], failed_kinds: Iterable[str] = ()
) -> list[tuple[str, list[str]]]:
    """(signature name, next steps) for each known failure signature found in ``texts``."""
    corpus = "\n".join(texts)
    found: list[tuple[str, list[str]]] = []
    proven = {spec(kind).signature for kind in failed_kinds}  # a failed kind that proves one
    for sig in SIGNATURES:
        hit = sig.pattern.search(corpus) is not None or sig.name in proven
        if not hit:
            continue
        steps = list(sig.steps)
        if sig.name.startswith("Missing Python module"):
            modules = sorted(set(_MODULE_RE.findall(corpus)))
            if modules:
                steps.insert(0, "Missing module(s): " + ", ".join(f"`{m}`" for m in modules))
        found.append((sig.name, steps))
    return found


def _in_span(incident: Incident, when: datetime) -> bool:
    """Whether an event belongs to the incident's own time span (adopted exits included)."""
    if when < incident.opened_at - ADOPT_WINDOW:
        return False
    return incident.resolved_at is None or when <= incident.resolved_at


def report_filename(incident: Incident, when: datetime) -> str:
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = re.sub(r"[^A-Za-z0-9_.-]", "_", incident.target)
    return f"incident-{incident.id}-{target}-{stamp}.md"


def _utc(dt: datetime | None) -> str:
    return "-" if dt is None else dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


_ESCAPED_MASK = markdown_inline(MASK)


def _cell(text: object) -> str:
    return markdown_cell(redact(str(text))).replace(_ESCAPED_MASK, MASK)


def _md(text: object) -> str:
    """Target-controlled text inside a Markdown line: redacted, then made inert.

    The mask stays readable as ``[REDACTED]`` (and so the final redaction pass over the
    whole report leaves it alone); with no line start it cannot define a link.
    """
    return markdown_inline(redact(str(text))).replace(_ESCAPED_MASK, MASK)


def _values(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def _fence(lines: list[str]) -> str:
    longest = max((len(m) for line in lines for m in re.findall(r"`{3,}", line)), default=0)
    return "`" * max(3, longest + 1)


class Reporter:
    """Writes and renders incident reports from the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        log_tail: LogTail | None = None,
        snapshot: SnapshotFn | None = None,
        clock: Clock | None = None,
        log_timeout: float = 20.0,
    ) -> None:
        self.config = config
        self.store = store
        self.log_tail = log_tail
        self.snapshot = snapshot or system_snapshot
        self.clock = clock or SystemClock()
        self.log_timeout = log_timeout
        self.report_dir = config.guardian.report_dir
        self._snap_lock = asyncio.Lock()
        self._snap: tuple[float, datetime, Snapshot] | None = None  # (monotonic, when, snap)
        self.snapshots_taken = 0

    async def _fetch_log(self, target: str) -> list[str] | None:
        n = self.config.escalation.report_log_lines
        if self.log_tail is None or n <= 0:
            return None
        try:
            lines = await asyncio.wait_for(self.log_tail(target, n), self.log_timeout)
        except Exception as e:
            log.warning(
                "log tail of %s unavailable: %s",
                target,
                e,
                extra={"event": "log_tail_failed", "target": target},
            )
            return None
        return [redact(line[:MAX_LINE]) for line in lines[-n:]]

    async def _take_snapshot(self) -> Snapshot:
        try:  # bounded: a hung drive must not hold the report (see guardian.support.blocking)
            return await blocking.pool("report").run(
                self.snapshot, SNAPSHOT_DEADLINE + 2.0, what="system snapshot"
            )
        except Exception as e:
            return {"Snapshot": [f"unavailable: {e}"]}

    async def capture(self, incident_id: int) -> None:
        """Save the current log tail and system snapshot with the incident."""
        incident = self._incident(incident_id)
        now = self.clock.now()
        lines = await self._fetch_log(incident.target)
        if lines is not None:
            self.store.put_artifact(incident_id, LOG_ARTIFACT, json.dumps(lines), now)
        taken, snap = await self._shared_snapshot()
        self.store.put_artifact(incident_id, SNAPSHOT_ARTIFACT, json.dumps(snap), taken)

    async def _shared_snapshot(self) -> tuple[datetime, Snapshot]:
        """A redacted snapshot no older than SNAPSHOT_REUSE, and when it was taken."""
        async with self._snap_lock:  # a second report waits for the first one's snapshot
            held = self._snap
            if held is not None and self.clock.monotonic() - held[0] < SNAPSHOT_REUSE:
                return held[1], held[2]
            started, taken = self.clock.monotonic(), self.clock.now()
            snap = await self._take_snapshot()
            snap = {k: [redact(x) for x in v] for k, v in snap.items()}
            self.snapshots_taken += 1
            self._snap = (started, taken, snap)
            return taken, snap

    async def write(self, incident_id: int, *, capture: bool = True) -> Path:
        """Capture (optionally), render and atomically write the report; returns its path."""
        if capture:
            await self.capture(incident_id)
        await self.store.settled()  # what was just recorded is in the file (bounded wait)
        text = await self.render(incident_id)
        incident = self._incident(incident_id)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        path = self.report_dir / report_filename(incident, self.clock.now())
        write_atomic_text(path, text, 0o640)  # never through a link planted in report_dir
        log.info(
            "report of incident %d written to %s",
            incident_id,
            path,
            extra={
                "event": "report_written",
                "incident": incident_id,
                "target": incident.target,
                "path": str(path),
            },
        )
        return path

    def _incident(self, incident_id: int) -> Incident:
        incident = self.store.incident(incident_id)
        if incident is None:
            raise KeyError(f"no incident #{incident_id}")
        return incident

    async def render(
        self, incident_id: int, *, live_log: bool = False, live_snapshot: bool = False
    ) -> str:
        """The report's Markdown.

        By default the log tail and snapshot saved at escalation are used. While the
        incident is open, ``live_log`` reads the log now (the CLI, where the service may
        have logged more since) and falls back to the saved tail, and ``live_snapshot``
        takes a fresh snapshot, as does a report with nothing saved. A resolved incident
        is evidence frozen in time: only what was recorded while it was open, never the
        present (a later incident's log line, another run's check results).
        """
        incident = self._incident(incident_id)
        if not incident.is_open:
            live_log = live_snapshot = False
        results = [
            r
            for r in self.store.results(incident_id=incident_id)
            if _in_span(incident, r.finished)
        ]
        recovery = [
            e
            for e in self.store.recovery_events(incident_id=incident_id)
            if _in_span(incident, e.time)
        ]

        log_lines: list[str] | None = None
        log_note = ""
        if live_log:
            log_lines = await self._fetch_log(incident.target)
            log_note = f"read {_utc(self.clock.now())}"
        stored_log = self.store.artifact(incident_id, LOG_ARTIFACT)
        if log_lines is None and stored_log is not None:
            log_lines = json.loads(stored_log[1])
            log_note = f"captured {_utc(stored_log[0])}"

        snap: Snapshot | None = None
        stored_snap = self.store.artifact(incident_id, SNAPSHOT_ARTIFACT)
        if stored_snap is not None and not live_snapshot:
            snap = json.loads(stored_snap[1])
            snap_note = f"captured {_utc(stored_snap[0])}"
        elif not incident.is_open:
            snap = {"Snapshot": ["none was captured while the incident was open"]}
            snap_note = ""
        else:
            snap = await self._take_snapshot()
            snap_note = f"taken {_utc(self.clock.now())}"

        md = self._markdown(
            incident, results, recovery, log_lines or [], log_note, snap or {}, snap_note
        )
        return redact(md)

    def _markdown(
        self,
        inc: Incident,
        results: list[StoredResult],
        recovery: list[StoredRecovery],
        log_lines: list[str],
        log_note: str,
        snap: Snapshot,
        snap_note: str,
    ) -> str:
        out: list[str] = []
        add = out.append
        try:
            tcfg = self.config.target(inc.target)
            about = f"{inc.target} ({'critical' if tcfg.critical else 'non-critical'})"
            if tcfg.description:
                about += f" - {tcfg.description}"
        except KeyError:
            about = f"{inc.target} (not in the current config)"
        add(f"# Incident #{inc.id}: {_md(inc.target)} - {inc.status}")
        add("")
        add(f"- **Severity:** {inc.severity}")
        add(f"- **Status:** {inc.status}")
        add(f"- **Affected target:** {_md(about)}")
        add(f"- **Opened:** {_utc(inc.opened_at)}")
        add(f"- **Escalated:** {_utc(inc.escalated_at)}")
        add(f"- **Resolved:** {_utc(inc.resolved_at)}")
        add(f"- **Failures:** {inc.failure_count}, **flaps:** {inc.flap_count}")
        add(f"- **Summary:** {_md(inc.summary)}")
        add(f"- **Report generated:** {_utc(self.clock.now())}")
        add("")

        add("## Timeline (UTC)")
        add("")
        rows: list[tuple[datetime, int, str, str]] = []
        for r in results:
            rows.append(
                (
                    r.finished,
                    0,
                    f"check {r.check} {r.status}",
                    f"{r.reason} ({_values(r.values)})" if r.values else r.reason,
                )
            )
        for e in recovery:
            what = f"recovery {e.kind}" + (f" (attempt {e.attempt})" if e.attempt else "")
            rows.append((e.time, 1, what, "; ".join(x for x in (e.reason, e.detail) if x)))
        rows.append((inc.opened_at, -1, "incident opened", ""))
        if inc.escalated_at:
            # Why it escalated then, not the summary as it reads now (a later cause).
            because = self.store.artifact(inc.id, ESCALATED_ARTIFACT)
            rows.append((inc.escalated_at, 2, "incident escalated",
                         because[1] if because is not None else inc.severity))
        if inc.resolved_at:
            rows.append((inc.resolved_at, 2, "incident resolved", ""))
        rows.sort(key=lambda x: (x[0], x[1]))
        if len(rows) > MAX_TIMELINE:
            add(f"_{len(rows) - MAX_TIMELINE} earlier entries omitted._")
            add("")
            rows = rows[-MAX_TIMELINE:]
        add("| Time | Event | Detail |")
        add("|---|---|---|")
        for when, _, what, detail in rows:
            add(f"| {_utc(when)} | {_cell(what)} | {_cell(detail) or '-'} |")
        add("")

        add("## Failed checks")
        add("")
        failed: dict[str, list[StoredResult]] = {}
        for r in results:
            if r.status == "failed":
                failed.setdefault(r.check, []).append(r)
        if not failed:
            add("No failed check results recorded.")
        for check, rs in failed.items():
            last = rs[-1]
            add(
                f"### {_md(check)} ({_md(last.kind)}): {len(rs)} failure(s), "
                f"first {_utc(rs[0].finished)}, last {_utc(last.finished)}"
            )
            add("")
            add(f"- **Last reason:** {_md(last.reason or '-')}")
            add(f"- **Measured values:** {_md(_values(last.values))}")
            add(f"- **Duration:** {last.duration:.3f} s")
            other = sorted({r.reason for r in rs[:-1]} - {last.reason})
            for reason in other[:10]:
                add(f"- Earlier reason: {_md(reason)}")
            add("")

        add("## Recovery attempts")
        add("")
        if not recovery:
            add("No recovery actions recorded.")
        else:
            add("| Time | Action | Attempt | Reason | Detail |")
            add("|---|---|---|---|---|")
            for e in recovery:
                add(
                    f"| {_utc(e.time)} | {e.kind} | {e.attempt or '-'} | {_cell(e.reason) or '-'} "
                    f"| {_cell(e.detail) or '-'} |"
                )
        add("")

        add("## Suggested next steps")
        add("")
        # Only the last traceback (or error line) of the log: a warning every boot prints
        # must not be blamed for a crash.
        texts = [r.reason for r in results] + [f"{e.reason} {e.detail}" for e in recovery]
        culprit = last_error(log_lines)
        if culprit is not None:
            texts += culprit.block
        found = suggestions(texts, {r.kind for r in results if r.status == "failed"})
        if not found:
            add(
                "No known failure signature found in the reasons or log lines. Read the log"
                " tail below, then check the service by hand (`guardian status`)."
            )
        for name, steps in found:
            add(f"**{name}**")
            add("")
            add("\n".join(f"- {s}" for s in steps))
            add("")
        if not found:
            add("")

        add(f"## System snapshot ({snap_note})" if snap_note else "## System snapshot")
        add("")
        for title, lines in snap.items():
            add(f"### {_md(title)}")
            add("")
            add("\n".join(f"- {_md(line)}" for line in lines) or "- (nothing)")
            add("")

        n = self.config.escalation.report_log_lines
        add(
            f"## Service log: last {len(log_lines)} line(s) of {_md(inc.target)}"
            + (f" ({log_note})" if log_note else "")
        )
        add("")
        if not log_lines:
            add(f"No log lines available (up to {n} requested).")
        else:
            fence = _fence(log_lines)
            add(fence + "text")
            add("\n".join(inert(x) for x in log_lines))  # no raw ESC reaches a `cat`
            add(fence)
        add("")
        return "\n".join(out)
