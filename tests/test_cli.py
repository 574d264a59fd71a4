"""Command-line conventions: -v/--debug anywhere, one spelling per option, config files, completion, colour."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lamplighter.cli.common import console
from lamplighter.localserver import LocalServer
from lamplighter.settings import load_settings, option_specs
from tests.conftest import cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

BAD_URL = "http://[::1"


# -- verbosity ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("--debug", "status", "--url", BAD_URL),
        ("status", "--url", BAD_URL, "--debug"),
        ("status", "-v", "--url", BAD_URL),
        ("-v", "run", "shell", "--url", BAD_URL, "--", "true"),
    ],
)
def test_debug_before_or_after_the_command_shows_the_traceback(args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("lamplighter: url: not a valid URL")


def test_without_debug_an_error_is_one_line() -> None:
    result = cli("status", "--url", BAD_URL)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_our_lines_and_debug_http_the_libraries_too(jupyter: LocalServer, tmp_path: Path) -> None:
    common = ("watch", "--once", "--action", "none", "--url", jupyter.url, "--token", jupyter.token,
              "--journal", str(tmp_path / "j"))  # fmt: skip
    plain = cli(*common)
    ours = cli(*common, "--debug")
    everything = cli(*common, "-vv")
    for result in (plain, ours, everything):
        assert result.returncode == 0, result.stderr
    assert " DEBUG " not in plain.stderr
    assert " DEBUG " in ours.stderr and "HTTP Request:" not in ours.stderr
    assert "HTTP Request:" in everything.stderr
    assert cli(*common, "--debug-http").stderr.count("HTTP Request:") > 0


# -- one spelling per concept --------------------------------------------------------------------


def test_old_spellings_work_but_are_not_shown() -> None:
    for command in (("fleet", "status"), ("run", "shell")):
        text = cli(*command, "--help").stdout
        assert "--domain" in text and "--sagemaker-domain" not in text
    assert "--sagemaker-app-type" not in cli("run", "shell", "--help").stdout
    # The old spelling fills the required option: the error is the next thing missing, not --domain.
    result = cli("on-start", "--sagemaker-domain", "d-1")
    assert result.returncode == 2 and "--script is required" in result.stderr


def test_one_app_type_choice_set_with_sagemaker_names(tmp_path: Path) -> None:
    for command in (("watch",), ("run", "shell"), ("on-start",), ("lcc", "render")):
        assert "code-editor" in " ".join(cli(*command, "--help").stdout.split())
    source = ("--wheelhouse", "s3://b/w/")  # lamplighter is not on PyPI: render needs an install source
    script = cli("lcc", "render", "--app-type", "code-editor", *source).stdout
    assert script == cli("lcc", "render", "--app-type", "CodeEditor", *source).stdout
    assert "CodeEditor" in script
    assert load_settings({"app_type": "CodeEditor"}, env={}).app_type == "code-editor"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("run", "shell", "--timeout", "soon", "--", "true"), "--timeout"),
        (("run", "notebook", "x.ipynb", "--cell-timeout", "soon"), "--cell-timeout"),
        (("on-start", "--domain", "d", "--space", "s", "--script", "x", "--ready-timeout", "soon"),
         "--ready-timeout"),
        (("lcc", "render", "--app-type", "jupyter", "--idle-timeout", "soon"), "--idle-timeout"),
        (("lcc", "render", "--app-type", "jupyter", "--idle-time", "soon"), "--idle-timeout"),
        (("demo", "--idle-timeout", "soon"), "--idle-timeout"),
    ],
)  # fmt: skip
def test_every_duration_flag_fails_the_same_way(args: tuple[str, ...], flag: str) -> None:
    result = cli(*args)
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2
    assert flag in line and "expected a duration like 90, 90s, 15m or 2h" in line and "'soon'" in line


def test_usage_errors_are_one_line() -> None:
    result = cli("watch", "--no-such-flag")
    (line,) = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "--no-such-flag" in line and "--help" in line


# -- config ---------------------------------------------------------------------------------------


def test_config_round_trips_and_hides_secrets(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LAMPLIGHTER_TOKEN": "tok-secret-123456",
        "LAMPLIGHTER_COOKIES": "session=cookie-secret-654321",
        "IDLE_TIME_IN_SECONDS": "1800",
    }
    flags = ("--url", "http://127.0.0.1:8888/lab/", "--kernel-timeout", "1.5s", "--skip-terminals",
             "--process-ignore", 'a,b "c"', "--cpu-threshold", "15%", "--command", "echo 'x\ty'",
             "--action", "command")  # fmt: skip
    first = cli("config", *flags, env=env)
    assert first.returncode == 0, first.stderr
    text = first.stdout
    assert "tok-secret" not in text and "cookie-secret" not in text
    assert "# token: set; a secret, never written here" in text
    data = tomllib.loads(text)
    assert data["idle_timeout"] == "30m" and data["skip_terminals"] is True
    assert "request_timeout" not in data  # the default: commented out
    for spec in option_specs():  # every setting is there, with its help
        assert f"{spec.name}" in text and spec.metadata["help"].split()[0] in text
    path = tmp_path / "config.toml"
    path.write_text(text)
    expected = load_settings(
        {"url": "http://127.0.0.1:8888/lab/", "kernel_timeout": "1.5s", "skip_terminals": True,
         "process_ignore": 'a,b "c"', "cpu_threshold": "15%", "command": "echo 'x\ty'", "action": "command"},
        env={k: v for k, v in env.items() if k.startswith(("LAMPLIGHTER_", "IDLE_", "XDG_"))},
    )  # fmt: skip
    loaded = load_settings(env={"XDG_STATE_HOME": env["XDG_STATE_HOME"]}, config_path=path)
    assert loaded == replace(expected, token=None, cookies=None)
    again = cli("config", "--config", str(path), env={k: v for k, v in env.items() if "SECRET" not in v})
    # Loaded back, the file prints the same (the secrets aside, which it never held).
    strip = [line for line in again.stdout.splitlines() if not line.startswith(("# token:", "# cookies:"))]
    assert strip == [line for line in text.splitlines() if not line.startswith(("# token:", "# cookies:"))]


# -- completion -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script(shell: str) -> None:
    result = cli("completion", shell)
    assert result.returncode == 0 and "lamplighter" in result.stdout
    if shell == "bash":
        subprocess.run(["bash", "-n"], input=result.stdout, text=True, check=True)


@pytest.mark.parametrize(
    ("line", "expected"), [("lamplighter wat", "watch"), ("lamplighter watch --idle-t", "--idle-timeout")]
)
def test_completion_answers_the_shell(line: str, expected: str, tmp_path: Path) -> None:
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
           "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}  # fmt: skip
    result = cli(env=env)
    assert result.returncode == 0, result.stderr
    assert expected in out.read_text().split()


# -- colour -----------------------------------------------------------------------------------------

_PRINT_RED = "from lamplighter.cli.common import console; console().print('[red]red[/red]')"


def _on_a_terminal(env: dict[str, str]) -> bytes:
    """What ``_PRINT_RED`` writes when stdout is a terminal."""
    leader, follower = pty.openpty()
    with subprocess.Popen([sys.executable, "-c", _PRINT_RED], stdout=follower, env=env):
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the child is done
                break
            if not chunk:
                break
            chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks)


def test_colour_only_on_a_terminal_and_never_with_no_color() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    env["TERM"] = "xterm-256color"
    assert b"\x1b[31m" in _on_a_terminal(env)  # the check can see colour
    assert b"\x1b[" not in _on_a_terminal({**env, "NO_COLOR": "1"}).replace(b"\x1b[0m", b"")
    piped = subprocess.run([sys.executable, "-c", _PRINT_RED], capture_output=True, env=env, check=True)
    assert piped.stdout == b"red\n"
    assert console().is_terminal is False  # under pytest: captured
