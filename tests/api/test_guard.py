"""The API's own guards: Host allowlist, id bounds, in-flight cap, /api/metrics, bind rules."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from guardian.api.app import RequestGuard, create_app, host_of
from guardian.config.errors import ConfigError
from guardian.config.load import parse_config
from guardian.config.schema import is_loopback_host
from testkit.api import TOKEN, client, make_view


def _on(view: object, host: str) -> httpx.AsyncClient:
    app = create_app(view)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


@pytest.mark.parametrize("path", ["/api/health", "/api/status", "/metrics", "/", "/livez"])
async def test_foreign_host_is_refused_on_get_routes(path: str) -> None:
    async with _on(make_view(), "evil.example") as c:
        resp = await c.get(path)
    assert resp.status_code == 421
    assert "Host" in resp.json()["detail"]


async def test_foreign_host_cannot_post_even_with_the_token() -> None:
    async with _on(make_view(), "evil.example:8787") as c:
        resp = await c.post(
            "/api/targets/panel/restart", headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert resp.status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8787", "localhost", "[::1]:8787", "LOCALHOST:1"])
async def test_loopback_hosts_are_served(host: str) -> None:
    async with _on(make_view(), host) as c:
        assert (await c.get("/livez")).status_code == 200


async def test_configured_and_extra_hosts_are_served() -> None:
    view = make_view()
    view.config.api.allowed_hosts.append("guardian.lan")
    async with _on(view, "guardian.lan:8787") as c:
        assert (await c.get("/livez")).status_code == 200
    async with _on(view, "other.lan") as c:
        assert (await c.get("/livez")).status_code == 421


# A file must name a target; these tests are about [api] only.
TARGET = '[[targets]]\nname = "t"\n'


def test_wildcard_bind_accepts_ip_literals_but_not_names() -> None:
    config = parse_config(TARGET + '[api]\nhost = "0.0.0.0"\ntoken = "t"\n').api
    guard = RequestGuard(create_app(make_view()), config)
    assert guard.host_allowed(b"192.168.1.20:8787")
    assert guard.host_allowed(b"[fe80::1]:8787")
    assert not guard.host_allowed(b"rebind.attacker.example")
    assert guard.host_allowed(None)  # no Host: not a browser


def test_host_of() -> None:
    assert host_of("[::1]:8787") == "::1"
    assert host_of("LocalHost:80") == "localhost"
    assert host_of("::1") == "::1"
    assert host_of("example.com") == "example.com"


@pytest.mark.parametrize(
    "raw", ["9223372036854775808", "18446744073709551616", "1" + "0" * 40, "0", "-5"]
)
async def test_out_of_range_incident_ids_are_422(raw: str) -> None:
    async with client(make_view()) as c:
        resp = await c.get(f"/api/incidents/{raw}")
    assert resp.status_code == 422


async def test_largest_id_is_a_plain_404() -> None:
    async with client(make_view()) as c:
        assert (await c.get("/api/incidents/9223372036854775807")).status_code == 404


async def test_api_metrics_is_the_same_exposition_as_metrics() -> None:
    async with client(make_view()) as c:
        a, b = await c.get("/metrics"), await c.get("/api/metrics")
    assert a.status_code == b.status_code == 200
    assert a.headers["content-type"] == b.headers["content-type"]
    assert a.text == b.text and "guardian_target_up" in a.text
    assert "guardian_event_loop_lag_seconds_bucket" in a.text


async def test_requests_over_the_in_flight_cap_get_503() -> None:
    view = make_view()
    gate = asyncio.Event()

    async def slow(target: str | None) -> list[object]:
        await gate.wait()
        return []

    view.run_checks_fn = slow  # type: ignore[assignment]
    api = view.config.api.model_copy(update={"max_concurrency": 2})
    view.config = view.config.model_copy(update={"api": api})
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client(view) as c:
        busy = [asyncio.create_task(c.post("/api/checks/run", headers=headers)) for _ in range(2)]
        await asyncio.sleep(0.05)
        over = await c.get("/livez")
        gate.set()
        done = await asyncio.gather(*busy)
    assert over.status_code == 503 and over.headers["retry-after"] == "1"
    assert [r.status_code for r in done] == [200, 200]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_non_loopback_bind_without_token_is_a_config_error(host: str) -> None:
    with pytest.raises(ConfigError, match=r"api\.host = .* is not a loopback address"):
        parse_config(TARGET + f'[api]\nhost = "{host}"\n')
    with pytest.raises(ConfigError, match=r"api\.token"):
        parse_config(TARGET + f'[api]\nhost = "{host}"\ntoken = ""\n')
    assert parse_config(TARGET + f'[api]\nhost = "{host}"\ntoken = "x"\n').api.host == host
    assert parse_config(TARGET + f'[api]\nhost = "{host}"\nenabled = false\n').api.enabled is False


def test_loopback_names() -> None:
    assert all(map(is_loopback_host, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback_host, ["0.0.0.0", "::", "10.0.0.1", "evil.example"]))
