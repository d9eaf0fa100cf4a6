"""Fixtures for the incident tests; helpers live in testkit.incidents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.incidents import Webhook


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()
