"""Guardian's HTTP API: health and probes, status, incidents, metrics, two guarded actions.

Every read is answered from cached state (see :mod:`guardian.api.views`) and serialised
by pydantic-core straight to bytes, which keeps ``/api/health`` well under a millisecond.
The operations are one declarative table (:mod:`guardian.api.routing`) served by
Starlette; the same table and the response models make ``/openapi.json``
(:mod:`guardian.api.openapi`) and the offline ``/docs`` page, both built on first request.
:class:`RequestGuard` refuses unknown Host headers (DNS rebinding) and caps requests in
progress; serving itself (own thread, bounded connections and headers) is
:mod:`guardian.api.server`. The two mutating endpoints need a bearer token
(``api.token``) and are disabled outright when none is configured: an empty token must
never mean "open".
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from guardian.api import models, views
from guardian.api.context import GuardianView
from guardian.api.metrics import Metrics
from guardian.api.page import html_page, page_endpoints
from guardian.api.queue_routes import queue_endpoints
from guardian.api.restarts import WATCH
from guardian.api.routing import JSON, Endpoint, Param, Reply, error_replies, http_error, routes
from guardian.api.server import ApiServer, serve
from guardian.config.schema import ApiSection

log = logging.getLogger("guardian.api")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # config.TARGET_NAME_RE
MAX_INCIDENT_ID = 2**63 - 1  # SQLite INTEGER; larger ids cannot exist
OK = "Successful Response"
TITLE, SUMMARY = "Guardian", "Self-healing watchdog for a local AI-generation stack"
ACTIONS = error_replies(401, 403, 404, 503)
PROMETHEUS = {200: Reply(OK, content_type="text/plain")}

INCIDENT_ID = Param("incident_id", "path", int, ge=1, le=MAX_INCIDENT_ID)


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type=JSON)


def _ok(model: type[BaseModel]) -> dict[int, Reply]:
    return {200: Reply(OK, model)}


def api_endpoints(view: GuardianView, metrics: Metrics) -> list[Endpoint]:
    """Every operation of the API over ``view`` (the page's included)."""
    known = {t.name for t in view.config.targets}

    async def health() -> Response:
        """Aggregated stack health; 503 when a critical target is failing."""
        body = views.build_health(view, datetime.now(UTC))
        return _json(body, 503 if body.status == "unhealthy" else 200)

    async def livez() -> Response:
        """Guardian itself is serving."""
        return _json(models.Probe(status="alive"))

    async def readyz() -> Response:
        """Ready when results exist, the stack is healthy or degraded and no critical
        target is still starting (degraded then, but not serving yet)."""
        if not view.state.results():
            return _json(models.Probe(status="starting", ready=False), 503)
        overall, not_up = views.stack_health(view)
        if not_up & {t.name for t in view.config.targets if t.critical}:
            return _json(models.Probe(status="starting", ready=False), 503)
        ready = overall != "unhealthy"
        return _json(models.Probe(status=overall, ready=ready), 200 if ready else 503)

    async def status() -> Response:
        """Every target, the latest result of each check with a short history."""
        return _json(views.build_status(view, datetime.now(UTC)))

    async def incidents(limit: int, include_all: bool) -> Response:
        """The newest incidents, open ones only unless ``all=true``."""
        found = [views.incident_model(i) for i in view.incidents(limit, include_all)]
        return _json(models.IncidentList(incidents=[i for i in found if i is not None]))

    async def incident(incident_id: int) -> Response:
        """One incident with its timeline and Markdown report."""
        data = view.incident(incident_id)
        found = views.incident_model(data, detail=True) if data is not None else None
        if found is None:
            raise HTTPException(404, f"no incident {incident_id}")
        return _json(found)

    async def restart(request: Request, name: str, when_idle: bool) -> Response:
        """Restart a target's service (resets its circuit breaker): 202 at once, the
        restart goes on (requests while one is in flight join it: same id); ``when_idle``:
        once the ComfyUI prompt running now has finished (the queue journal restores the
        rest). Follow it in ``/api/status`` (the target's ``recovery``)."""
        if name not in known:
            raise HTTPException(404, f"unknown target {name!r}")
        client = request.client.host if request.client else None
        log.info(
            "restart of %s requested via API",
            name,
            extra={"target": name, "event": "api_restart", "client": client},
        )
        try:
            if when_idle:
                message = (await view.queue_command(name, "restart_when_idle", None)).message
                accepted = models.RestartResponse(target=name, state="when_idle",
                                                  message=message or "", watch=WATCH)
            else:
                ticket = await view.request_restart(name)
                accepted = models.RestartResponse(
                    target=name, state="coalesced" if ticket.coalesced else "queued",
                    id=ticket.id, message=ticket.message, watch=WATCH)
        except KeyError:
            raise HTTPException(404, f"unknown target {name!r} (or it has no queue journal)"
                                ) from None
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from None
        return _json(accepted, 202)

    async def run_checks(target: str | None) -> Response:
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
                status=view.state.overall(), results=[views.check_model(r) for r in results]
            )
        )

    async def prometheus() -> Response:
        """Prometheus text exposition format."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    limit = Param("limit", "query", int, 50, ge=1, le=1000)
    include_all = Param("all", "query", bool, False, arg="include_all",
                        description="include resolved incidents")
    name = Param("name", "path", str, pattern=NAME_PATTERN)
    target = Param("target", "query", str, None, pattern=NAME_PATTERN)
    when_idle = Param("when_idle", "query", bool, False,
                      description="wait until the running ComfyUI prompt has finished")
    unhealthy = Reply("stack unhealthy", models.HealthResponse)
    not_ready = Reply("unhealthy or no results", models.Probe)
    return [
        Endpoint("GET", "/api/health", health, {**_ok(models.HealthResponse), 503: unhealthy},
                 tags=["health"]),
        Endpoint("GET", "/livez", livez, _ok(models.Probe), tags=["health"]),
        Endpoint("GET", "/readyz", readyz, {**_ok(models.Probe), 503: not_ready}, tags=["health"]),
        Endpoint("GET", "/api/status", status, _ok(models.StatusResponse), tags=["status"]),
        Endpoint("GET", "/api/incidents", incidents, _ok(models.IncidentList),
                 params=[limit, include_all], tags=["incidents"]),
        Endpoint("GET", "/api/incidents/{incident_id}", incident,
                 {**_ok(models.IncidentDetail), **error_replies(404)}, params=[INCIDENT_ID],
                 tags=["incidents"]),
        Endpoint("POST", "/api/targets/{name}/restart", restart,
                 {202: Reply("accepted: queued, or joined to the restart in flight",
                             models.RestartResponse), **ACTIONS}, params=[name, when_idle],
                 tags=["actions"],
                 auth=True, with_request=True),
        Endpoint("POST", "/api/checks/run", run_checks,
                 {**_ok(models.RunChecksResponse), **ACTIONS}, params=[target],
                 tags=["actions"], auth=True),
        Endpoint("GET", "/metrics", prometheus, PROMETHEUS, tags=["metrics"]),
        Endpoint("GET", "/api/metrics", prometheus, PROMETHEUS, tags=["metrics"]),
        *queue_endpoints(view, name, _ok),
        *page_endpoints(view, INCIDENT_ID),
    ]


def _described(endpoints: list[Endpoint]) -> list[Endpoint]:
    """``/openapi.json`` and ``/docs`` for ``endpoints``, each built once, when first asked."""
    built: dict[str, bytes] = {}

    def document() -> dict[str, Any]:
        from guardian.api import openapi  # imported when first asked for, not at start-up

        return openapi.build(endpoints, title=TITLE, summary=SUMMARY, version="1",
                             security_description="api.token from Guardian's config")

    def cached(key: str, make: Callable[[], bytes]) -> bytes:
        if key not in built:
            built[key] = make()
        return built[key]

    async def openapi_json() -> Response:
        body = cached("json", lambda: json.dumps(document(), separators=(",", ":")).encode())
        return Response(body, media_type=JSON)

    async def docs() -> Response:
        from guardian.api import apidocs

        return html_page(cached("html", lambda: apidocs.render(document()).encode()))

    return [Endpoint("GET", "/openapi.json", openapi_json, documented=False),
            Endpoint("GET", "/docs", docs, documented=False)]


def create_app(view: GuardianView, *, metrics: Metrics | None = None) -> Starlette:
    """The API over ``view``. Pass ``metrics`` to share one registry; else one is made."""
    metrics = metrics or Metrics(view)
    endpoints = api_endpoints(view, metrics)
    endpoints += _described(endpoints)

    def token() -> str:
        secret = view.config.api.token
        return secret.get_secret_value() if secret is not None else ""

    app = Starlette(
        routes=routes(endpoints, token),
        middleware=[Middleware(RequestGuard, config=view.config.api)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.metrics = metrics
    return app


# --------------------------------------------------------------------------- guard



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
