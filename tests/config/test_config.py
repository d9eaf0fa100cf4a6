"""Config validation: every problem named by key path and line, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardian.checks.comfyui.health import ComfyUICheckConfig
from guardian.checks.disk import DiskCheckConfig
from guardian.checks.http.check import HttpCheckConfig
from guardian.cli.main import app
from guardian.config.errors import ConfigError
from guardian.config.load import default_config, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

BASE = """
[[targets]]
name = "panel"
[[targets.checks]]
kind = "http"
url = "http://localhost:3000/api/health"
"""

# (toml text, expected key path, expected line or None, a fragment of the message)
BROKEN = [
    ("[guardian\nlog_level='info'", "", 1, "TOML syntax"),
    ("[guardian]\nlog_levl = 'info'", "guardian.log_levl", 2, "unknown key"),
    ("[guardian]\nlog_level = 'loud'", "guardian.log_level", 2, "'debug'"),
    ("[api]\nport = 'eighty'", "api.port", 2, "integer"),
    (BASE + "interval = 0\n", "targets[0].checks[0].interval", 7, "greater than 0"),
    (
        BASE + "interval = 5\ntimeout = 10\n",
        "targets[0].checks[0]",
        4,
        "must be less than interval",
    ),
    (BASE + BASE, "targets[1].name", 9, "duplicate target name 'panel'"),
    (
        "[[targets]]\nname='d'\n[[targets.checks]]\nkind='disk'\nwarn_gb=10\ncritical_gb=20\n",
        "targets[0].checks[0]",
        3,
        "warn_gb (10) is below critical_gb (20)",
    ),
    (
        "[[targets]]\nname='x'\n[[targets.checks]]\nkind='smtp'\n",
        "targets[0].checks[0]",
        3,
        "unknown check kind 'smtp'",
    ),
    (
        "[[targets]]\nname='x'\n[[targets.checks]]\ninterval=5\n",
        "targets[0].checks[0]",
        3,
        "missing `kind`",
    ),
    ("[[targets]]\nname='bad name!'\n", "targets[0].name", 2, "should match pattern"),
    (
        "[[targets]]\nname='x'\n[targets.service]\nname='foo & del C:\\\\*'\n",
        "targets[0].service.name",
        4,
        "invalid service name",
    ),
    (
        "[[targets]]\nname='x'\n[targets.service]\nbackend='process'\n",
        "targets[0].service",
        3,
        "needs `command`",
    ),
    (
        "[[targets]]\nname='x'\n[targets.recovery]\nmax_attempts=0\n",
        "targets[0].recovery.max_attempts",
        4,
        "greater than or equal to 1",
    ),
    (
        BASE + "[targets.recovery]\ndepends_on=['nope']\n",
        "targets[0].recovery.depends_on",
        8,
        "unknown target 'nope'",
    ),
    (
        BASE + "[[targets.checks]]\nkind='http'\nurl='http://x'\n",
        "targets[0].checks[1]",
        7,
        "duplicate check name 'http'",
    ),
    (
        "[[targets]]\nname='x'\n[[targets.checks]]\nkind='service'\n",
        "targets[0].checks[0]",
        3,
        "needs [targets.service]",
    ),
    (
        "[[targets]]\nname='x'\n[[targets.checks]]\nkind='http'\nurl='ftp://x'\n",
        "targets[0].checks[0].url",
        5,
        "https?",
    ),
]


@pytest.mark.parametrize(("text", "path", "line", "fragment"), BROKEN)
def test_broken_configs_name_the_key_path_and_line(
    tmp_path: Path, text: str, path: str, line: int | None, fragment: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, source="t.toml")
    problems = exc.value.problems
    match = [p for p in problems if p.path == path]
    assert match, f"no problem at {path!r}: {problems}"
    assert match[0].line == line, problems
    assert fragment in match[0].message, problems

    f = tmp_path / "broken.toml"
    f.write_text(text)
    result = runner.invoke(app, ["config", "validate", str(f)])
    assert result.exit_code == 2
    assert path in result.output and fragment in result.output
    assert "Traceback" not in result.output


def test_every_problem_is_reported_at_once() -> None:
    text = "[guardian]\nlog_level='loud'\nnope=1\n[api]\nport=-1\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text)
    assert {p.path for p in exc.value.problems} == {
        "guardian.log_level",
        "guardian.nope",
        "api.port",
        "targets",  # and that it watches nothing
    }


def test_example_config_is_valid_and_is_the_original_plan() -> None:
    result = runner.invoke(app, ["config", "validate", str(ROOT / "guardian.example.toml")])
    assert result.exit_code == 0, result.output
    assert "ok: " in result.output
    cfg = load_config(ROOT / "guardian.example.toml", env={})
    panel, comfy = cfg.target("panel"), cfg.target("comfyui")
    assert panel.service and panel.service.name == "OrchestratorPanel"
    assert comfy.service and comfy.service.name == "OrchestratorComfyUI"
    assert panel.critical and comfy.critical
    http, first = panel.checks[0], comfy.checks[0]
    assert isinstance(http, HttpCheckConfig) and isinstance(first, ComfyUICheckConfig)
    assert (http.kind, http.interval, http.timeout) == ("http", 30, 10)
    assert http.url == "http://localhost:3000/api/health"
    assert first.url == "http://127.0.0.1:8188"
    assert [c.interval for c in comfy.checks if c.kind == "service"] == [60]
    disk = cfg.target("disk").checks[0]
    assert isinstance(disk, DiskCheckConfig)
    assert (disk.interval, disk.warn_gb, disk.critical_gb) == (300, 50, 20)
    assert (comfy.recovery.cooldown, comfy.recovery.max_attempts) == (30, 3)


def test_defaults_match_the_plan_without_any_file() -> None:
    cfg = default_config()
    assert [t.name for t in cfg.targets] == ["panel", "comfyui", "disk", "system"]
    http = cfg.target("panel").checks[0]
    assert (http.interval, http.timeout) == (30, 10)
    assert cfg.guardian.log_level == "info"
    assert "F:" not in str(cfg.guardian.log_dir)


def test_env_overrides_scalars_and_bad_env_values_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "g.toml"
    f.write_text("[guardian]\nlog_level='info'\n[[targets]]\nname='t'\n")
    cfg = load_config(
        f,
        env={
            "GUARDIAN_LOG_DIR": str(tmp_path / "logs"),
            "GUARDIAN_API_PORT": "9000",
            "GUARDIAN_API_TOKEN": "s3cret",
        },
    )
    assert cfg.guardian.log_dir == tmp_path / "logs"
    assert cfg.api.port == 9000
    assert cfg.api.token is not None and cfg.api.token.get_secret_value() == "s3cret"
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={"GUARDIAN_API_PORT": "nope"})
    assert exc.value.problems[0].path == "api.port"


def test_config_file_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "g.toml"
    f.write_text("[[targets]]\nname='only'\n")
    monkeypatch.setenv("GUARDIAN_CONFIG", str(f))
    assert [t.name for t in load_config().targets] == ["only"]


def test_unreadable_and_non_utf8_files_are_clean_errors(tmp_path: Path) -> None:
    missing = runner.invoke(app, ["config", "validate", str(tmp_path / "missing.toml")])
    assert missing.exit_code == 2 and "cannot read" in missing.output
    f = tmp_path / "latin1.toml"
    f.write_bytes(b"[guardian]\nlog_level = '\xe9'\n")
    bad = runner.invoke(app, ["config", "validate", str(f)])
    assert bad.exit_code == 2 and "UTF-8" in bad.output


def test_env_values_are_converted_by_type_and_a_bad_one_names_its_variable(
    tmp_path: Path,
) -> None:
    f = tmp_path / "g.toml"
    f.write_text("[[targets]]\nname='t'\n")
    cfg = load_config(f, env={"GUARDIAN_DRY_RUN": "true", "GUARDIAN_STORE_RETENTION_DAYS": "7"})
    assert cfg.guardian.dry_run is True and cfg.store.retention_days == 7
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={"GUARDIAN_STORE_RETENTION_DAYS": "1e12"})
    (problem,) = exc.value.problems
    assert problem.path == "store.retention_days" and problem.line is None
    assert "$GUARDIAN_STORE_RETENTION_DAYS" in problem.message


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "bom.toml"
    f.write_bytes(b"\xef\xbb\xbf" + (ROOT / "guardian.example.toml").read_bytes())
    result = runner.invoke(app, ["config", "validate", str(f)])
    assert result.exit_code == 0, result.output
    assert [t.name for t in load_config(f, env={}).targets][:2] == ["panel", "comfyui"]


def test_a_zero_byte_file_says_it_has_no_targets(tmp_path: Path) -> None:
    f = tmp_path / "empty.toml"
    f.write_bytes(b"")
    for args in (["config", "validate", str(f)], ["run", "--config", str(f)]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "targets (line 1): no targets" in result.output
        assert "built-in defaults" in result.output


def test_strict_types_still_take_an_int_for_a_float() -> None:
    cfg = parse_config(BASE + "interval = 30\ntimeout = 5\n")
    assert cfg.targets[0].checks[0].interval == 30.0
    assert isinstance(cfg.targets[0].checks[0].interval, float)


def test_a_misspelt_key_suggests_the_closest_known_key_of_its_own_table() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + "[targets.recovery]\nmax_atempts = 3\nzzzz = 1\n")
    by_path = {p.path: p.message for p in exc.value.problems}
    assert by_path["targets[0].recovery.max_atempts"] == "unknown key; did you mean 'max_attempts'?"
    assert by_path["targets[0].recovery.zzzz"] == "unknown key"  # nothing close: no guess


def test_every_cycle_is_named_once_and_acyclic_dependencies_pass() -> None:
    chain = "".join(
        f"[[targets]]\nname='{n}'\n[targets.recovery]\ndepends_on={deps}\n"
        for n, deps in [("a", "['b']"), ("b", "['c']"), ("c", "[]"), ("x", "['y']"), ("y", "['x']")]
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(chain)
    assert [p.message for p in exc.value.problems] == ["depends_on cycle: x -> y -> x"]
    ok = parse_config(chain.replace("depends_on=['x']", "depends_on=['a']"))
    assert ok.target("y").recovery.depends_on == ["a"]


def test_backoff_gap_stays_finite_for_any_attempt_count() -> None:
    from guardian.config.schema import RecoveryConfig
    from guardian.recovery.policy import RestartPolicy

    policy = RestartPolicy(RecoveryConfig(cooldown=30, backoff_factor=10, backoff_max=300))
    assert [policy.gap_after(n) for n in (1, 2, 3)] == [30, 300, 300]
    assert policy.gap_after(100_000) == 300  # 10 ** 99_999 overflows a float
    zero = RestartPolicy(RecoveryConfig(cooldown=0, backoff_factor=10, backoff_max=300))
    assert zero.gap_after(100_000) == 0
