"""Guardian's HTTP API: health and probes, status, incidents, metrics, two guarded actions.

Every read is answered from cached state (see :mod:`guardian.api.models`); responses are
serialised by pydantic-core directly, skipping FastAPI's generic encoder, which keeps
``/api/health`` well under a millisecond. The two mutating endpoints need a bearer token
(``api.token``) and are disabled outright when none is configured: an empty token must
never mean "open".
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from guardian.api import models
from guardian.api.context import GuardianView
from guardian.api.metrics import Metrics
from guardian.api.page import add_page_routes

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
        """Ready when results exist and the stack is healthy or degraded."""
        if not view.state.results():
            return _json(models.Probe(status="starting", ready=False), 503)
        overall = view.state.overall()
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
    async def incident(incident_id: int) -> Response:
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
        responses=_err(401, 403, 404),
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
        return _json(
            models.RunChecksResponse(
                status=view.state.overall(), results=[models.check_model(r) for r in results]
            )
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
    return app


# --------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: Guardian's runtime owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """The API on its own socket inside Guardian's event loop; start, then stop gracefully.

    The socket is bound here rather than by uvicorn so a taken port is a clear OSError
    (uvicorn would ``sys.exit`` from inside a task) and port 0 reports the port it got.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8787) -> None:
        self.app, self.host, self.requested_port = app, host, port
        self.port = port
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> int:
        """Bind, serve in a task, return once accepting connections; the bound port."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on connections
        # from such sockets, and without it Nagle + delayed ACK add ~40 ms per keep-alive
        # response (headers and body are two writes).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.requested_port))
        except OSError as e:
            sock.close()
            raise OSError(e.errno, f"cannot listen on {self.host}:{self.requested_port}: "
                          f"{e.strerror}") from None
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        self.server = server = _Server(config)
        self._task = asyncio.create_task(self._run(server, sock), name="guardian-api")
        while not server.started:
            if self._task.done():
                self._task.result()  # re-raises why it stopped
                raise RuntimeError("API server stopped during startup")
            await asyncio.sleep(0.01)
        log.info("API listening on %s", self.url, extra={"event": "api_listening",
                                                          "port": self.port})
        return self.port

    @staticmethod
    async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except SystemExit as e:  # uvicorn's startup failure path
            raise RuntimeError(f"API server failed to start (exit {e.code})") from None
        finally:
            sock.close()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let running requests finish (bounded), then return."""
        if self.server is None or self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self.server.force_exit = True
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 1.0)
        except Exception:
            log.exception("API server ended with an error")
        finally:
            if not self._task.done():
                self._task.cancel()
            self.server = None
            self._task = None


async def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8787) -> ApiServer:
    """Start serving ``app``; returns the running :class:`ApiServer` (call ``stop()``)."""
    server = ApiServer(app, host, port)
    await server.start()
    return server
