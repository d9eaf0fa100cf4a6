"""Owned directories, trusted files and no links followed (issue 21, attacks 1-3).

Real ``guardian run`` processes, real files and decoys in temp dirs (never a real system
file): a state dir someone else owns or can write, a forged process record naming a
stranger, links planted where Guardian writes, and a planted runtime file that points
the CLI at an attacker's port. Counted: signals the stranger received, decoy files
changed, requests with the token the attacker saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from guardian.services.process.identity import identify, signal_group, signal_process
from testkit.chaos import (
    GuardianProc,
    cleanup,
    features,
    free_port,
    guardian_config,
    guardian_env,
    http_ok,
    log_events,
    read_pid,
    toml,
    wait_for,
)

pytestmark = [
    pytest.mark.skipif(os.name == "nt", reason="POSIX owners, modes and signals"),
    pytest.mark.timeout(120),
]
NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.name == "nt" or os.geteuid() != 0,
                               reason="giving a file to another user needs root")

# A stranger: counts every catchable signal it gets into a file, in its own session.
STRANGER = """
import os, signal, sys, time
out = sys.argv[1]
def got(sig, _):
    with open(out, "a") as f:
        f.write(f"{sig}\\n")
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCONT, signal.SIGUSR1):
    signal.signal(s, got)
open(out, "a").close()
while True:
    time.sleep(0.1)
"""


@pytest.fixture(autouse=True)
def _supported() -> None:
    why = features()
    if why:
        pytest.skip(why)


def run_guardian(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardian", "run", "--config", str(config),
                           "--log-format", "json"], env=guardian_env(), capture_output=True,
                          text=True, timeout=timeout)


def fingerprint(paths: list[Path]) -> dict[str, str]:
    out = {}
    for p in paths:
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        out[p.name] = f"{digest}:{st.st_mode:o}:{st.st_mtime_ns}"
    return out


def decoys(tmp: Path, n: int) -> list[Path]:
    etc = tmp / "decoy-etc"
    etc.mkdir()
    files = []
    for i in range(n):
        f = etc / f"decoy{i}"
        f.write_text(f"decoy {i}: must never change\n")
        f.chmod(0o644)
        files.append(f)
    return files


@ROOT_ONLY
@pytest.mark.parametrize("attack", ["foreign_owner", "world_writable", "foreign_record"])
def test_untrusted_state_refuses_to_start_and_names_path_and_fix(tmp_path: Path,
                                                                 attack: str) -> None:
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    if attack == "foreign_owner":
        os.chown(state, NOBODY, NOBODY)
        bad, fix = state, f"chown root {state}"
    elif attack == "world_writable":
        state.chmod(0o777)
        bad, fix = state, f"chmod go-w {state}"
    else:
        record = state / "process-victim.json"
        record.write_text("{}")
        os.chown(record, NOBODY, NOBODY)
        bad, fix = record, f"chown root {record}"
    result = run_guardian(config)
    assert result.returncode == 5  # could not start
    assert "refusing to start" in result.stderr
    assert str(bad) in result.stderr and fix in result.stderr, result.stderr
    assert read_pid(pidfile) is None and not http_ok(port)  # nothing started
    assert not (tmp_path / "logs").exists()  # nothing written


def test_forged_record_never_makes_guardian_signal_a_stranger(tmp_path: Path) -> None:
    signals = tmp_path / "stranger.signals"
    stranger = subprocess.Popen([sys.executable, "-c", STRANGER, str(signals)],
                                start_new_session=True)
    try:
        assert wait_for(signals.exists, 10)
        ident = identify(stranger.pid)
        assert ident is not None and ident.pgid == stranger.pid
        port, pidfile = free_port(), tmp_path / "victim.pid"
        config = guardian_config(tmp_path, port, pidfile)
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        # Everything a record can say about the stranger, all true (pid, start, group) and
        # a token; only the stranger does not carry that token.
        forged = {"token": "victim:0123456789abcdef", "intent_time": ident.create_time - 1,
                  "argv": [], "starts": 1, **ident.to_json()}
        record = state / "process-victim.json"
        record.write_text(json.dumps(forged))
        record.chmod(0o600)
        guardian: GuardianProc | None = None
        with cleanup(str(pidfile), lambda: guardian):  # the victim's marker, not the stranger's
            guardian = GuardianProc(config, tmp_path / "g.err")
            assert wait_for(lambda: http_ok(port), 30), guardian.stderr()
            events = log_events(tmp_path / "logs" / "guardian.log")
            outcome = [e for e in events if e.get("event") == "start_outcome"]
            assert outcome and outcome[0]["outcome"] == "started"
            assert outcome[0]["pid"] != stranger.pid
            assert guardian.stop() == 0  # on_guardian_stop = "stop": stops *its* child
        time.sleep(0.3)  # a signal in flight would have landed by now
        assert stranger.poll() is None
        assert signals.read_text() == ""  # signals sent to the stranger: 0
    finally:
        stranger.kill()
        stranger.wait()


def test_pid_1_and_guardians_own_group_are_never_signalled() -> None:
    """``killpg(1)`` is ``kill(-1)``: everything. Signal 0 checks without sending."""
    init = identify(1)
    if init is None:
        pytest.skip("pid 1 not visible here")
    forged_group = type(init)(1, init.create_time, 1, init.start_ticks)
    assert not signal_group(forged_group, 0)
    assert not signal_process(init, 0)
    me = identify(os.getpid())
    assert me is not None
    assert not signal_process(me, 0)
    assert not signal_group(type(me)(os.getpgrp(), me.create_time, os.getpgrp(),
                                     me.start_ticks), 0)


@pytest.mark.parametrize("planted", ["guardian.runtime.json", "process-victim.json",
                                     "guardian.db.lock", "guardian.db"])
def test_link_in_state_dir_refused_and_decoy_untouched(tmp_path: Path, planted: str) -> None:
    (decoy,) = decoys(tmp_path, 1)
    before = fingerprint([decoy])
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / planted).symlink_to(decoy)
    result = run_guardian(config)
    assert result.returncode == 5  # could not start
    assert f"{state / planted}: is a symbolic link" in result.stderr, result.stderr
    assert fingerprint([decoy]) == before
    assert read_pid(pidfile) is None


def test_links_in_log_and_child_log_are_not_followed(tmp_path: Path) -> None:
    files = decoys(tmp_path, 3)
    before = fingerprint(files)
    port, pidfile = free_port(), tmp_path / "victim.pid"
    config = guardian_config(tmp_path, port, pidfile)
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o750)
    (logs / "guardian.log").symlink_to(files[0])
    (logs / "guardian.log.1").symlink_to(files[1])  # rotation renames links, never writes
    (tmp_path / "victim.out").symlink_to(files[2])  # the supervised child's log
    guardian: GuardianProc | None = None
    with cleanup(str(tmp_path), lambda: guardian):
        guardian = GuardianProc(config, tmp_path / "g.err")
        assert wait_for(lambda: "cannot write log file" in guardian.stderr(), 30)
        assert "Too many levels of symbolic links" in guardian.stderr()
        time.sleep(2)  # several check runs and start attempts
        assert guardian.stop() == 0
    assert fingerprint(files) == before  # decoy files changed: 0


@ROOT_ONLY
def test_planted_runtime_file_never_gets_the_token(tmp_path: Path) -> None:
    """An attacker (another uid) listens on a port and plants runtime files naming it;
    ``guardian status`` must send the token nowhere but a real Guardian."""
    shared = Path(tempfile.mkdtemp(prefix="guardian-attacker-"))  # reachable by the attacker
    shared.chmod(0o755)
    seen = shared / "attacker.log"
    seen.touch()
    os.chown(seen, NOBODY, NOBODY)
    attacker_src = (
        "import socket, sys\n"
        "s = socket.create_server(('127.0.0.1', 0)); print(s.getsockname()[1], flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); data = c.recv(65536)\n"
        "    open(sys.argv[1], 'ab').write(data); c.sendall(b'HTTP/1.0 200 OK\\r\\n"
        "Content-Type: application/json\\r\\n\\r\\n{\"status\": \"healthy\", \"targets\": []}');"
        " c.close()\n"
    )
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no system python3 another user can run for the attacker")
    attacker = subprocess.Popen([python, "-c", attacker_src, str(seen)], user=NOBODY,
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert attacker.stdout is not None
        evil_port = int(attacker.stdout.readline())
        token = "s3cret-token-never-leaves"
        state = tmp_path / "state"
        state.mkdir(mode=0o1777)  # a sticky shared dir, like /tmp: others can plant files
        config = tmp_path / "g.toml"
        config.write_text(f"""
[guardian]
log_dir = {toml(tmp_path / "logs")}
state_dir = {toml(state)}
report_dir = {toml(tmp_path / "reports")}
[api]
port = {free_port()}
token = "{token}"
[[targets]]
name = "disk"
[[targets.checks]]
kind = "disk"
paths = [{toml(tmp_path)}]
""")
        config.chmod(0o600)
        attacker_proc = psutil.Process(attacker.pid)
        xdg = tmp_path / "xdg"
        instances = xdg / "guardian" / "instances"
        instances.mkdir(parents=True)
        planted = {"pid": attacker.pid, "process_started": attacker_proc.create_time(),
                   "started_at": "2026-01-01T00:00:00+00:00", "config_path": str(config),
                   "store_path": str(state / "guardian.db"),
                   "api_url": f"http://127.0.0.1:{evil_port}"}
        env = {**guardian_env(), "XDG_STATE_HOME": str(xdg)}
        cases = []
        # 1: owned by the attacker, beside the store and in the instances dir
        for where in (state / "guardian.runtime.json", instances / "guardian-1.json"):
            where.write_text(json.dumps(planted))
            os.chown(where, NOBODY, NOBODY)
            cases.append(where)
        # 2: a root-owned file (a copy, say) whose pid is the attacker's process
        root_copy = instances / "guardian-2.json"
        root_copy.write_text(json.dumps(planted))
        root_copy.chmod(0o600)
        # 3: a root-owned file naming a root process that does not listen on the port
        me = dict(planted, pid=os.getpid(), process_started=psutil.Process().create_time())
        (instances / "guardian-3.json").write_text(json.dumps(me))
        (instances / "guardian-3.json").chmod(0o600)
        for args in (["status", "--config", str(config)], ["status"],
                     ["restart", "disk", "--config", str(config)]):
            subprocess.run([sys.executable, "-m", "guardian", *args], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        assert token.encode() not in seen.read_bytes()  # requests with the token: 0
        assert seen.read_bytes() == b""  # not even a tokenless request reached it
        assert all(p.exists() for p in cases)  # a foreign file is ignored, not removed
        with socket.create_connection(("127.0.0.1", evil_port), timeout=5) as probe:
            probe.sendall(b"PROBE")  # control: the attacker does record what reaches it
        assert wait_for(lambda: seen.read_bytes() == b"PROBE", 10)
    finally:
        attacker.send_signal(signal.SIGKILL)
        attacker.wait()
        shutil.rmtree(shared, ignore_errors=True)
