"""The route table's own contract: 422 items, errors as JSON, methods, token before params,
and the OpenAPI document and /docs page it produces (valid, lazy, offline)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from guardian.api import openapi
from guardian.api.app import create_app
from testkit.api import TOKEN, client, make_view

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_bad_query_values_are_422_with_every_item() -> None:
    async with client(make_view()) as c:
        resp = await c.get("/api/incidents", params={"limit": "0", "all": "maybe"})
    assert resp.status_code == 422 and resp.headers["content-type"] == "application/json"
    limit, all_ = resp.json()["detail"]
    assert limit == {
        "type": "greater_than_equal", "loc": ["query", "limit"],
        "msg": "Input should be greater than or equal to 1", "input": "0", "ctx": {"ge": 1},
    }
    assert all_["loc"] == ["query", "all"] and all_["type"] == "bool_parsing"


@pytest.mark.parametrize(("query", "count"), [("all=yes&limit=1", 1), ("all=0", 1),
                                              ("limit=%201&all=TRUE", 1), ("", 1)])
async def test_lax_values_parse_as_before(query: str, count: int) -> None:
    view = make_view(incident_list=[{"id": 1, "target": "panel", "status": "open",
                                     "severity": "critical", "summary": "x",
                                     "opened_at": "2025-01-01T10:00:00+00:00"}])
    async with client(view) as c:
        resp = await c.get(f"/api/incidents?{query}")
    assert resp.status_code == 200 and len(resp.json()["incidents"]) == count


async def test_path_and_pattern_errors_name_their_parameter() -> None:
    async with client(make_view()) as c:
        bad_id = await c.get("/api/incidents/abc")
        bad_name = await c.post("/api/targets/bad name/restart", headers=AUTH)
        bad_target = await c.post("/api/checks/run", params={"target": ""}, headers=AUTH)
        report = await c.get("/incidents/0/report")
    assert bad_id.json()["detail"][0]["loc"] == ["path", "incident_id"]
    assert bad_name.status_code == 422
    assert bad_name.json()["detail"][0]["ctx"] == {"pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
    assert bad_target.json()["detail"][0]["loc"] == ["query", "target"]
    assert report.status_code == 422  # the report link has the incident id's limits


async def test_token_is_checked_before_parameters() -> None:
    async with client(make_view()) as c:
        unauth = await c.post("/api/targets/bad name/restart")
    assert unauth.status_code == 401
    assert unauth.headers["www-authenticate"] == 'Bearer realm="guardian"'
    assert unauth.json() == {"detail": "missing or invalid bearer token"}
    async with client(make_view(token="")) as c:
        assert (await c.post("/api/targets/bad name/restart")).status_code == 403


async def test_unknown_paths_and_methods_answer_json() -> None:
    async with client(make_view()) as c:
        missing = await c.get("/nope")
        post = await c.post("/api/health")
        head = await c.head("/api/health")
        get_action = await c.get("/api/checks/run")
        slash = await c.get("/api/health/")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert post.status_code == 405 and post.json() == {"detail": "Method Not Allowed"}
    assert post.headers["allow"] == "GET"
    assert head.status_code == 405  # only the documented method is served, as before
    assert get_action.status_code == 405 and get_action.headers["allow"] == "POST"
    assert slash.status_code == 307 and slash.headers["location"].endswith("/api/health")


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_openapi_document_is_valid_and_complete() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    async with client(make_view()) as c:
        doc = (await c.get("/openapi.json")).json()
    errors = [e.message for e in jsonschema_rs.validator_for(definitions.OPENAPI_31)
              .iter_errors(doc)]
    assert errors == [] and doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    assert {r.removeprefix("#/components/schemas/") for r in _refs(doc)} <= set(schemas)
    assert set(doc["paths"]) == {
        "/api/health", "/livez", "/readyz", "/api/status", "/api/incidents",
        "/api/incidents/{incident_id}", "/api/targets/{name}/restart", "/api/checks/run",
        "/metrics", "/api/metrics", "/api/uptime", "/api/targets/{name}/queue",
        "/api/targets/{name}/queue/{prompt_id}/release",
        "/api/targets/{name}/queue/{prompt_id}/drop",
    }
    params = {p["name"]: p for p in doc["paths"]["/api/incidents"]["get"]["parameters"]}
    assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000,
                                         "default": 50}
    assert params["all"]["schema"]["type"] == "boolean" and not params["all"]["required"]
    (incident_id,) = doc["paths"]["/api/incidents/{incident_id}"]["get"]["parameters"]
    assert incident_id["required"] and incident_id["schema"]["maximum"] == 2**63 - 1
    restart = doc["paths"]["/api/targets/{name}/restart"]["post"]
    assert restart["security"] == [{"HTTPBearer": []}]
    assert set(restart["responses"]) == {"202", "401", "403", "404", "422", "503"}
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_document_is_built_once_on_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = openapi.build

    def counting(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(openapi, "build", counting)
    app = create_app(make_view())
    assert calls == []  # nothing built at start-up
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://127.0.0.1") as c:
        first, second = await c.get("/openapi.json"), await c.get("/openapi.json")
    assert calls == [1] and first.content == second.content


async def test_docs_page_lists_every_operation_offline() -> None:
    async with client(make_view()) as c:
        doc = (await c.get("/openapi.json")).json()
        page = await c.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    for path, ops in doc["paths"].items():
        for method in ops:
            assert f"<code>{method.upper()} {path}</code>" in html, (method, path)
    for name in doc["components"]["schemas"]:
        assert f'id="model-{name}"' in html
    assert "<script" not in html and not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "maximum" in html  # parameter limits are shown
