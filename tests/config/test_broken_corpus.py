"""The broken-config corpus: every file exits 2 from `config validate` with key path and line.

Each file in ``broken/`` starts with ``# expect: <key path> | <message fragment>`` and marks
the line the problem must be reported on with a trailing ``# <-``: the expectation is
written by hand beside the config, not derived from the validator.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardian.cli.main import app
from guardian.config.errors import ConfigError
from guardian.config.load import load_config

CORPUS = Path(__file__).with_name("broken")
FILES = sorted(CORPUS.glob("*.toml"))
runner = CliRunner()


def expectation(path: Path) -> tuple[str, str, int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    m = re.fullmatch(r"# expect: (\S+) \| (.+)", lines[0])
    assert m, f"{path.name}: first line must be '# expect: <path> | <fragment>'"
    marked = [n for n, line in enumerate(lines, start=1) if line.endswith("# <-")]
    assert len(marked) == 1, f"{path.name}: mark exactly one line with '# <-'"
    key = "" if m.group(1) == "(file)" else m.group(1)
    return key, m.group(2), marked[0]


def test_the_corpus_is_large_enough() -> None:
    assert len(FILES) >= 80


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_broken_config_exits_2_with_key_path_and_line(path: Path) -> None:
    key, fragment, line = expectation(path)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    found = [p for p in exc.value.problems if p.path == key]
    assert found, f"no problem at {key!r}: {exc.value.problems}"
    assert any(p.line == line and fragment in p.message for p in found), exc.value.problems

    result = runner.invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{key or '(file)'} (line {line}): " in result.output, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
