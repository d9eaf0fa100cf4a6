"""NVML through ``nvidia-ml-py`` (module ``pynvml``): the driver's own library, no process.

Every call here blocks (and can hang on a wedged GPU), so callers run them in a thread.
Fields a board does not support (``NVMLError_NotSupported``, permissions, a driver too
old to have the function) become ``None``; other NVML errors on a field (``GPU is lost``)
are recorded on the GPU as errors so the check fails with the driver's words.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from guardian.gpu import GpuInfo, GpuQueryError, NoGpu

T = TypeVar("T")
MIB = 1024 * 1024

# NVML_ERROR_* codes meaning "this field is not available here", not "something is wrong"
_ABSENT_CODES = frozenset({3, 4, 13})  # NOT_SUPPORTED, NO_PERMISSION, FUNCTION_NOT_FOUND
_LIBRARY_NOT_FOUND = 12


def load_pynvml() -> ModuleType | None:
    try:
        return importlib.import_module("pynvml")
    except ImportError:
        return None


class Nvml:
    """One NVML session: :meth:`open` once, :meth:`read` per run, :meth:`close` at the end."""

    def __init__(self, module: ModuleType) -> None:
        self.nv: Any = module
        self.opened = False

    def open(self) -> None:
        """``nvmlInit``. :class:`NoGpu` when the library is absent, else GpuQueryError."""
        try:
            self.nv.nvmlInit()
        except self.nv.NVMLError as exc:
            if getattr(exc, "value", None) == _LIBRARY_NOT_FOUND:
                raise NoGpu(f"NVML: {exc}") from exc
            raise GpuQueryError(f"NVML init failed: {exc}") from exc
        self.opened = True

    def close(self) -> None:
        if self.opened:
            self.opened = False
            with contextlib.suppress(self.nv.NVMLError):
                self.nv.nvmlShutdown()

    def read(self) -> list[GpuInfo]:
        """All GPUs now. :class:`NoGpu` for zero devices; GpuQueryError if NVML itself fails."""
        nv = self.nv
        try:
            count = int(nv.nvmlDeviceGetCount())
        except nv.NVMLError as exc:
            raise GpuQueryError(f"NVML: {exc}") from exc
        if count == 0:
            raise NoGpu("NVML reports no devices")
        return [self._read_one(i) for i in range(count)]

    def _read_one(self, index: int) -> GpuInfo:
        nv = self.nv
        errors: list[str] = []
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
        except nv.NVMLError as exc:
            return GpuInfo(index=index, name=f"GPU {index}", errors=(f"handle: {exc}",))

        def field(label: str, call: Callable[[], T]) -> T | None:
            try:
                return call()
            except AttributeError:  # this nvidia-ml-py predates the function
                return None
            except nv.NVMLError as exc:
                if getattr(exc, "value", None) not in _ABSENT_CODES:
                    errors.append(f"{label}: {exc}")
                return None

        name = field("name", lambda: _text(nv.nvmlDeviceGetName(handle)))
        uuid = field("uuid", lambda: _text(nv.nvmlDeviceGetUUID(handle)))
        util = field("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        mem = field("memory", lambda: nv.nvmlDeviceGetMemoryInfo(handle))
        temp = field(
            "temperature", lambda: nv.nvmlDeviceGetTemperature(handle, nv.NVML_TEMPERATURE_GPU)
        )
        power_mw = field("power", lambda: nv.nvmlDeviceGetPowerUsage(handle))
        limit_mw = field("power limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(handle))
        retired = field("retired pages", lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(handle))
        remap = field("remapped rows", lambda: nv.nvmlDeviceGetRemappedRows(handle))
        ecc = field(
            "ECC",
            lambda: nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            ),
        )
        return GpuInfo(
            index=index,
            name=name or f"GPU {index}",
            uuid=uuid,
            utilization_percent=float(util) if util is not None else None,
            memory_used_mb=mem.used / MIB if mem is not None else None,
            memory_total_mb=mem.total / MIB if mem is not None else None,
            temperature_c=float(temp) if temp is not None else None,
            power_draw_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            retired_pages_pending=bool(retired) if retired is not None else None,
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapped_rows_failure=bool(remap[3]) if remap is not None else None,
            ecc_uncorrected=int(ecc) if ecc is not None else None,
            errors=tuple(errors),
        )


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
