"""Finding the running Guardian a CLI command should talk to, its store, and calling its API.

``--config`` (or ``$GUARDIAN_CONFIG`` / ``./guardian.toml``) names the config; the runtime
file beside that config's store (see :mod:`guardian.store.runfile`) then says whether a Guardian
runs it and where its API really listens. Without any config file, the one Guardian this
user runs (found in the per-user instances directory) is used, with its own config; with
several, the user is asked to choose rather than guessed for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from guardian.cli.support import Exit, err, load_or_exit, token_hint
from guardian.config.load import resolve_config_path
from guardian.config.schema import Config
from guardian.store import runfile
from guardian.store.runfile import RuntimeInfo
from guardian.support.escape import inert

STATE_DIR_ENV = "GUARDIAN_STATE_DIR"


@dataclass(frozen=True, slots=True)
class Located:
    config: Config
    running: RuntimeInfo | None  # the live Guardian of this config, if any
    source: str  # which config, in words

    def api_url(self) -> str:
        """The running Guardian's actual API address, else the configured one."""
        if self.running is not None and self.running.api_url:
            return self.running.api_url
        api = self.config.api
        host = "127.0.0.1" if api.host in ("0.0.0.0", "::", "") else api.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{api.port}"


def locate_or_exit(path: Path | None) -> Located:
    """The config to use and its running Guardian; exits 4 on a bad or ambiguous choice.

    An explicit choice always selects: ``--config`` (or ``$GUARDIAN_CONFIG``, or a
    ./guardian.toml), and ``$GUARDIAN_STATE_DIR``, which names the state directory and so
    the runtime file of the one Guardian that uses it, however many others run elsewhere.
    """
    resolved = resolve_config_path(path)
    if resolved is None and os.environ.get(STATE_DIR_ENV):
        cfg = load_or_exit(None)
        return Located(cfg, runfile.find_running(cfg),
                       f"${STATE_DIR_ENV} ({cfg.guardian.state_dir})")
    if resolved is None:
        live = runfile.discover()
        if len(live) > 1:
            err.print("several Guardians are running; choose one with --config:", markup=False)
            for info in live:
                err.print(f"  pid {info.pid}: {info.config_path or '(built-in defaults)'}"
                          f"  API {info.api_url or '-'}", markup=False, highlight=False)
            raise typer.Exit(Exit.USAGE)
        if len(live) == 1:
            info = live[0]
            cfg_path = Path(info.config_path) if info.config_path else None
            cfg = load_or_exit(cfg_path)
            return Located(cfg, info, f"running Guardian pid {info.pid}"
                                      f" ({info.config_path or 'built-in defaults'})")
        cfg = load_or_exit(None)
        return Located(cfg, runfile.find_running(cfg), "built-in defaults")
    cfg = load_or_exit(resolved)
    return Located(cfg, runfile.find_running(cfg), str(resolved))


def _other_guardian_at(url: str) -> RuntimeInfo | None:
    """A running Guardian of another config whose API listens at ``url`` (the address a
    config without a runtime file would be tried at: two configs on the default port)."""
    return next((info for info in runfile.discover()
                 if info.api_url is not None and info.api_url.rstrip("/") == url.rstrip("/")),
                None)


def api_call(where: Located, method: str, path: str, ok: tuple[int, ...] = ()) -> Any:
    """Call the running Guardian's API; print a clear error, exit 3 when it fails."""
    from guardian.checks.http.httpxlib import httpx  # without httpx's own CLI

    cfg = where.config
    if where.running is None:
        other = _other_guardian_at(where.api_url())
        if other is not None:
            # Its answer would be read as this config's stack (and get this config's token).
            err.print(f"no Guardian runs {where.source}; {where.api_url()} is the API of "
                      f"another one (pid {other.pid}, "
                      f"{other.config_path or 'built-in defaults'}): choose it with --config",
                      markup=False, highlight=False)
            raise typer.Exit(Exit.UNREACHABLE)
        err.print(f"no runtime file of a running Guardian for {where.source} "
                  f"(looked at {runfile.runtime_path(cfg)}); trying the configured API address",
                  markup=False, highlight=False)
    elif where.running.api_url is None:
        err.print(f"the Guardian running {where.source} (pid {where.running.pid}) has no API "
                  "(disabled, or its port was taken: see its log)", markup=False)
        raise typer.Exit(Exit.UNREACHABLE)
    url = f"{where.api_url()}{path}"
    headers = {}
    if cfg.api.token is not None and cfg.api.token.get_secret_value():
        headers["Authorization"] = f"Bearer {cfg.api.token.get_secret_value()}"
    try:
        resp = httpx.request(method, url, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        err.print(f"cannot reach Guardian at {url}: {e}. Is `guardian run` running?",
                  markup=False)
        raise typer.Exit(Exit.UNREACHABLE) from None
    if resp.status_code >= 400 and resp.status_code not in ok:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        err.print(f"Guardian answered HTTP {resp.status_code}: {inert(detail)}", markup=False)
        if resp.status_code in (401, 403):
            err.print(token_hint(cfg), markup=False, highlight=False)
        raise typer.Exit(Exit.UNREACHABLE)
    return resp.json()
