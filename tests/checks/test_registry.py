"""A new check kind is one module plus one registry line: nothing else to edit.

The kind below is defined here (its "module") and registered (its "line"); with no other
change it validates (with did-you-mean errors), runs in the real runtime, and shows in
/api/status, /api/health and /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import pytest
from pydantic import Field

from guardian.checks.base import CheckConfigBase, CheckContext
from guardian.checks.registry import KINDS, REGISTRY, KindSpec, spec
from guardian.config.errors import ConfigError
from guardian.config.load import parse_config
from guardian.core.result import Outcome, Reading
from guardian.demo.stack import free_port
from guardian.runtime import Guardian

# ----------------------------------------------------------------- the new kind's module


class FileSizeConfig(CheckConfigBase):
    kind: Literal["file_size"] = "file_size"
    path: Path = Field(strict=False)
    max_bytes: int = Field(1024, ge=0)


READINGS = (
    Reading("size_bytes", "count", doc="Size of the watched file",
            metric="guardian_file_size_bytes"),
)


class FileSizeCheck:
    def __init__(self, cfg: FileSizeConfig, ctx: CheckContext) -> None:
        self.config = cfg

    async def run(self) -> Outcome:
        try:
            size = (await asyncio.to_thread(os.stat, self.config.path)).st_size
        except FileNotFoundError:
            return Outcome.failed(f"{self.config.path} is missing").tagged(
                reason_class="other"
            )
        if size > self.config.max_bytes:
            return Outcome.degraded(
                f"grew to {size} bytes (limit {self.config.max_bytes})", size_bytes=size
            ).tagged(reason_class="threshold")
        return Outcome.ok(f"{size} bytes", size_bytes=size)

    async def aclose(self) -> None:
        return None


def create(cfg: FileSizeConfig, ctx: CheckContext) -> FileSizeCheck:
    return FileSizeCheck(cfg, ctx)


# ----------------------------------------------------------------- its registry line

SPEC = KindSpec("file_size", FileSizeConfig, create, READINGS, host=True, startup_phase=False)


@pytest.fixture
def registered() -> Iterator[None]:
    REGISTRY.register(SPEC)
    try:
        yield
    finally:
        REGISTRY.unregister(SPEC.kind)


def config_text(tmp: Path, watched: Path, api_port: int) -> str:
    return f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
[api]
port = {api_port}
[[targets]]
name = "files"
[[targets.checks]]
kind = "file_size"
path = {json.dumps(str(watched))}
max_bytes = 10
interval = 0.3
timeout = 0.2
"""


def test_the_table_lists_every_kind_once_in_order() -> None:
    kinds = [s.kind for s in KINDS]
    assert kinds == ["http", "comfyui", "comfyui_canary", "disk", "memory", "gpu", "service"]
    assert REGISTRY.kinds() == tuple(kinds)
    assert spec("service").service_state and not spec("service").startup_phase
    assert spec("nope").readings == () and not spec("nope").service_state


def test_an_unregistered_kind_is_a_config_error_naming_the_kinds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(config_text(tmp_path, tmp_path / "f", 0))
    assert "unknown check kind 'file_size'" in str(exc.value)


def test_a_registered_kind_validates_with_key_paths(registered: None, tmp_path: Path) -> None:
    cfg = parse_config(config_text(tmp_path, tmp_path / "f", 0))
    check = cfg.targets[0].checks[0]
    assert isinstance(check, FileSizeConfig) and check.max_bytes == 10
    broken = config_text(tmp_path, tmp_path / "f", 0).replace("max_bytes", "max_byte")
    with pytest.raises(ConfigError) as exc:
        parse_config(broken)
    problem = exc.value.problems[0]
    assert problem.path == "targets[0].checks[0].max_byte"
    assert "did you mean 'max_bytes'" in problem.message and problem.line == 14


def test_unregistering_restores_the_schema(tmp_path: Path) -> None:
    REGISTRY.register(SPEC)
    REGISTRY.unregister(SPEC.kind)
    with pytest.raises(ConfigError):
        parse_config(config_text(tmp_path, tmp_path / "f", 0))
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(KINDS[0])


async def test_a_registered_kind_runs_and_shows_in_the_api(
    registered: None, tmp_path: Path
) -> None:
    watched = tmp_path / "watched.txt"
    watched.write_bytes(b"12345")
    api_port = free_port()
    guardian = Guardian(parse_config(config_text(tmp_path, watched, api_port)))
    await guardian.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as c:
            for _ in range(100):
                status = (await c.get("/api/status")).json()
                if "files" in json.dumps(status) and "size_bytes" in json.dumps(status):
                    break
                await asyncio.sleep(0.1)
            assert '"size_bytes": 5' in json.dumps(status), status
            health = (await c.get("/api/health")).json()
            assert health["targets"]["files"]["status"] == "ok", health
            metrics = (await c.get("/metrics")).text
            assert "guardian_file_size_bytes 5.0" in metrics, metrics
            assert 'kind="file_size"' in metrics

            watched.write_bytes(b"x" * 50)  # above max_bytes: degraded, by its own class
            for _ in range(100):
                health = (await c.get("/api/health")).json()
                if health["targets"]["files"]["status"] == "degraded":
                    break
                await asyncio.sleep(0.1)
            assert health["targets"]["files"]["status"] == "degraded", health
            for _ in range(100):  # a scrape may be served from the render cache (1 s)
                metrics = (await c.get("/metrics")).text
                if 'reason_class="threshold"' in metrics:
                    break
                await asyncio.sleep(0.1)
            assert 'kind="file_size",reason_class="threshold"' in metrics, metrics
    finally:
        await guardian.stop()
