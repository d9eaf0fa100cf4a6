"""GPU check via NVML, falling back to nvidia-smi.

Backend ``auto`` tries NVML first (no process, cheapest); when NVML cannot be loaded or
initialised it runs ``nvidia-smi``, whose error text ("couldn't communicate with the
NVIDIA driver", "Driver/library version mismatch") is what an operator recognises.
No NVIDIA stack at all (neither library nor tool), or zero devices → *skipped*
``no NVIDIA GPU``: a CPU-only box is not unhealthy.

Per GPU: temperature at/above ``temp_critical_c`` → failed, at/above ``temp_warn_c`` →
degraded; VRAM use at/above ``vram_warn_percent`` → degraded; with ``memory_errors``,
pending page retirement / row remapping or uncorrected ECC errors → degraded and a
row-remapping failure → failed; any field the driver answered with an error ("GPU is
lost", "[Unknown Error]") → failed. Values are per GPU, ``gpu<index>.<metric>``.

NVML calls cannot be cancelled and hang with a wedged driver: they run in the ``gpu``
:mod:`guardian.support.blocking` pool with a deadline inside the check's timeout, and while one
is still stuck the check fails at once instead of piling threads onto the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, TypeVar

from pydantic import Field, model_validator

from guardian.checks.base import CheckConfigBase, CheckContext
from guardian.core.result import Outcome, Reading, Status, Value, worst
from guardian.gpu import GpuInfo, GpuQueryError, NoGpu, smi
from guardian.gpu.nvml import Nvml, load_pynvml
from guardian.support.blocking import BlockingError, BlockingPool, CallTimedOut, StillBlocked, pool

T = TypeVar("T")
NO_GPU = "no NVIDIA GPU"
DEADLINE_SHARE = 0.9  # of the check's timeout: say what hung before the engine cancels
log = logging.getLogger("guardian.checks.gpu")


class GpuCheckConfig(CheckConfigBase):
    kind: Literal["gpu"] = "gpu"
    # A resource running short is evidence about the machine, not that the service is
    # broken: restarting ComfyUI frees no disk and can kill a running job. Opt in if wanted.
    liveness: bool = Field(
        False, description="failures count towards restarting the target's service"
    )
    interval: float = Field(60.0, gt=0, le=86_400)
    backend: Literal["auto", "nvml", "nvidia-smi"] = "auto"
    vram_warn_percent: float | None = Field(95.0, gt=0, le=100)
    temp_warn_c: float | None = Field(85.0, gt=0, le=200)
    temp_critical_c: float | None = Field(95.0, gt=0, le=200)
    memory_errors: bool = Field(
        True, description="judge pending page retirement/row remapping and uncorrected ECC"
    )
    nvidia_smi_path: str | None = Field(
        None, description="nvidia-smi to run; default: PATH, then the NVSMI folder on Windows"
    )

    @model_validator(mode="after")
    def _warn_below_critical(self) -> GpuCheckConfig:
        warn, crit = self.temp_warn_c, self.temp_critical_c
        if warn is not None and crit is not None and warn > crit:
            raise ValueError(f"temp_warn_c ({warn:g}) is above temp_critical_c ({crit:g})")
        return self


def judge_gpus(
    cfg: GpuCheckConfig, gpus: list[GpuInfo], complaints: list[str], backend: str
) -> Outcome:
    """Thresholds and hardware signals over every GPU; the worst GPU decides."""
    values: dict[str, Value] = {"backend": backend, "gpu_count": len(gpus)}
    problems: list[tuple[Status, str]] = [(Status.FAILED, line) for line in complaints]
    summaries: list[str] = []
    for gpu in gpus:
        p = f"gpu{gpu.index}."
        label = f"GPU {gpu.index} ({gpu.name})"
        vram = gpu.memory_percent
        measured: dict[str, float | int | str | None] = {
            "name": gpu.name,
            "util_percent": gpu.utilization_percent,
            "vram_used_mb": _round(gpu.memory_used_mb),
            "vram_total_mb": _round(gpu.memory_total_mb),
            "vram_percent": _round(vram),
            "temp_c": gpu.temperature_c,
            "power_w": _round(gpu.power_draw_w),
            "power_limit_w": _round(gpu.power_limit_w),
            "ecc_uncorrected": gpu.ecc_uncorrected,
        }
        values.update({p + k: v for k, v in measured.items() if v is not None})
        for error in gpu.errors:
            problems.append((Status.FAILED, f"{label}: {error}"))
        temp = gpu.temperature_c
        if temp is not None and cfg.temp_critical_c is not None and temp >= cfg.temp_critical_c:
            problems.append(
                (Status.FAILED, f"{label}: {temp:g} C, at/above critical {cfg.temp_critical_c:g} C")
            )
        elif temp is not None and cfg.temp_warn_c is not None and temp >= cfg.temp_warn_c:
            problems.append(
                (Status.DEGRADED, f"{label}: {temp:g} C, at/above warning {cfg.temp_warn_c:g} C")
            )
        if vram is not None and cfg.vram_warn_percent is not None and vram >= cfg.vram_warn_percent:
            problems.append(
                (
                    Status.DEGRADED,
                    f"{label}: VRAM {vram:.1f}% used, at/above {cfg.vram_warn_percent:g}%",
                )
            )
        if cfg.memory_errors:
            problems.extend(_memory_error_problems(gpu, label))
        summaries.append(
            f"{label}: "
            + ", ".join(
                part
                for part in (
                    f"{temp:g} C" if temp is not None else "",
                    f"VRAM {vram:.0f}%" if vram is not None else "",
                    f"{gpu.utilization_percent:g}% busy"
                    if gpu.utilization_percent is not None
                    else "",
                )
                if part
            )
        )
    if not problems:
        return Outcome.ok("; ".join(summaries), **values)
    ordered = sorted(problems, key=lambda item: -item[0].severity)
    # The board's own complaints and memory errors are hardware signals; only the
    # temperature and VRAM limits are thresholds.
    limits = all("at/above" in w for _, w in problems)
    return Outcome(worst(s for s, _ in problems), "; ".join(w for _, w in ordered), values).tagged(
        reason_class="threshold" if limits else "other"
    )


def _memory_error_problems(gpu: GpuInfo, label: str) -> list[tuple[Status, str]]:
    found: list[tuple[Status, str]] = []
    if gpu.remapped_rows_failure:
        found.append((Status.FAILED, f"{label}: row remapping failed, the board needs service"))
    if gpu.remapped_rows_pending:
        found.append((Status.DEGRADED, f"{label}: remapped rows pending, reset the GPU"))
    if gpu.retired_pages_pending:
        found.append((Status.DEGRADED, f"{label}: retired pages pending, reset the GPU"))
    if gpu.ecc_uncorrected:
        found.append((Status.DEGRADED, f"{label}: {gpu.ecc_uncorrected} uncorrected ECC errors"))
    return found


def _round(value: float | None) -> float | None:
    return round(value, 1) if value is not None else None


class GpuCheck:
    def __init__(
        self, config: GpuCheckConfig, ctx: CheckContext, workers: BlockingPool | None = None
    ) -> None:
        self.config = config
        self._ctx = ctx
        self._nvml: Nvml | None = None
        self._pool = workers or pool("gpu")
        self._key = f"nvml:{ctx.target}/{config.check_name}:{id(self)}"

    @property
    def _busy(self) -> bool:
        """An NVML call of this check is still running in its thread."""
        return self._pool.blocked_since(self._key) is not None

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except StillBlocked as exc:
            # NVML calls cannot be cancelled; never pile threads onto a wedged driver
            return Outcome.failed(
                f"the previous NVML call has not returned (driver hung?): {exc}"
            ).tagged(reason_class="timeout")
        except CallTimedOut as exc:
            return Outcome.failed(f"{exc} (driver hung?)", backend="nvml").tagged(
                reason_class="timeout"
            )
        except BlockingError as exc:
            return Outcome.failed(str(exc)).tagged(reason_class="timeout")

    async def _run(self) -> Outcome:
        cfg = self.config
        nvml_error: GpuQueryError | None = None
        if cfg.backend in ("auto", "nvml"):
            try:
                nvml = await self._open_nvml()
            except NoGpu:
                nvml = None
            except GpuQueryError as exc:
                nvml, nvml_error = None, exc
            if nvml is not None:
                try:
                    gpus = await self._in_thread(nvml.read)
                except NoGpu:
                    return Outcome.skipped(NO_GPU, backend="nvml")
                except GpuQueryError as exc:
                    await self._reset_nvml()  # a reloaded driver needs a fresh nvmlInit
                    return Outcome.failed(str(exc), backend="nvml")
                return judge_gpus(cfg, gpus, [], "nvml")
            if cfg.backend == "nvml":
                if nvml_error is not None:
                    return Outcome.failed(str(nvml_error), backend="nvml")
                return Outcome.skipped(NO_GPU, backend="nvml")
        executable = smi.find_nvidia_smi(cfg.nvidia_smi_path)
        if nvml_error is not None and executable is not None:
            log.debug(
                "NVML unusable, asking nvidia-smi: %s",
                nvml_error,
                extra={"target": self._ctx.target, "event": "gpu_nvml_fallback"},
            )
        if executable is None:
            if nvml_error is not None:
                return Outcome.failed(str(nvml_error), backend="nvml")
            return Outcome.skipped(NO_GPU)
        try:
            gpus, complaints = await smi.query(executable, cfg.timeout * 0.9)
        except NoGpu:
            return Outcome.skipped(NO_GPU, backend="nvidia-smi")
        except GpuQueryError as exc:
            return Outcome.failed(str(exc), backend="nvidia-smi")
        return judge_gpus(cfg, gpus, complaints, "nvidia-smi")

    async def _open_nvml(self) -> Nvml | None:
        if self._nvml is not None:
            return self._nvml
        module = load_pynvml()
        if module is None:
            return None
        session = Nvml(module)
        await self._in_thread(session.open)
        self._nvml = session
        return session

    async def _reset_nvml(self) -> None:
        session, self._nvml = self._nvml, None
        if session is not None and not self._busy:
            await self._in_thread(session.close)

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        return await self._pool.run(
            fn, self.config.timeout * DEADLINE_SHARE, key=self._key, what="NVML call"
        )

    async def aclose(self) -> None:
        await self._reset_nvml()


MIB = 1024 * 1024  # the readers report MiB

# Per GPU index, in the check's own ``gpu<i>.<field>`` form; the names are the API's.
READINGS = (
    Reading("name", "text", index="gpu", key="gpu{index}.name", doc="model"),
    Reading("util_percent", "percent", index="gpu", key="gpu{index}.util_percent",
            doc="GPU busy fraction, 0..1", metric="guardian_gpu_utilization_ratio",
            scale=0.01),
    Reading("mem_used_mb", "MiB", index="gpu", key="gpu{index}.vram_used_mb",
            doc="GPU memory used", metric="guardian_gpu_memory_used_bytes", scale=MIB),
    Reading("mem_total_mb", "MiB", index="gpu", key="gpu{index}.vram_total_mb",
            doc="GPU memory size", metric="guardian_gpu_memory_total_bytes", scale=MIB),
    Reading("temp_c", "celsius", index="gpu", key="gpu{index}.temp_c",
            doc="GPU temperature", metric="guardian_gpu_temperature_celsius"),
)


def create(cfg: GpuCheckConfig, ctx: CheckContext) -> GpuCheck:
    return GpuCheck(cfg, ctx)
