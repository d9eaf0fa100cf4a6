"""The `run` fast path: it agrees with typer's definition of `run`, hands everything else
to typer (same help, same errors), and a started `guardian run` has loaded only what its
config uses: no terminal libraries, no httpx for plain http (checks or ComfyUI), no apprise
or pynvml unless configured. Real `guardian` subprocesses; the import log is the child's own
``-X importtime``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from guardian.cli.launch import RUN_OPTIONS, parse_run
from guardian.cli.main import app

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"typer", "click", "rich", "pygments"}


def run_command() -> TyperCommand:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    command = group.commands["run"]
    assert isinstance(command, TyperCommand)
    return command


def test_fast_path_knows_exactly_the_options_of_run() -> None:
    options = [p for p in run_command().params if isinstance(p, TyperOption)]
    assert [p for p in run_command().params if not isinstance(p, TyperOption)] == []
    declared = {opt: (p.name, not p.is_flag) for p in options for opt in p.opts}
    hidden = {p.name for p in options if p.secondary_opts}
    assert hidden == set()  # no --no-x forms the fast path would have to know
    assert declared == RUN_OPTIONS


@pytest.mark.parametrize(
    "argv",
    [
        ["run"],
        ["run", "--config", "g.toml"],
        ["run", "-c", "g.toml", "--log-format", "json"],
        ["run", "--config=g.toml", "--log-level=debug", "--dry-run"],
        ["run", "--dry-run", "-c", "dir/g v.toml", "--log-format", "pretty"],
        ["run", "--log-format=bogus"],  # parsed; fast_run hands a bad value to typer
    ],
)
def test_fast_path_parses_as_typer_does(argv: list[str]) -> None:
    fast = parse_run(argv)
    assert fast is not None
    ctx = run_command().make_context("run", argv[1:])
    typer_values = {k: v for k, v in ctx.params.items() if v not in (None, False, "auto")}
    expected = {k: str(v) if isinstance(v, Path) else v for k, v in typer_values.items()}
    assert {k: v for k, v in fast.items() if v != "auto"} == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["run", "--help"],
        ["check"],
        ["run", "extra"],
        ["run", "--bogus"],
        ["run", "-cg.toml"],  # click's attached short form: typer's business
        ["run", "--config"],
        ["run", "--config", "--dry-run"],
        ["run", "--config="],
        ["run", "-c", "a.toml", "-c", "b.toml"],
        ["run", "--dry-run=yes"],
        ["run", "--", "--dry-run"],
    ],
)
def test_anything_else_goes_to_typer(argv: list[str]) -> None:
    assert parse_run(argv) is None


def test_console_script_is_the_launcher() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["guardian"] == "guardian.cli.launch:main"


# --------------------------------------------------------------------------- subprocesses


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("GUARDIAN_")}
    e["PYTHONPATH"] = str(REPO / "src")
    e["COLUMNS"] = "100"
    return e


def cli(*args: str, entry: str = "guardian.cli.launch", cwd: Path | None = None
        ) -> tuple[int, str, str]:
    """``guardian ARGS`` through ``entry``'s ``main``, named ``guardian`` as the script is."""
    code = f"import sys; sys.argv[0] = 'guardian'; from {entry} import main; main()"
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env(), cwd=cwd, timeout=60, check=False)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["run", "--help"],
        ["run", "--bogus"],
        ["run", "--log-format", "loud", "-c", "{cfg}"],
        ["run", "-c", "{bad}"],
        ["run", "-c", "{missing}"],
    ],
)
def test_typer_answers_what_the_fast_path_does_not(tmp_path: Path, args: list[str]) -> None:
    cfg = write_config(tmp_path, api=False, port=1)
    bad = tmp_path / "bad.toml"
    bad.write_text('[guardian]\nlog_levl = "info"\n')
    subst = {"{cfg}": str(cfg), "{bad}": str(bad), "{missing}": str(tmp_path / "nope.toml")}
    argv = [subst.get(a, a) for a in args]
    via_launcher = cli(*argv, cwd=tmp_path)
    via_typer = cli(*argv, entry="guardian.cli.main", cwd=tmp_path)
    assert via_launcher == via_typer
    invalid_config = args[-1] in ("{bad}", "{missing}")  # exits 2, usage errors 4
    assert via_launcher[0] == (0 if "--help" in args else 2 if invalid_config else 4)
    assert via_launcher[1] + via_launcher[2]


def write_config(tmp: Path, *, api: bool, port: int, extra: str = "") -> Path:
    path = tmp / "guardian.toml"
    path.write_text(f"""
[guardian]
log_dir = "{tmp / "logs"}"
report_dir = "{tmp / "reports"}"
state_dir = "{tmp / "state"}"
[api]
enabled = {"true" if api else "false"}
port = 0
[[targets]]
name = "web"
[[targets.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval = 30
timeout = 2
[[targets.checks]]
kind = "disk"
paths = ["{tmp}"]
interval = 30
{extra}
""")
    return path


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def started_imports(config: Path, tmp: Path, kinds: tuple[str, ...] = ("http",)
                    ) -> tuple[set[str], str]:
    """Top-level packages a real `guardian run` imported by the time checks of ``kinds`` ran."""
    log = tmp / "run.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "guardian", "run", "-c", str(config),
             "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=sink, env=env(), cwd=tmp, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace")
            if '"event":"check"' in text and all(f'"kind":"{k}"' in text for k in kinds):
                break
            time.sleep(0.05)
        assert '"event":"started"' in text, text[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    text = log.read_text(errors="replace")
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", text, re.MULTILINE)
    assert len(names) > 100, text[-2000:]
    return {n.split(".", 1)[0] for n in names}, text


@pytest.mark.slow
def test_run_loads_no_terminal_library_nor_unused_parts(tmp_path: Path) -> None:
    imported, log = started_imports(write_config(tmp_path, api=False, port=closed_port()),
                                    tmp_path)
    assert '"reason":"connection refused"' in log  # the failure path ran, still no httpx
    assert "guardian" in imported and "pydantic" in imported  # the log does list imports
    assert imported.isdisjoint(TERMINAL | {"httpx", "httpcore", "apprise", "pynvml",
                                           "starlette", "uvicorn", "prometheus_client"})


@pytest.mark.slow
def test_run_with_the_api_loads_no_terminal_library(tmp_path: Path) -> None:
    imported, log = started_imports(write_config(tmp_path, api=True, port=closed_port()), tmp_path)
    assert {"starlette", "uvicorn"} <= imported
    # uvicorn's __init__ imports its own click CLI; nothing else of the terminal stack loads
    assert imported.isdisjoint({"typer", "rich", "pygments", "apprise", "pynvml", "httpx",
                                "prometheus_client"})  # /metrics is written by Guardian
    # the API is served by Starlette alone: no FastAPI, nor what FastAPI pulls in
    assert imported.isdisjoint({"fastapi", "opentelemetry", "annotated_doc"})
    assert "pydantic.v1" not in log


def comfyui_target(scheme: str, port: int) -> str:
    return f"""
[[targets]]
name = "comfy"
[[targets.checks]]
kind = "comfyui"
url = "{scheme}://127.0.0.1:{port}"
interval = 30
timeout = 2
[[targets.checks]]
kind = "comfyui_canary"
url = "{scheme}://127.0.0.1:{port}"
interval = 30
timeout = 2
"""


HTTPX_STACK = {"httpx", "httpcore", "h11", "anyio", "sniffio", "certifi", "idna"}


@pytest.mark.slow
def test_configured_parts_do_load(tmp_path: Path) -> None:
    """The negative tests above would pass if nothing loaded at all: configured parts do."""
    port = closed_port()
    extra = comfyui_target("https", port)
    imported, log = started_imports(
        write_config(tmp_path, api=False, port=closed_port(), extra=extra), tmp_path,
        kinds=("comfyui",),
    )
    assert f"cannot connect to https://127.0.0.1:{port}: connection refused" in log
    assert {"httpx", "httpcore"} <= imported  # an https ComfyUI is spoken over httpx
    assert imported.isdisjoint(TERMINAL)  # ... without httpx's own command line


@pytest.mark.slow
def test_http_comfyui_loads_no_httpx(tmp_path: Path) -> None:
    """The shipped example's ComfyUI is http:// on loopback: Guardian's own client, no httpx
    stack (the comfyui check and the canary both ran, refused, before the run was stopped)."""
    port = closed_port()
    imported, log = started_imports(
        write_config(tmp_path, api=False, port=closed_port(),
                     extra=comfyui_target("http", port)),
        tmp_path, kinds=("comfyui", "comfyui_canary"),
    )
    refused = f'"reason":"cannot connect to http://127.0.0.1:{port}: connection refused"'
    for kind in ("comfyui", "comfyui_canary"):
        assert any(f'"kind":"{kind}"' in line and refused in line
                   for line in log.splitlines()), log[-2000:]
    assert "guardian" in imported and "httptools" in imported
    assert imported.isdisjoint(HTTPX_STACK | TERMINAL)


def test_httpx_loads_without_its_command_line() -> None:
    code = ("import sys, guardian.checks.http.httpxlib as h; "
            "print(sorted(m for m in ('click', 'rich', 'pygments') if m in sys.modules), "
            "h.httpx.AsyncClient.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(), timeout=60, check=True)
    assert out.stdout.split() == ["[]", "AsyncClient"]
