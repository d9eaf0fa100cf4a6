"""The strict model base every config table shares, and the bounds that keep values sane.

Below config so that check kinds (which live under ``checks/``) and the config schema
validate their tables by one rule: a mistake is named, never guessed at.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config table: unknown keys, wrong types and inf/nan are errors.

    strict: ``port = "8787"`` or ``critical = "false"`` is a mistake to name, not to guess
    at (an int is still accepted for a float); finite: inf/nan break timers and math.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# Upper bounds that keep every timer, backoff product and datetime computation finite.
DAY = 86_400.0
MAX_BYTES = 1 << 40  # 1 TiB
MAX_COUNT = 1_000_000
