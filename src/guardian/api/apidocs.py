"""``/docs``: the OpenAPI document as one static HTML page that works offline.

FastAPI's Swagger UI came from a CDN, so it was blank on the machines Guardian runs on.
This page is rendered on the server from the same document as ``/openapi.json``: every
operation with its parameters and limits, its responses and their models, and each
model's JSON schema. No script, no external resource.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_REF = "#/components/schemas/"


def _schema_text(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        name = ref.removeprefix(_REF)
        return f'<a href="#model-{escape(name)}">{escape(name)}</a>'
    return f"<code>{escape(json.dumps(schema, separators=(', ', ': ')))}</code>"


def _operation(method: str, path: str, op: dict[str, Any]) -> list[str]:
    out = [f'<section id="{escape(op["operationId"])}">',
           f"<h3><code>{method.upper()} {escape(path)}</code></h3>"]
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    if op.get("security"):
        out.append("<p>Needs <code>Authorization: Bearer &lt;api.token&gt;</code>.</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<table><tr><th>parameter</th><th>in</th><th>required</th>"
                   "<th>schema</th><th>description</th></tr>")
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td>{'yes' if p['required'] else 'no'}</td><td>{_schema_text(p['schema'])}</td>"
                f"<td>{escape(p.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    out.append("<table><tr><th>status</th><th>meaning</th><th>content</th></tr>")
    for code, reply in op["responses"].items():
        content = ", ".join(
            f"<code>{escape(media)}</code> {_schema_text(body['schema'])}"
            for media, body in reply.get("content", {}).items()
        )
        out.append(f"<tr><td>{escape(code)}</td><td>{escape(reply['description'])}</td>"
                   f"<td>{content}</td></tr>")
    out += ["</table>", "</section>"]
    return out


def render(document: dict[str, Any]) -> str:
    """The page for ``document`` (an OpenAPI 3.1 dict as built by guardian.api.openapi)."""
    info = document["info"]
    out = [
        "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{escape(info['title'])} API</title>",
        '<link rel="stylesheet" href="/static/status.css">', "</head>", "<body>",
        f"<h1>{escape(info['title'])} API, version {escape(info['version'])}</h1>",
        f"<p>{escape(info.get('summary', ''))}. Machine-readable: "
        '<a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1). '
        'Status page: <a href="/">/</a>.</p>',
        "<h2>Operations</h2>",
    ]
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            out += _operation(method, path, op)
    out.append("<h2>Models</h2>")
    for name, schema in document["components"]["schemas"].items():
        out.append(f'<details id="model-{escape(name)}"><summary>{escape(name)}</summary>'
                   f"<pre>{escape(json.dumps(schema, indent=2))}</pre></details>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)
