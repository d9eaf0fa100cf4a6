"""The one redaction rule for everything Guardian shows or writes outward.

``config show``, ``install-service --print``, the logs, the check results the API and the
store carry, reports and notifications all pass through these functions, so a secret is
hidden the same way everywhere. Two complementary rules:

* by *name*: a value whose key looks like a credential (``HF_TOKEN``, ``X-Api-Key``,
  ``Authorization``, ``--password``, ``api.token``) is replaced whole;
* by *shape*, in free text: bearer credentials, URL userinfo, secret query parameters and
  ``NAME=value`` assignments with a credential-looking name.

It prefers over-redaction (``monkey=banana`` loses its value) to a leak. This module
imports nothing from Guardian, so every layer may use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

MASK = "[REDACTED]"

# Key names whose value is a credential: PASSWORD, api_key, X-Auth-Token, client_secret,
# db.pwd, aws_access_key_id, key ... Deliberately not bare "pass" or "sig" inside longer
# words, so "passed: 3" and "signal: 9" in a report stay readable.
_NAME = (
    r"(?:[\w.\-]*(?:password|passwd|passphrase|secret|token|credential|api[_\-]?key"
    r"|private[_\-]?key|access[_\-]?key|auth[_\-]?key|session[_\-]?id)[\w.\-]*"
    r"|[\w.\-]*[_\-.]key|key|pass|pwd|auth|sig|signature|apikey)"
)

# The same idea for a name standing alone (an env var, a header, a dict key, an option):
# here "auth" and "cookie" anywhere count (Authorization, Set-Cookie, X-Auth-User).
_SECRET_NAME = re.compile(
    r"(?i)(?:password|passwd|passphrase|secret|token|credential|api[_\-.]?key|apikey"
    r"|private[_\-.]?key|access[_\-.]?key|auth|cookie|session|signature|dsn"
    r"|(?:^|[_\-.])(?:key|pwd|pass|pw|sig)$)"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization / Proxy-Authorization headers: the whole value, to the end of the line.
    (
        re.compile(r"(?im)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*)[^\r\n]+"),
        r"\1" + MASK,
    ),
    # Bearer credentials wherever they appear (curl -H, logged headers, error messages).
    (re.compile(r"(?i)\b(bearer\s+)(?!\[REDACTED\])[A-Za-z0-9\-._~+/%]+=*"), r"\1" + MASK),
    # userinfo in any URL: scheme://user:password@host -> scheme://[REDACTED]@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@"), r"\1" + MASK + "@"),
    # query/fragment parameters with a sensitive name: ?token=, &api_key=, ;sig=
    (
        re.compile(r"(?i)([?&;#]" + _NAME + r"=)[^&#\s\"'<>]*"),
        r"\1" + MASK,
    ),
    # env-like and JSON-like assignments: PASSWORD=x, "api_key": "x", db_password: 'x'
    (
        re.compile(
            r"(?i)((?<![\w.\-])[\"']?" + _NAME + r"[\"']?\s*[=:]\s*)"
            r"(\[REDACTED\]|\"[^\"\r\n]*\"|'[^'\r\n]*'|[^\s,;&\"'}\]]+)"
        ),
        r"\1" + MASK,
    ),
]

_OPTION = re.compile(r"^(--?[A-Za-z][\w.\-]*)(?:(=)(.*))?$", re.DOTALL)


def is_secret_name(name: str) -> bool:
    """Whether a key, env var, header or option name says its value is a credential."""
    return bool(_SECRET_NAME.search(name))


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[REDACTED]``; idempotent."""
    # Every pattern needs a ':' or '=' (headers, URLs, parameters, assignments) or the
    # word "bearer": text with none of them (most check reasons, e.g. "HTTP 200") has
    # nothing to hide, and skipping five regex passes matters once per check result.
    if ":" not in text and "=" not in text and "bearer" not in text.lower():
        return text
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def redact_url(url: str) -> str:
    """A label for a notification URL that is safe to show or store: its scheme only.

    Apprise URLs carry tokens in the host or path (``discord://id/token``), so nothing
    but the scheme can be shown without knowing every service's URL layout.
    """
    try:
        scheme = urlsplit(url.strip()).scheme
    except ValueError:
        scheme = ""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]{0,31}", scheme):
        return "(invalid url)"
    return f"{scheme.lower()}://{MASK}"


def redact_value(name: str, value: str) -> str:
    """One ``name = value`` pair: the whole value if the name is secret, else by shape."""
    if is_secret_name(name) and value:
        return MASK
    return redact(value)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Environment variables (or HTTP headers) with credential values hidden."""
    return {key: redact_value(key, value) for key, value in env.items()}


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line with ``--token X``, ``--api-key=X`` and secrets by shape hidden."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        if mask_next:  # the value of `--token X`, whatever it looks like
            mask_next = False
            out.append(MASK)
            continue
        m = _OPTION.match(arg)
        if m and is_secret_name(m.group(1).lstrip("-")):
            if m.group(2):
                out.append(f"{m.group(1)}={MASK}")
            else:
                out.append(arg)
                mask_next = True
            continue
        out.append(redact(arg))
    return out


def redact_data(data: Any, name: str = "") -> Any:
    """JSON-like data (dicts, lists, strings, ``SecretStr``) with every secret hidden.

    A value under a secret-looking key is replaced whole; a ``SecretStr`` shows only
    whether it is set (a URL only its scheme); a list of strings is treated as a command
    line; other strings are redacted by shape.
    """
    if isinstance(data, SecretStr):
        secret = data.get_secret_value()
        if not secret:
            return ""
        return redact_url(secret) if "://" in secret else MASK
    if isinstance(data, Mapping):
        return {str(k): redact_data(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        if all(isinstance(item, str) for item in data):
            if name and is_secret_name(name):
                return [MASK if item else item for item in data]
            return redact_argv(data)
        return [redact_data(item, name) for item in data]
    if isinstance(data, str):
        return redact_value(name, data) if name else redact(data)
    if name and is_secret_name(name) and isinstance(data, int | float) and not isinstance(
        data, bool
    ):
        return MASK
    return data
