"""CLI: incidents table, report from the store (live log via a real backend), notify-test."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from guardian.cli.incidents import register
from guardian.config.load import load_config
from guardian.core.clock import FakeClock
from guardian.core.result import Status
from guardian.incidents.report import Reporter
from guardian.incidents.store import Store
from testkit.incidents import Webhook, result

FAKEBIN = Path(__file__).resolve().parents[1] / "fakebin"

app = typer.Typer()
register(app)
runner = CliRunner()


def write_config(tmp: Path, notify_urls: list[str] | None = None) -> Path:
    urls = json.dumps(notify_urls or [])
    text = f"""
[guardian]
log_dir = "{tmp / "logs"}"
report_dir = "{tmp / "reports"}"
state_dir = "{tmp / "state"}"

[notify]
urls = {urls}

[[targets]]
name = "comfyui"
description = "ComfyUI"
[targets.service]
backend = "systemd"
name = "comfyui.service"
[[targets.checks]]
kind = "service"

[[targets]]
name = "panel"
critical = false
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:3000/api/health"
"""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "guardian.toml"
    path.write_text(text)
    return path


def populate(config_path: Path) -> tuple[int, int]:
    """One escalated incident with a saved log tail, one resolved incident."""
    cfg = load_config(config_path)
    clock = FakeClock()
    store = Store.from_config(cfg)
    inc = store.open_incident("comfyui", clock.now(), "major", "service: inactive (dead)")
    store.add_result(result(clock, Status.FAILED, check="service", reason="inactive"), inc.id)
    store.update_incident(inc.id, status="escalated", escalated_at=clock.now())

    async def tail(target: str, n: int) -> list[str]:
        return ["saved at escalation: Cannot import custom node", "token=abc123secret"]

    asyncio.run(Reporter(cfg, store, log_tail=tail, clock=clock).capture(inc.id))
    old = store.open_incident("panel", clock.now(), "minor", "http: HTTP 502")
    store.update_incident(old.id, status="resolved", resolved_at=clock.now())
    store.close()
    return inc.id, old.id


def test_incidents_without_a_store_says_so(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = runner.invoke(app, ["incidents", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "no incidents recorded" in res.output


def test_incidents_lists_open_by_default_and_all_with_flag(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    open_id, resolved_id = populate(cfg)
    res = runner.invoke(app, ["incidents", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = [line for line in res.output.splitlines() if "comfyui" in line]
    assert len(rows) == 1 and str(open_id) in rows[0]
    assert "Open incidents" in res.output and "escalated" in res.output
    assert "comfyui" in res.output and "panel" not in res.output
    res = runner.invoke(app, ["incidents", "--all", "-c", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    (at,) = [n for n, line in enumerate(lines) if "panel" in line]
    assert str(resolved_id) in lines[at] and "resolved" in lines[at]
    assert "HTTP 502" in lines[at + 1]  # the summary, on the incident's second line


def test_bad_config_exits_2_with_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[escalation]\nfailures = 0\n")
    for args in (["incidents"], ["report", "1"], ["notify-test"]):
        res = runner.invoke(app, [*args, "--config", str(bad)])
        assert res.exit_code == 2
        assert "escalation.failures" in res.output


def test_report_uses_the_saved_tail_when_the_service_cannot_be_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(tmp_path)
    open_id, _ = populate(cfg)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no journalctl: the live tail fails
    res = runner.invoke(app, ["report", str(open_id), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert f"# Incident #{open_id}: comfyui - escalated" in res.output
    assert "saved at escalation: Cannot import custom node" in res.output
    assert "abc123secret" not in res.output and "token=[REDACTED]" in res.output
    assert "Missing Python module" in res.output


def test_report_reads_a_live_log_tail_from_the_service_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd backend runs a fake journalctl (argv-compatible) from PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "fakelib.py").write_text((FAKEBIN / "fakelib.py").read_text())
    tool = bin_dir / "journalctl"
    tool.write_text(f"#!{sys.executable}\n" + (FAKEBIN / "journalctl").read_text())
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "fake-state.json"
    journal = ["live line 1", "OSError: [Errno 98] address already in use", "live line 3"]
    state.write_text(json.dumps({"units": {"comfyui.service": {"journal": journal}}}))
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("GUARDIAN_FAKE_STATE", str(state))

    cfg = write_config(tmp_path)
    open_id, _ = populate(cfg)
    out_file = tmp_path / "out" / "r.md"
    res = runner.invoke(app, ["report", str(open_id), "-o", str(out_file), "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "written to" in res.output
    md = out_file.read_text()
    assert "live line 1\nOSError: [Errno 98] address already in use\nlive line 3" in md
    assert "saved at escalation" not in md
    assert "**Port already in use**" in md


def test_report_of_an_unknown_incident_or_missing_store_exits_1(tmp_path: Path) -> None:
    cfg = write_config(tmp_path)
    res = runner.invoke(app, ["report", "1", "-c", str(cfg)])
    assert res.exit_code == 1 and "no incident store" in res.output
    populate(cfg)
    res = runner.invoke(app, ["report", "999", "-c", str(cfg)])
    assert res.exit_code == 1 and "no incident #999" in res.output


def test_notify_test_sends_to_a_real_webhook(tmp_path: Path, webhook: Webhook) -> None:
    cfg = write_config(tmp_path, [webhook.url(), "json://127.0.0.1:1/refused"])
    res = runner.invoke(app, ["notify-test", "-c", str(cfg)], env={"COLUMNS": "200"})
    assert res.exit_code == 1  # one channel failed
    assert "sent" in res.output and "failed" in res.output
    assert str(webhook.port) not in res.output  # URLs are never printed
    assert webhook.titles() == ["[Guardian] test notification"]
    cfg2 = write_config(tmp_path / "b", [webhook.url()])
    res = runner.invoke(app, ["notify-test", "-c", str(cfg2)])
    assert res.exit_code == 0, res.output
    empty = write_config(tmp_path / "c", [])
    res = runner.invoke(app, ["notify-test", "-c", str(empty)])
    assert res.exit_code == 1 and "no notification URLs" in res.output


def test_report_without_a_saved_snapshot_takes_one_with_stored_gpu_results(
    tmp_path: Path,
) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    clock = FakeClock()
    store = Store.from_config(cfg)
    inc = store.open_incident("panel", clock.now(), "minor", "http: HTTP 502")
    store.add_result(result(clock, Status.FAILED, target="panel", reason="HTTP 502"), inc.id)
    store.add_result(result(clock, Status.OK, target="system", check="gpu", vram_used_mb=512))
    store.close()
    res = runner.invoke(app, ["report", str(inc.id), "-c", str(cfg_path)])
    assert res.exit_code == 0, res.output
    assert "### Memory" in res.output and "unavailable" not in res.output
    assert "system/gpu ok" in res.output and "vram_used_mb: 512" in res.output
    assert "No log lines available" in res.output  # panel has no service
