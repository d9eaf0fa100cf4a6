"""Guardian itself SIGKILLed right after ComfyUI crashed, before it could restore: the next
Guardian restores from the journal in the store. Real processes only: ``guardian run`` as a
child, the simulator as its child, SIGKILL for both; the queue read back through the API
(``guardian queue``'s route, with the token)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from guardian.demo.comfyui.prompts import job_prompt
from guardian.demo.stack import free_port

pytestmark = [pytest.mark.slow,  # a real Guardian SIGKILLed and restarted
              pytest.mark.skipif(os.name == "nt", reason="POSIX signals"),
              pytest.mark.timeout(120)]
TOKEN = "queue-test-token-0123456789"
SECRET = "sk-comfy-org-SECRET-kill-0123456789"


def config(tmp: Path, api_port: int, sim_port: int) -> Path:
    argv = [sys.executable, "-m", "guardian.demo.comfyui.server", "--port", str(sim_port),
            "--device", "cpu", "--exec-time", "0.1"]
    path = tmp / "g.toml"
    path.write_text(f"""
[guardian]
log_dir = {json.dumps(str(tmp / "logs"))}
report_dir = {json.dumps(str(tmp / "reports"))}
state_dir = {json.dumps(str(tmp / "state"))}
jitter = 0
[api]
port = {api_port}
token = "{TOKEN}"
[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = {json.dumps(argv)}
log_file = {json.dumps(str(tmp / "logs" / "comfyui.log"))}
[targets.recovery]
cooldown = 0
min_uptime = 2
[targets.queue]
poll_interval = 0.2
[[targets.checks]]
kind = "comfyui"
url = "http://127.0.0.1:{sim_port}"
interval = 1
timeout = 0.8
""")
    return path


def guardian(cfg: Path, tmp: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    env.pop("GUARDIAN_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "guardian", "run", "--config", str(cfg), "--log-format",
         "json"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"guardian{n}.err", "wb"), start_new_session=True)


def wait(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except (httpx.HTTPError, ValueError, KeyError):
            found = None
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    for left in psutil.process_iter(["cmdline"]):
        if str(tmp_path) in " ".join(left.info["cmdline"] or []):
            left.kill()


def test_guardian_sigkilled_between_the_crash_and_the_restore(
        tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    api_port, sim_port = free_port(), free_port()
    cfg = config(tmp_path, api_port, sim_port)
    api, sim = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{sim_port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    http = httpx.Client(trust_env=False, timeout=5)
    procs.append(guardian(cfg, tmp_path, 1))
    wait(lambda: http.get(sim + "/queue").status_code == 200, "the simulator answers")
    ids = []
    for i, seconds in enumerate((30, 0.05, 0.05, 0.05)):
        prompt_id = str(uuid.uuid4())
        body = {"prompt": job_prompt("sleep", seconds, color=i), "prompt_id": prompt_id,
                "client_id": "user-b", "extra_data": {"auth_token_comfy_org": SECRET}}
        assert http.post(sim + "/prompt", json=body).status_code == 200
        ids.append(prompt_id)

    def journaled() -> list[str]:
        listing = http.get(f"{api}/api/targets/comfyui/queue", headers=auth).json()
        return [j["prompt_id"] for j in listing["journal"]]
    wait(lambda: journaled() == ids, "the journal holds the 4 prompts")
    health = http.get(api + "/api/health").json()
    assert health["queues"]["comfyui"]["journaled"] == 4
    sim_pid = next(p.pid for p in psutil.Process(procs[0].pid).children(recursive=True))
    os.kill(sim_pid, signal.SIGKILL)  # the crash ...
    time.sleep(0.3)  # ... seen by Guardian (min_uptime 2 s: no restore before it dies)
    procs[0].kill()  # ... and Guardian SIGKILLed before it restored anything
    procs[0].wait(timeout=10)
    procs.append(guardian(cfg, tmp_path, 2))
    wait(lambda: http.get(api + "/api/health").json()["queues"]["comfyui"]["restored"] == 4,
         "the new Guardian restored 4 prompts")
    http.post(sim + "/interrupt", json={"prompt_id": ids[0]})
    entries = wait(lambda: {p: http.get(f"{sim}/history/{p}").json()[p] for p in ids},
                   "all 4 finished")
    starts = {p: next(d["timestamp"] for n, d in e["status"]["messages"]
                      if n == "execution_start") for p, e in entries.items()}
    assert sorted(ids, key=lambda p: starts[p]) == ids
    status = http.get(api + "/api/status").json()  # what the status page shows
    (card,) = [t for t in status["targets"] if t["name"] == "comfyui"]
    assert card["queue"]["restored"] == 4 and card["queue"]["quarantined"] == 0
    status = http.get(api + "/api/status").json()  # what the status page shows
    (card,) = [t for t in status["targets"] if t["name"] == "comfyui"]
    assert card["queue"]["restored"] == 4 and card["queue"]["quarantined"] == 0
    listing = http.get(f"{api}/api/targets/comfyui/queue", headers=auth)
    assert SECRET not in listing.text and SECRET not in http.get(api + "/api/health").text
    assert http.get(f"{api}/api/targets/comfyui/queue").status_code == 401
    metrics = http.get(api + "/metrics").text
    assert 'guardian_comfyui_prompts_restored_total{target="comfyui"} 4.0' in metrics
    for file in (tmp_path / "logs").rglob("*"):
        assert SECRET not in file.read_text(errors="replace"), file
