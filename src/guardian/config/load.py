"""Loading a config: read the TOML, apply the environment's overrides, validate.

Nothing here starts anything. The rules that span several fields or targets (duplicate
names, ``depends_on``) are checked after the schema, so every problem is reported at once.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from guardian.checks.registry import spec
from guardian.config.errors import (
    ConfigError,
    KeyLocator,
    Problem,
    dedupe,
    did_you_mean,
    error_message,
    format_loc,
    toml_error_line,
)
from guardian.config.schema import Config, TargetConfig
from guardian.support.redact import redact_data

DEFAULT_CONFIG_FILE = "guardian.toml"
CONFIG_ENV = "GUARDIAN_CONFIG"


# --------------------------------------------------------------------------- loading


def default_config() -> Config:
    """The original plan's setup: panel + ComfyUI as services, disk and system checks."""
    return Config.model_validate(
        {
            "targets": [
                {
                    "name": "panel",
                    "description": "Next.js admin panel",
                    "service": {"name": "OrchestratorPanel"},
                    "checks": [
                        {"kind": "http", "url": "http://localhost:3000/api/health"},
                        {"kind": "service"},
                    ],
                },
                {
                    "name": "comfyui",
                    "description": "ComfyUI generation server",
                    "service": {"name": "OrchestratorComfyUI"},
                    "recovery": {"depends_on": []},
                    "checks": [{"kind": "comfyui"}, {"kind": "service"}],
                },
                {
                    "name": "disk",
                    "critical": True,
                    "checks": [{"kind": "disk"}],
                },
                {
                    "name": "system",
                    "critical": False,
                    "checks": [{"kind": "memory"}, {"kind": "gpu"}],
                },
            ]
        }
    )


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, then $GUARDIAN_CONFIG, then ./guardian.toml if it exists; else None."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Read, override from the environment, validate. Raises :class:`ConfigError`."""
    env = os.environ if env is None else env
    resolved = resolve_config_path(path)
    if resolved is None:
        raw: dict[str, Any] = default_config().model_dump(mode="python", exclude_unset=True)
        return _validate(_apply_env(raw, env), source=BUILTIN_SOURCE, text="", env=env)
    source = str(resolved)
    try:
        data = resolved.read_bytes()
    except OSError as e:
        raise ConfigError(source, [Problem("", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8-sig")  # a BOM (Notepad writes one) is not content
    except UnicodeDecodeError as e:
        raise ConfigError(source, [Problem("", f"not UTF-8 text: {e.reason}")]) from None
    return parse_config(text, source=source, env=env)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    env = {} if env is None else env
    text = text.removeprefix("\ufeff")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line = toml_error_line(str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)$", "", str(e))
        raise ConfigError(source, [Problem("", f"TOML syntax: {msg}", line)]) from None
    return _validate(_apply_env(raw, env), source=source, text=text, env=env)


BUILTIN_SOURCE = "(built-in defaults)"
NO_TARGETS = (
    "no targets: this file defines no [[targets]], so Guardian would watch nothing. "
    "Add one (see guardian.example.toml), or use no file at all for the built-in defaults"
)


def _last_line(text: str) -> int:
    """Where a missing table would go: the end of the file (line 1 when it is empty)."""
    return max(1, len(text.splitlines()))


def _validate(
    raw: dict[str, Any], source: str, text: str, env: Mapping[str, str] | None = None
) -> Config:
    locator = KeyLocator(text)
    from_env = {f"{sect}.{field}": var for var, (sect, field) in _env_names().items()}
    from_env = {path: var for path, var in from_env.items() if env and var in env}

    def problem(path: str, message: str) -> Problem:
        if path in from_env:  # the value came from the environment, not from a line
            return Problem(path, f"{message} (from ${from_env[path]})")
        return Problem(path, message, locator.line_of(path))

    problems = [problem(p, m) for p, m in _nul_problems(raw)]
    if not raw.get("targets"):
        line = locator.line_of("targets") or _last_line(text)
        problems.append(Problem("targets", NO_TARGETS, line))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        problems += [problem(format_loc(err["loc"]), error_message(err)) for err in e.errors()]
        raise ConfigError(source, dedupe(problems)) from None
    problems += [problem(p, m) for p, m in _semantic_problems(cfg)]
    if problems:
        raise ConfigError(source, dedupe(problems))
    return cfg


def _nul_problems(data: Any, path: str = "") -> list[tuple[str, str]]:
    """A NUL in any string (argv, env, a path) would be cut or refused by the OS later."""
    if isinstance(data, str):
        return [(path, "contains a NUL character")] if "\x00" in data else []
    if isinstance(data, dict):
        found = []
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.append((path, f"key {str(key)!r} contains a NUL character"))
            found += _nul_problems(value, sub)
        return found
    if isinstance(data, list):
        return [p for i, item in enumerate(data) for p in _nul_problems(item, f"{path}[{i}]")]
    return []


def _semantic_problems(cfg: Config) -> list[tuple[str, str]]:
    """Rules that span several fields or targets."""
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for i, t in enumerate(cfg.targets):
        if t.name in seen:
            problems.append(
                (
                    f"targets[{i}].name",
                    f"duplicate target name {t.name!r} (also targets[{seen[t.name]}])",
                )
            )
        else:
            seen[t.name] = i
        names: dict[str, int] = {}
        for j, c in enumerate(t.checks):
            if c.check_name in names:
                problems.append(
                    (
                        f"targets[{i}].checks[{j}]",
                        f"duplicate check name {c.check_name!r} in target {t.name!r}: "
                        "give one a distinct `name`",
                    )
                )
            names[c.check_name] = j
            if spec(c.kind).service_state and t.service is None:
                problems.append(
                    (f"targets[{i}].checks[{j}]", f"a {c.kind!r} check needs [targets.service]")
                )
    for i, t in enumerate(cfg.targets):
        for dep in t.recovery.depends_on:
            if dep not in seen:
                hint = did_you_mean(dep, list(seen))
                problems.append(
                    (f"targets[{i}].recovery.depends_on", f"unknown target {dep!r}{hint}")
                )
            elif dep == t.name:
                problems.append(
                    (f"targets[{i}].recovery.depends_on", "a target cannot depend on itself")
                )
    for cycle in _dependency_cycles(cfg.targets):
        i = seen[cycle[0]]
        problems.append(
            (f"targets[{i}].recovery.depends_on", "depends_on cycle: " + " -> ".join(cycle))
        )
    return problems


def _dependency_cycles(targets: Sequence[TargetConfig]) -> list[list[str]]:
    """Each cycle of ``depends_on`` once, as ``[a, b, a]``, starting at its first target."""
    deps = {t.name: [d for d in t.recovery.depends_on if d != t.name] for t in targets}
    order = {t.name: i for i, t in enumerate(targets)}
    done: set[str] = set()
    cycles: list[list[str]] = []
    seen_cycles: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> None:
        if name in stack:
            loop = stack[stack.index(name) :]
            key = frozenset(loop)
            if key not in seen_cycles:
                seen_cycles.add(key)
                start = min(range(len(loop)), key=lambda k: order[loop[k]])
                loop = loop[start:] + loop[:start]
                cycles.append([*loop, loop[0]])
            return
        if name in done or name not in deps:
            return
        stack.append(name)
        for dep in deps[name]:
            visit(dep, stack)
        stack.pop()
        done.add(name)

    for t in targets:
        visit(t.name, [])
    return cycles



# --------------------------------------------------------------------------- env overrides


def _env_names() -> dict[str, tuple[str, str]]:
    """GUARDIAN_LOG_DIR -> ('guardian', 'log_dir'); GUARDIAN_API_PORT -> ('api', 'port')."""
    names: dict[str, tuple[str, str]] = {}
    for section, model in Config.model_fields.items():
        if section == "targets" or model.annotation is None:
            continue
        sub = model.annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            continue
        for fname, finfo in sub.model_fields.items():
            if _is_scalar(finfo.annotation):
                prefix = "GUARDIAN_" if section == "guardian" else f"GUARDIAN_{section.upper()}_"
                names[prefix + fname.upper()] = (section, fname)
    return names


def _is_scalar(annotation: Any) -> bool:
    text = str(annotation)
    return not any(s in text for s in ("list", "dict"))


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    for var, (section, fname) in _env_names().items():
        if var in env and var != CONFIG_ENV:
            sect = raw.setdefault(section, {})
            if isinstance(sect, dict):
                sect[fname] = _from_env(section, fname, env[var])
    return raw


def _from_env(section: str, fname: str, text: str) -> Any:
    """An environment string as the field's type (``"9000"`` -> 9000, ``"true"`` -> True).

    The file is validated strictly, but the environment only has strings: they are
    converted by the field's type here, and one that does not convert is left as it is
    for the strict validation to report under its key path.
    """
    sub = Config.model_fields[section].annotation
    annotation = sub.model_fields[fname].annotation  # type: ignore[union-attr]
    try:
        return TypeAdapter(annotation).validate_python(text)
    except ValidationError:
        return text



def redacted_config(cfg: Config) -> dict[str, Any]:
    """The effective config as JSON-ready data with every secret hidden (``config show``)."""
    data = redact_data(cfg.model_dump(mode="python"))
    return json.loads(json.dumps(data, default=str))  # type: ignore[no-any-return]


def config_summary(cfg: Config) -> str:
    n_checks = sum(len(t.checks) for t in cfg.targets)
    services = sum(1 for t in cfg.targets if t.service)
    return (
        f"{len(cfg.targets)} targets, {n_checks} checks, {services} services; "
        f"logs in {cfg.guardian.log_dir}"
    )
