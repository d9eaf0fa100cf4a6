"""Every test gets its own per-user state directory.

Guardian registers each running instance under ``$XDG_STATE_HOME/guardian/instances`` so
the CLI can find it; without this, a Guardian started by one test (or by anything else on
the machine) would be "found" by another test's CLI call.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _own_state_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("state-home")
    monkeypatch.setenv("XDG_STATE_HOME", str(home))
    monkeypatch.setenv("LOCALAPPDATA", str(home))
