"""``guardian run`` serves /metrics without prometheus_client (a test-only dependency)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys
sys.modules["prometheus_client"] = None  # any import of it now raises ImportError
sys.path.insert(0, {helpers!r})
import guardian.cli.main, guardian.runtime, guardian.api.app  # the run path
from testkit.api import INCIDENTS, make_view
from guardian.api.metrics import Metrics
text = Metrics(make_view(incident_list=INCIDENTS)).text()
assert "guardian_disk_free_bytes{{path=" in text, text
print("ok")
"""


def test_the_run_path_and_a_scrape_need_no_prometheus_client() -> None:
    helpers = str(Path(__file__).parents[1])  # tests/: where testkit lives
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(helpers=helpers)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
