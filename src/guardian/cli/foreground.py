"""Run Guardian in the foreground until SIGINT/SIGTERM: what `guardian run` and `demo` do.

Kept apart from the command line so the `run` fast path (:mod:`guardian.cli.launch`) can start
Guardian without loading typer, click or rich.

Before anything else, and before a single file is touched, it refuses to start when a
directory or file Guardian would trust can be written by someone else
(:mod:`guardian.cli.trusted`), or when another Guardian holds the store's lock
(:mod:`guardian.store.lock`). Signals: SIGINT/SIGTERM stop; SIGHUP reopens the log file
(logrotate's convention) and supervision goes on; SIGUSR1/SIGUSR2 are logged and ignored;
the other signals whose default is to end the process stop Guardian with a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guardian.cli.trusted import verify_start
from guardian.config.schema import Config
from guardian.store import lock as store_lock
from guardian.store import runfile
from guardian.support.blocking import BlockingError, pool
from guardian.support.log import LogFormat, LogSetup, setup_logging
from guardian.support.trust import Untrusted, make_dirs, untrusted_dir

LOG_FORMATS: tuple[LogFormat, ...] = ("json", "pretty", "auto")
STARTUP_IO_DEADLINE = 5.0  # s for a directory to answer at start (a hung mount never does)
# guardian.cli.support.Exit's values, without loading rich here:
EXIT_FATAL = 1
EXIT_CANNOT_START = 5  # the API port is taken, another Guardian holds the store, an
EXIT_REFUSED = EXIT_CANNOT_START  # untrusted directory: nothing was touched

log = logging.getLogger("guardian.cli.foreground")

# Signals whose default action ends the process: each one now ends Guardian *cleanly*
# (child stopped or left as configured, runtime file removed, a log line saying why).
_STOPPING = ("SIGINT", "SIGTERM", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR",
             "SIGXCPU", "SIGSTKFLT")
_IGNORED = ("SIGUSR1", "SIGUSR2")


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


def _install_signal_handlers(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, reopen_logs: Callable[[], None]
) -> None:
    def request_stop(*_: Any) -> None:
        loop.call_soon_threadsafe(stop.set)

    if sys.platform == "win32":
        # Ctrl-C and Ctrl-Break (what NSSM sends first) both end Guardian cleanly.
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGBREAK, request_stop)  # type: ignore[attr-defined,unused-ignore]
        return

    def stopping(name: str) -> None:
        if not stop.is_set():
            log.warning("stopping on %s", name, extra={"event": "signal", "signal": name})
        stop.set()

    def ignored(name: str) -> None:
        log.info("%s ignored (SIGHUP reopens the log file; SIGTERM stops)", name,
                 extra={"event": "signal", "signal": name})

    def hangup() -> None:
        reopen_logs()
        log.info("SIGHUP: log file reopened", extra={"event": "log_reopened", "signal": "SIGHUP"})

    for name in _STOPPING:
        sig = getattr(signal, name, None)
        if sig is not None:
            loop.add_signal_handler(sig, stopping, name)
    for name in _IGNORED:
        loop.add_signal_handler(getattr(signal, name), ignored, name)
    loop.add_signal_handler(signal.SIGHUP, hangup)


def _bounded(fn: Callable[[], object], key: str, deadline: float = STARTUP_IO_DEADLINE) -> bool:
    """Run ``fn`` in a worker for at most ``deadline`` s; False if it hung."""
    try:
        pool("startup").call(fn, deadline, key=key)
    except BlockingError:
        return False
    except OSError:
        return True  # answered (with an error the writers will report)
    return True


def refuse_untrusted(cfg: Config) -> str | None:
    """The refusal message when a path Guardian would trust is not safe, else None.

    The log and report directories may sit on a mount that hangs: they are inspected with
    a deadline, and one that does not answer is said on stderr, not a reason to refuse
    (Guardian supervises with console logging until it answers). The state directory
    holds the store and its lock: without an answer from it, Guardian cannot start.
    """
    optional = {cfg.guardian.log_dir, cfg.guardian.report_dir} - {
        cfg.guardian.state_dir, cfg.store_path.parent}

    def inspect(d: Path) -> Untrusted | None:
        found: list[Untrusted | None] = []
        if _bounded(lambda: found.append(untrusted_dir(d)), f"trust:{d}"):
            return found[0] if found else None
        if d in optional:
            print(f"guardian: {d} did not answer within {STARTUP_IO_DEADLINE:g} s (a hung"
                  " mount?): not checked; logging to the console until it answers",
                  file=sys.stderr)
            return None
        return Untrusted(d, f"did not answer within {STARTUP_IO_DEADLINE:g} s",
                         "check the mount it is on")

    result: list[list[Untrusted]] = []
    # Each directory has its own deadline inside; the files are in the state dir.
    whole = STARTUP_IO_DEADLINE * 5
    if not _bounded(lambda: result.append(verify_start(cfg, inspect)), "trust:start", whole):
        return (f"guardian: refusing to start: {cfg.guardian.state_dir} did not answer within"
                f" {STARTUP_IO_DEADLINE:g} s (a hung mount?)")
    problems = result[0] if result else []
    if not problems:
        return None
    lines = ["guardian: refusing to start: a path it would trust can be changed by others"]
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def prepare_store(cfg: Config) -> store_lock.StoreLock | str:
    """Check the paths, create the directories, take the store's lock.

    Returns the lock, or the message to print when Guardian must not start; until the lock
    is held nothing is written, so a refused second Guardian touches nothing.
    """
    refusal = refuse_untrusted(cfg)
    if refusal is not None:
        return refusal
    try:
        lock = store_lock.acquire(cfg.store_path)
    except store_lock.AlreadyRunning as e:
        return f"guardian: {e}"
    except OSError as e:
        return f"guardian: cannot lock the store beside {cfg.store_path}: {e}"
    g = cfg.guardian
    for d in (g.state_dir, g.log_dir, g.report_dir):
        # Bounded: a log dir on a hung mount must not keep Guardian from supervising.
        _bounded(lambda d=d: make_dirs(d), f"mkdir:{d}")  # type: ignore[misc]
    return lock


def run_foreground(
    cfg: Config,
    log_format: LogFormat = "auto",
    log_level: str | None = None,
    config_path: Path | None = None,
) -> int:
    """Say what runs, check the API port and the store, set up logging, run until a stop
    signal.

    Returns the exit code: 0, or :data:`EXIT_CANNOT_START` when the API port is taken, the
    store is held by another Guardian or a directory is not Guardian's to trust.
    """
    print(first_line(cfg, config_path), file=sys.stderr, flush=True)
    held = prepare_store(cfg)  # first: a second Guardian is named by its pid, not its port
    if isinstance(held, str):
        print(held, file=sys.stderr)
        return EXIT_REFUSED
    problem = api_port_problem(cfg, config_path)
    if problem is not None:
        held.release()
        print(problem, file=sys.stderr, flush=True)
        return EXIT_CANNOT_START
    g = cfg.guardian
    logs = setup_logging(
        g.log_dir, log_level or g.log_level, log_format, max_bytes=g.log_max_bytes,
        backups=g.log_backups, threaded=True,
    )
    from guardian.runtime import Guardian

    async def main() -> None:
        stop = asyncio.Event()
        _install_signal_handlers(asyncio.get_running_loop(), stop, logs.reopen)
        guardian = Guardian(cfg, config_path=config_path)
        await guardian.run(stop)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except Exception as e:
        return _fatal(cfg, logs, e)
    finally:
        logs.close()
        held.release()
    return 0


def _fatal(cfg: Config, logs: LogSetup, exc: BaseException) -> int:
    """An end nobody asked for: say why (file and console), leave no runtime file behind."""
    log.critical("guardian ended by an error: %s: %s", type(exc).__name__, exc,
                 exc_info=exc, extra={"event": "fatal"})
    with contextlib.suppress(OSError):
        runfile.remove(cfg)
    logs.flush()
    return EXIT_FATAL
