"""Redaction: examples, a hypothesis property over every secret pattern, idempotence."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardian.incidents.redact import MASK, redact, redact_url


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer eyJhbGciOi.J9abc", "eyJhbGciOi"),
        ("curl -H 'Authorization: Basic dXNlcjpwYXNz' http://x", "dXNlcjpwYXNz"),
        ("got 401 with bearer s3cr3tT0ken", "s3cr3tT0ken"),
        ("connect postgres://admin:hunter2@db:5432/app", "hunter2"),
        ("json://user:pa55word@127.0.0.1:8000/hook", "pa55word"),
        ("GET https://api.example.com/v1?token=abc123XYZ&page=2", "abc123XYZ"),
        ("https://x.test/path?a=1&api_key=K3Y-value#frag", "K3Y-value"),
        ("https://maps.test/?key=AIzaSyD-secret", "AIzaSyD-secret"),
        ("PASSWORD=correct-horse", "correct-horse"),
        ("set COMFY_API_KEY=sk-live-123", "sk-live-123"),
        ('DB_PASSWORD="with spaces inside"', "with spaces inside"),
        ('{"api_key": "abcdef123", "n": 1}', "abcdef123"),
        ("client_secret: 'q1w2e3r4'", "q1w2e3r4"),
        ("X-Auth-Token=zzzz9999", "zzzz9999"),
    ],
)
def test_known_secret_shapes_are_removed(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "check http failed: connection refused (latency_ms=12.5)",
        "passed: 3, signal: 9, monkey=banana",
        "ComfyUI started on http://127.0.0.1:8188/ with 2 custom nodes",
        "disk C:\\ free 12.3 GB",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_url_keeps_only_the_scheme() -> None:
    assert redact_url("discord://1234/abcdefTOKEN") == "discord://[REDACTED]"
    assert redact_url("JSON://u:p@h/x") == "json://[REDACTED]"
    assert redact_url("not a url") == "(invalid url)"


SECRET = st.text(
    alphabet="ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789-._~+%",
    min_size=6,
    max_size=40,
).filter(lambda s: any(c.isalnum() for c in s))
FILLER = st.lists(
    st.sampled_from(["error", "at", "GET", "ok", "->", "(", ")", "line", "12", ":", ";", "\n"]),
    max_size=6,
).map(" ".join)
TEMPLATES = [
    "Authorization: Bearer {s}",
    "authorization: {s}",
    "Proxy-Authorization: Basic {s}",
    "Bearer {s}",
    "https://user:{s}@example.com/x",
    "json://{s}@127.0.0.1:9000/hook",
    "http://h/p?token={s}",
    "http://h/p?x=1&api_key={s}&y=2",
    "http://h/p?apikey={s}",
    "http://h/p?key={s}",
    "http://h/p?access_token={s}#top",
    "PASSWORD={s}",
    "export MY_DB_PASSWORD={s}",
    "API_KEY={s}",
    "SECRET_TOKEN = {s}",
    'password: "{s}"',
    "\"api_key\": '{s}'",
    "key={s}",
]


@settings(max_examples=300, deadline=None)
@given(
    secret=SECRET,
    template=st.sampled_from(TEMPLATES),
    before=FILLER,
    after=FILLER,
)
def test_a_random_secret_in_any_pattern_never_survives(
    secret: str, template: str, before: str, after: str
) -> None:
    text = f"{before} {template.format(s=secret)} {after}"
    out = redact(text)
    assert secret not in out, out
    assert redact(out) == out  # idempotent: safe to apply at several layers


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_never_crashes_and_is_idempotent_on_arbitrary_text(text: str) -> None:
    once = redact(text)
    assert redact(once) == once
