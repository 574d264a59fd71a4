"""Settings: precedence, the AWS sample's variable names, TOML, durations, and one-line errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from lamplighter.cli import main
from lamplighter.errors import ConfigError
from lamplighter.settings import (
    APP_TYPES,
    SAGEMAKER_APP_TYPES,
    app_type_name,
    duration_text,
    load_settings,
    parse_duration,
    parse_setting,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1.5h", 5400), ("250ms", 0.25)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "delta",
    [
        timedelta(0),
        timedelta(milliseconds=250),
        timedelta(seconds=90),
        timedelta(hours=36),
        timedelta(microseconds=1500001),
    ],
)
def test_duration_text_parses_back(delta: timedelta) -> None:
    assert parse_duration(duration_text(delta)) == delta


def test_one_app_type_set_takes_sagemaker_names() -> None:
    assert set(SAGEMAKER_APP_TYPES) == set(APP_TYPES)
    for ours, theirs in SAGEMAKER_APP_TYPES.items():
        assert app_type_name(theirs) == app_type_name(theirs.upper()) == ours
        assert load_settings({"app_type": theirs}, env={}).app_type == ours
    with pytest.raises(
        ConfigError, match=r"app_type \(--app-type\): expected one of jupyter, jupyter-server, code-editor"
    ):
        load_settings({"app_type": "notebook"}, env={})


def test_parse_setting_checks_as_load_settings_does() -> None:
    assert parse_setting("idle_timeout", "15m", "--idle-time") == timedelta(minutes=15)
    with pytest.raises(ConfigError, match=r"idle_timeout \(--idle-time\): must be between 1s and 365d"):
        parse_setting("idle_timeout", "0", "--idle-time")


def test_precedence_defaults_toml_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('idle_timeout = "20m"\nkernel-timeout = 600\nskip_terminals = true\n')
    assert load_settings(env={}).idle_timeout == timedelta(hours=1)
    from_file = load_settings(env={}, config_path=config)
    assert (from_file.idle_timeout, from_file.kernel_timeout, from_file.skip_terminals) == (
        timedelta(minutes=20),
        timedelta(minutes=10),
        True,
    )
    from_env = load_settings(env={"LAMPLIGHTER_IDLE_TIMEOUT": "30m"}, config_path=config)
    assert from_env.idle_timeout == timedelta(minutes=30)
    from_flag = load_settings(
        {"idle_timeout": "40m"}, env={"LAMPLIGHTER_IDLE_TIMEOUT": "30m"}, config_path=config
    )
    assert from_flag.idle_timeout == timedelta(minutes=40)


def test_aws_sample_variables_switch_over_unchanged() -> None:
    env = {
        "IDLE_TIME_IN_SECONDS": "1800",
        "IGNORE_CONNECTIONS": "False",
        "SKIP_TERMINALS": "True",
        "JL_HOSTNAME": "0.0.0.0",
        "JL_PORT": "8888",
        "JL_BASE_URL": "/jupyterlab/default/",
    }
    s = load_settings(env=env)
    assert s.idle_timeout == timedelta(seconds=1800)
    assert s.ignore_connections is False and s.skip_terminals is True
    assert s.url == "http://127.0.0.1:8888/jupyterlab/default/"
    # Lamplighter's own name wins over the sample's.
    assert load_settings(env={**env, "LAMPLIGHTER_IDLE_TIMEOUT": "5m"}).idle_timeout == timedelta(minutes=5)


def test_startup_grace_defaults_to_idle_timeout() -> None:
    assert load_settings({"idle_timeout": "7m"}, env={}).effective_startup_grace == timedelta(minutes=7)
    assert load_settings({"startup_grace": "off"}, env={}).effective_startup_grace == timedelta(hours=1)


def test_token_file_and_redaction(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    s = load_settings({"token_file": str(token_file)}, env={})
    assert s.token == "s3cret"
    assert s.redacted()["token"] == "***"


@pytest.mark.parametrize(
    ("flags", "env", "needle"),
    [
        ({"idle_timeout": "soon"}, {}, "idle_timeout (--idle-timeout): expected a duration"),
        (
            {},
            {"IGNORE_CONNECTIONS": "maybe"},
            "ignore_connections (IGNORE_CONNECTIONS): expected true or false",
        ),
        ({"action": "explode"}, {}, "action (--action): expected one of shutdown, command, none"),
        ({"action": "command"}, {}, "command: --action command needs"),
        ({"idle_timeout": "0"}, {}, "idle_timeout (--idle-timeout): must be between 1s and 365d"),
        ({}, {"JL_PORT": "eighty"}, "JL_PORT"),
        ({"token": None, "token_file": "/nonexistent/token"}, {}, "token_file"),
    ],
)
def test_bad_values_name_the_setting(flags: dict[str, str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(flags, env=env)
    assert needle in str(info.value)


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("idle_timeout = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={}, config_path=config)
    config.write_text("idle_timout = 5\n")
    with pytest.raises(ConfigError, match="unknown setting 'idle_timout'"):
        load_settings(env={}, config_path=config)


def test_secret_never_echoed_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"token": ["hunter2"]}, env={})
    assert "hunter2" not in str(info.value) and "***" in str(info.value)


def test_help_lists_every_setting_with_default_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["watch", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--idle-timeout",
        "--startup-grace",
        "--kernel-timeout",
        "--ignore-connections",
        "--count-connections",
        "--skip-terminals",
        "--dry-run",
        "--journal",
        "--insecure",
    ):
        assert flag in text
    assert "IDLE_TIME_IN_SECONDS" in text
    assert "Visible in process lists" in text


def test_token_in_the_url_is_moved_out_of_it() -> None:
    s = load_settings({"url": "http://127.0.0.1:8888/user/a/lab/tree/x.ipynb?token=abc123"}, env={})
    assert s.url == "http://127.0.0.1:8888/user/a/"  # the login URL Jupyter prints, reduced to its base
    assert s.token == "abc123"
    assert "abc123" not in str(s.redacted())
