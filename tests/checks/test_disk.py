"""Disk check on real paths, thresholds set around the real free space."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from guardian.checks.disk import GB, DiskCheckConfig, create
from guardian.core.result import Outcome, Status


async def run_disk(ctx: Any, **fields: Any) -> Outcome:
    check = create(DiskCheckConfig(**fields), ctx)
    try:
        return await check.run()
    finally:
        await check.aclose()


def free_gb(path: Path) -> float:
    return shutil.disk_usage(path).free / GB


async def test_ok_with_values(ctx: Any, tmp_path: Path) -> None:
    out = await run_disk(ctx, paths=[str(tmp_path)], warn_gb=0, critical_gb=0)
    assert out.status is Status.OK
    key = f"free_gb.{tmp_path}"
    assert abs(float(out.values[key]) - free_gb(tmp_path)) < 1  # type: ignore[arg-type]
    assert 0 < float(out.values[f"free_percent.{tmp_path}"]) <= 100  # type: ignore[arg-type]
    assert float(out.values[f"total_gb.{tmp_path}"]) > 0  # type: ignore[arg-type]


async def test_gb_thresholds(ctx: Any, tmp_path: Path) -> None:
    above = free_gb(tmp_path) + 1000  # more than is free, whatever happens meanwhile
    degraded = await run_disk(ctx, paths=[str(tmp_path)], warn_gb=above, critical_gb=0)
    assert degraded.status is Status.DEGRADED
    assert degraded.reason.startswith(f"{tmp_path}: ")
    assert f"below warning {above:g} GB" in degraded.reason
    failed = await run_disk(ctx, paths=[str(tmp_path)], warn_gb=above, critical_gb=above)
    assert failed.status is Status.FAILED
    assert f"below critical {above:g} GB" in failed.reason


async def test_percent_thresholds(ctx: Any, tmp_path: Path) -> None:
    common: dict[str, Any] = {"paths": [str(tmp_path)], "warn_gb": None, "critical_gb": None}
    ok = await run_disk(ctx, warn_percent=0, critical_percent=0, **common)
    assert ok.status is Status.OK
    degraded = await run_disk(ctx, warn_percent=100, critical_percent=0, **common)
    assert degraded.status is Status.DEGRADED
    assert "below warning 100%" in degraded.reason
    failed = await run_disk(ctx, warn_percent=100, critical_percent=100, **common)
    assert failed.status is Status.FAILED
    assert "below critical 100%" in failed.reason


async def test_worst_path_wins_and_missing_path_fails(ctx: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "such" / "mount")
    out = await run_disk(ctx, paths=[str(tmp_path), missing], warn_gb=1e9, critical_gb=0)
    assert out.status is Status.FAILED
    # the failure leads, the degradation of the other path is still named
    assert out.reason.startswith(f"{missing}: does not exist; {tmp_path}: ")
    assert f"free_gb.{tmp_path}" in out.values
    assert not any(missing in k for k in out.values)


def test_warn_must_fire_first() -> None:
    with pytest.raises(ValidationError, match="warn_gb"):
        DiskCheckConfig(warn_gb=10, critical_gb=20)
