"""Reports: sections from the store, saved log tail and snapshot, signatures, redaction."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from guardian.core.clock import FakeClock
from guardian.core.events import RecoveryKind
from guardian.core.result import Status
from guardian.core.state import State
from guardian.incidents.report import Reporter, report_filename, suggestions
from guardian.incidents.snapshot import state_snapshot, system_snapshot
from guardian.incidents.store import Store
from testkit.incidents import make_config, recovery, result, utc


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "CUDA out"),
        ("RuntimeError: CUDA error: out of memory", "CUDA out"),
        ("OSError: [Errno 28] No space left on device", "Disk"),
        ("OSError: [Errno 98] error while attempting to bind: address already in use", "Port"),
        ("Error: listen EADDRINUSE: address already in use :::3000", "Port"),
        ("OSError: [WinError 10048] Only one usage of each socket address", "Port"),
        ("ModuleNotFoundError: No module named 'cv2'", "Missing Python module"),
        ("Cannot import /ComfyUI/custom_nodes/was-node-suite module for custom nodes", "Missing"),
        ("(IMPORT FAILED): /ComfyUI/custom_nodes/ComfyUI-Impact-Pack", "Missing"),
    ],
)
def test_known_signatures_give_next_steps(text: str, name: str) -> None:
    found = suggestions(["some unrelated line", text])
    assert len(found) == 1
    assert found[0][0].startswith(name)
    assert found[0][1]


def test_missing_module_names_are_listed_and_unknown_text_gives_nothing() -> None:
    (found,) = suggestions(["No module named 'cv2'", "No module named 'insightface.app'"])
    assert found[1][0] == "Missing module(s): `cv2`, `insightface.app`"
    assert suggestions(["connection refused", "HTTP 502"]) == []
    assert suggestions([], failed_kinds=["disk"])[0][0] == "Disk critically full"


def _incident(tmp_path: Path) -> tuple[Store, FakeClock, int]:
    clock = FakeClock()
    store = Store(tmp_path / "g.db")
    inc = store.open_incident("comfyui", clock.now(), "major", "http: refused")
    store.add_result(
        result(clock, Status.FAILED, reason="HTTP 500 from /system_stats", status_code=500),
        inc.id,
    )
    store.add_recovery(recovery(clock, RecoveryKind.RESTART_STARTED, attempt=1), inc.id)
    clock._t += 5
    store.add_recovery(
        recovery(clock, RecoveryKind.RESTART_FAILED, attempt=1, reason="exit code 1"), inc.id
    )
    store.add_result(
        result(
            clock, Status.FAILED, check="disk", kind="disk", reason="D: 1.2 GB free", free_gb=1.2
        ),
        inc.id,
    )
    store.update_incident(
        inc.id, status="escalated", escalated_at=clock.now(), severity="critical", failure_count=2
    )
    return store, clock, inc.id


async def test_report_has_every_section_with_real_data(tmp_path: Path) -> None:
    store, clock, iid = _incident(tmp_path)
    config = make_config(tmp_path)
    log_lines = [f"line {i}" for i in range(300)] + [
        "Traceback (most recent call last):",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB",
        "connecting with PASSWORD=hunter2 and Authorization: Bearer abc.def",
        "``` a fence inside the log",
    ]

    async def tail(target: str, n: int) -> list[str]:
        assert target == "comfyui"
        return log_lines[-n:]

    snap = {"OS": ["system: TestOS"], "GPU": ["comfyui/gpu ok: vram_used_mb: 1234"]}
    reporter = Reporter(config, store, log_tail=tail, snapshot=lambda: snap, clock=clock)
    path = await reporter.write(iid)
    store.update_incident(iid, report_path=str(path))

    assert path.parent == config.guardian.report_dir
    assert re.fullmatch(r"incident-\d+-comfyui-\d{8}T\d{6}Z\.md", path.name)
    md = path.read_text()
    for heading in (
        "# Incident #",
        "## Timeline (UTC)",
        "## Failed checks",
        "## Recovery attempts",
        "## Suggested next steps",
        "## System snapshot",
        "## Service log",
    ):
        assert heading in md
    assert "**Severity:** critical" in md
    assert "comfyui (critical) - ComfyUI generation server" in md
    assert f"| {utc(clock.now())} | recovery restart_failed (attempt 1) | exit code 1 |" in md
    assert "HTTP 500 from /system_stats" in md and "status_code=500" in md
    assert "### disk (disk): 1 failure(s)" in md and "free_gb=1.2" in md
    assert "**CUDA out of memory**" in md and "--lowvram" in md
    assert "**Disk critically full**" in md  # from the failed disk check
    assert "vram_used_mb: 1234" in md
    # exactly the last 200 lines, newest last, fenced so a ``` line cannot break out
    assert "last 200 line(s) of comfyui" in md
    assert "line 103\n" not in md and "line 104\n" in md
    assert "````text" in md
    assert "hunter2" not in md and "abc.def" not in md and "[REDACTED]" in md

    # the saved tail is used later, even when the service can no longer be asked
    later = Reporter(config, store, clock=clock)
    md2 = await later.render(iid)
    assert "torch.OutOfMemoryError" in md2 and "captured" in md2
    assert "hunter2" not in md2  # redacted before it was stored, too
    assert "hunter2" not in store.artifact(iid, "log_tail")[1]  # type: ignore[index]
    store.close()


async def test_a_failing_log_tail_and_snapshot_do_not_stop_the_report(tmp_path: Path) -> None:
    store, clock, iid = _incident(tmp_path)

    async def tail(target: str, n: int) -> list[str]:
        raise RuntimeError("journalctl missing")

    def snap() -> dict[str, list[str]]:
        raise RuntimeError("psutil exploded")

    reporter = Reporter(make_config(tmp_path), store, log_tail=tail, snapshot=snap, clock=clock)
    md = (await reporter.write(iid)).read_text()
    assert "No log lines available" in md
    assert "unavailable: psutil exploded" in md
    store.close()


def test_report_filename_is_safe() -> None:
    clock = FakeClock()
    from guardian.incidents.store import Incident

    inc = Incident(7, "comfy ui/../x", clock.now(), None, None, "major", "open", "", 0, 0, None)
    assert report_filename(inc, clock.now()) == "incident-7-comfy_ui_.._x-20260101T000000Z.md"


def test_default_snapshot_reads_the_machine_and_quotes_gpu_comfyui_results(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    state = State(config)
    clock = FakeClock()
    state.record(result(clock, Status.OK, target="system", check="gpu", vram_used_mb=4096))
    state.record(
        result(clock, Status.FAILED, check="comfyui", reason="queue stuck", queue_running=1)
    )
    state.record(result(clock, Status.OK, check="http"))
    snap = state_snapshot(state)()
    assert snap["OS"][0].startswith("system: ")
    assert any(line.startswith("uptime: ") for line in snap["OS"])
    assert snap["CPU"][0].startswith("cores: ")
    assert snap["Memory"][0].startswith("ram: ")
    assert any("GiB free" in d for d in snap["Disks"])
    assert snap["GPU"][0].startswith("system/gpu ok") and "  vram_used_mb: 4096" in snap["GPU"]
    assert "queue stuck" in snap["ComfyUI"][0]
    assert system_snapshot()["GPU"] == ["no GPU check result"]


# --------------------------------------------------------------------------- last error, span

BOOTS = [
    "Starting server",
    "WARNING: No module named 'xformers'; falling back (printed on every boot)",
    "Import times for custom nodes: 0.1 seconds",
    "Traceback (most recent call last):",
    '  File "main.py", line 9, in <module>',
    "    server.start(port=8188)",
    "OSError: [Errno 98] error while attempting to bind on address: address already in use",
]


def test_last_error_is_the_last_traceback_not_a_warning() -> None:
    from guardian.support.logscan import last_error

    found = last_error(BOOTS)
    assert found is not None
    assert found.line.startswith("OSError: [Errno 98]")
    assert found.block[0] == "Traceback (most recent call last):"
    assert last_error(BOOTS[:3]) is None  # warnings and chatter only: no culprit
    chained = [
        *BOOTS,
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "ValueError: second",
        "shutting down",
    ]
    assert last_error(chained).line == "ValueError: second"  # type: ignore[union-attr]
    plain = ["loading", "ERROR: model file is corrupt", "bye"]
    assert last_error(plain).line == "ERROR: model file is corrupt"  # type: ignore[union-attr]


async def test_next_steps_come_from_the_last_traceback_not_any_warning(tmp_path: Path) -> None:
    store, clock, iid = _incident(tmp_path)

    async def tail(target: str, n: int) -> list[str]:
        return BOOTS[-n:]

    reporter = Reporter(make_config(tmp_path), store, log_tail=tail, snapshot=dict, clock=clock)
    md = await reporter.render(iid, live_log=True)
    steps = md.split("## Suggested next steps")[1].split("## System snapshot")[0]
    assert "**Port already in use**" in steps
    assert "Missing Python module" not in steps and "xformers" not in steps
    assert "No module named 'xformers'" in md  # still quoted in the log tail
    store.close()


async def test_a_report_lists_only_its_own_time_span(tmp_path: Path) -> None:
    from datetime import timedelta

    store, clock, iid = _incident(tmp_path)
    old = recovery(clock, RecoveryKind.RESTART_SUCCEEDED, attempt=9, reason="an old trouble")
    store.add_recovery(
        type(old)(old.target, old.kind, clock.now() - timedelta(hours=3), 9, old.reason), iid
    )
    store.update_incident(iid, status="resolved", resolved_at=clock.now())
    late = recovery(clock, RecoveryKind.RESTART_STARTED, attempt=7, reason="after it ended")
    store.add_recovery(type(late)(late.target, late.kind, clock.now() + timedelta(hours=1), 7,
                                  late.reason), iid)
    reporter = Reporter(make_config(tmp_path), store, snapshot=dict, clock=clock)
    md = await reporter.render(iid)
    assert "an old trouble" not in md and "after it ended" not in md
    assert "exit code 1" in md  # its own restart_failed stays
    store.close()


def test_custom_node_import_failures_at_boot_are_not_the_culprit() -> None:
    """A real ComfyUI 0.3.64 boot log: two custom-node tracebacks it handled and booted past."""
    import json

    from guardian.support.logscan import last_error

    capture = Path(__file__).resolve().parents[1] / "fixtures/comfyui/captures/boot_timeline.json"
    boot = [line for _, line in json.loads(capture.read_text())["log"]]
    assert sum(line.startswith("Traceback") for line in boot) == 2  # the capture is as described
    assert last_error(boot) is None  # booted fine: nothing in it killed anything
    crashed = [*boot, "got prompt", "Traceback (most recent call last):",
               '  File "execution.py", line 1, in execute',
               "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"]
    assert last_error(crashed).line.startswith("torch.OutOfMemoryError")  # type: ignore[union-attr]
    # Not handled (no "Cannot import ... module for custom nodes" after it): it counts.
    fatal = [*boot[:boot.index("Traceback (most recent call last):") + 8], "exiting"]
    assert last_error(fatal).line == "ModuleNotFoundError: No module named 'torchaudio'"  # type: ignore[union-attr]
