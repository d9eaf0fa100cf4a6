"""The status page: static HTML/CSS/JS from package data, no build step, no CDN.

The page renders itself in the browser from ``/api/status`` (polling, default every 2 s,
``?refresh=SECONDS`` to change), ``/api/uptime`` (every 30 s: persisted 24 h / 7 d / 30 d
uptime and the history bar) and ``/api/incidents?all=true`` (the incident timeline), so the
server only hands out three fixed files, read once at startup. A strict
Content-Security-Policy keeps the page to its own origin, and the script only ever writes
text nodes, so a hostile check reason cannot inject markup. The two routes the page needs
beyond the core API live here: ``GET /api/uptime`` and ``GET /incidents/{id}/report`` (an
incident's Markdown report as plain text, so a link can open it in the browser).
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.responses import Response

from guardian.api import models, views
from guardian.api.context import GuardianView
from guardian.api.routing import JSON, Endpoint, Param, Reply

STATIC_FILES = {
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("guardian.api").joinpath("static", name).read_bytes()


def html_page(body: str | bytes) -> Response:
    """An HTML page under the page's security headers (also used for ``/docs``)."""
    return Response(body, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def page_endpoints(view: GuardianView, incident_id: Param) -> list[Endpoint]:
    """The page, its static files and the two routes only the page needs.

    ``incident_id`` is the API's incident-id parameter, so the report link has its limits.
    """
    index = _read("index.html")
    files = {name: (_read(name), media) for name, media in STATIC_FILES.items()}
    file_name = Param("name", "path", str)

    async def page() -> Response:
        return html_page(index)

    async def static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise HTTPException(404, "not found")
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)

    async def uptime() -> Response:
        """Per target: uptime over 24 h / 7 d / 30 d and the last 24 h as a history bar."""
        body = views.build_uptime(view, datetime.now(UTC))
        return Response(body.model_dump_json(), media_type=JSON)

    async def report(incident_id: int) -> Response:
        data = view.incident(incident_id)
        text = data.get("report_markdown") if data is not None else None
        if not isinstance(text, str):
            raise HTTPException(404, f"no report for incident {incident_id}")
        return Response(text, media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)

    return [
        Endpoint("GET", "/", page, documented=False),
        Endpoint("GET", "/static/{name}", static, params=[file_name], documented=False),
        Endpoint("GET", "/api/uptime", uptime, {200: Reply("Successful Response",
                                                           models.UptimeResponse)},
                 tags=["status"]),
        Endpoint("GET", "/incidents/{incident_id}/report", report, params=[incident_id],
                 documented=False),
    ]
