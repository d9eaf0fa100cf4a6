"""Reading the measured values of check results by their documented keys.

Checks report flat ``values`` (``dict[str, scalar]``); per-item readings carry the item in
the key (``free_gb./data``, ``vram_free_mb.0``). The health endpoint and the Prometheus
gauges both read them through these helpers, so the keys are documented once, here. A
missing or non-numeric value yields no reading (never an error): a check that could not
measure something simply leaves the key out.

======== ====================================== ===========================================
kind     value key                              used for
======== ====================================== ===========================================
comfyui  ``online`` (bool)                      ``guardian_comfyui_online``, health
comfyui  ``queue_running``, ``queue_pending``   ``guardian_comfyui_queue_{running,pending}``
comfyui  ``vram_free_mb.<i>``,                  ``guardian_comfyui_vram_{free,total}_bytes``
         ``vram_total_mb.<i>``                  (``device`` label = ``<i>``)
comfyui  ``busy`` (bool), ``running_for_s``,     ``guardian_comfyui_{busy,running_seconds}``,
         ``running_prompt_id`` (str)            health ``comfyui.busy``/``running_*``
comfyui  ``device_name.<i>``,                   health (``cuda`` is true when any device
         ``device_type.<i>``                    type is ``cuda``), ``comfyui_version``
disk     ``free_gb.<path>``,                    ``guardian_disk_{free,total}_bytes{path}``
         ``total_gb.<path>``,
         ``free_percent.<path>``
memory   ``available_mb``, ``total_mb``,        ``guardian_memory_{available,total}_bytes``
         ``used_percent``
gpu      ``util_percent.<i>``                   ``guardian_gpu_utilization_ratio{gpu}``
gpu      ``mem_used_mb.<i>``,                   ``guardian_gpu_memory_{used,total}_bytes``
         ``mem_total_mb.<i>``
gpu      ``temp_c.<i>``                         ``guardian_gpu_temperature_celsius{gpu}``
service  ``state`` (str), ``pid``               health ``services.<target>.state``/``pid``
======== ====================================== ===========================================

The GPU check's own form ``gpu<i>.util_percent``, ``gpu<i>.vram_used_mb``,
``gpu<i>.vram_total_mb``, ``gpu<i>.temp_c`` (and ``gpu<i>.name``) is accepted as well.
MB means MiB (1024 * 1024 bytes) and GB means GiB, as the checks compute them.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from typing import Final, Literal

from guardian.core.result import Value

MIB: Final = 1024 * 1024
GIB: Final = 1024**3

ReasonClass = Literal[
    "timeout",
    "connection",
    "http_status",
    "invalid_response",
    "queue_stuck",
    "threshold",
    "service",
    "other",
]
REASON_CLASSES: Final[tuple[ReasonClass, ...]] = typing.get_args(ReasonClass)

# First match wins; patterns follow the reasons the checks and the engine write.
_REASON_RULES: Final[tuple[tuple[ReasonClass, re.Pattern[str]], ...]] = (
    ("queue_stuck", re.compile(r"queue stuck")),
    ("timeout", re.compile(r"timed? ?out|timeout|has not returned")),
    (
        "connection",
        re.compile(r"connection|connect failed|refused|reset by peer|dns lookup|unreachable|tls"),
    ),
    ("http_status", re.compile(r"\bhttp [1-5]\d\d\b")),
    (
        "invalid_response",
        re.compile(
            r"invalid|expected a json|not an object|not a list|is missing|body does not contain"
            r"|empty body|condition failed|unexpected"
        ),
    ),
    ("threshold", re.compile(r"\bbelow\b|\babove\b|exceed|at/above")),
    ("service", re.compile(r"service|not installed|not running|stopped|exited")),
)


def classify_reason(reason: str) -> ReasonClass:
    """Map a free-text reason to one of :data:`REASON_CLASSES` (bounded label values)."""
    text = reason.lower()
    for name, pattern in _REASON_RULES:
        if pattern.search(text):
            return name
    return "other"


def number(value: Value | object) -> float | None:
    """A finite number, or None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def indexed(values: Mapping[str, Value], name: str) -> dict[str, float]:
    """``{"<suffix>": number}`` for every numeric ``<name>.<suffix>`` key, in key order."""
    prefix = name + "."
    out: dict[str, float] = {}
    for key, value in values.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            n = number(value)
            if n is not None:
                out[key[len(prefix) :]] = n
    return out


def indexed_str(values: Mapping[str, Value], name: str) -> dict[str, str]:
    prefix = name + "."
    return {
        k[len(prefix) :]: v
        for k, v in values.items()
        if k.startswith(prefix) and len(k) > len(prefix) and isinstance(v, str)
    }


_GPU_PREFIXED = re.compile(r"^gpu(\d+)\.(\w+)$")
_GPU_ALIASES: Final = {
    "util_percent": "util_percent",
    "vram_used_mb": "mem_used_mb",
    "vram_total_mb": "mem_total_mb",
    "temp_c": "temp_c",
}
GPU_FIELDS: Final = ("util_percent", "mem_used_mb", "mem_total_mb", "temp_c")


def gpus(values: Mapping[str, Value]) -> dict[str, dict[str, float | str]]:
    """Per GPU index: ``util_percent``, ``mem_used_mb``, ``mem_total_mb``, ``temp_c``, ``name``."""
    out: dict[str, dict[str, float | str]] = {}
    for field in GPU_FIELDS:
        for idx, n in indexed(values, field).items():
            out.setdefault(idx, {})[field] = n
    for key, value in values.items():
        m = _GPU_PREFIXED.match(key)
        if not m:
            continue
        idx, field = m.groups()
        if field == "name" and isinstance(value, str):
            out.setdefault(idx, {})["name"] = value
        elif field in _GPU_ALIASES:
            reading = number(value)
            if reading is not None:
                out.setdefault(idx, {}).setdefault(_GPU_ALIASES[field], reading)
    return dict(sorted(out.items(), key=lambda kv: (len(kv[0]), kv[0])))
