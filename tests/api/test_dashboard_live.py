"""The Grafana dashboard on the demo: every panel's query, evaluated by a real Prometheus
scraping a running ``guardian demo``, returns data with a finite value (the loop-lag panel
included: its histogram records while checks run). GPU panels are the one exception, and
only on a machine without an NVIDIA GPU, where the GPU check says so.

Skipped without a ``prometheus`` binary.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from guardian.demo.stack import free_port

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "guardian.json"
PROMETHEUS = shutil.which("prometheus")
pytestmark = [pytest.mark.slow,  # a real Prometheus scraping the demo
              pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary")]
DEADLINE = 60.0


def _queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$instance", ".*").replace("$target", ".*"))
            for p in dash["panels"] for t in p.get("targets", []) if t.get("refId", "A") == "A"]


def test_every_dashboard_panel_has_data_on_the_demo(tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    port, prom_port = free_port(), free_port()
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("GUARDIAN_CONFIG", None)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "guardian", "static_configs": [
                  {"targets": [f"127.0.0.1:{port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    with (tmp_path / "demo.log").open("wb") as demo_log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "guardian", "demo", "--dir", str(tmp_path / "demo"),
             "--api-port", str(port), "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=demo_log, env=env)
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            empty: dict[str, str] = {}
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                time.sleep(1)
                empty = {}
                for title, expr in _queries():
                    try:
                        body = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                                         params={"query": expr}, timeout=5).json()
                    except httpx.HTTPError as e:
                        empty[title] = str(e)
                        continue
                    values = [float(r["value"][1]) for r in body["data"]["result"]]
                    # NaN is fine beside real figures: a quantile of a check that has not
                    # run within the rate window (the 5-minute canary) has none yet.
                    if not any(math.isfinite(v) for v in values):
                        empty[title] = f"{expr} -> {values}"
                if set(empty) <= {t for t in empty if t.startswith("GPU")}:
                    break
            gpu = [t for t in empty if t.startswith("GPU")]
            if gpu:  # only where this machine has no NVIDIA GPU, as the demo's check says
                status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).json()
                reasons = [c["reason"] for t in status["targets"] for c in t["checks"]
                           if c["kind"] == "gpu"]
                assert reasons == ["no NVIDIA GPU"], (gpu, reasons)
            assert {t: e for t, e in empty.items() if t not in gpu} == {}, (
                (tmp_path / "demo.log").read_text()[-2000:])
        finally:
            demo.terminate()
            prom.terminate()
            demo.wait(20)
            prom.wait(20)
