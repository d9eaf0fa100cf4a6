"""nvidia-smi CSV parsing and GPU judgement on recorded output formats (tests/data/gpu)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardian.checks.gpu import GpuCheckConfig, judge_gpus
from guardian.core.result import Status
from guardian.gpu import GpuQueryError, NoGpu
from guardian.gpu.smi import FIELDS, parse_output, query_argv

DATA = Path(__file__).resolve().parent.parent / "data" / "gpu"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def test_argv_is_a_list_with_the_documented_query() -> None:
    argv = query_argv("nvidia-smi")
    assert argv[0] == "nvidia-smi"
    assert argv[1] == "--query-gpu=" + ",".join(FIELDS)
    assert argv[2] == "--format=csv,noheader,nounits"
    assert DATA.joinpath("README.md").read_text().count(argv[1]) == 1


def test_single_idle_gpu() -> None:
    gpus, complaints = parse_output(recorded("rtx4090_idle.csv"))
    assert complaints == []
    (gpu,) = gpus
    assert gpu.index == 0
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.uuid == "GPU-5c1e3d2a-8f4b-6a7c-9e0d-1b2c3d4e5f60"
    assert (gpu.utilization_percent, gpu.memory_used_mb, gpu.memory_total_mb) == (3, 1536, 24564)
    assert (gpu.temperature_c, gpu.power_draw_w, gpu.power_limit_w) == (41, 27.45, 450)
    assert gpu.retired_pages_pending is None  # [N/A]
    assert gpu.ecc_uncorrected is None
    assert gpu.errors == ()
    assert gpu.memory_percent == pytest.approx(6.25, abs=0.01)


def test_two_gpus() -> None:
    gpus, _ = parse_output(recorded("h100_x2.csv"))
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[1].memory_used_mb == 61440
    assert [g.ecc_uncorrected for g in gpus] == [0, 2]


def test_not_supported_fields_are_absent_not_errors() -> None:
    (gpu,) = parse_output(recorded("gtx1060_not_supported.csv"))[0]
    assert gpu.utilization_percent is None
    assert gpu.power_draw_w is None and gpu.power_limit_w is None
    assert gpu.retired_pages_pending is False
    assert gpu.errors == ()


def test_error_cells_are_errors() -> None:
    (gpu,) = parse_output(recorded("rtx4090_unknown_error.csv"))[0]
    assert gpu.temperature_c is None
    assert gpu.errors == (
        "utilization.gpu [Unknown Error]",
        "temperature.gpu [Unknown Error]",
        "power.draw [Unknown Error]",
    )


def test_a_lost_gpu_next_to_a_healthy_one() -> None:
    gpus, complaints = parse_output(recorded("rtx3090_one_lost.csv"))
    assert len(gpus) == 1
    assert complaints == [
        "Unable to determine the device handle for GPU 0000:41:00.0: Unknown Error"
    ]


def test_driver_errors_and_no_devices() -> None:
    with pytest.raises(GpuQueryError) as err:
        parse_output(recorded("driver_not_loaded.txt"))
    assert str(err.value) == (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running."
    )
    with pytest.raises(GpuQueryError, match="Driver/library version mismatch"):
        parse_output(recorded("driver_mismatch.txt"))
    with pytest.raises(NoGpu):
        parse_output(recorded("no_devices.txt"))
    with pytest.raises(GpuQueryError, match="printed nothing"):
        parse_output("\n")


@pytest.mark.parametrize(
    ("name", "status", "reason_part"),
    [
        ("rtx4090_idle.csv", Status.OK, "GPU 0 (NVIDIA GeForce RTX 4090): 41 C, VRAM 6%, 3% busy"),
        ("gtx1060_not_supported.csv", Status.OK, "52 C, VRAM 7%"),
        ("rtx4090_busy_hot.csv", Status.DEGRADED, "86 C, at/above warning 85 C"),
        ("rtx4090_busy_hot.csv", Status.DEGRADED, "VRAM 97.1% used, at/above 95%"),
        ("h100_x2.csv", Status.DEGRADED, "GPU 1 (NVIDIA H100 80GB HBM3): 2 uncorrected ECC"),
        ("v100_retired_pending.csv", Status.DEGRADED, "retired pages pending, reset the GPU"),
        ("rtx3090_one_lost.csv", Status.FAILED, "Unable to determine the device handle"),
        ("rtx4090_unknown_error.csv", Status.FAILED, "GPU 0 (NVIDIA GeForce RTX 4090): power.draw"),
    ],
)
def test_judgement(name: str, status: Status, reason_part: str) -> None:
    gpus, complaints = parse_output(recorded(name))
    out = judge_gpus(GpuCheckConfig(), gpus, complaints, "nvidia-smi")
    assert out.status is status
    assert reason_part in out.reason


def test_temperature_thresholds_and_values() -> None:
    gpus, _ = parse_output(recorded("h100_x2.csv"))
    cfg = GpuCheckConfig(temp_warn_c=30, temp_critical_c=50, memory_errors=False)
    out = judge_gpus(cfg, gpus, [], "nvidia-smi")
    assert out.status is Status.FAILED
    # the failure leads, the other GPU's degradation follows
    assert out.reason == (
        "GPU 1 (NVIDIA H100 80GB HBM3): 58 C, at/above critical 50 C; "
        "GPU 0 (NVIDIA H100 80GB HBM3): 33 C, at/above warning 30 C"
    )
    assert out.values["gpu_count"] == 2
    assert out.values["gpu1.vram_used_mb"] == 61440
    assert out.values["gpu1.vram_percent"] == 75.3
    assert out.values["gpu0.power_limit_w"] == 700
    assert out.values["gpu1.name"] == "NVIDIA H100 80GB HBM3"
    quiet = GpuCheckConfig(temp_warn_c=None, temp_critical_c=None, memory_errors=False)
    assert judge_gpus(quiet, gpus, [], "nvidia-smi").status is Status.OK
