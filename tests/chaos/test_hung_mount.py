"""A hung drive (a FUSE mount whose statfs never returns) harms nothing else (issue 11.6).

The mount is real (see testkit/hung_mount.py): ``statvfs`` on it blocks in the kernel. With it as
a disk-check path, the other paths and other targets' checks are still measured, the
same stuck path is not given a second thread, an incident report is written with the
snapshot noting what did not answer, and ``guardian run`` exits promptly on SIGTERM.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.disk import DiskCheckConfig, statfs_key
from guardian.checks.disk import create as create_disk
from guardian.checks.memory import MemoryCheckConfig
from guardian.checks.memory import create as create_memory
from guardian.core.clock import SystemClock
from guardian.core.result import Status
from guardian.incidents.snapshot import _os_section, system_snapshot
from guardian.support.blocking import pool
from testkit.chaos import GuardianProc, log_events, toml, wait_for
from testkit.hung_mount import hung_mount, unavailable

pytestmark = [
    pytest.mark.skipif(unavailable() is not None, reason=str(unavailable())),
    pytest.mark.timeout(90),
]


@pytest.fixture
def dead(tmp_path: Path) -> Iterator[Path]:
    with hung_mount(tmp_path / "dead") as path:
        yield path


def stuck_calls() -> int:
    """Disk calls still running (a finished call leaves this count before it answers)."""
    return pool("disk").busy


async def test_hung_path_fails_alone_and_is_not_given_a_second_thread(
    dead: Path, tmp_path: Path
) -> None:
    ctx = CheckContext("comfyui", SystemClock())
    check = create_disk(
        DiskCheckConfig(paths=[str(dead), str(tmp_path)], warn_gb=0, critical_gb=0, timeout=0.5),
        ctx,
    )
    memory = create_memory(
        MemoryCheckConfig(warn_available_mb=0, critical_available_mb=0, timeout=2),
        CheckContext("panel", SystemClock()),
    )
    before = stuck_calls()
    out = await check.run()
    assert out.status is Status.FAILED
    assert f"{dead}: statfs did not return within 0.45 s" in out.reason
    assert f"free_gb.{tmp_path}" in out.values  # the healthy path is still measured
    assert f"free_gb.{dead}" not in out.values
    for _ in range(3):  # later intervals: a clear reason, no new thread
        again = await check.run()
        assert again.status is Status.FAILED
        assert f"{dead}: statfs still blocked since" in again.reason
        assert f"free_gb.{tmp_path}" in again.values
        assert stuck_calls() == before + 1
        # another target's memory check is not starved by the stuck disk thread
        assert (await memory.run()).status is Status.OK


def test_snapshot_notes_what_did_not_answer_and_returns(dead: Path) -> None:
    def hung_disks() -> list[str]:
        usage = shutil.disk_usage(dead)
        return [f"{dead}: {usage.free}"]

    snap = system_snapshot(
        sections=[("OS", _os_section), ("Disks", hung_disks)], deadline=0.5
    )
    assert snap["OS"] and not snap["OS"][0].startswith("unavailable")
    assert snap["Disks"] == ["unavailable: Disks did not return within 0.5 s"]
    again = system_snapshot(sections=[("Disks", hung_disks)], deadline=0.5)
    assert again["Disks"][0].startswith("unavailable: Disks still blocked since")


def test_snapshot_disk_section_names_a_mount_the_disk_check_found_stuck(dead: Path) -> None:
    """The disk pool is shared: a statfs stuck from the check answers the snapshot at once."""
    from guardian.incidents import snapshot

    disks = pool("disk")
    with pytest.raises(Exception, match="did not return"):
        disks.call(lambda: shutil.disk_usage(dead), 0.05, key=statfs_key(str(dead)))
    assert disks.blocked_since(statfs_key(str(dead))) is not None
    fake_part = type("P", (), {"mountpoint": str(dead), "fstype": "fuse.sshfs"})
    real = snapshot.psutil.disk_partitions  # type: ignore[attr-defined]
    snapshot.psutil.disk_partitions = lambda all=False: [fake_part]  # type: ignore[assignment, attr-defined]
    try:
        lines = snapshot._disk_section(budget=2)
    finally:
        snapshot.psutil.disk_partitions = real  # type: ignore[assignment, attr-defined]
    assert len(lines) == 1
    expected = rf"{re.escape(str(dead))}: unavailable \(statfs still blocked since \d+ s\)"
    assert re.fullmatch(expected, lines[0]), lines


def _config(tmp: Path, dead: Path) -> Path:
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = {toml(tmp / "logs")}
state_dir = {toml(tmp / "state")}
report_dir = {toml(tmp / "reports")}
log_level = "debug"
jitter = 0
shutdown_grace = 2
[api]
enabled = false
[escalation]
failures = 2
[[targets]]
name = "models"
critical = false
[[targets.checks]]
kind = "disk"
paths = [{toml(str(dead))}, {toml(str(tmp))}]
warn_gb = 0
critical_gb = 0
interval = 0.3
timeout = 0.25
[[targets]]
name = "box"
[[targets.checks]]
kind = "memory"
warn_available_mb = 0
critical_available_mb = 0
interval = 0.2
timeout = 0.15
""")
    return path


def test_guardian_run_keeps_checking_writes_the_report_and_exits_on_sigterm(
    dead: Path, tmp_path: Path
) -> None:
    g = GuardianProc(_config(tmp_path, dead), tmp_path / "guardian.err")
    try:
        def checks(target: str, status: str) -> list[dict[str, object]]:
            return [
                e for e in log_events(tmp_path / "logs" / "guardian.log")
                if e.get("event") == "check" and e.get("target") == target
                and e.get("status") == status
            ]

        assert wait_for(lambda: len(checks("models", "failed")) >= 4, 30), g.stderr()[-3000:]
        reasons = [str(e["reason"]) for e in checks("models", "failed")]
        assert any("statfs still blocked since" in r for r in reasons), reasons
        n = len(checks("box", "ok"))
        assert wait_for(lambda: len(checks("box", "ok")) >= n + 5, 20), g.stderr()[-3000:]
        assert not checks("box", "failed")  # the memory check never timed out
        reports = tmp_path / "reports"
        assert wait_for(lambda: reports.is_dir() and list(reports.glob("*.md")), 30), (
            g.stderr()[-3000:]
        )
        g.proc.send_signal(signal.SIGTERM)
        try:
            code = g.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail("guardian did not exit after SIGTERM with a statfs stuck")
        assert code == 0
        assert "guardian stopped" in g.stderr()
    finally:
        g.stop(timeout=5)
