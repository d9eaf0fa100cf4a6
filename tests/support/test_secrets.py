"""One redaction rule everywhere: config show, install-service --print, logs, results, files."""

from __future__ import annotations

import io
import json
import logging
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from guardian.api.app import create_app
from guardian.api.context import StaticView
from guardian.cli import install
from guardian.cli.main import app
from guardian.config.load import parse_config
from guardian.core.state import State
from guardian.demo.stack import prepare_demo
from guardian.support.log import setup_logging
from guardian.support.redact import (
    MASK,
    is_secret_name,
    redact,
    redact_argv,
    redact_data,
    redact_env,
)

runner = CliRunner()

# Every secret below contains "S3CR3T", so one substring test finds any leak.
SECRET_CONFIG = """
[api]
token = "S3CR3T-api-token"

[notify]
urls = ["discord://1234/S3CR3T-webhook", "mailto://me:S3CR3T-mail@example.com"]

[[targets]]
name = "comfyui"
[targets.service]
backend = "process"
command = ["python3", "main.py", "--token", "S3CR3T-argv1", "--api-key=S3CR3T-argv2",
           "--password", "S3CR3T-argv3", "--port", "8188"]
[targets.service.env]
HF_TOKEN = "S3CR3T-hf"
OPENAI_API_KEY = "S3CR3T-openai"
DB_PASSWORD = "S3CR3T-db"
AWS_SECRET_ACCESS_KEY = "S3CR3T-aws"
DATABASE_URL = "postgres://u:S3CR3T-pg@db/x"
CUDA_VISIBLE_DEVICES = "0"

[[targets.checks]]
kind = "http"
url = "http://admin:S3CR3T-url@127.0.0.1:8188/health?token=S3CR3T-query&x=1"
[targets.checks.headers]
Authorization = "Bearer S3CR3T-bearer"
Cookie = "sid=S3CR3T-cookie"
"X-Api-Key" = "S3CR3T-xapikey"
"X-Request-Source" = "guardian"
"""


def test_config_show_hides_every_secret_and_keeps_the_rest(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text(SECRET_CONFIG)
    result = runner.invoke(app, ["config", "show", "--config", str(f)])
    assert result.exit_code == 0, result.output
    assert "S3CR3T" not in result.output
    shown = json.loads(result.output)
    target = shown["targets"][0]
    assert shown["api"]["token"] == MASK
    assert shown["notify"]["urls"] == [f"discord://{MASK}", f"mailto://{MASK}"]
    assert target["service"]["command"] == [
        "python3", "main.py", "--token", MASK, f"--api-key={MASK}", "--password", MASK,
        "--port", "8188",
    ]
    env = target["service"]["env"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["HF_TOKEN"] == MASK
    assert env["DATABASE_URL"] == f"postgres://{MASK}@db/x"
    check = target["checks"][0]
    assert check["url"] == f"http://{MASK}@127.0.0.1:8188/health?token={MASK}&x=1"
    assert check["headers"]["X-Request-Source"] == "guardian"
    assert {check["headers"][h] for h in ("Authorization", "Cookie", "X-Api-Key")} == {MASK}


def test_install_service_print_hides_env_secrets_and_the_written_unit_is_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "g.toml"
    f.write_text(SECRET_CONFIG)
    monkeypatch.setattr(install, "is_windows", lambda: False)
    args = ["install-service", "--config", str(f), "--user",
            "--env", "HF_TOKEN=S3CR3T-env", "--env", "MODE=fast"]
    printed = runner.invoke(app, [*args, "--print"])
    assert printed.exit_code == 0, printed.output
    assert "S3CR3T" not in printed.output
    assert f"Environment=HF_TOKEN={MASK}" in printed.output
    assert "Environment=MODE=fast" in printed.output

    monkeypatch.setattr(install, "is_windows", lambda: True)
    windows = runner.invoke(app, [*args, "--print", "--nssm", "nssm.exe"])
    assert windows.exit_code == 0, windows.output
    assert "S3CR3T" not in windows.output and f"HF_TOKEN={MASK}" in windows.output

    monkeypatch.setattr(install, "is_windows", lambda: False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    written = runner.invoke(app, args)
    assert written.exit_code == 0, written.output
    unit = tmp_path / "xdg" / "systemd" / "user" / "guardian.service"
    assert "Environment=HF_TOKEN=S3CR3T-env" in unit.read_text()  # the real value, but
    assert stat.S_IMODE(unit.stat().st_mode) == 0o600  # readable by its owner only


def test_the_demo_config_holding_a_token_is_0600_even_over_an_old_0644_file(
    tmp_path: Path,
) -> None:
    old = tmp_path / "guardian-demo.toml"
    old.write_text("old")
    old.chmod(0o644)
    cfg, path = prepare_demo(tmp_path, api_port=0)
    assert cfg.api.token is not None and cfg.api.token.get_secret_value() in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_logs_redact_messages_fields_and_tracebacks(tmp_path: Path) -> None:
    console = io.StringIO()
    setup_logging(tmp_path, "info", "json", stream=console)
    log = logging.getLogger("guardian.test.secrets")
    log.info(
        "starting %s", "python3 main.py --token=S3CR3T-a",
        extra={"argv": ["x", "--password", "S3CR3T-b"], "env": {"HF_TOKEN": "S3CR3T-c"},
               "url": "https://u:S3CR3T-d@h/", "token": "S3CR3T-e", "target": "comfyui"},
    )
    try:
        raise RuntimeError("Authorization: Bearer S3CR3T-f")
    except RuntimeError:
        log.exception("failed")
    setup_logging(None, "info", "pretty", stream=console)
    log.warning("pretty %s", "api_key=S3CR3T-g", extra={"password": "S3CR3T-h"})
    text = (tmp_path / "guardian.log").read_text() + console.getvalue()
    assert "S3CR3T" not in text
    first = json.loads((tmp_path / "guardian.log").read_text().splitlines()[0])
    assert first["argv"] == ["x", "--password", MASK] and first["target"] == "comfyui"
    setup_logging(None, "error", "json", stream=io.StringIO())


async def test_check_reasons_are_redacted_before_any_sink_sees_them() -> None:
    from guardian.checks.base import CheckConfigBase
    from guardian.core.clock import FakeClock
    from guardian.core.result import Outcome
    from guardian.engine.scheduler import Engine

    class Cfg(CheckConfigBase):
        kind: str = "leaky"

    class Leaky:
        config = Cfg()

        async def run(self) -> Outcome:
            return Outcome.failed(
                "GET http://u:S3CR3T-x@h/?api_key=S3CR3T-y: 401 " + "z" * 900,
                body="token=S3CR3T-z",
                status_code=401,
            )

        async def aclose(self) -> None:
            pass

    state = State(parse_config("[[targets]]\nname='t'\n"))
    engine = Engine(state, [("t", Leaky())], FakeClock())  # type: ignore[list-item]
    result = await engine.execute(engine.scheduled[0])
    assert "S3CR3T" not in result.reason and MASK in result.reason
    assert result.values == {"body": f"token={MASK}", "status_code": 401}


# ----------------------------------------------------------------- the CLI tells the truth


def test_check_on_built_in_defaults_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GUARDIAN_CONFIG", raising=False)
    result = runner.invoke(app, ["check", "--target", "nope"])
    assert "using built-in defaults (no config file: looked for --config" in result.output
    assert str(tmp_path / "guardian.toml") in result.output
    assert result.exit_code == 4 and "unknown target 'nope'" in result.output
    (tmp_path / "guardian.toml").write_text("[[targets]]\nname='t'\n")
    found = runner.invoke(app, ["check", "--target", "nope"])
    assert "built-in defaults" not in found.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def guardian_api() -> Iterator[int]:
    """Guardian's real API on a free loopback port, with token 'right'."""
    port = _free_port()
    cfg = parse_config(f"[api]\nport={port}\ntoken='right'\n[[targets]]\nname='t'\n")
    server = uvicorn.Server(
        uvicorn.Config(create_app(StaticView(cfg, State(cfg))), port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("API server did not start")
        threading.Event().wait(0.01)
    yield port
    server.should_exit = True
    thread.join(10)


def test_a_401_says_where_the_token_comes_from(
    tmp_path: Path, guardian_api: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "g.toml"
    svc = "[targets.service]\ncommand=['x']\n"  # a target restart can act on
    f.write_text(f"[api]\nport={guardian_api}\ntoken='wrong'\n[[targets]]\nname='t'\n{svc}")
    monkeypatch.delenv("GUARDIAN_API_TOKEN", raising=False)
    wrong = runner.invoke(app, ["restart", "t", "--config", str(f)])
    assert wrong.exit_code == 3
    assert "HTTP 401" in wrong.output and f"[api] token in {f}" in wrong.output
    monkeypatch.setenv("GUARDIAN_API_TOKEN", "also-wrong")
    env = runner.invoke(app, ["restart", "t", "--config", str(f)])
    assert env.exit_code == 3 and "comes from $GUARDIAN_API_TOKEN" in env.output
    monkeypatch.delenv("GUARDIAN_API_TOKEN")
    f.write_text(f"[api]\nport={guardian_api}\n[[targets]]\nname='t'\n{svc}")
    none = runner.invoke(app, ["restart", "t", "--config", str(f)])
    assert none.exit_code == 3 and "no token was sent" in none.output
    monkeypatch.setenv("GUARDIAN_API_TOKEN", "right")
    ok = runner.invoke(app, ["restart", "t", "--config", str(f)])
    assert ok.exit_code == 0, ok.output


# ----------------------------------------------------------------- properties of the rule

SECRET_KEYS = st.sampled_from(
    ["HF_TOKEN", "OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "DB_PASSWORD", "Authorization",
     "Cookie", "X-Api-Key", "GITHUB_TOKEN", "client_secret", "SENTRY_DSN", "x-auth-token"]
)
VALUES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)  # type: ignore[arg-type]


@given(SECRET_KEYS, VALUES)
def test_a_secret_named_value_is_always_hidden_whole(key: str, value: str) -> None:
    assert redact_env({key: value}) == {key: MASK}
    assert redact_data({"outer": {key: value}}) == {"outer": {key: MASK}}


@given(st.sampled_from(["--token", "--api-key", "--password", "--hf-token", "--secret"]),
       st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))  # type: ignore[arg-type]
def test_an_option_secret_never_survives_in_argv(option: str, value: str) -> None:
    split = redact_argv(["prog", option, value, "--port", "1"])
    joined = redact_argv(["prog", f"{option}={value}"])
    assert split == ["prog", option, MASK, "--port", "1"]
    assert joined == ["prog", f"{option}={MASK}"]


@given(st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=20),
       st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1, max_size=20),
       st.sampled_from(["token", "api_key", "password", "sig", "access_token"]))
def test_url_passwords_and_secret_query_values_are_hidden(
    user: str, password: str, param: str
) -> None:
    url = f"https://{user}:S3CR3T{password}@host.example/p?{param}=S3CR3T{password}&page=2"
    shown = redact(url)
    assert "S3CR3T" not in shown and shown.endswith("&page=2")


@given(st.text(max_size=200))
def test_redaction_is_idempotent(text: str) -> None:
    once = redact(text)
    assert redact(once) == once


def test_ordinary_names_are_not_secrets() -> None:
    for name in ("PATH", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "interval", "url",
                 "command", "description", "monkey", "keyframes", "passed", "--port"):
        assert not is_secret_name(name), name


async def test_the_supervised_process_record_holding_argv_is_0600(tmp_path: Path) -> None:
    import sys

    from guardian.services.process.backend import ProcessBackend

    record = tmp_path / "state" / "child.json"
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "--token", "S3CR3T"]
    backend = ProcessBackend("t", argv, record=record, stop_timeout=5)
    await backend.start()
    try:
        assert json.loads(record.read_text())["argv"] == argv  # kept whole, for recognition
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
    finally:
        await backend.stop()
        # Ends its rotation task too: left to the loop's teardown, a cancel swallowed by
        # 3.11's wait_for inside it hung this test now and then.
        await backend.aclose()
