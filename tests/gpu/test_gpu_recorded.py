"""``nvidia-smi`` parsing on real outputs pasted in public issues.

Nobody pastes Guardian's exact ``--query-gpu`` list, so each capture (source and query in
tests/data/recorded/SOURCES.md) is mapped onto Guardian's columns by field name: missing
fields become ``[N/A]``, which nvidia-smi prints for "no value", and units are stripped
only from captures taken without ``nounits``. The cells themselves (numbers, ``[N/A]``,
``[Not Supported]``, bare ``N/A``, names) are the real ones.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from guardian.gpu.smi import FIELDS, parse_output

REC = Path(__file__).resolve().parent.parent / "data" / "recorded" / "gpu"
ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid"}
UNIT = re.compile(r"\s+(%|MiB|W|MHz)$")


def adapt(rows: list[list[str]], fields: list[str], *, units: bool) -> str:
    """Recorded rows (in ``fields`` order) as Guardian's query would have printed them."""
    names = [ALIASES.get(f, re.sub(r"\s*\[.*\]$", "", f)) for f in fields]
    out = []
    for i, row in enumerate(rows):
        cells = dict(zip(names, (c.strip() for c in row), strict=True))
        if units:
            cells = {k: UNIT.sub("", v) for k, v in cells.items()}
        cells.setdefault("index", str(i))
        cells.setdefault("name", "[N/A]")
        out.append(", ".join(cells.get(f, "[N/A]") for f in FIELDS))
    return "\n".join(out) + "\n"


def recorded(name: str, fields: list[str] | None = None, *, units: bool = False) -> str:
    rows = list(csv.reader((REC / name).read_text(encoding="utf-8").splitlines()))
    if fields is None:  # the capture has its own header row
        fields, rows = [f.strip() for f in rows[0]], rows[1:]
    return adapt(rows, fields, units=units)


I3 = (
    "memory.total,memory.free,memory.used,temperature.gpu,fan.speed,"
    "utilization.gpu,utilization.memory"
)


@pytest.mark.parametrize("name", ["i3pystatus_776_na.csv", "i3pystatus_776_not_supported.csv"])
def test_absent_fan_is_no_value_on_old_and_new_drivers(name):
    (gpu,), complaints = parse_output(recorded(name, I3.split(",")))
    assert complaints == []
    assert (gpu.memory_total_mb, gpu.memory_used_mb, gpu.temperature_c) == (2004, 0, 44)
    assert gpu.utilization_percent == 0
    assert gpu.errors == ()  # [N/A] and [Not Supported] mean "no sensor", not a fault


def test_consumer_board_with_most_sensors_not_supported():
    fields = [
        "gpu_name",
        "utilization.gpu",
        "utilization.memory",
        "temperature.gpu",
        "power.draw",
        "power.limit",
        "fan.speed",
        "pstate",
        "clocks.current.graphics",
        "clocks.current.memory",
        "power.max_limit",
        "power.default_limit",
    ]
    (gpu,), _ = parse_output(recorded("megaminer_235_gtx770.csv", fields, units=True))
    assert gpu.name == "GeForce GTX 770"
    assert gpu.temperature_c == 52
    assert gpu.utilization_percent is None
    assert gpu.power_draw_w is None and gpu.power_limit_w is None
    assert gpu.errors == ()


def test_csv_with_header_and_units():
    (gpu,), _ = parse_output(recorded("smc_57_rtx2060_header_units.csv", units=True))
    assert gpu.name == "GeForce RTX 2060"
    assert (gpu.utilization_percent, gpu.memory_used_mb, gpu.memory_total_mb) == (20, 682, 5934)
    assert gpu.temperature_c == 36
    assert gpu.memory_percent == pytest.approx(100 * 682 / 5934)


def test_two_gpus_in_order():
    gpus, _ = parse_output(recorded("bpytop_26_two_gpus_header_units.csv", units=True))
    assert [g.index for g in gpus] == [0, 1]
    assert [g.name for g in gpus] == ["GeForce GTX 1080 Ti", "GeForce GTX 1060 6GB"]
    assert gpus[0].power_draw_w == pytest.approx(106.56)
    assert (gpus[1].memory_used_mb, gpus[1].utilization_percent) == (4, 0)


def test_full_row_with_uuid_and_bare_na():
    fields = [
        "power.limit",
        "power.min_limit",
        "power.max_limit",
        "memory.total",
        "vbios_version",
        "driver_version",
        "name",
        "gpu_uuid",
        "power.draw",
        "temperature.gpu",
        "temperature.memory",
        "clocks.current.graphics",
        "clocks.sm",
        "clocks.mem",
        "utilization.gpu",
        "utilization.memory",
        "fan.speed",
        "pcie.link.width.current",
        "pstate",
    ]
    (gpu,), _ = parse_output(recorded("gpuutils_83_rtx2080.csv", fields))
    assert gpu.uuid == "GPU-22b2c6ac-2d49-4863-197c-9c469071178a"
    assert (gpu.power_draw_w, gpu.power_limit_w) == (pytest.approx(176.98), 200.0)  # type: ignore[comparison-overlap]
    assert (gpu.temperature_c, gpu.utilization_percent, gpu.memory_total_mb) == (45, 86, 7979)
    assert gpu.errors == ()
