"""Guardian's HTTP API: health and probes, status, incidents, metrics, two guarded actions.

Every read is answered from cached state (see :mod:`guardian.api.models`); responses are
serialised by pydantic-core directly, skipping FastAPI's generic encoder, which keeps
``/api/health`` well under a millisecond. :class:`RequestGuard` refuses unknown Host
headers (DNS rebinding) and caps requests in progress; serving itself (own thread, bounded
connections and headers) is :mod:`guardian.api.server`. The two mutating endpoints need
a bearer token (``api.token``) and are disabled outright when none is configured: an
empty token must never mean "open".
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from guardian.api import models
from guardian.api.context import GuardianView
from guardian.api.metrics import Metrics
from guardian.api.page import add_page_routes
from guardian.api.server import ApiServer, serve
from guardian.config import ApiSection

log = logging.getLogger("guardian.api")

JSON = "application/json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # config.TARGET_NAME_RE


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type=JSON)


def _err(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": models.ErrorResponse} for code in codes}


_bearer = HTTPBearer(auto_error=False, description="api.token from Guardian's config")


def _token_guard(view: GuardianView) -> Any:
    """A dependency enforcing ``Authorization: Bearer <api.token>``."""

    def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        secret = view.config.api.token
        expected = secret.get_secret_value() if secret is not None else ""
        if not expected:
            raise HTTPException(403, "mutating API disabled: set api.token")
        given = credentials.credentials if credentials is not None else ""
        ok = bool(given) and hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
        )
        if not ok:
            raise HTTPException(
                401,
                "missing or invalid bearer token",
                headers={"WWW-Authenticate": 'Bearer realm="guardian"'},
            )

    return check


def create_app(view: GuardianView, *, metrics: Metrics | None = None) -> FastAPI:
    """The API over ``view``. Pass ``metrics`` to share one registry; else one is made."""
    app = FastAPI(
        title="Guardian",
        summary="Self-healing watchdog for a local AI-generation stack",
        version="1",
        docs_url="/docs",
        redoc_url=None,
    )
    metrics = metrics or Metrics(view)
    app.state.metrics = metrics
    authorized = Depends(_token_guard(view))
    known = {t.name for t in view.config.targets}

    @app.get(
        "/api/health",
        response_model=models.HealthResponse,
        responses={503: {"model": models.HealthResponse, "description": "stack unhealthy"}},
        tags=["health"],
    )
    async def health() -> Response:
        """Aggregated stack health; 503 when a critical target is failing."""
        body = models.build_health(view, datetime.now(UTC))
        return _json(body, 503 if body.status == "unhealthy" else 200)

    @app.get("/livez", response_model=models.Probe, tags=["health"])
    async def livez() -> Response:
        """Guardian itself is serving."""
        return _json(models.Probe(status="alive"))

    @app.get(
        "/readyz",
        response_model=models.Probe,
        responses={503: {"model": models.Probe, "description": "unhealthy or no results"}},
        tags=["health"],
    )
    async def readyz() -> Response:
        """Ready when results exist, the stack is healthy or degraded and no critical
        target is still starting (degraded then, but not serving yet)."""
        if not view.state.results():
            return _json(models.Probe(status="starting", ready=False), 503)
        overall, not_up = models.stack_health(view)
        if not_up & {t.name for t in view.config.targets if t.critical}:
            return _json(models.Probe(status="starting", ready=False), 503)
        ready = overall != "unhealthy"
        return _json(models.Probe(status=overall, ready=ready), 200 if ready else 503)

    @app.get("/api/status", response_model=models.StatusResponse, tags=["status"])
    async def status() -> Response:
        """Every target, the latest result of each check with a short history."""
        return _json(models.build_status(view, datetime.now(UTC)))

    @app.get("/api/incidents", response_model=models.IncidentList, tags=["incidents"])
    async def incidents(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        include_all: Annotated[
            bool, Query(alias="all", description="include resolved incidents")
        ] = False,
    ) -> Response:
        found = [models.incident_model(i) for i in view.incidents(limit, include_all)]
        return _json(models.IncidentList(incidents=[i for i in found if i is not None]))

    @app.get(
        "/api/incidents/{incident_id}",
        response_model=models.IncidentDetail,
        responses=_err(404),
        tags=["incidents"],
    )
    async def incident(
        incident_id: Annotated[int, Path(ge=1, le=MAX_INCIDENT_ID)],
    ) -> Response:
        data = view.incident(incident_id)
        found = models.incident_model(data, detail=True) if data is not None else None
        if found is None:
            raise HTTPException(404, f"no incident {incident_id}")
        return _json(found)

    @app.post(
        "/api/targets/{name}/restart",
        response_model=models.RestartResponse,
        responses=_err(401, 403, 404, 503),
        dependencies=[authorized],
        tags=["actions"],
    )
    async def restart(
        request: Request, name: Annotated[str, Path(pattern=NAME_PATTERN)]
    ) -> Response:
        """Restart a target's service now (resets its circuit breaker)."""
        if name not in known:
            raise HTTPException(404, f"unknown target {name!r}")
        client = request.client.host if request.client else None
        log.info(
            "restart of %s requested via API",
            name,
            extra={"target": name, "event": "api_restart", "client": client},
        )
        try:
            message = await view.restart(name)
        except KeyError:
            raise HTTPException(404, f"unknown target {name!r}") from None
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from None
        return _json(models.RestartResponse(target=name, message=message))

    @app.post(
        "/api/checks/run",
        response_model=models.RunChecksResponse,
        responses=_err(401, 403, 404, 503),
        dependencies=[authorized],
        tags=["actions"],
    )
    async def run_checks(
        target: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    ) -> Response:
        """Run every check (of one target) now and return the fresh results."""
        if target is not None and target not in known:
            raise HTTPException(404, f"unknown target {target!r}")
        try:
            results = await view.run_checks(target)
        except KeyError:
            raise HTTPException(404, f"unknown target {target!r}") from None
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from None
        return _json(
            models.RunChecksResponse(
                status=view.state.overall(), results=[models.check_model(r) for r in results]
            )
        )

    @app.get(
        "/api/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["metrics"],
    )
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
        tags=["metrics"],
    )
    async def prometheus() -> Response:
        """Prometheus text exposition format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    add_page_routes(app, view)
    app.add_middleware(RequestGuard, config=view.config.api)
    return app


# --------------------------------------------------------------------------- guard


MAX_INCIDENT_ID = 2**63 - 1  # SQLite INTEGER; larger ids cannot exist


def allowed_hosts(config: ApiSection) -> frozenset[str]:
    """Host header names this API answers to (lowercase, no port, IPv6 without brackets)."""
    names = {"localhost", "127.0.0.1", "::1", config.host.strip("[]").lower()}
    names.update(h.strip().strip("[]").lower() for h in config.allowed_hosts)
    return frozenset(names)


def host_of(value: str) -> str:
    """``Host`` header value -> bare lowercase name: ``[::1]:8787`` -> ``::1``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class RequestGuard:
    """ASGI middleware: Host allowlist (DNS rebinding) and a cap on requests in progress.

    A DNS-rebinding page reaches 127.0.0.1 under its *own* name, which it cannot make a
    loopback name or an IP literal; so only those, the configured host and
    ``api.allowed_hosts`` are served (421 otherwise), GET routes included. A request
    without a Host header is not from a browser and is served. On a wildcard bind
    (``0.0.0.0``/``::``, which needs a token) any IP literal is accepted, since users
    reach such a Guardian by its address.
    """

    def __init__(self, app: ASGIApp, config: ApiSection) -> None:
        self.app = app
        self.allowed = allowed_hosts(config)
        self.any_ip = config.host.strip("[]") in ("0.0.0.0", "::")
        self.max_in_flight = config.max_concurrency
        self.in_flight = 0

    def host_allowed(self, raw: bytes | None) -> bool:
        if raw is None:
            return True
        name = host_of(raw.decode("latin-1"))
        return name in self.allowed or (self.any_ip and _is_ip_literal(name))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        if not self.host_allowed(host):
            await _send_json(send, 421, "unknown Host header: request refused")
            return
        if self.in_flight >= self.max_in_flight:
            await _send_json(send, 503, "too many requests in progress", retry_after=True)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _send_json(send: Send, status: int, detail: str, *, retry_after: bool = False) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


__all__ = ["ApiServer", "RequestGuard", "create_app", "serve"]
