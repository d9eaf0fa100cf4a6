"""Config problems: each with its key path and line, rendered with a did-you-mean.

Every problem in a file is reported at once, so a user fixes a config in one pass;
pydantic's error locations are turned back into the file's own key paths here.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from guardian.checks.registry import REGISTRY
from guardian.config.schema import Config


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "targets[1].checks[0].interval"; "" for the whole file
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(file)"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """An invalid config: every problem found, each with its key path."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"invalid config {self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])



def did_you_mean(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def dedupe(problems: list[Problem]) -> list[Problem]:
    out: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    for p in problems:
        key = (p.path, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def error_message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"])
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        loc = err["loc"]
        return "unknown key" + did_you_mean(str(loc[-1]), _known_keys(loc[:-1]))
    if kind == "union_tag_invalid":
        got = err.get("input", {}).get("kind")
        hint = did_you_mean(str(got), REGISTRY.kinds())
        return f"unknown check kind {got!r}; expected one of {', '.join(REGISTRY.kinds())}{hint}"
    if kind == "path_type":
        msg = "Input should be a path (a string)"
    if kind == "union_tag_not_found":
        return f"missing `kind`; expected one of {', '.join(REGISTRY.kinds())}"
    msg = msg.removeprefix("Value error, ")
    inp = err.get("input")
    if (
        kind not in ("missing", "value_error")
        and isinstance(inp, str | int | float | bool)
        and len(str(inp)) < 80
    ):
        msg += f" (got {inp!r})"
    return msg


def _known_keys(loc: Sequence[str | int]) -> list[str]:
    """The keys the table at ``loc`` accepts, following pydantic's error location."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        if part in REGISTRY and part not in fields:
            # the discriminator tag pydantic puts in the path
            model = REGISTRY.get(str(part)).config
            continue
        if part not in fields:
            return []
        model = _table_type(fields[part].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


def _table_type(annotation: Any) -> Any:
    """``list[X]``, ``X | None`` -> X: the model a nested table is validated by."""
    for _ in range(4):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        if not args:
            return annotation
        annotation = args[0]
    return annotation


def format_loc(loc: Sequence[str | int]) -> str:
    """('targets', 0, 'checks', 1, 'http', 'url') -> 'targets[0].checks[1].url'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i >= 2 and loc[i - 2] == "checks" and part in REGISTRY:
            pass  # pydantic's discriminator tag, not a key of the file
        else:
            out += ("." if out else "") + part
    return out


def toml_error_line(message: str) -> int | None:
    m = re.search(r"at line (\d+)", message)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------- line lookup


class KeyLocator:
    """Maps key paths like ``targets[1].checks[0].interval`` to TOML line numbers.

    tomllib keeps no positions, so this walks the text once tracking table headers
    and array-of-tables indices. It is best effort (inline tables resolve to their
    key's line); a path it cannot place falls back to its nearest known parent.
    """

    _header = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*([A-Za-z0-9_\"'-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        counters: dict[str, int] = {}
        current = ""
        for n, line in enumerate(text.splitlines(), start=1):
            m = self._header.match(line)
            if m:
                is_array = m.group(1) == "[["
                parts = [p.strip().strip("\"'") for p in m.group(2).split(".")]
                current = self._resolve(parts, counters, is_array)
                self.lines.setdefault(current, n)
                if is_array:  # `targets` itself is where its first [[targets]] is
                    self.lines.setdefault(current.rsplit("[", 1)[0], n)
                continue
            k = self._key.match(line)
            if k:
                key = k.group(1).strip("\"'")
                self.lines.setdefault(f"{current}.{key}" if current else key, n)

    def _resolve(self, parts: list[str], counters: dict[str, int], is_array: bool) -> str:
        path = ""
        for i, part in enumerate(parts):
            path = f"{path}.{part}" if path else part
            last = i == len(parts) - 1
            if last and is_array:
                counters[path] = counters.get(path, -1) + 1
                path = f"{path}[{counters[path]}]"
            elif path in counters:
                path = f"{path}[{counters[path]}]"
        return path

    def line_of(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None
