"""Secrets stay secret: debug logs, hook environments, the journal, status --json and error lines.

Everything here runs the real CLI against a real Jupyter server, at debug level where logs matter, and
looks for the secret's bytes in everything lamplighter wrote.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import sys
from pathlib import Path

import httpx
import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.redaction import hide, redact
from tests.conftest import ServerFactory, cli

SECRET_VARS = ("LAMPLIGHTER_TOKEN", "JUPYTER_TOKEN", "LAMPLIGHTER_COOKIES", "JUPYTERHUB_API_TOKEN")


def login_cookies(server: LocalServer) -> dict[str, str]:
    """The cookies a browser holds after logging in with the token once."""
    with httpx.Client() as client:
        client.get(server.url + "tree", params={"token": server.token}, follow_redirects=True)
        return {c.name: c.value for c in client.cookies.jar if c.name.startswith("username")}


def tiny_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('hi from the kernel')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_redact_rule() -> None:
    hide("tok-1234567890")
    assert redact("GET http://h/?token=tok-1234567890&x=1") == "GET http://h/?token=***&x=1"
    assert redact("> Authorization: token abcdef") == "> Authorization: ***"
    assert redact("> Cookie: username-h=abc; _xsrf=def") == "> Cookie: ***"
    assert redact("{'Authorization': b'AWS4-HMAC-SHA256 Credential=AK/x, Signature=ff'}") == (
        "{'Authorization': b'***'}"
    )
    assert redact("https://alice:pw@host/x") == "https://***@host/x"
    assert (
        redact("https://d.studio.aws/auth?authToken=eyJ.abc.def") == "https://d.studio.aws/auth?authToken=***"
    )
    assert redact("X-Amz-Signature=0a1b&X-Amz-Credential=AKIA") == "X-Amz-Signature=***&X-Amz-Credential=***"
    assert redact("the value tok-1234567890 was registered") == "the value *** was registered"
    # Words that merely look like the rule's names are left alone.
    assert (
        redact("check the token or cookies; not authorised") == "check the token or cookies; not authorised"
    )


def test_debug_logs_of_run_shell_and_notebook_hide_token_and_cookies(
    jupyter: LocalServer, tmp_path: Path
) -> None:
    cookies = login_cookies(jupyter)
    assert cookies, "the server set no login cookie"
    cookie_header = "; ".join(f"{k}={v}" for k, v in cookies.items())
    env = {**os.environ, "LAMPLIGHTER_TOKEN": jupyter.token}
    shell = cli("run", "shell", "--log-level", "debug", "--url", jupyter.url, "--", "echo", "hello", env=env)
    assert shell.returncode == 0, shell.stderr
    assert "hello" in shell.stdout
    assert "Authorization: ***" in shell.stderr  # the handshake was logged, with its header hidden
    assert jupyter.token not in shell.stderr + shell.stdout
    notebook = tiny_notebook(tmp_path / "n.ipynb")
    by_cookie = {**os.environ, "LAMPLIGHTER_COOKIES": cookie_header}
    run = cli("run", "notebook", "--upload", str(notebook), "--log-level", "debug", "--url", jupyter.url,
              env=by_cookie)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "Cookie: ***" in run.stderr
    for value in cookies.values():
        assert value not in run.stderr + run.stdout


def test_hooks_get_a_minimal_environment(jupyter: LocalServer, tmp_path: Path) -> None:
    stop_env, warn_env = tmp_path / "stop.env", tmp_path / "warn.env"
    env = {
        **os.environ,
        "LAMPLIGHTER_TOKEN": jupyter.token,
        "JUPYTER_TOKEN": jupyter.token,
        "JUPYTERHUB_API_TOKEN": "hub-secret-0123456789",
        "LAMPLIGHTER_COOKIES": "username-x=cookie-secret-0123456789",
        "MY_SETTING": "kept",
        "ANOTHER_COPY": f"prefix-{jupyter.token}",
    }
    dump = f"{shlex.quote(sys.executable)} -c 'import json,os; print(json.dumps(dict(os.environ)))'"
    result = cli(
        "watch", "--url", jupyter.url, "--idle-timeout", "2s", "--warn-before", "1s",
        "--warn-command", f"{dump} > {warn_env}", "--action", "command", "--command", f"{dump} > {stop_env}",
        "--journal", str(tmp_path / "j"), env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for path in (stop_env, warn_env):
        hook = json.loads(path.read_text())
        for name in SECRET_VARS:
            assert name not in hook
        assert jupyter.token not in path.read_text()
        assert "ANOTHER_COPY" not in hook  # an inherited variable holding a secret goes too
        assert hook["MY_SETTING"] == "kept" and hook["PATH"] == os.environ["PATH"]
        assert hook["LAMPLIGHTER_TARGET"] == jupyter.url
        assert "idle for" in hook["LAMPLIGHTER_REASON"]
        assert hook["LAMPLIGHTER_STOP_AT"] and hook["LAMPLIGHTER_IDLE_SINCE"]
        assert "LAMPLIGHTER_REASONS" in hook


def test_error_lines_and_tracebacks_hide_secrets(tmp_path: Path) -> None:
    env = dict(os.environ)
    bad = cli("--debug", "status", "--url", "http://bob:hunter2-pw@127.0.0.1:1/", "--journal",
              str(tmp_path / "j"), env=env)  # fmt: skip
    assert bad.returncode == 2
    assert "hunter2-pw" not in bad.stderr
    usage = cli("run", "shell", "--sagemaker-app-type", "https://x/?authToken=usage-secret-77", "--", "true",
                env=env)  # fmt: skip
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
    assert "usage-secret-77" not in usage.stderr


@pytest.mark.parametrize(
    ("how", "args", "extra_env"),
    [
        ("variable", ["--tokn", "given-secret-31"], {"LAMPLIGHTER_TOKEN": "given-secret-31"}),
        ("flag", ["--token", "given-secret-31", "--log-level", "given-secret-31"], {}),
        ("abbreviated flag", ["--cook", "c=given-secret-31", "--nope", "given-secret-31"], {}),
        ("token file", ["--token-file", "{file}", "--tokn", "given-secret-31"], {}),
        ("url", ["--url", "http://127.0.0.1:1/?token=given-secret-31", "--app-type", "given-secret-31"], {}),
        ("config file", ["--tokn", "given-secret-31"], {"LAMPLIGHTER_CONFIG": "{config}"}),
    ],
)
def test_usage_errors_hide_the_secrets_given(
    tmp_path: Path, how: str, args: list[str], extra_env: dict[str, str]
) -> None:
    # A usage error is printed before any setting is read: a mistyped flag followed by the token
    # (or the token repeated where another value belongs) must not echo it.
    token_file = tmp_path / "token"
    token_file.write_text("given-secret-31\n")
    config = tmp_path / "config.toml"
    config.write_text('token = "given-secret-31"\n')
    fill = {"file": str(token_file), "config": str(config)}
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    env.update({k: v.format(**fill) for k, v in extra_env.items()})
    url = [] if how == "url" else ["--url", "http://127.0.0.1:1/"]
    result = cli("status", *url, *(a.format(**fill) for a in args), env=env)
    assert result.returncode == 2, result.stderr
    assert "given-secret-31" not in result.stderr, (how, result.stderr)
    assert "***" in result.stderr, result.stderr


def test_a_flag_is_read_as_argparse_reads_it() -> None:
    # `--hub` is a flag of its own, not a prefix of --hub-token: what follows it is no secret.
    from lamplighter.cli import _option_strings, build_parser
    from lamplighter.redaction import hidden_scope, hidden_values
    from lamplighter.settings import hide_given_secrets

    options = _option_strings(build_parser())
    assert {"--hub", "--hub-url", "--hub-token", "--cookies", "--to"} <= options
    argv = ["status", "--hub", "--hub-url", "http://h/", "--to", "/tmp/w", "--cook", "c=cookie-val-1"]
    with hidden_scope():
        hide_given_secrets(argv, {}, options)
        assert hidden_values() >= {"c=cookie-val-1", "cookie-val-1"}
        assert not hidden_values() & {"--hub-url", "/tmp/w"}
    assert "cookie-val-1" not in hidden_values()  # forgotten after the scope


def test_a_url_username_is_not_masked_in_the_error_text(tmp_path: Path) -> None:
    bad = cli("status", "--url", "http://user:pw-secret-9@127.0.0.1:1/", env=dict(os.environ))
    assert bad.returncode == 2
    assert "pw-secret-9" not in bad.stderr
    assert "user info (user:password@) is not supported" in bad.stderr, bad.stderr


def test_a_token_given_twice_in_the_url_is_named_as_such(tmp_path: Path) -> None:
    bad = cli(
        "status", "--url", "http://127.0.0.1:1/?token=tok-secret-7&token=tok-secret-7", env=dict(os.environ)
    )
    assert bad.returncode == 2
    assert "tok-secret-7" not in bad.stderr
    assert "token" in bad.stderr and "more than once" in bad.stderr, bad.stderr


# -- the property: random secrets never leave a byte behind ----------------------------------------------

_ALPHABET = string.ascii_letters + string.digits + "-_."
_secrets = st.text(_ALPHABET, min_size=12, max_size=40).filter(lambda s: s.strip(".") == s)


@pytest.mark.slow
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(token=_secrets, cookie=_secrets, password=_secrets)
def test_random_secrets_never_appear_anywhere(
    token: str,
    cookie: str,
    password: str,
    server_factory: ServerFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("redaction")
    server = start_local_server(work / "server", token=token)
    try:
        journal = work / "journal.sqlite3"
        hook_env = work / "hook.env"
        env = {
            **os.environ,
            "LAMPLIGHTER_TOKEN": token,
            "LAMPLIGHTER_COOKIES": f"lamplighter-test={cookie}",
            "LAMPLIGHTER_JOURNAL": str(journal),
            "XDG_STATE_HOME": str(work / "state"),
        }
        host = server.url.removeprefix("http://")
        outputs = [
            cli("status", "--url", f"http://me:{password}@{host}", env=env),
            cli("status", "--json", "--url", f"{server.url}?token={token}", env=env),
            cli("watch", "--once", "--log-level", "debug", "--action", "none", "--url", server.url, env=env),
            cli("run", "shell", "--log-level", "debug", "--url", server.url, "--", "echo", "ok", env=env),
            cli(
                "run",
                "notebook",
                "--upload",
                str(tiny_notebook(work / "n.ipynb")),
                "--log-level",
                "debug",
                "--url",
                server.url,
                env=env,
            ),
            cli(
                "watch",
                "--log-level",
                "debug",
                "--idle-timeout",
                "1s",
                "--url",
                server.url,
                "--action",
                "command",
                "--command",
                f"env > {hook_env}",
                env=env,
            ),
        ]
        assert [r.returncode for r in outputs] == [2, 0, 0, 0, 0, 0], [r.stderr[-500:] for r in outputs]
        written = [r.stdout + r.stderr for r in outputs]
        written += [journal.read_bytes().decode(errors="replace"), hook_env.read_text()]
        for text in written:
            for secret in (token, cookie, password):
                assert secret not in text
    finally:
        server.stop()


def test_every_secret_setting_variable_is_kept_from_hooks() -> None:
    from lamplighter.redaction import SECRET_VARIABLES
    from lamplighter.settings import secret_variables

    assert secret_variables() <= SECRET_VARIABLES
    assert {"LAMPLIGHTER_TOKEN", "JUPYTER_TOKEN", "LAMPLIGHTER_COOKIES"} <= secret_variables()


def test_in_server_logs_go_to_the_server_log_without_secrets() -> None:
    import io
    import logging
    from types import SimpleNamespace

    from lamplighter.extension import _route_logs

    out = io.StringIO()
    server_log = logging.getLogger("test-serverapp")
    server_log.addHandler(logging.StreamHandler(out))
    ours = logging.getLogger("lamplighter")
    before = (list(ours.handlers), ours.propagate)
    try:
        _route_logs(SimpleNamespace(log=server_log))
        _route_logs(SimpleNamespace(log=server_log))  # a second load adds nothing twice
        hide("in-server-secret-4711")
        logging.getLogger("lamplighter.agent").warning("probe failed with token=%s", "in-server-secret-4711")
        server_log.warning("the server's own line: in-server-secret-4711")
    finally:
        ours.handlers[:], ours.propagate = before
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert "probe failed" in lines[0]
    assert "in-server-secret-4711" not in out.getvalue()


def test_the_lambda_guards_the_runtime_log_handlers() -> None:
    import logging

    from lamplighter.aws_lambda import handler
    from lamplighter.redaction import RedactingFilter

    runtime = logging.StreamHandler()  # what the Lambda runtime puts on the root logger
    logging.getLogger().addHandler(runtime)
    try:
        handler({"detail": {"eventSource": "ec2.amazonaws.com"}}, None)
        assert any(isinstance(f, RedactingFilter) for f in runtime.filters)
    finally:
        logging.getLogger().removeHandler(runtime)
