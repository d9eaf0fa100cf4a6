"""Guardian's own load never becomes a target's failure: attacks on a real ``guardian run``.

Each case starts Guardian as a process supervising testkit/victim.py (http check every 1 s,
timeout 0.5 s) and attacks its API over 127.0.0.1 with the kit in testkit/attacks.py
(the same code bench/bench_api_flood.py measures with). Figures live in the bench; here
only outcomes are asserted: zero failed checks, zero restarts, refusals with the right
status, bounded memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit.attacks import (
    RunningGuardian,
    flood,
    free_port,
    guardian,
    half_sent,
    hold_idle,
    http_get,
    huge_header,
    parallel_headers,
    still_open,
)
from testkit.procs import SRC

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="rlimits and /proc"),
    pytest.mark.timeout(120),
]


def _no_harm(g: RunningGuardian, pid0: int | None, since: int) -> list[dict[str, object]]:
    results = g.check_results()[since:]
    assert results, "no check ran during the attack"
    failed = [r for r in results if r["status"] != "ok"]
    assert failed == [], f"checks failed under Guardian's own load: {failed}"
    assert g.restarts() == [], f"healthy target restarted: {g.restarts()}"
    assert g.victim_pid() == pid0
    assert g.proc.poll() is None, g.stderr()[-3000:]
    return results


def test_a_more_idle_connections_than_fds_harm_nothing(tmp_path: Path) -> None:
    nofile, idle = 256, 400
    with guardian(tmp_path, nofile=nofile, api="header_timeout = 2") as g:
        pid0, n0 = g.victim_pid(), len(g.check_results())
        held = hold_idle(g.api_port, idle)
        try:
            assert len(held) > nofile  # the kernel queues what Guardian does not accept
            peak = g.open_fds()
            end = time.monotonic() + 5
            while time.monotonic() < end:
                peak = max(peak, g.open_fds())
                time.sleep(0.1)
            assert peak < nofile // 2, f"API took {peak} of {nofile} fds"
            _no_harm(g, pid0, n0)
            # every idle connection is answered 503 or closed by the header timeout (2 s);
            # ones the kernel queued are accepted late, so allow a few more seconds
            silent = still_open(held)[0]
            end = time.monotonic() + 6
            while silent and time.monotonic() < end:
                time.sleep(0.2)
                silent = still_open(held)[0]
            assert silent == 0, f"{silent} idle connections outlived the header timeout"
        finally:
            for s in held:
                s.close()
        assert http_get(g.api_port, "/api/health")[0] == 200  # the API recovers at once
        stderr = g.stderr()
        assert "Traceback" not in stderr
        assert stderr.count("out of system resource") <= 5


def test_b_get_flood_keeps_checks_on_schedule(tmp_path: Path) -> None:
    connections = 200
    api = f"max_connections = {connections + 50}\nmax_concurrency = {connections + 50}"
    with guardian(tmp_path, api=api) as g:
        pid0, n0 = g.victim_pid(), len(g.check_results())
        stats = flood(g.api_port, connections, 5.0, ["/api/health", "/metrics"])
        time.sleep(1.2)
        assert stats.connections == connections and stats.ok > 1000, stats
        results = _no_harm(g, pid0, n0)
        assert len(results) >= 4  # interval 1 s over ~6 s: the schedule held
        assert all(float(r["duration_ms"]) < 500 for r in results)  # type: ignore[arg-type]  # nowhere near timeout


@pytest.fixture(scope="module")
def attacked(tmp_path_factory: pytest.TempPathFactory) -> object:
    with guardian(tmp_path_factory.mktemp("api"), api="header_timeout = 1") as g:
        yield g


def test_c_huge_headers_rejected_fast_without_growing_memory(attacked: RunningGuardian) -> None:
    g = attacked
    rss0 = g.rss_mib()
    status, _seconds = huge_header(g.api_port, 64 << 20)
    assert status.split(" ")[1] in ("431", "400"), status
    assert set(parallel_headers(g.api_port, 8, 32 << 20)) <= {
        "HTTP/1.1 431 Request Header Fields Too Large", "closed"
    }
    assert g.rss_mib() - rss0 < 64, "header attack grew RSS"
    assert http_get(g.api_port, "/livez")[0] == 200


def test_d_half_sent_request_is_closed(attacked: RunningGuardian) -> None:
    what, _after = half_sent(attacked.api_port, limit=15)
    assert what.startswith("HTTP/1.1 408"), what


def test_e_out_of_range_incident_id_is_not_a_server_error(attacked: RunningGuardian) -> None:
    for raw in ("9223372036854775808", "99999999999999999999999", "-1", "0"):
        status, body = http_get(attacked.api_port, f"/api/incidents/{raw}")
        assert status in (404, 422), (raw, status, body)
    assert http_get(attacked.api_port, "/api/incidents/9223372036854775807")[0] == 404


def test_g_foreign_host_header_is_refused(attacked: RunningGuardian) -> None:
    for path in ("/api/health", "/api/status", "/metrics", "/"):
        assert http_get(attacked.api_port, path, host="evil.example")[0] == 421, path
    assert http_get(attacked.api_port, "/api/health", host="evil.example:8787")[0] == 421
    port = attacked.api_port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
        assert http_get(port, "/livez", host=host)[0] == 200, host


def test_f_non_loopback_bind_without_token_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "guardian.toml"
    config.write_text(f"""
[guardian]
state_dir = "{tmp_path / 'state'}"
log_dir = "{tmp_path / 'logs'}"
[api]
host = "0.0.0.0"
port = {free_port()}
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = ["/"]
""")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-m", "guardian", "run", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "api.host = '0.0.0.0' is not a loopback address" in done.stderr
    assert "api.token" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything started
