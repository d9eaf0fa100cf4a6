"""Guardian's own process series (``process_*``, ``python_info``), on every platform.

Why not prometheus_client's process collector: it reads ``/proc``, so on Windows, where
most Guardians run, the dashboard's memory and CPU panels stayed empty; and importing the
library for seven numbers cost every start ~1 MiB and a dozen modules (``http.server``,
``wsgiref``, ...). psutil, which Guardian already uses, reads the same figures on Linux,
Windows and macOS. Names, types and help texts are the library's, so existing series,
the dashboard and alert rules carry on. A figure the platform cannot give (open file
descriptors on Windows) is left out, never a failed scrape.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Final

import psutil

# name, type, help: as prometheus_client writes them.
FAMILIES: Final = (
    ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes."),
    ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes."),
    ("process_start_time_seconds", "gauge",
     "Start time of the process since unix epoch in seconds."),
    ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds."),
    ("process_open_fds", "gauge", "Number of open file descriptors."),
    ("process_max_fds", "gauge", "Maximum number of open file descriptors."),
)
_INFO_LABELS: Final = ("implementation", "major", "minor", "patchlevel", "version")
_INFO_VALUES: Final = (
    platform.python_implementation(), *platform.python_version_tuple(), platform.python_version()
)
PYTHON_INFO: Final = (
    "# HELP python_info Python platform information\n# TYPE python_info gauge\n"
    "python_info{"
    + ",".join(f'{k}="{v}"' for k, v in zip(_INFO_LABELS, _INFO_VALUES, strict=True))
    + "} 1.0\n"
)


class ProcessMetrics:
    """The process families of one process (Guardian's own by default), read at scrape."""

    def __init__(self, pid: int | None = None) -> None:
        self._proc = psutil.Process(pid if pid is not None else os.getpid())
        self._started = self._proc.create_time()

    def values(self) -> dict[str, float]:
        """Each family's value now; a figure that cannot be read is absent."""
        proc = self._proc
        out: dict[str, float] = {"process_start_time_seconds": self._started}
        with contextlib.suppress(psutil.Error, OSError):
            mem = proc.memory_info()
            out["process_virtual_memory_bytes"] = mem.vms
            out["process_resident_memory_bytes"] = mem.rss
        with contextlib.suppress(psutil.Error, OSError):
            times = proc.cpu_times()
            out["process_cpu_seconds_total"] = times.user + times.system
        if sys.platform != "win32":  # Windows has handles, not file descriptors
            import resource

            with contextlib.suppress(psutil.Error, OSError):
                out["process_open_fds"] = proc.num_fds()
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if soft != resource.RLIM_INFINITY:
                out["process_max_fds"] = soft
        return out

    def render(self) -> str:
        values = self.values()
        parts = [
            f"# HELP {name} {doc}\n# TYPE {name} {kind}\n{name} {float(values[name])!r}\n"
            for name, kind, doc in FAMILIES
            if name in values
        ]
        parts.append(PYTHON_INFO)
        return "".join(parts)
