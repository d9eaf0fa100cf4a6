"""The NVML path with a fake ``pynvml`` module (no GPU here), shaped like nvidia-ml-py."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from guardian.checks.base import CheckContext
from guardian.checks.gpu import GpuCheck, GpuCheckConfig, create
from guardian.core.clock import SystemClock
from guardian.core.result import Status

MIB = 1024 * 1024
CODES = {
    "Uninitialized": 1,
    "NotSupported": 3,
    "NoPermission": 4,
    "DriverNotLoaded": 9,
    "LibraryNotFound": 12,
    "GpuIsLost": 15,
}
TEXT = {
    1: "Uninitialized",
    3: "Not Supported",
    4: "Insufficient Permissions",
    9: "Driver Not Loaded",
    12: "NVML Shared Library Not Found",
    15: "GPU is lost",
}


class NVMLError(Exception):
    """Like pynvml.NVMLError: carries ``value``, prints the driver's text."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return TEXT[self.value]


def fake_pynvml(gpus: list[dict[str, Any]], init_error: int | None = None) -> Any:
    """A module object with the nvidia-ml-py functions the check calls."""
    nv: Any = types.ModuleType("pynvml")
    nv.NVMLError = NVMLError
    for name, code in CODES.items():
        setattr(nv, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
        setattr(nv, f"NVML_ERROR_{name.upper()}", code)
    nv.NVML_TEMPERATURE_GPU = 0
    nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    nv.NVML_VOLATILE_ECC = 0
    nv.calls = {"init": 0, "shutdown": 0}
    nv.gpus = gpus
    nv.gate = None  # a threading.Event that nvmlDeviceGetCount waits on, to simulate a hang

    def init() -> None:
        nv.calls["init"] += 1
        if init_error is not None:
            raise NVMLError(init_error)

    def shutdown() -> None:
        nv.calls["shutdown"] += 1

    def count() -> int:
        if nv.gate is not None:
            nv.gate.wait(10)
        if isinstance(nv.gpus, int):
            raise NVMLError(nv.gpus)
        return len(nv.gpus)

    def getter(key: str) -> Any:
        def get(handle: int, *args: Any) -> Any:
            value = nv.gpus[handle][key]
            if isinstance(value, NVMLError):
                raise value
            return value

        return get

    nv.nvmlInit = init
    nv.nvmlShutdown = shutdown
    nv.nvmlDeviceGetCount = count
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    for fn, key in [
        ("Name", "name"),
        ("UUID", "uuid"),
        ("UtilizationRates", "util"),
        ("MemoryInfo", "mem"),
        ("Temperature", "temp"),
        ("PowerUsage", "power_mw"),
        ("EnforcedPowerLimit", "limit_mw"),
        ("RetiredPagesPendingStatus", "retired"),
        ("RemappedRows", "remap"),
        ("TotalEccErrors", "ecc"),
    ]:
        setattr(nv, f"nvmlDeviceGet{fn}", getter(key))
    return nv


def device(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "NVIDIA GeForce RTX 4090",  # nvidia-ml-py >= 11.5 returns str
        "uuid": "GPU-5c1e3d2a-8f4b-6a7c-9e0d-1b2c3d4e5f60",
        "util": types.SimpleNamespace(gpu=12, memory=5),
        "mem": types.SimpleNamespace(total=24564 * MIB, used=6141 * MIB, free=18423 * MIB),
        "temp": 52,
        "power_mw": 123456,
        "limit_mw": 450000,
        "retired": NVMLError(3),  # Ada: page retirement not supported
        "remap": NVMLError(3),
        "ecc": NVMLError(3),  # GeForce: no ECC
    }
    base.update(over)
    return base


@pytest.fixture
def no_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))


def install(monkeypatch: pytest.MonkeyPatch, nv: Any) -> Any:
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    return nv


@pytest.fixture
def make_check() -> Any:
    def make(**fields: Any) -> GpuCheck:
        return create(GpuCheckConfig(**fields), CheckContext(target="t", clock=SystemClock()))

    return make


async def test_reads_every_gpu(monkeypatch: pytest.MonkeyPatch, make_check: Any) -> None:
    h100 = device(
        name=b"NVIDIA H100 80GB HBM3",  # old nvidia-ml-py returned bytes
        mem=types.SimpleNamespace(total=81559 * MIB, used=40960 * MIB, free=0),
        retired=NVMLError(3),
        remap=(0, 0, 0, 0),
        ecc=0,
    )
    nv = install(monkeypatch, fake_pynvml([device(), h100]))
    check = make_check(backend="nvml")
    out = await check.run()
    assert out.status is Status.OK, out.reason
    assert out.values["backend"] == "nvml"
    assert out.values["gpu_count"] == 2
    assert out.values["gpu0.vram_used_mb"] == 6141
    assert out.values["gpu0.power_w"] == 123.5
    assert out.values["gpu0.power_limit_w"] == 450
    assert out.values["gpu1.name"] == "NVIDIA H100 80GB HBM3"
    assert out.values["gpu1.ecc_uncorrected"] == 0
    assert "gpu0.ecc_uncorrected" not in out.values  # not supported: absent, not an error
    await check.run()
    assert nv.calls["init"] == 1  # one NVML session for the check's life
    await check.aclose()
    assert nv.calls["shutdown"] == 1


@pytest.mark.parametrize(
    ("over", "status", "reason"),
    [
        ({"temp": 97}, Status.FAILED, "97 C, at/above critical 95 C"),
        ({"remap": (0, 3, 0, 1)}, Status.FAILED, "row remapping failed"),
        ({"remap": (0, 1, 1, 0)}, Status.DEGRADED, "remapped rows pending, reset the GPU"),
        ({"retired": 1}, Status.DEGRADED, "retired pages pending"),
        ({"ecc": 4}, Status.DEGRADED, "4 uncorrected ECC errors"),
        (
            {"temp": NVMLError(15)},
            Status.FAILED,
            "GPU 0 (NVIDIA GeForce RTX 4090): temperature: GPU is lost",
        ),
        ({"power_mw": NVMLError(4)}, Status.OK, "52 C"),
    ],
)
async def test_signals(
    monkeypatch: pytest.MonkeyPatch, make_check: Any, over: dict[str, Any], status: Status,
    reason: str,
) -> None:  # fmt: skip
    install(monkeypatch, fake_pynvml([device(**over)]))
    check = make_check()
    out = await check.run()
    await check.aclose()
    assert out.status is status
    assert reason in out.reason


async def test_zero_devices_is_skipped(monkeypatch: pytest.MonkeyPatch, make_check: Any) -> None:
    install(monkeypatch, fake_pynvml([]))
    out = await make_check().run()
    assert (out.status, out.reason) == (Status.SKIPPED, "no NVIDIA GPU")


async def test_library_missing_without_smi_is_skipped(
    monkeypatch: pytest.MonkeyPatch, make_check: Any, no_smi: None
) -> None:
    install(monkeypatch, fake_pynvml([device()], init_error=12))
    for backend in ("auto", "nvml"):
        out = await make_check(backend=backend).run()
        assert (out.status, out.reason) == (Status.SKIPPED, "no NVIDIA GPU")


async def test_driver_not_loaded_fails(
    monkeypatch: pytest.MonkeyPatch, make_check: Any, no_smi: None
) -> None:
    install(monkeypatch, fake_pynvml([device()], init_error=9))
    for backend in ("auto", "nvml"):
        out = await make_check(backend=backend).run()
        assert (out.status, out.reason) == (Status.FAILED, "NVML init failed: Driver Not Loaded")


async def test_read_error_fails_then_reinitialises(
    monkeypatch: pytest.MonkeyPatch, make_check: Any
) -> None:
    nv = install(monkeypatch, fake_pynvml([device()]))
    check = make_check(backend="nvml")
    assert (await check.run()).status is Status.OK
    nv.gpus = 1  # the driver was reloaded underneath us: every call says Uninitialized
    out = await check.run()
    assert (out.status, out.reason) == (Status.FAILED, "NVML: Uninitialized")
    nv.gpus = [device()]
    assert (await check.run()).status is Status.OK
    assert nv.calls == {"init": 2, "shutdown": 1}
    await check.aclose()


@pytest.mark.slow
async def test_hung_nvml_call_is_not_repeated(
    monkeypatch: pytest.MonkeyPatch, make_check: Any
) -> None:
    nv = install(monkeypatch, fake_pynvml([device()]))
    nv.gate = threading.Event()
    check = make_check(backend="nvml")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(check.run(), 0.2)  # what the engine's timeout does
    out = await check.run()
    assert out.status is Status.FAILED
    assert out.reason.startswith("the previous NVML call has not returned (driver hung?)")
    assert "NVML call still blocked since" in out.reason
    nv.gate.set()
    for _ in range(100):  # the stuck thread finishes on its own
        await asyncio.sleep(0.01)
        out = await check.run()
        if out.status is Status.OK:
            break
    assert out.status is Status.OK
    await check.aclose()


async def test_real_pynvml_without_a_gpu(make_check: Any, no_smi: None) -> None:
    """This machine's own nvidia-ml-py where the NVML library is absent: skipped."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    except pynvml.NVMLError:
        pytest.skip("an NVML library is present here")
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here: a real GPU stack is present")
    out = await make_check().run()
    assert (out.status, out.reason) == (Status.SKIPPED, "no NVIDIA GPU")
