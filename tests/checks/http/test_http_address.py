"""The plain-http path parses URLs with the stdlib (so `guardian run` needs no httpx): the
host, port and request target it sends, and where a redirect leads, are what httpx says."""

from __future__ import annotations

from urllib.parse import urljoin

import httpx
import pytest

from guardian.checks.http.check import wire_address

URLS = [
    "http://127.0.0.1:8080/health",
    "http://localhost",
    "http://LOCALHOST:80/Path/To?q=1&b=two",
    "http://[::1]:8188/system_stats",
    "http://host/a b/c?x=1 2",
    "http://host/%7Euser/%20kept?y=%41",
    "http://host/ünïcode?name=äö",
    "http://user:pw@host:81/p#fragment",
    "http://host/p;params?a=b?c",
    "http://bücher.example/",
]


@pytest.mark.parametrize("url", URLS)
def test_wire_address_is_what_httpx_sends(url: str) -> None:
    expected = httpx.URL(url)
    assert wire_address(url) == (
        expected.raw_host.decode("ascii"), expected.port or 80, expected.raw_path.decode("ascii")
    )


@pytest.mark.parametrize("location", [
    "/new", "new", "../up?x=1", "?only=query", "//other:8080/x", "http://third/y",
    "https://tls.example/z", "/sp ace", "#frag",
])
def test_redirects_lead_where_httpx_would(location: str) -> None:
    base = "http://host:8080/dir/page?q=1"
    joined = urljoin(base, location)
    expected = httpx.URL(base).join(location)
    assert httpx.URL(joined).scheme == expected.scheme
    if expected.scheme == "http":
        assert wire_address(joined) == (
            expected.raw_host.decode("ascii"), expected.port or 80,
            expected.raw_path.decode("ascii"),
        )
    else:
        assert httpx.URL(joined) == expected
