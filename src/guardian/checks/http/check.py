"""HTTP health endpoint check.

One GET/HEAD per run, judged in this order (the first failure wins; degradations add up):

1. Transport: refused, DNS, TLS, timeouts, resets, garbage bytes, redirect loops and bodies
   over ``max_body_bytes`` are *failed* with a reason. Redirects are followed by hand so a
   redirect response's body is never read at all.
2. Status code: in ``expect_status``, or any 2xx when that list is empty; otherwise
   *failed* ``HTTP <code>``.
3. ``body_contains`` missing → *failed*.
4. JSON. The body is parsed when it is not empty. Invalid JSON *fails* when the server
   says it is JSON (``Content-Type: ...json``) or when ``conditions`` need it; otherwise it
   is a plain-text health endpoint and a 2xx is enough. With ``json_status``, a top-level
   object's ``status`` (or else ``overall``) decides: ``healthy`` →
   ok, ``degraded`` → *degraded*, anything else (``unhealthy``, ``ok``, ``fail``, a
   number, a nested object) → *failed* ``status "unhealthy"``. JSON without either field
   (or a list or string at the top) says nothing about health, so it is ok.
5. ``conditions``: each dotted path must resolve (through objects and list indices) and
   satisfy its operator, else *failed* with the path, the expectation and what was found.
6. ``max_response_ms`` exceeded (headers and body) → *degraded*.

Values: ``status_code``, ``response_ms``, ``body_bytes``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import socket
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, NoReturn
from urllib.parse import quote, urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from guardian.checks.base import CheckConfigBase, CheckContext, TargetUrl
from guardian.checks.http.body import BodyTooLarge, read_capped
from guardian.checks.http.wire import ConnectTimeout, WireClient, WireError
from guardian.core.result import Outcome, Reading, ReasonClass, Status, Value, worst

if TYPE_CHECKING:
    import httpx

# The original plan's contract, strictly: anything but these two words is a failure.
# (An endpoint that says "UP"/"pass" can set json_status = false and use conditions.)
OK_WORDS = frozenset({"healthy"})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
DEGRADED_WORDS = frozenset({"degraded"})


class JsonCondition(BaseModel):
    """A condition on the JSON body, e.g. ``services.OrchestratorComfyUI.running == true``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    path: str = Field(min_length=1, description="dotted path; list items by index (a.0.b)")
    op: Literal["==", "!=", "contains", "<=", ">=", "<", ">", "exists"] = "=="
    value: Any = None

    def describe(self) -> str:
        if self.op == "exists":
            return f"{self.path} exists" if self.value is not False else f"{self.path} absent"
        return f"{self.path} {self.op} {json.dumps(self.value)}"


class HttpCheckConfig(CheckConfigBase):
    kind: Literal["http"] = "http"
    url: TargetUrl
    method: Literal["GET", "HEAD"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] = Field(
        default_factory=list, description="accepted status codes; empty means any 2xx"
    )
    json_status: bool = Field(
        True, description="read `status`/`overall` (healthy|degraded|unhealthy) from JSON"
    )
    conditions: list[JsonCondition] = Field(default_factory=list)
    body_contains: str | None = None
    max_response_ms: float | None = Field(None, gt=0, le=3_600_000)
    max_body_bytes: int = Field(1024 * 1024, gt=0, le=1 << 30, description="stop reading past this")
    connect_timeout: float | None = Field(None, gt=0, le=3600, description="defaults to timeout")
    follow_redirects: bool = True
    max_redirects: int = Field(5, ge=0, le=30)
    verify_tls: bool = True

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, v: dict[str, str]) -> dict[str, str]:
        # RFC 9110 names (tokens), values without CR/LF/NUL: httpx refuses anything else
        # on every run, so it is a config error, named at load time.
        for name, value in v.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name!r}: value contains a line break or NUL")
        return v

    @field_validator("expect_status")
    @classmethod
    def _valid_statuses(cls, v: list[int]) -> list[int]:
        bad = [code for code in v if not 100 <= code <= 599]
        if bad:
            raise ValueError(f"HTTP status codes are 100-599 (got {bad[0]})")
        return v

    @model_validator(mode="after")
    def _head_has_no_body(self) -> HttpCheckConfig:
        if self.method == "HEAD" and (self.conditions or self.body_contains is not None):
            raise ValueError("method HEAD returns no body: drop conditions/body_contains")
        return self


class _Missing:
    """A path that does not resolve (distinct from a JSON null)."""

    def __init__(self, why: str) -> None:
        self.why = why


def resolve_path(doc: Any, path: str) -> Any:
    """Follow a dotted path through objects and list indices; a :class:`_Missing` if not."""
    current = doc
    walked: list[str] = []
    for part in path.split("."):
        where = ".".join(walked) or "the top"
        if isinstance(current, dict):
            if part not in current:
                return _Missing(f"no key {part!r} at {where}")
            current = current[part]
        elif isinstance(current, list):
            if not part.lstrip("-").isdigit():
                return _Missing(f"{where} is a list, {part!r} is not an index")
            index = int(part)
            if not -len(current) <= index < len(current):
                return _Missing(f"index {index} out of range at {where} (length {len(current)})")
            current = current[index]
        else:
            return _Missing(f"{where} is {_json_type(current)}, not an object or list")
        walked.append(part)
    return current


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1`` (Python says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def evaluate_condition(doc: Any, cond: JsonCondition) -> str | None:
    """``None`` when ``cond`` holds on ``doc``, else why not (for the failed reason)."""
    found = resolve_path(doc, cond.path)
    if cond.op == "exists":
        want = cond.value is not False
        present = not isinstance(found, _Missing)
        if present == want:
            return None
        why = found.why if isinstance(found, _Missing) else "it is present"
        return f"{cond.describe()}: {why}"
    if isinstance(found, _Missing):
        return f"{cond.describe()}: {found.why}"
    shown = _short(found)
    if cond.op in ("==", "!="):
        equal = _json_equal(found, cond.value)
        if equal == (cond.op == "=="):
            return None
        return f"{cond.describe()}: got {shown}"
    if cond.op == "contains":
        if isinstance(found, str) and isinstance(cond.value, str):
            held = cond.value in found
        elif isinstance(found, list):
            held = any(_json_equal(item, cond.value) for item in found)
        elif isinstance(found, dict) and isinstance(cond.value, str):
            held = cond.value in found
        else:
            return f"{cond.describe()}: cannot search {_json_type(found)} ({shown})"
        return None if held else f"{cond.describe()}: got {shown}"
    # ordering operators: numbers only, so "10" < "9" never sneaks through
    if not _is_number(found) or not _is_number(cond.value):
        return f"{cond.describe()}: {shown} is {_json_type(found)}, not a number"
    a, b = float(found), float(cond.value)
    held = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[cond.op]
    return None if held else f"{cond.describe()}: got {shown}"


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_status_outcome(doc: Any) -> tuple[Status, str] | None:
    """The health a body's ``status``/``overall`` field declares; ``None`` if it has none."""
    if not isinstance(doc, dict):
        return None
    for key in ("status", "overall"):
        if key in doc:
            raw = doc[key]
            word = raw.strip().lower() if isinstance(raw, str) else None
            if word in OK_WORDS:
                return Status.OK, ""
            if word in DEGRADED_WORDS:
                return Status.DEGRADED, f"{key} {_short(raw)}"
            return Status.FAILED, f"{key} {_short(raw)}"
    return None


class TooManyRedirects(Exception):
    """More hops than ``max_redirects`` (redirects are followed by hand)."""


INVALID: ReasonClass = "invalid_response"

# This check's own reason vocabulary (describe_transport_error, describe_httpx_error, the
# wire client's messages) in classes, first match wins: the check that wrote a reason
# classifies it, so nothing downstream guesses from text.
_TRANSPORT_RULES: tuple[tuple[ReasonClass, re.Pattern[str]], ...] = (
    ("timeout", re.compile(r"timed? ?out|timeout")),
    ("connection", re.compile(
        r"connection|connect failed|refused|reset by peer|dns lookup|unreachable|tls"
    )),
    ("http_status", re.compile(r"\bhttp [1-5]\d\d\b")),
    ("invalid_response", re.compile(r"invalid|expected a json|not an object|is missing")),
)


def transport_class(reason: str) -> ReasonClass:
    """The class of a reason this check wrote about a request that failed."""
    text = reason.lower()
    return next((cls for cls, rule in _TRANSPORT_RULES if rule.search(text)), "other")


def invalid(reason: str, **values: Value) -> Outcome:
    return Outcome.failed(reason, **values).tagged(reason_class=INVALID)


def transport_failure(reason: str, **values: Value) -> Outcome:
    return Outcome.failed(reason, **values).tagged(reason_class=transport_class(reason))


class HopFailed(Exception):
    """An httpx (TLS) hop failed; the message is the reason."""

    def __init__(self, reason: str, *, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.timed_out = timed_out


def describe_transport_error(exc: BaseException, cfg: HttpCheckConfig) -> str:
    """A short, specific reason for a request that never produced a usable response."""
    if isinstance(exc, TooManyRedirects):
        return f"too many redirects (more than {cfg.max_redirects})"
    text = str(exc) or type(exc).__name__
    return _from_cause_chain(exc, cfg) or f"{type(exc).__name__}: {text}"


def describe_httpx_error(exc: httpx.HTTPError, cfg: HttpCheckConfig) -> str:
    """:func:`describe_transport_error` for what an httpx (TLS) hop raised."""
    from guardian.checks.http.httpxlib import httpx

    if isinstance(exc, httpx.ConnectTimeout):
        return f"connect timed out after {cfg.connect_timeout or cfg.timeout:g}s"
    if isinstance(exc, httpx.TimeoutException):
        return f"read timed out after {cfg.timeout:g}s"
    from_chain = _from_cause_chain(exc, cfg)
    if from_chain is not None:
        return from_chain
    text = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.ConnectError):
        lowered = text.lower()
        if "refused" in lowered:
            return "connection refused"
        if "name or service" in lowered or "getaddrinfo" in lowered or "nodename" in lowered:
            return f"DNS lookup failed for {_host(cfg.url)}: {text}"
        return f"connect failed: {text}"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"invalid HTTP response: {text}"
    if isinstance(exc, httpx.ReadError):
        return f"connection broken while reading: {text}"
    return f"{type(exc).__name__}: {text}"


def _from_cause_chain(exc: BaseException, cfg: HttpCheckConfig) -> str | None:
    for inner in _cause_chain(exc):
        if isinstance(inner, ssl.SSLCertVerificationError):
            return f"TLS certificate rejected: {inner.verify_message or inner.reason}"
        if isinstance(inner, ssl.SSLError):
            return f"TLS error: {inner.reason or inner}"
        if isinstance(inner, socket.gaierror):
            return f"DNS lookup failed for {_host(cfg.url)}: {inner.strerror or inner}"
        if isinstance(inner, ConnectionRefusedError):
            return "connection refused"
        if isinstance(inner, ConnectionResetError):
            return "connection reset by peer"
    return None


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


# RFC 3986 characters allowed unescaped in a path / query (``%`` keeps existing escapes).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


@functools.lru_cache(maxsize=4096)  # pure, and asked again on every run of a check
def wire_address(url: str) -> tuple[str, int, str]:
    """Host, port and request target (path + query, percent-encoded) of an http:// URL."""
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")
    target = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_QUERY_SAFE)
    return host, parts.port or 80, target


def _cause_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _looks_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


@functools.cache
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One TLS context for every http check: building one per client costs ~0.8 MiB and
    ~20 ms (the CA bundle is parsed each time), which is most of Guardian's memory at
    hundreds of targets."""
    if verify:
        return ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class HttpCheck:
    """Runtime of one ``kind = "http"`` check.

    Plain ``http://`` hops go through :class:`~guardian.checks.http.wire.WireClient`, one
    kept-alive connection (closed after any failure, so the next run proves a fresh
    connect); ``https://`` hops through an httpx client made on first use. No trust_env: a
    proxy from the environment must not stand between Guardian and a local service.
    """

    def __init__(self, config: HttpCheckConfig, ctx: CheckContext) -> None:
        self.config = config
        self._ctx = ctx
        self._url = config.url
        self._wire = WireClient(config.headers)
        self._tls_client: httpx.AsyncClient | None = None

    async def run(self) -> Outcome:
        cfg = self.config
        clock = self._ctx.clock
        started = clock.monotonic()

        def elapsed_ms() -> float:
            return round((clock.monotonic() - started) * 1000.0, 1)

        stall = self._ctx.stall
        mark = stall.mark() if stall is not None else 0.0

        def timed_out(reason: str) -> Outcome:
            # A deadline that passed while Guardian itself could not run says nothing
            # about the target: the same rule as the engine's hard timeout.
            own = stall.own_fault(mark, budget) if stall is not None else None
            if own is not None:
                return Outcome.skipped(own, timeout_s=cfg.timeout, response_ms=elapsed_ms())
            return Outcome.failed(reason, response_ms=elapsed_ms()).tagged(reason_class="timeout")

        # Our own deadline, a little inside the engine's, so a slow drip ends as a clear
        # "timed out" outcome with what we measured instead of a bare cancellation.
        budget = cfg.timeout * 0.95
        try:
            async with asyncio.timeout(budget):
                code, content_type, body = await self._fetch()
        except TimeoutError:
            await self._wire.aclose()
            return timed_out(f"timed out after {cfg.timeout:g}s")
        except BodyTooLarge as exc:
            return Outcome.failed(
                str(exc), response_ms=elapsed_ms(), body_bytes=exc.limit
            ).tagged(reason_class="invalid_response")
        except ConnectTimeout as exc:
            return timed_out(str(exc))
        except WireError as exc:
            return transport_failure(str(exc), response_ms=elapsed_ms())
        except HopFailed as exc:
            if exc.timed_out:
                return timed_out(str(exc))
            return transport_failure(str(exc), response_ms=elapsed_ms())
        except (TooManyRedirects, OSError, ssl.SSLError) as exc:
            reason = describe_transport_error(exc, cfg)
            return transport_failure(reason, response_ms=elapsed_ms())
        values: dict[str, Value] = {
            "status_code": code,
            "response_ms": elapsed_ms(),
            "body_bytes": len(body),
        }
        return self._judge(code, content_type, body, values)

    async def _fetch(self) -> tuple[int, str, bytes]:
        """Send, following redirects by hand; the final status, content type and body."""
        cfg = self.config
        url = self._url
        hops = 0
        while True:
            if urlsplit(url).scheme.lower() == "http":
                code, headers, body = await self._wire_hop(url)
            else:
                code, headers, body = await self._tls_hop(url)
            if self._follows(code, headers):
                hops += 1
                if hops > cfg.max_redirects:
                    raise TooManyRedirects("redirect loop")
                url = urljoin(url, headers["location"])
                continue
            return code, headers.get("content-type", ""), body

    def _follows(self, code: int, headers: Mapping[str, str]) -> bool:
        return self.config.follow_redirects and code in REDIRECT_CODES and "location" in headers

    async def _wire_hop(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        """One plain-http exchange; a body that is not to be read (HEAD, redirect) is b""."""
        cfg = self.config
        host, port, target = wire_address(url)
        response = await self._wire.request(
            cfg.method, host, port, target,
            limit=cfg.max_body_bytes,
            connect_timeout=cfg.connect_timeout or cfg.timeout,
            skip_body=self._follows,
        )  # fmt: skip
        return response.status, response.headers, response.body or b""

    async def _tls_hop(self, url: str) -> tuple[int, Mapping[str, str], bytes]:
        cfg = self.config
        from guardian.checks.http.httpxlib import httpx  # only https targets load httpx

        if self._tls_client is None:
            # No keep-alive: an aborted stream must never leave a half-read connection.
            self._tls_client = httpx.AsyncClient(
                timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout or cfg.timeout),
                limits=httpx.Limits(max_connections=2, max_keepalive_connections=0),
                headers=cfg.headers,
                verify=_tls_context(cfg.verify_tls),
                follow_redirects=False,
                trust_env=False,
            )
        client = self._tls_client
        try:
            response = await client.send(client.build_request(cfg.method, url), stream=True)
            try:
                headers = {k.lower(): v for k, v in response.headers.items()}
                skip = cfg.method == "HEAD" or self._follows(response.status_code, headers)
                body = b"" if skip else await read_capped(response, cfg.max_body_bytes)
                return response.status_code, headers, body
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            timed_out = isinstance(exc, httpx.TimeoutException)
            raise HopFailed(describe_httpx_error(exc, cfg), timed_out=timed_out) from exc

    def _judge(
        self, code: int, content_type: str, body: bytes, values: dict[str, Value]
    ) -> Outcome:
        cfg = self.config
        accepted = code in cfg.expect_status if cfg.expect_status else 200 <= code < 300
        if not accepted:
            return Outcome.failed(f"HTTP {code}", **values).tagged(reason_class="http_status")
        text = body.decode("utf-8", errors="replace")
        if cfg.body_contains is not None and cfg.body_contains not in text:
            return invalid(f"body does not contain {cfg.body_contains!r}", **values)

        problems: list[tuple[Status, str]] = []
        if cfg.json_status or cfg.conditions:
            doc: Any = None
            parsed = False
            if body.strip():
                try:
                    doc = json.loads(text, parse_constant=_reject_constant)
                    parsed = True
                except ValueError as exc:
                    if _looks_json(content_type) or cfg.conditions:
                        return invalid(f"invalid JSON body: {exc}", **values)
            elif cfg.conditions:
                return invalid("empty body, JSON conditions cannot hold", **values)
            if parsed and cfg.json_status:
                declared = json_status_outcome(doc)
                if declared is not None and declared[0] is not Status.OK:
                    if declared[0] is Status.FAILED:
                        return invalid(declared[1], **values)
                    problems.append(declared)
            for cond in cfg.conditions:
                why = evaluate_condition(doc, cond)
                if why is not None:
                    return invalid(f"condition failed: {why}", **values)

        response_ms = values["response_ms"]
        if (
            cfg.max_response_ms is not None
            and isinstance(response_ms, float)
            and response_ms > cfg.max_response_ms
        ):
            problems.append(
                (Status.DEGRADED, f"slow: {response_ms:g} ms > {cfg.max_response_ms:g} ms")
            )
        if not problems:
            return Outcome.ok(f"HTTP {code}", **values)
        status = worst(s for s, _ in problems)
        # What is left: a 2xx/3xx answer too slow, or a status the JSON body declared.
        return Outcome(status, "; ".join(r for _, r in problems), values).tagged(
            reason_class=transport_class("; ".join(r for _, r in problems))
        )

    async def aclose(self) -> None:
        await self._wire.aclose()
        if self._tls_client is not None:
            await self._tls_client.aclose()


def _reject_constant(name: str) -> NoReturn:
    """NaN/Infinity are not JSON; a server sending them is not speaking JSON."""
    raise ValueError(f"{name} is not valid JSON")


READINGS = (
    Reading("status_code", "count", doc="the final response's HTTP status"),
    Reading("response_ms", "ms", doc="time to the whole answer"),
    Reading("body_bytes", "count", doc="size of the body read"),
)


def create(cfg: HttpCheckConfig, ctx: CheckContext) -> HttpCheck:
    return HttpCheck(cfg, ctx)
