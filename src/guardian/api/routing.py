"""A small declarative route table over Starlette: what FastAPI did for us, without FastAPI.

Each :class:`Endpoint` names its method, path, query/path :class:`Param` s (validated by
pydantic, so the limits, lax parsing and 422 error items are pydantic's, as FastAPI's
were), whether it needs the bearer token, and the response models it documents. The same
table drives serving (:func:`routes`) and the OpenAPI document (:mod:`guardian.api.openapi`),
so the two cannot drift apart. Errors are ``{"detail": ...}`` JSON, as clients expect.
Only the named method is served: ``HEAD`` on a GET route is a 405, as it was under FastAPI.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from guardian.api import models

JSON = "application/json"
Handler = Callable[..., Awaitable[Response]]
TokenSource = Callable[[], str]  # the configured api.token ("" when none)

_MISSING: Any = object()


@dataclass(frozen=True)
class Param:
    """One query or path parameter: its wire name, type and pydantic constraints."""

    name: str  # as sent on the wire (``all``); ``arg`` is the handler's keyword
    location: Literal["query", "path"]
    type: type[Any]
    default: Any = _MISSING  # absent: required (path parameters always are)
    arg: str = ""
    description: str = ""
    ge: int | None = None
    le: int | None = None
    pattern: str | None = None

    @property
    def keyword(self) -> str:
        return self.arg or self.name

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        """Built on first use, so an API that is never called pays nothing for it."""
        limits = Field(ge=self.ge, le=self.le, pattern=self.pattern)
        form: Any = Annotated[self.type, limits]  # built at run time: not a static type
        return TypeAdapter(form)

    def validate(self, raw: str, errors: list[dict[str, Any]]) -> Any:
        try:
            return self.adapter.validate_python(raw)
        except ValidationError as e:
            for item in e.errors(include_url=False):
                errors.append({**item, "loc": [self.location, self.name, *item["loc"]]})
            return None


@dataclass(frozen=True)
class Reply:
    """A documented response: a pydantic model as JSON, or a bare content type."""

    description: str
    model: type[BaseModel] | None = None
    content_type: str = JSON


ERRORS = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    503: "Service Unavailable",
}


def error_replies(*codes: int) -> dict[int, Reply]:
    return {code: Reply(ERRORS[code], models.ErrorResponse) for code in codes}


@dataclass(frozen=True)
class Endpoint:
    """One operation: served by :func:`routes`, documented by the OpenAPI builder."""

    method: Literal["GET", "POST"]
    path: str
    handler: Handler
    replies: Mapping[int, Reply] = field(default_factory=dict)
    params: Sequence[Param] = ()
    tags: Sequence[str] = ()
    auth: bool = False  # needs ``Authorization: Bearer <api.token>``
    with_request: bool = False  # the handler takes the Request as ``request=``
    documented: bool = True

    @property
    def name(self) -> str:
        return self.handler.__name__


def validation_error(errors: list[dict[str, Any]]) -> Response:
    body = json.dumps(
        {"detail": errors}, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
        default=str,
    )
    return Response(body, status_code=422, media_type=JSON)


async def http_error(request: Request, exc: Exception) -> Response:
    """``HTTPException`` -> ``{"detail": ...}`` with its headers (Starlette's is plain text)."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 205, 304) or exc.status_code < 200:  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    body = json.dumps({"detail": exc.detail}, ensure_ascii=False, separators=(",", ":"))
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type=JSON)


BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="guardian"'}


def check_token(request: Request, expected: str) -> None:
    """Raise 403 when no token is configured (never "open"), 401 unless it matches.

    The comparison is constant-time; a header in another scheme counts as no token.
    """
    if not expected:
        raise HTTPException(403, "mutating API disabled: set api.token")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    given = given.strip() if scheme.lower() == "bearer" else ""
    ok = bool(given) and hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
    )
    if not ok:
        raise HTTPException(401, "missing or invalid bearer token", headers=BEARER_CHALLENGE)


def bind(params: Sequence[Param], request: Request) -> tuple[dict[str, Any], list[Any]]:
    """The handler's keyword arguments from the request, and every validation error."""
    values: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for p in params:
        source = request.path_params if p.location == "path" else request.query_params
        raw = source.get(p.name)
        values[p.keyword] = p.default if raw is None else p.validate(raw, errors)
    return values, errors


def _endpoint(e: Endpoint, token: TokenSource) -> Callable[[Request], Awaitable[Response]]:
    if not (e.params or e.auth or e.with_request):
        handler = e.handler

        async def plain(request: Request) -> Response:
            return await handler()

        return plain

    async def call(request: Request) -> Response:
        if e.auth:
            check_token(request, token())
        values, errors = bind(e.params, request)
        if errors:
            return validation_error(errors)
        if e.with_request:
            values["request"] = request
        return await e.handler(**values)

    return call


def routes(endpoints: Sequence[Endpoint], token: TokenSource) -> list[Route]:
    """Starlette routes for ``endpoints``, each answering only its own method."""
    out = []
    for e in endpoints:
        route = Route(e.path, _endpoint(e, token), methods=[e.method], name=e.name)
        route.methods = {e.method}  # Starlette adds HEAD to GET routes; FastAPI did not
        out.append(route)
    return out
