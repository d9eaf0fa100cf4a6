"""Run Guardian in the foreground until SIGINT/SIGTERM: what `guardian run` and `demo` do.

Kept apart from the command line so the `run` fast path (:mod:`guardian.cli.launch`) can start
Guardian without loading typer, click or rich.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.support.log import LogFormat, setup_logging

LOG_FORMATS: tuple[LogFormat, ...] = ("json", "pretty", "auto")
EXIT_CANNOT_START = 5  # guardian.cli.support.Exit.CANNOT_START, without loading rich here


def with_api_port(cfg: Config, port: int | None) -> Config:
    """``--api-port``: listen there instead (0: any free port)."""
    if port is None:
        return cfg
    return cfg.model_copy(update={"api": cfg.api.model_copy(update={"port": port})})


def first_line(cfg: Config, config_path: Path | None) -> str:
    """What ``run`` says before anything else: which Guardian, which config, acting or not."""
    from guardian import __version__

    where = str(config_path) if config_path is not None else "built-in defaults (no file)"
    mode = "dry-run: decides and logs, acts on nothing" if cfg.guardian.dry_run else "dry-run off"
    api = cfg.api
    port = "any free port" if api.port == 0 else str(api.port)
    listen = f"API {api.host}:{port}" if api.enabled else "API disabled"
    return f"guardian {__version__} · config {where} · {mode} · {listen}"


def api_port_problem(cfg: Config, config_path: Path | None) -> str | None:
    """Why the configured API port cannot be had, with what to do; None when it is free.

    Checked before anything starts: a Guardian that runs on without its API leaves
    ``status``, the page and Prometheus blind while it looks healthy. Port 0 (any) never
    fails. A program that takes the port in the instant between this and the API's own
    bind still gets the runtime's logged error.
    """
    api = cfg.api
    if not api.enabled or api.port == 0:
        return None
    family = socket.AF_INET6 if ":" in api.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((api.host, api.port))
        except OSError as e:
            why = "in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
            where = f"[api] port in {config_path}" if config_path else "[api] port in a config"
            return (f"guardian: cannot listen on {api.host}:{api.port} ({why}). Another program"
                    f" or another Guardian has it (`guardian status` shows a Guardian). Stop it,"
                    f" set {where} (0: any free port), or run with --api-port 0.")
    return None


def with_dry_run(cfg: Config, dry_run: bool) -> Config:
    """``--dry-run``: decide and log recovery actions, run none."""
    if not dry_run:
        return cfg
    return cfg.model_copy(update={"guardian": cfg.guardian.model_copy(update={"dry_run": True})})


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def request_stop(*_: Any) -> None:
        loop.call_soon_threadsafe(stop.set)

    if sys.platform == "win32":
        # Ctrl-C and Ctrl-Break (what NSSM sends first) both end Guardian cleanly.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGBREAK, request_stop)  # type: ignore[attr-defined,unused-ignore]
    else:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, request_stop)


def run_foreground(
    cfg: Config,
    log_format: LogFormat = "auto",
    log_level: str | None = None,
    config_path: Path | None = None,
) -> int:
    """Say what runs, check the API port, set up logging, run until a stop signal.

    Returns the exit code: 0, or :data:`EXIT_CANNOT_START` when the API port is taken.
    """
    print(first_line(cfg, config_path), file=sys.stderr, flush=True)
    problem = api_port_problem(cfg, config_path)
    if problem is not None:
        print(problem, file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    g = cfg.guardian
    logs = setup_logging(
        g.log_dir, log_level or g.log_level, log_format, max_bytes=g.log_max_bytes,
        backups=g.log_backups,
    )
    from guardian.runtime import Guardian

    async def main() -> None:
        stop = asyncio.Event()
        _install_signal_handlers(asyncio.get_running_loop(), stop)
        guardian = Guardian(cfg, config_path=config_path)
        await guardian.run(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        logs.flush()
    return 0
