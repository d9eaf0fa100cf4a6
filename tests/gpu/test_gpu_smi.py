"""The nvidia-smi path end to end, with a fake nvidia-smi executable first on PATH."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.gpu import GpuCheckConfig, create
from guardian.core.clock import SystemClock
from guardian.core.result import Outcome, Status
from guardian.gpu.smi import query_argv

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "gpu"
FAKE = HERE.parent / "fakebin" / "nvidia-smi"

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fake relies on a shebang")

SetSmi = Callable[..., Path]


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SetSmi:
    """Put a fake nvidia-smi first on PATH; the returned function picks what it replays."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "nvidia-smi"
    source = FAKE.read_text(encoding="utf-8").split("\n", 1)[1]
    exe.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_SMI_ARGV_LOG", str(tmp_path / "argv.log"))

    def use(recording: str, exit_code: int = 0, sleep: float = 0) -> Path:
        monkeypatch.setenv("FAKE_SMI_OUTPUT", str(DATA / recording))
        monkeypatch.setenv("FAKE_SMI_EXIT", str(exit_code))
        monkeypatch.setenv("FAKE_SMI_SLEEP", str(sleep))
        return exe

    return use


async def run_gpu(**fields: Any) -> Outcome:
    check = create(GpuCheckConfig(**fields), CheckContext(target="t", clock=SystemClock()))
    try:
        return await check.run()
    finally:
        await check.aclose()


async def test_reads_gpus_through_nvidia_smi(fake_smi: SetSmi, tmp_path: Path) -> None:
    exe = fake_smi("h100_x2.csv")
    out = await run_gpu(backend="nvidia-smi")
    assert out.status is Status.DEGRADED  # GPU 1 reports uncorrected ECC errors
    assert out.values["backend"] == "nvidia-smi"
    assert out.values["gpu_count"] == 2
    assert out.values["gpu1.util_percent"] == 97
    logged = (tmp_path / "argv.log").read_text().splitlines()
    assert logged == ["\t".join(query_argv(str(exe))[1:])]


async def test_driver_error_fails_with_its_words(fake_smi: SetSmi) -> None:
    fake_smi("driver_not_loaded.txt", exit_code=9)
    out = await run_gpu(backend="nvidia-smi")
    assert out.status is Status.FAILED
    assert out.reason == (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running. (exit code 9)"
    )


async def test_lost_gpu_fails(fake_smi: SetSmi) -> None:
    fake_smi("rtx3090_one_lost.csv", exit_code=15)
    out = await run_gpu(backend="nvidia-smi")
    assert out.status is Status.FAILED
    assert out.reason.startswith("Unable to determine the device handle for GPU 0000:41:00.0")
    assert out.values["gpu0.temp_c"] == 63


async def test_no_devices_is_skipped(fake_smi: SetSmi) -> None:
    fake_smi("no_devices.txt", exit_code=6)
    out = await run_gpu(backend="nvidia-smi")
    assert (out.status, out.reason) == (Status.SKIPPED, "no NVIDIA GPU")


async def test_hung_nvidia_smi_is_killed(fake_smi: SetSmi) -> None:
    fake_smi("rtx4090_idle.csv", sleep=30)
    t0 = time.monotonic()
    out = await run_gpu(backend="nvidia-smi", timeout=1.0)
    assert (out.status, out.reason) == (Status.FAILED, "nvidia-smi did not answer within 0.9s")
    assert time.monotonic() - t0 < 3


async def test_auto_falls_back_to_nvidia_smi_without_nvml(
    fake_smi: SetSmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no pynvml importable: NVML is out, the tool on PATH answers
    monkeypatch.setitem(sys.modules, "pynvml", None)
    fake_smi("rtx4090_idle.csv")
    out = await run_gpu()
    assert out.status is Status.OK
    assert out.values["backend"] == "nvidia-smi"


async def test_explicit_path(fake_smi: SetSmi, monkeypatch: pytest.MonkeyPatch) -> None:
    exe = fake_smi("rtx4090_idle.csv")
    monkeypatch.setenv("PATH", "")
    assert (await run_gpu(backend="nvidia-smi")).status is Status.SKIPPED
    out = await run_gpu(backend="nvidia-smi", nvidia_smi_path=str(exe))
    assert out.status is Status.OK


async def test_no_nvidia_stack_at_all_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    for backend in ("auto", "nvml", "nvidia-smi"):
        out = await run_gpu(backend=backend)
        assert (out.status, out.reason) == (Status.SKIPPED, "no NVIDIA GPU"), backend


async def test_an_unkillable_nvidia_smi_is_not_started_again(
    fake_smi: SetSmi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed nvidia-smi that will not die (a wedged driver) blocks the next run cleanly.

    An uninterruptible process cannot be made on purpose, so a live process stands in for
    it in the registry of left-behind runs; while it lives no new nvidia-smi is started.
    """
    import asyncio

    from guardian.gpu import smi

    exe = fake_smi("h100_x2.csv")
    argv_log = Path(os.environ["FAKE_SMI_ARGV_LOG"])
    stand_in = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; time.sleep(60)"
    )
    monkeypatch.setitem(smi._stuck, str(exe), (stand_in, time.monotonic()))
    try:
        out = await run_gpu(backend="nvidia-smi")
        assert out.status is Status.FAILED
        assert f"nvidia-smi (pid {stand_in.pid}) still blocked since" in out.reason
        assert not argv_log.exists()  # nothing was started
    finally:
        stand_in.kill()
        await stand_in.wait()
    assert (await run_gpu(backend="nvidia-smi")).status is not Status.FAILED
    assert str(exe) not in smi._stuck
