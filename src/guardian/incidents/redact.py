"""Secret scrubbing for everything Guardian writes outward (reports, notifications, CLI).

Reports quote service logs and check reasons verbatim, and those routinely contain
connection strings, bearer headers and ``PASSWORD=...`` lines. One function applied at
the last moment, to the whole text, is easier to trust than remembering to redact every
field; it prefers over-redaction (``monkey=banana`` loses its value) to a leak.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "[REDACTED]"

# Key names whose value is a credential: PASSWORD, api_key, X-Auth-Token, client_secret,
# db.pwd, aws_access_key_id, key ... Deliberately not bare "pass" or "sig" inside longer
# words, so "passed: 3" and "signal: 9" in a report stay readable.
_NAME = (
    r"(?:[\w.\-]*(?:password|passwd|passphrase|secret|token|credential|api[_\-]?key"
    r"|private[_\-]?key|access[_\-]?key|auth[_\-]?key|session[_\-]?id)[\w.\-]*"
    r"|[\w.\-]*[_\-.]key|key|pass|pwd|auth|sig|signature|apikey)"
)

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization / Proxy-Authorization headers: the whole value, to the end of the line.
    (
        re.compile(r"(?im)\b((?:proxy-)?authorization[\"']?\s*[:=]\s*)[^\r\n]+"),
        r"\1" + MASK,
    ),
    # Bearer credentials wherever they appear (curl -H, logged headers, error messages).
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/%]+=*"), r"\1" + MASK),
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


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[REDACTED]``; idempotent."""
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
