"""The simulators as real child processes: the ``listening on`` line, signals, crash faults."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import guardian

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
SRC = Path(guardian.__file__).resolve().parents[1]  # the guardian under test, not another copy
REPO = Path(__file__).resolve().parents[2]


class Sim:
    """A simulator child process whose stdout is read line by line in the background."""

    def __init__(self, module: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
            "PYTHONPATH", "")]), "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, prefix: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r}; saw {self.seen}")

    def listening(self) -> str:
        return self.wait_line("listening on ").removeprefix("listening on ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def spawn() -> Iterator[type[Sim]]:
    started: list[Sim] = []

    class Tracked(Sim):
        def __init__(self, module: str, *args: str) -> None:
            super().__init__(module, *args)
            started.append(self)

    yield Tracked
    for sim in started:
        sim.stop()


COMFY = "guardian.demo.comfyui.server"
PANEL = "guardian.demo.panel"


def test_comfyui_process_listens_and_dies_on_sigkill(spawn: type[Sim]) -> None:
    sim = spawn(COMFY, "--device", "cpu")
    url = sim.listening()
    assert any(line.startswith("To see the GUI go to: http://127.0.0.1:") for line in sim.seen)
    assert httpx.get(url + "/system_stats", trust_env=False).status_code == 200
    sim.proc.send_signal(signal.SIGKILL)
    assert sim.proc.wait(5) == -signal.SIGKILL
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/system_stats", timeout=1, trust_env=False)


def test_sigterm_ends_it_like_comfyui_killed_by_the_signal(spawn: type[Sim]) -> None:
    """Real ComfyUI installs no SIGTERM handler: its parent sees -15, not a clean exit."""
    sim = spawn(COMFY)
    sim.listening()
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(5) == -signal.SIGTERM


def test_head_is_answered_like_a_get_without_the_body(spawn: type[Sim]) -> None:
    """aiohttp answers HEAD on every GET route (the old simulator said 501)."""
    url = spawn(COMFY).listening()
    head = httpx.head(url + "/system_stats", trust_env=False)
    get = httpx.get(url + "/system_stats", trust_env=False)
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and int(head.headers["content-length"]) == len(get.content)
    assert head.headers["content-type"] == get.headers["content-type"]


def test_startup_delay_delays_the_listening_line(spawn: type[Sim]) -> None:
    sim = spawn(COMFY, "--startup-delay", "0.6")
    sim.wait_line("ComfyUI version:")
    sim.listening()
    assert time.monotonic() - sim.started >= 0.6


def test_sigterm_while_booting_ends_it_at_once_like_comfyui(spawn: type[Sim]) -> None:
    sim = spawn(COMFY, "--startup-delay", "60")
    sim.wait_line("ComfyUI version:")
    sent = time.monotonic()
    sim.proc.send_signal(signal.SIGTERM)
    assert sim.proc.wait(20) == -signal.SIGTERM
    assert time.monotonic() - sent < 20  # not the 60 s boot


def _probe(port: int) -> str:
    """What a client sees: refused, silent (accepted, no answer) or the HTTP status."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.settimeout(0.5)
            s.sendall(b"GET /system_stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return f"HTTP {s.recv(16)[9:12].decode()}"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "silent"


def test_boot_refuses_connections_then_answers_like_comfyui(spawn: type[Sim]) -> None:
    """Real ComfyUI's boot (capture ``boot_timeline.json``): refused until the first 200,
    never an accepted-but-silent phase or a "starting" answer."""
    captured = REPO / "tests" / "fixtures" / "comfyui" / "captures" / "boot_timeline.json"
    want = [state for _, state in json.loads(captured.read_text())["transitions"]]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = spawn(COMFY, "--port", str(port), "--startup-delay", "0.8")
    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and seen[-1:] != ["HTTP 200"]:
        state = _probe(port)
        if seen[-1:] != [state]:
            seen.append(state)
        time.sleep(0.02)
    assert seen == want == ["refused", "HTTP 200"]
    assert time.monotonic() - sim.started >= 0.8


def test_crash_fault_via_control_endpoint_exits_1(spawn: type[Sim]) -> None:
    sim = spawn(COMFY)
    url = sim.listening()
    r = httpx.post(url + "/__sim/fault", json={"mode": "crash"}, trust_env=False)
    assert r.status_code == 200
    assert sim.proc.wait(5) == 1
    sim.wait_line("[sim] crash fault")


def test_crash_after_flag(spawn: type[Sim]) -> None:
    sim = spawn(COMFY, "--fault", "crash", "--crash-after", "0.3")
    url = sim.listening()
    assert httpx.get(url + "/queue", trust_env=False).status_code == 200
    assert sim.proc.wait(5) == 1


def test_oom_logs_like_comfyui(spawn: type[Sim]) -> None:
    sim = spawn(COMFY, "--fault", "oom")
    url = sim.listening()
    prompt = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 1}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    r = httpx.post(url + "/prompt", json={"prompt": prompt}, trust_env=False)
    assert r.status_code == 200
    sim.wait_line("got prompt")
    sim.wait_line("torch.OutOfMemoryError: CUDA out of memory.")
    sim.wait_line("Prompt executed in ")


def test_panel_process(spawn: type[Sim]) -> None:
    comfy = spawn(COMFY)
    comfy_url = comfy.listening()
    panel = spawn(PANEL, "--comfyui-url", comfy_url)
    url = panel.listening()
    assert httpx.get(url + "/api/health", trust_env=False).json()["status"] == "healthy"
    comfy.proc.kill()
    comfy.proc.wait(5)
    assert httpx.get(url + "/api/health", trust_env=False).json()["status"] == "degraded"
    panel.proc.send_signal(signal.SIGTERM)
    assert panel.proc.wait(5) == 0


def test_bad_port_fails_fast(spawn: type[Sim]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sim = spawn(COMFY, "--port", str(taken.getsockname()[1]))
        assert sim.proc.wait(5) == 1
        sim.wait_line("error: cannot listen on")
