"""Fleet alerting, end to end with the real engines: two running Guardians (workstations
ws-a and ws-b), the real Prometheus scraping them and evaluating the shipped alert rules,
the real Alertmanager with the shipped routing tree, and a webhook and an SMTP receiver on
127.0.0.1 that record what arrives.

Only the timings are shortened (rule ``for:``, group waits) and the receivers' addresses
pointed here; the expressions, labels, routes and inhibitions are the shipped ones.
Skipped cleanly where prometheus, prometheus-alertmanager or amtool are missing
(``.ci/run`` installs them).
"""

from __future__ import annotations

import email
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from guardian.demo.stack import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
AM_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("alertmanager") or shutil.which("prometheus-alertmanager")
AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(AMTOOL is None, reason="no amtool")
needs_engines = pytest.mark.skipif(
    PROMETHEUS is None or ALERTMANAGER is None or AMTOOL is None,
    reason="needs prometheus, prometheus-alertmanager and amtool")
DEADLINE = 90.0


def amtool(*args: str) -> str:
    assert AMTOOL is not None
    proc = subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_amtool
def test_the_shipped_config_passes_amtool_and_routes_as_documented() -> None:
    assert "SUCCESS" in amtool("check-config", str(AM_CONFIG))

    def route(*labels: str) -> str:
        return amtool("config", "routes", "test", f"--config.file={AM_CONFIG}", *labels).strip()

    assert route("workstation=render-01", "alertname=GuardianStackDown",
                 "severity=critical") == "on-call"
    assert route("workstation=render-01", "alertname=DiskSpaceLow",
                 "severity=warning") == "team-chat"
    assert route("workstation=render-01", "alertname=GuardianDown") == "on-call"


# --------------------------------------------------------------------------- receivers


class Webhook:
    """Alertmanager's webhook receiver: every POSTed JSON body, in arrival order."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/guardian-alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """A plain SMTP server (no TLS, no AUTH) keeping every message it is given."""

    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []
        kept = self.messages

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                def say(line: str) -> None:
                    self.wfile.write(line.encode() + b"\r\n")

                say("220 sink ready")
                while True:
                    line = self.rfile.readline().decode(errors="replace").strip()
                    if not line:
                        return
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        say("250-sink")
                        say("250 8BITMIME")
                    elif verb == "DATA":
                        say("354 go on")
                        data = []
                        while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                        kept.append(email.message_from_bytes(b"".join(data)))
                        say("250 kept")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:
                        say("250 ok")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- the stack


def guardian_config(tmp: Path, port: int, *, whole_stack_down: bool) -> Path:
    closed = free_port()  # nothing listens there: the check fails at once
    second = (f'[[targets]]\nname = "comfyui"\n[[targets.checks]]\nkind = "http"\n'
              f'url = "http://127.0.0.1:{closed}/"\ninterval = 0.5\ntimeout = 0.3\n'
              if whole_stack_down else
              f'[[targets]]\nname = "disk"\n[[targets.checks]]\nkind = "disk"\n'
              f'paths = ["{tmp}"]\nwarn_gb = 0\ncritical_gb = 0\ninterval = 0.5\ntimeout = 0.4\n')
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = "{tmp / 'logs'}"
state_dir = "{tmp / 'state'}"
report_dir = "{tmp / 'reports'}"
[api]
port = {port}
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{closed}/api/health"
interval = 0.5
timeout = 0.3
{second}""")
    return path


def prometheus_config(tmp: Path, guardians: dict[str, int], am_port: int) -> Path:
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            rule["for"] = "0s"  # the shipped expressions, fired at once
    (tmp / "alerts.yml").write_text(yaml.safe_dump(rules))
    job = shipped["scrape_configs"][0]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{
            "job_name": job["job_name"], "metrics_path": job["metrics_path"],
            "scrape_timeout": "1s",
            # ws-a names itself; ws-b gets its workstation from the shipped relabelling
            "static_configs": [
                {"targets": [f"127.0.0.1:{guardians['ws-a']}"],
                 "labels": {"workstation": "ws-a"}},
                {"targets": [f"localhost:{guardians['ws-b']}"]},
            ],
            "relabel_configs": job["relabel_configs"],
        }],
    }
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def alertmanager_config(tmp: Path, webhook: Webhook, smtp: SmtpSink) -> Path:
    config = yaml.safe_load(AM_CONFIG.read_text())
    config["global"].update({"smtp_smarthost": smtp.address, "smtp_require_tls": False})
    for key in ("smtp_auth_username", "smtp_auth_password_file"):
        config["global"].pop(key)
    config["route"].update({"group_wait": "1s", "group_interval": "1s"})
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook.url
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           cwd=self.tmp))

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}"
                         for f in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    assert PROMETHEUS and ALERTMANAGER
    webhook, smtp = Webhook(), SmtpSink()
    procs = Processes(tmp_path)
    ports = {"ws-a": free_port(), "ws-b": free_port()}
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    env.pop("GUARDIAN_CONFIG", None)
    for ws, port in ports.items():
        cfg = guardian_config(tmp_path / ws, port, whole_stack_down=ws == "ws-b")
        procs.start(ws, [sys.executable, "-m", "guardian", "run", "--config", str(cfg),
                         "--log-format", "json"], env)
    am_port, prom_port = free_port(), free_port()
    procs.start("alertmanager", [
        ALERTMANAGER, f"--config.file={alertmanager_config(tmp_path, webhook, smtp)}",
        f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",  # no gossip port: one Alertmanager, loopback only
    ])
    procs.start("prometheus", [
        PROMETHEUS, f"--config.file={prometheus_config(tmp_path, ports, am_port)}",
        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
        f"--web.listen-address=127.0.0.1:{prom_port}", "--rules.alert.resend-delay=1s",
    ])
    try:
        yield {"webhook": webhook, "smtp": smtp, "am": f"http://127.0.0.1:{am_port}",
               "ports": ports, "procs": procs}
    finally:
        procs.stop()
        webhook.close()
        smtp.close()


def _wait(what: str, found: Any, procs: Processes) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"{what} within {DEADLINE:g} s\n{procs.logs()}")


@needs_engines
@pytest.mark.slow
def test_a_fleet_alert_reaches_a_person_grouped_inhibited_and_silenced(
        stack: dict[str, Any]) -> None:
    webhook: Webhook = stack["webhook"]
    smtp: SmtpSink = stack["smtp"]
    procs: Processes = stack["procs"]

    def group(ws: str, alertname: str) -> dict[str, Any] | None:
        return next((b for b in webhook.bodies if b["status"] == "firing"
                     and b["groupLabels"] == {"workstation": ws, "alertname": alertname}), None)

    # ws-a: one critical target down, the rest up: the per-target alert, to on-call.
    body = _wait("ws-a's GuardianStackDown at the webhook",
                 lambda: group("ws-a", "GuardianStackDown"), procs)
    assert body["receiver"] == "on-call" and body["version"] == "4"
    assert body["commonLabels"]["target"] == "panel"
    assert body["commonLabels"]["severity"] == "critical"
    (alert,) = body["alerts"]
    port_a = stack["ports"]["ws-a"]
    assert alert["annotations"]["summary"] == f"panel on 127.0.0.1:{port_a} is down"
    # ...and by e-mail, one message per workstation and alert.
    mail = _wait("the e-mail", lambda: next(
        (m for m in smtp.messages if "ws-a: GuardianStackDown" in str(m["Subject"])), None),
        procs)
    assert mail["Subject"] == "[FIRING] ws-a: GuardianStackDown"
    assert mail["To"] == "on-call@example.org"

    # ws-b (scraped as localhost:PORT without a label: the shipped relabelling names it
    # "localhost"): every critical target down. One WorkstationStackDown; its per-target
    # alerts reached Alertmanager but are held back (inhibited), never sent.
    ws_b = _wait("ws-b's WorkstationStackDown", lambda: group("localhost", "WorkstationStackDown"),
                 procs)
    assert ws_b["commonLabels"]["workstation"] == "localhost"

    def inhibited() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{stack['am']}/api/v2/alerts", params={
            "filter": ['workstation="localhost"', 'alertname="GuardianStackDown"']},
            timeout=5).json()
        return [a for a in alerts if a["status"]["inhibitedBy"]] if len(alerts) == 2 else []

    assert len(_wait("ws-b's per-target alerts inhibited", inhibited, procs)) == 2
    assert group("localhost", "GuardianStackDown") is None

    # Maintenance: a silence for ws-a (the README's recipe, with the real amtool).
    silence = amtool("silence", "add", "workstation=ws-a", "--duration=2h",
                     "--comment=maintenance: driver update", "--author=test",
                     f"--alertmanager.url={stack['am']}").strip()

    def silenced() -> bool:
        alerts = httpx.get(f"{stack['am']}/api/v2/alerts",
                           params={"filter": 'workstation="ws-a"', "silenced": "true"},
                           timeout=5).json()
        return bool(alerts) and all(silence in a["status"]["silencedBy"] for a in alerts)

    _wait("ws-a's alerts silenced", silenced, procs)
    print(json.dumps(body, indent=2))  # the notification as received (shown with -s)
