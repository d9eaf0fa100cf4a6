"""Alert rules, the scrape config and the Grafana dashboard agree with /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from guardian.api.metrics import METRIC_FAMILIES
from guardian.core.result import Status
from testkit.api import INCIDENTS, client, make_view, result

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "guardian.json"
NAME = re.compile(r"\b(guardian_[a-z0-9_]+)")
SUFFIXES = ("_bucket", "_count", "_sum", "_total")
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool")


def family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


async def live_families() -> set[str]:
    view = make_view(incident_list=INCIDENTS)
    view.state.record(result("panel", "http", Status.FAILED, "HTTP 500"))
    async with client(view) as c:
        text = (await c.get("/metrics")).text
    return {f.name for f in text_string_to_metric_families(text)}


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["query"]["query"])
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def run_promtool(*args: str) -> None:
    proc = subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alert_rules_are_valid_and_their_unit_tests_pass() -> None:
    run_promtool("check", "rules", "alerts.yml")
    run_promtool("test", "rules", "alerts_test.yml")
    run_promtool("check", "config", "prometheus.yml")


def test_file_sd_example_is_well_formed() -> None:
    groups = json.loads((PROMETHEUS / "targets" / "workstations.json").read_text())
    assert groups and all(
        isinstance(g["targets"], list) and all(":" in t for t in g["targets"]) for g in groups
    )


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"instance", "target"} <= set(variables)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(p)
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"


async def test_every_metric_used_exists_and_every_family_is_charted() -> None:
    known = await live_families() | set(METRIC_FAMILIES)
    dash_names = {family(n) for e in dashboard_exprs(json.loads(DASHBOARD.read_text()))
                  for n in NAME.findall(e)}
    alert_names = {family(n) for e in alert_exprs() for n in NAME.findall(e)}
    assert dash_names - known == set(), "dashboard uses unknown metrics"
    assert alert_names - known == set(), "alerts use unknown metrics"
    assert set(METRIC_FAMILIES) - dash_names == set(), "families without a panel"


async def test_each_workstation_answers_the_name_prometheus_scrapes_it_by() -> None:
    """Prometheus sends ``Host: render-01.lan:8787``; the API answers only the names it is
    told (DNS rebinding), so the README's step 1 lists that name in ``allowed_hosts``.
    Without it every scrape is a 421 and the fleet sees only GuardianDown."""
    groups = json.loads((PROMETHEUS / "targets" / "workstations.json").read_text())
    for address in (t for g in groups for t in g["targets"]):
        name = address.rpartition(":")[0]
        for allowed, expected in (([name], 200), ([], 421)):
            view = make_view()
            api = view.config.api.model_copy(
                update={"host": "10.0.0.21", "allowed_hosts": allowed})
            view.config = view.config.model_copy(update={"api": api})
            async with client(view) as c:
                resp = await c.get("/metrics", headers={"Host": address})
            assert resp.status_code == expected, (address, allowed, resp.text[:200])
