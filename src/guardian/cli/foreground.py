"""Run Guardian in the foreground until SIGINT/SIGTERM: what `guardian run` and `demo` do.

Kept apart from the command line so the `run` fast path (:mod:`guardian.cli.launch`) can start
Guardian without loading typer, click or rich.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from guardian.config.schema import Config
from guardian.support.log import LogFormat, setup_logging

LOG_FORMATS: tuple[LogFormat, ...] = ("json", "pretty", "auto")


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
    """Set up logging, run until a stop signal, return the exit code."""
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
