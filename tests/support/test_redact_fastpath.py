"""redact()'s fast path (no ':', '=' or "bearer": returned as is) never skips a redaction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.support import redact as mod

# The long s and the Kelvin sign are case-folding oddities of re's IGNORECASE.
PIECES = ["bearer ", "BeArEr ", "token", "=", ":", "://", "@", "?", "&", "key", "pass",
          "Authorization", "HTTP 200", " ", "abc123", "\n", "\u017f", "\u212a", "\u00e9"]


def slow(text: str) -> str:
    for pattern, repl in mod._PATTERNS:
        text = pattern.sub(repl, text)
    return text


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=12))
def test_fast_path_equals_every_pattern(parts: list[str]) -> None:
    text = "".join(parts)
    assert mod.redact(text) == slow(text)


def test_fast_path_taken_and_secrets_still_hidden() -> None:
    assert mod.redact("HTTP 200") == "HTTP 200"
    assert "s3cr3t" not in mod.redact("got 401 with BEARER s3cr3t")
    assert "hunter2" not in mod.redact("postgres://a:hunter2@db")
