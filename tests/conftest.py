"""Every test gets its own per-user state directory.

Guardian registers each running instance under ``$XDG_STATE_HOME/guardian/instances`` so
the CLI can find it; without this, a Guardian started by one test (or by anything else on
the machine) would be "found" by another test's CLI call. Helpers shared across test
folders and with the benchmarks live in the ``testkit`` package (``tests/`` is on pytest's
``pythonpath``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _own_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("state-home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.setenv("LOCALAPPDATA", str(home))


@pytest.fixture(autouse=True)
def _guardian_logger_restored() -> Iterator[None]:
    """``setup_logging`` reconfigures the ``guardian`` logger (own handlers, no propagation):
    put it back after each test, so a later test's ``caplog`` still sees Guardian's records."""
    logger = logging.getLogger("guardian")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    for handler in list(logger.handlers):
        if handler not in saved[0]:
            logger.removeHandler(handler)
            handler.close()
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
