"""The status page: static HTML/CSS/JS from package data, no build step, no CDN.

The page renders itself from ``/api/status`` in the browser (polling, default every 2 s,
``?refresh=SECONDS`` to change), so the server only hands out three fixed files. They
are read once at startup; a strict Content-Security-Policy keeps the page to its own
origin, and the script only ever writes text nodes, so a hostile check reason cannot
inject markup.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException, Response

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


def add_page_routes(app: FastAPI) -> None:
    index = _read("index.html")
    files = {name: (_read(name), media) for name, media in STATIC_FILES.items()}

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(index, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        found = files.get(name)
        if found is None:
            raise HTTPException(404, "not found")
        return Response(found[0], media_type=found[1], headers=SECURITY_HEADERS)
