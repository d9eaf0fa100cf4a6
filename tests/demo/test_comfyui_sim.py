"""The ComfyUI simulator answers like real ComfyUI 0.3.64, route by route, fault by fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from guardian.demo.comfyui.server import ComfyUISim

Load = Callable[[str], Any]
CLIENT_ID = "d44d6e8a-b3a9-4cc9-a74f-54ad578c9945"


def graph(color: int, output: str = "PreviewImage", **out_inputs: Any) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": output, "inputs": {"images": ["1", 0], **out_inputs}},
    }


def submit(client: httpx.Client, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    r = client.post("/prompt", json={"prompt": prompt, "client_id": CLIENT_ID, **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def finished(client: httpx.Client, h: SimpleNamespace, prompt_id: str) -> dict[str, Any]:
    entry: dict[str, Any] = h.wait_for(lambda: client.get(f"/history/{prompt_id}").json())
    return entry


def capture_run(load: Load, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    cap = load(name)
    return cap["post_response"], cap["history"]


# ---------------------------------------------------------------------- routes


def test_system_stats_cpu_matches_capture(client: httpx.Client, captures: Load,
                                          h: SimpleNamespace) -> None:
    body = client.get("/system_stats").json()
    h.same_shape(body, captures("system_stats.json"))
    assert body["devices"][0]["index"] is None and body["devices"][0]["type"] == "cpu"
    assert "--cpu" in body["system"]["argv"]
    h.same_shape(client.get("/api/system_stats").json(), captures("api_system_stats.json"))


def test_system_stats_cuda_device(captures: Load, h: SimpleNamespace) -> None:
    sim = ComfyUISim(device="cuda").start()
    try:
        body = httpx.get(sim.url + "/system_stats", trust_env=False).json()
    finally:
        sim.stop()
    device = body["devices"][0]
    assert list(device) == list(captures("system_stats.json")["devices"][0])
    assert device["name"] == "cuda:0 NVIDIA GeForce RTX 4090 : cudaMallocAsync"
    assert (device["type"], device["index"], device["vram_total"]) == ("cuda", 0, 24 * 1024**3)
    assert body["system"]["pytorch_version"].endswith("+cu128")


def test_static_routes_match_captures(client: httpx.Client, captures: Load) -> None:
    assert client.get("/features").json() == captures("features.json")
    assert client.get("/api/features").json() == captures("api_features.json")
    assert client.get("/embeddings").json() == captures("embeddings.json") == []
    extensions = client.get("/extensions").json()
    assert extensions and all(e.startswith("/extensions/core/") for e in extensions)
    for cls in ("EmptyImage", "PreviewImage", "SaveImage"):
        assert client.get(f"/object_info/{cls}").json() == captures(f"object_info_{cls}.json")
    assert client.get("/object_info/NoSuchNode").json() == {}
    assert client.get("/nowhere").status_code == 404


def test_idle_queue_prompt_and_history(client: httpx.Client, captures: Load) -> None:
    assert client.get("/queue").json() == captures("queue_idle.json")
    assert client.get("/api/queue").json() == captures("queue_idle.json")
    assert client.get("/prompt").json() == captures("prompt_get_idle.json")
    assert client.get("/history?max_items=5").json() == captures("history_max5_empty.json")
    assert client.get("/history/unknown-id").json() == {}


def test_canary_sequence_replays_the_captures(client: httpx.Client, captures: Load,
                                              h: SimpleNamespace) -> None:
    """Fresh run, identical (cached) resubmit, new colour, SaveImage: numbers, cache, files."""
    runs = [
        ("canary_run1_fresh.json", graph(16398821)),
        ("canary_run2_identical_cached.json", graph(16398821)),
        ("canary_run3_new_color.json", graph(9999)),
        ("canary_run4_saveimage.json", graph(13757958, "SaveImage", filename_prefix="canary")),
    ]
    for name, prompt in runs:
        want_post, want_history = capture_run(captures, name)
        post = submit(client, prompt)
        assert h.normalize(post) == h.normalize(want_post)
        got = finished(client, h, post["prompt_id"])
        want = h.normalize(want_history)
        if name == "canary_run3_new_color.json":  # the capture used another colour
            prompt_inputs = want["<id>"]["prompt"][2]["1"]["inputs"]
            prompt_inputs["color"] = 9999
        assert h.normalize(got) == want, name


def test_execution_error_matches_capture(client: httpx.Client, captures: Load,
                                         h: SimpleNamespace) -> None:
    cap = captures("canary_execution_error.json")
    want = next(iter(cap["history"].values()))
    post = submit(client, graph(6303037, "SaveImage", filename_prefix="../../../../tmp/escape"))
    got = next(iter(finished(client, h, post["prompt_id"]).values()))
    h.same_shape(got, want)
    error = got["status"]["messages"][-1][1]
    assert error["exception_message"] == want["status"]["messages"][-1][1]["exception_message"]
    assert (got["status"]["status_str"], got["status"]["completed"]) == ("error", False)


@pytest.mark.parametrize("case", [
    "unknown_class_type", "missing_required_input", "value_out_of_range", "no_output_node",
    "link_to_missing_node", "no_prompt_key", "empty_prompt", "malformed_json", "empty_body",
])
def test_invalid_prompts_answer_exactly_like_comfyui(client: httpx.Client, captures: Load,
                                                     case: str) -> None:
    cap = captures("invalid_prompt_responses.json")[case]
    if "request_raw" in cap:
        r = client.post("/prompt", content=cap["request_raw"].encode())
        assert (r.status_code, r.text) == (cap["status"], cap["body"])
        assert r.headers["content-type"].startswith("text/plain")
    else:
        r = client.post("/prompt", json=cap["request"])
        assert (r.status_code, r.json()) == (cap["status"], cap["body"])
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_history_max_items_keeps_the_last_n_oldest_first(client: httpx.Client, captures: Load,
                                                         h: SimpleNamespace) -> None:
    ids = [submit(client, graph(c))["prompt_id"] for c in range(7)]
    finished(client, h, ids[-1])
    history = client.get("/history?max_items=5").json()
    assert list(history) == ids[2:]
    want = captures("history_max5_after_runs.json")
    assert len(want) == 5
    for entry in history.values():
        h.same_shape(entry, next(iter(want.values())))
    assert [e["prompt"][0] for e in history.values()] == [2, 3, 4, 5, 6]
    assert len(client.get("/api/history").json()) == 7
    assert client.get("/history?max_items=x").status_code == 500


def test_number_restarts_at_zero_per_process(client: httpx.Client) -> None:
    assert submit(client, graph(1))["number"] == 0
    other = ComfyUISim(device="cpu").start()
    try:
        with httpx.Client(base_url=other.url, trust_env=False) as c2:
            assert submit(c2, graph(1))["number"] == 0
    finally:
        other.stop()


# ---------------------------------------------------------------------- faults


def set_fault(client: httpx.Client, **body: Any) -> dict[str, Any]:
    r = client.post("/__sim/fault", json=body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_fault_control_endpoint(client: httpx.Client) -> None:
    assert client.get("/__sim/fault").json()["mode"] == "none"
    assert set_fault(client, mode="slow", delay=0.1)["delay"] == 0.1
    assert client.get("/__sim/fault").json()["mode"] == "slow"
    assert client.post("/__sim/fault", json={"mode": "melt"}).status_code == 400
    assert client.post("/__sim/fault", json={"mode": "slow", "delay": -1}).status_code == 400
    assert client.post("/__sim/fault", json={"mode": "slow", "x": 1}).status_code == 400
    assert client.post("/__sim/fault", content=b"[1]").status_code == 400
    assert client.post("/__sim/fault", content=b"{bad").status_code == 400


def test_busy_queue_stuck_running_and_interrupt(client: httpx.Client, captures: Load,
                                                h: SimpleNamespace) -> None:
    set_fault(client, mode="stuck_running")
    probe = {"extra_data": {"note": "guardian-probe"}}
    ids = [submit(client, graph(c), **probe)["prompt_id"] for c in (1, 2, 3)]
    queue = h.wait_for(lambda: (q := client.get("/queue").json())["queue_running"] and q)
    h.same_shape(queue, captures("queue_busy_1running_2pending.json"))
    assert [i[1] for i in queue["queue_running"]] == ids[:1]
    assert [i[1] for i in queue["queue_pending"]] == ids[1:]
    assert client.get("/prompt").json() == captures("prompt_get_busy.json")
    assert client.get(f"/history/{ids[0]}").json() == captures("history_of_running_prompt.json")
    assert client.post("/interrupt").status_code == 200
    time.sleep(0.1)  # a node stuck in a sleep ignores the interrupt
    assert client.get("/queue").json()["queue_running"][0][1] == ids[0]
    set_fault(client, mode="none")
    entry = finished(client, h, ids[0])
    want = next(iter(captures("history_interrupted.json").values()))
    h.same_shape(entry[ids[0]], want)
    assert entry[ids[0]]["prompt"][3] == {"note": "guardian-probe", "client_id": CLIENT_ID}
    assert entry[ids[0]]["status"]["messages"][-1][0] == "execution_interrupted"
    finished(client, h, ids[2])


def test_pending_idle_keeps_prompts_pending(client: httpx.Client, h: SimpleNamespace) -> None:
    set_fault(client, mode="pending_idle")
    pid = submit(client, graph(5))["prompt_id"]
    time.sleep(0.1)
    queue = client.get("/queue").json()
    assert queue["queue_running"] == [] and [i[1] for i in queue["queue_pending"]] == [pid]
    set_fault(client, mode="none")
    assert finished(client, h, pid)[pid]["status"]["status_str"] == "success"


def test_queue_delete_removes_pending(client: httpx.Client) -> None:
    set_fault(client, mode="pending_idle")
    keep, drop = (submit(client, graph(c))["prompt_id"] for c in (1, 2))
    assert client.post("/queue", json={"delete": [drop]}).status_code == 200
    assert [i[1] for i in client.get("/queue").json()["queue_pending"]] == [keep]


@pytest.mark.parametrize(("mode", "exc_type", "text"), [
    ("canary_fail", "RuntimeError", "simulated node failure"),
    ("oom", "torch.OutOfMemoryError", "CUDA out of memory"),
])
def test_execution_faults(comfy: ComfyUISim, client: httpx.Client, captures: Load,
                          h: SimpleNamespace, mode: str, exc_type: str, text: str) -> None:
    set_fault(client, mode=mode)
    pid = submit(client, graph(77))["prompt_id"]
    entry = finished(client, h, pid)[pid]
    want = next(iter(captures("canary_execution_error.json")["history"].values()))
    assert list(entry) == list(want) and list(entry["status"]) == list(want["status"])
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in want["status"]["messages"]]
    event, data = entry["status"]["messages"][-1]
    assert list(data) == list(want["status"]["messages"][-1][1])
    assert event == "execution_error" and data["exception_type"] == exc_type
    assert text in data["exception_message"]
    assert any(line.startswith(f"{exc_type}: ") for line in comfy.log_lines)
    assert any("Prompt executed in" in line for line in comfy.log_lines)


def test_vram_leak_drops_free_vram_per_call() -> None:
    sim = ComfyUISim(device="cuda").start()
    try:
        with httpx.Client(base_url=sim.url, trust_env=False) as c:
            free0 = c.get("/system_stats").json()["devices"][0]["vram_free"]
            set_fault(c, mode="vram_leak", leak_mb=1000)
            free1 = c.get("/system_stats").json()["devices"][0]["vram_free"]
            free2 = c.get("/system_stats").json()["devices"][0]["vram_free"]
            assert free0 - free1 == free1 - free2 == 1000 * 1024**2
            set_fault(c, mode="vram_leak", leak_mb=100_000)
            assert c.get("/system_stats").json()["devices"][0]["vram_free"] == 0
            set_fault(c)
            assert c.get("/system_stats").json()["devices"][0]["vram_free"] == free0
    finally:
        sim.stop()


def test_error500_fault_spares_the_control_plane(client: httpx.Client, captures: Load) -> None:
    set_fault(client, mode="error500")
    for path in ("/system_stats", "/queue", "/api/prompt"):
        r = client.get(path)
        bodies = captures("invalid_prompt_responses.json")
        assert (r.status_code, r.text) == (500, bodies["malformed_json"]["body"])
    set_fault(client)
    assert client.get("/system_stats").status_code == 200


def test_slow_fault_delays_responses(client: httpx.Client) -> None:
    set_fault(client, mode="slow", delay=0.3)
    t0 = time.monotonic()
    assert client.get("/system_stats").status_code == 200
    assert time.monotonic() - t0 >= 0.3


def test_hang_accepts_but_never_answers_until_cleared(comfy: ComfyUISim,
                                                      client: httpx.Client) -> None:
    set_fault(client, mode="hang")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(comfy.url + "/system_stats", timeout=0.3, trust_env=False)
    answered: list[int] = []

    def late() -> None:
        answered.append(httpx.get(comfy.url + "/queue", timeout=5, trust_env=False).status_code)

    t = threading.Thread(target=late)
    t.start()
    time.sleep(0.2)
    assert answered == []
    set_fault(client)  # like SIGCONT: the waiting request is answered
    t.join(5)
    assert answered == [200]


def test_stop_releases_hung_requests(comfy: ComfyUISim, client: httpx.Client) -> None:
    set_fault(client, mode="hang")
    errors: list[BaseException] = []

    def hung() -> None:
        try:
            httpx.get(comfy.url + "/queue", timeout=10, trust_env=False)
        except httpx.HTTPError as exc:
            errors.append(exc)

    t = threading.Thread(target=hung)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    comfy.stop()
    t.join(5)
    assert not t.is_alive() and errors and time.monotonic() - t0 < 5


def test_crash_in_process_refuses_connections(comfy: ComfyUISim, client: httpx.Client,
                                              h: SimpleNamespace) -> None:
    assert set_fault(client, mode="crash")["mode"] == "crash"
    h.wait_for(lambda: comfy.crashed)
    with pytest.raises(httpx.ConnectError):
        httpx.get(comfy.url + "/system_stats", timeout=1, trust_env=False)


def test_crash_after_delay_in_process(comfy: ComfyUISim, client: httpx.Client,
                                      h: SimpleNamespace) -> None:
    assert set_fault(client, mode="crash", crash_after=0.4)["crash_after"] == 0.4
    assert client.get("/system_stats").status_code == 200  # still alive for a while
    h.wait_for(lambda: comfy.crashed)
    with pytest.raises(httpx.ConnectError):
        httpx.get(comfy.url + "/system_stats", timeout=1, trust_env=False)


def test_clearing_a_pending_crash_cancels_it(comfy: ComfyUISim, client: httpx.Client) -> None:
    set_fault(client, mode="crash", crash_after=0.3)
    set_fault(client, mode="none")
    time.sleep(0.5)
    assert not comfy.crashed and client.get("/queue").status_code == 200


# ---------------------------------------------------------------------- control-route bodies
# ``control_route_bodies.json`` records what a real 0.3.64 answers (and logs) for every odd
# body Guardian or a user could send to the routes the remediation ladder uses.


def _post_cases(load: Load) -> list[str]:
    return [k for k in load("control_route_bodies.json") if k.startswith("POST ")]


@pytest.mark.parametrize("case", [
    "POST /interrupt empty", "POST /interrupt object", "POST /interrupt malformed",
    "POST /interrupt array", "POST /interrupt null", "POST /interrupt prompt_id_unknown",
    "POST /interrupt prompt_id_empty", "POST /free empty", "POST /free object",
    "POST /free malformed", "POST /free array", "POST /free null", "POST /free both flags",
    "POST /queue empty", "POST /queue object", "POST /queue malformed", "POST /queue array",
    "POST /queue null", "POST /history empty", "POST /history object",
    "POST /history malformed", "POST /history array", "POST /history null",
])
def test_control_routes_answer_odd_bodies_like_comfyui(comfy: ComfyUISim, client: httpx.Client,
                                                        captures: Load, case: str) -> None:
    assert case in _post_cases(captures)  # the list above is the capture's, in full
    want = captures("control_route_bodies.json")[case]
    route = case.split()[1]
    seen = len(comfy.log_lines)
    r = client.post(route, content=want["request_raw"].encode())
    assert r.status_code == want["status"], r.text
    assert r.text == (want["body"] if isinstance(want["body"], str) else r.text)
    if "log" in want and want["status"] == 200:  # a 500's aiohttp traceback is not simulated
        assert list(comfy.log_lines)[seen:] == want["log"]


def test_every_captured_post_case_is_tested(captures: Load) -> None:
    params = next(m for m in test_control_routes_answer_odd_bodies_like_comfyui.pytestmark  # type: ignore[attr-defined]
                  if m.name == "parametrize").args[1]
    assert sorted(params) == sorted(_post_cases(captures))


@pytest.mark.slow
@pytest.mark.parametrize(("body", "interrupted"), [
    (b"", True), (b"{bad", True), (b'{"prompt_id": ""}', True), (b"{}", True),
    (b'{"prompt_id": "someone-else"}', False), (b"[]", False), (b"null", False),
])
def test_interrupt_reaches_the_running_prompt_only_when_comfyui_would(
    comfy: ComfyUISim, client: httpx.Client, h: SimpleNamespace, body: bytes, interrupted: bool,
) -> None:
    pid = comfy.submit_job("busy", 3.0)  # polls the interrupt flag like a sampler
    h.wait_for(lambda: client.get("/queue").json()["queue_running"])
    client.post("/interrupt", content=body)
    time.sleep(0.3)
    running = client.get("/queue").json()["queue_running"]
    assert (running == []) is interrupted
    events = [m[0] for m in finished(client, h, pid)[pid]["status"]["messages"]]
    assert (events[-1] == "execution_interrupted") is interrupted


def test_free_sets_truthy_flags_and_refuses_what_comfyui_refuses(
    comfy: ComfyUISim, client: httpx.Client, h: SimpleNamespace,
) -> None:
    assert client.post("/free", content=b"").status_code == 500
    assert client.post("/free", json=[]).status_code == 500
    assert client.post("/free", json={"free_memory": False}).status_code == 200
    time.sleep(0.1)
    assert comfy.frees == 0
    assert client.post("/free", json={"unload_models": 1}).status_code == 200
    h.wait_for(lambda: comfy.frees == 1)


def test_invalid_prompt_logs_like_comfyui(comfy: ComfyUISim, client: httpx.Client,
                                          captures: Load) -> None:
    real = captures("prompt_missing_model.json")["log"]
    seen = len(comfy.log_lines)
    cap = captures("invalid_prompt_responses.json")["missing_required_input"]
    r = client.post("/prompt", json=cap["request"])
    assert r.status_code == 400
    lines = list(comfy.log_lines)[seen:]
    assert lines == ["got prompt", "Failed to validate prompt for output 2:", "* EmptyImage 1:",
                     "  - Required input is missing: color", "Output will be ignored",
                     f"invalid prompt: {cap['body']['error']}"]
    # the same six-line shape as the real log, line by line up to each line's variable part
    assert [line.split(" ")[0] for line in lines] == [line.split(" ")[0] for line in real]
    assert real[-1] == f"invalid prompt: {captures('prompt_missing_model.json')['body']['error']}"


def test_boot_banner_follows_the_real_boot_log(captures: Load) -> None:
    """Each banner line has its real counterpart (same text up to the first ':'), in order."""
    real = [text for _, text in captures("boot_timeline.json")["log"]]
    sim = ComfyUISim(device="cpu")
    sim.boot_banner()
    sim.start().stop()  # "Starting server" and the GUI line come when the port opens

    def key(line: str) -> str:
        return line.split(":", 1)[0] if ":" in line else line

    keys = [key(line) for line in real]
    at = 0
    for line in sim.log_lines:
        assert key(line) in keys[at:], f"{line!r} is not in the real boot log after line {at}"
        at = keys.index(key(line), at) + 1
    assert real[-1] == "To see the GUI go to: http://127.0.0.1:<port>"
