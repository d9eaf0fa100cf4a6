"""The OpenAPI 3.1 document, built from the route table and the pydantic response models.

Built once, on the first request for it, so serving costs nothing until someone asks.
Parameters carry their limits (the same pydantic constraints that validate them), every
documented status has its model, and all models share one ``components/schemas`` map,
so tools such as schemathesis can fuzz every operation against what it really answers.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from guardian.api.routing import Endpoint, Param, Reply

REF = "#/components/schemas/{model}"
SECURITY_SCHEME = "HTTPBearer"


class ParamError(BaseModel):
    """One rejected parameter, as routing.validation_error sends it (pydantic's item)."""

    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorResponse(BaseModel):
    """The 422 body: every rejected parameter of the request."""

    detail: list[ParamError]


def operation_id(e: Endpoint) -> str:
    """``restart_api_targets__name__restart_post``: unique per method and path."""
    return re.sub(r"\W", "_", f"{e.name}{e.path}") + "_" + e.method.lower()


def _param(p: Param) -> dict[str, Any]:
    schema = p.adapter.json_schema()
    if not p.required and p.default is not None:
        schema["default"] = p.default
    out: dict[str, Any] = {"name": p.name, "in": p.location, "required": p.required,
                           "schema": schema}
    if p.description:
        out["description"] = p.description
    return out


def _replies(e: Endpoint) -> dict[int, Reply]:
    replies = dict(e.replies)
    if e.params:
        replies.setdefault(422, Reply("Validation Error", ValidationErrorResponse))
    return dict(sorted(replies.items()))


def _doc(e: Endpoint) -> tuple[str, str]:
    text = inspect.getdoc(e.handler) or ""
    return e.name.replace("_", " ").title(), text


def build(
    endpoints: Sequence[Endpoint], *, title: str, summary: str, version: str,
    security_description: str,
) -> dict[str, Any]:
    """The whole document for the documented ``endpoints``."""
    shown = [e for e in endpoints if e.documented]
    wanted = {r.model for e in shown for r in _replies(e).values() if r.model is not None}
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (m, "serialization") for m in sorted(wanted, key=lambda m: m.__name__)
    ]
    refs, defs = models_json_schema(keys, ref_template=REF)
    paths: dict[str, dict[str, Any]] = {}
    for e in shown:
        name, description = _doc(e)
        op: dict[str, Any] = {"tags": list(e.tags), "summary": name, "operationId": operation_id(e)}
        if description:
            op["description"] = description
        if e.auth:
            op["security"] = [{SECURITY_SCHEME: []}]
        if e.params:
            op["parameters"] = [_param(p) for p in e.params]
        responses: dict[str, Any] = {}
        for code, reply in _replies(e).items():
            schema = refs[(reply.model, "serialization")] if reply.model else {"type": "string"}
            responses[str(code)] = {
                "description": reply.description,
                "content": {reply.content_type: {"schema": schema}},
            }
        op["responses"] = responses
        paths.setdefault(e.path, {})[e.method.lower()] = op
    schemes = {SECURITY_SCHEME: {"type": "http", "scheme": "bearer",
                                 "description": security_description}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "summary": summary, "version": version},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}), "securitySchemes": schemes},
    }
