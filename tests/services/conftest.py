"""Fixtures: fake sc.exe / nssm.exe / systemctl / journalctl first on PATH."""

from __future__ import annotations

import json
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKEBIN = Path(__file__).resolve().parent.parent / "fakebin"
TOOLS = ("sc.exe", "nssm.exe", "systemctl", "journalctl", "taskkill")


class FakeTools:
    """Handle on the fakes' shared world: read/write their state, read the argv log."""

    def __init__(self, bin_dir: Path, state_path: Path, log_path: Path) -> None:
        self.bin = bin_dir
        self.state_path = state_path
        self.log_path = log_path

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        return data

    def write(self, state: dict[str, Any]) -> None:
        self.state_path.write_text(json.dumps(state), encoding="utf-8")

    def update(self, **changes: Any) -> None:
        state = self.state()
        state.update(changes)
        self.write(state)

    def calls(self, tool: str | None = None) -> list[list[str]]:
        if not self.log_path.exists():
            return []
        entries = [json.loads(line) for line in self.log_path.read_text().splitlines()]
        return [e["argv"] for e in entries if tool is None or e["tool"] == tool]

    def path(self, tool: str) -> str:
        return str(self.bin / tool)


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTools]:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    (bin_dir / "fakelib.py").write_text((FAKEBIN / "fakelib.py").read_text())
    for tool in TOOLS:
        target = bin_dir / tool
        target.write_text(f"#!{sys.executable}\n" + (FAKEBIN / tool).read_text())
        target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    state = tmp_path / "fake-state.json"
    log = tmp_path / "fake-argv.jsonl"
    tools = FakeTools(bin_dir, state, log)
    tools.write({"windows": {}, "units": {}, "user_units": {}, "pending_polls": 1})
    # Only the fakes: a host's real systemctl must never be reached from a test.
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("GUARDIAN_FAKE_STATE", str(state))
    monkeypatch.setenv("GUARDIAN_FAKE_ARGV_LOG", str(log))
    yield tools


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
