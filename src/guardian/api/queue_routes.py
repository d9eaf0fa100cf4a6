"""The ``guardian queue`` operations in the API (list, release, drop), all behind the token.

Shapes only ids, numbers and counts (:mod:`guardian.api.queue`): ``extra_data`` (where
API-node secrets live) never leaves the journal's store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.responses import Response

from guardian.api.context import GuardianView
from guardian.api.queue import PROMPT_ID_PATTERN, QueueCommand, QueueListing
from guardian.api.routing import JSON, Endpoint, Param, Reply, error_replies


def queue_endpoints(view: GuardianView, name: Param, ok: Callable[[type[BaseModel]],
                                                                    dict[int, Reply]]
                    ) -> list[Endpoint]:
    """``GET /api/targets/{name}/queue`` and the release/drop actions (token needed)."""
    prompt_id = Param("prompt_id", "path", str, pattern=PROMPT_ID_PATTERN)

    async def command(target: str, what: QueueCommand, pid: str | None) -> Response:
        try:
            listing = await view.queue_command(target, what, pid)
        except KeyError:
            raise HTTPException(404, f"no queue journal entry {pid or target!r}") from None
        except RuntimeError as e:
            raise HTTPException(503, str(e)) from None
        return Response(listing.model_dump_json(), media_type=JSON)

    async def queue(name: str) -> Response:
        """A ComfyUI target's queue journal and quarantined prompts (no secrets)."""
        return await command(name, "list", None)

    async def release_prompt(name: str, prompt_id: str) -> Response:
        """Put a quarantined prompt back on the target's queue."""
        return await command(name, "release", prompt_id)

    async def drop_prompt(name: str, prompt_id: str) -> Response:
        """Forget a quarantined prompt."""
        return await command(name, "drop", prompt_id)

    replies: dict[int, Any] = {**ok(QueueListing), **error_replies(401, 403, 404, 503)}
    return [
        Endpoint("GET", "/api/targets/{name}/queue", queue, replies, params=[name],
                 tags=["queue"], auth=True),
        Endpoint("POST", "/api/targets/{name}/queue/{prompt_id}/release", release_prompt,
                 replies, params=[name, prompt_id], tags=["queue"], auth=True),
        Endpoint("POST", "/api/targets/{name}/queue/{prompt_id}/drop", drop_prompt,
                 replies, params=[name, prompt_id], tags=["queue"], auth=True),
    ]
