"""``run notebook`` as a drop-in for papermill, against a real Jupyter server and papermill's own CLI.

Each parity test gives papermill (``--prepare-only``, locally) and lamplighter the same command line and
compares what they inject. Extra kernelspecs on the server run ipykernel under other languages' names,
so the translator choice is tested without installing R or Julia.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from papermill.translators import RTranslator

from lamplighter.cli import main
from lamplighter.localserver import LocalServer
from lamplighter.remote.notebook import INJECTED_TAG
from tests.fake_kernels import assert_nothing_left, start_server_with_languages

PAPERMILL = str(Path(sys.executable).with_name("papermill"))
# ipykernel dressed as other languages: the server lists them with these languages.
FAKE_SPECS = {"fakejulia": "julia", "bash": "bash", "fake-r": "R", "fakematlab": "matlab"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    started = start_server_with_languages(tmp_path_factory.mktemp("papermill-server"), FAKE_SPECS)
    yield started
    started.stop()


@pytest.fixture
def cli_env(cli_env: list[str], server: LocalServer) -> Iterator[list[str]]:
    """conftest's ``cli_env``, and afterwards: no kernel or session left on the server."""
    yield cli_env
    assert_nothing_left(server)


def write_notebook(
    path: Path, *sources: str, kernel: str = "python3", language: str | None = "python"
) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel}
    if language is not None:
        nb.metadata["kernelspec"]["language"] = language
        nb.metadata["language_info"] = {"name": language}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if sources:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


def papermill_prepare(source: Path, out: Path, args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [PAPERMILL, str(source), str(out), "--prepare-only", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(out.read_text())
    return loaded


def injected(nb: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
    """The injected cell's position, source, and metadata.papermill.parameters."""
    cells = nb["cells"]
    index = next(i for i, c in enumerate(cells) if INJECTED_TAG in c["metadata"].get("tags", []))
    source = cells[index]["source"]
    return (
        index,
        "".join(source) if isinstance(source, list) else source,
        nb["metadata"]["papermill"]["parameters"],
    )


def same(a: Any, b: Any) -> bool:
    """Equality that counts NaN as equal to NaN (papermill's parameters may hold it)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


PARAMETER_ARGS = [
    pytest.param(["-p", "x", "nan", "-p", "y", "-x", "-p", "z", "-inf", "-p", "w", "inf"], id="nan-inf-dash"),
    pytest.param(["-p", "n", "1", "-r", "n", "raw", "-p", "m", "2"], id="r-after-p"),
    pytest.param(["-r", "n", "raw", "-p", "n", "1"], id="r-wins-wherever-it-stands"),
    pytest.param(["-y", "a: 1\nb: 2", "-y", "b: 3\nwhen: 2024-01-02", "-p", "a", "True"], id="repeated-y-dates"),
    pytest.param(["-p", "s", 'quo"te\\back', "-p", "u", "ünï", "-p", "e", "", "-p", "big", "1_000"], id="strings"),
    pytest.param(["-b", "eDogWzEsIDIsIHtrOiBudWxsfV0K", "-p", "f", "1e400"], id="base64-and-overflow"),
]  # fmt: skip


@pytest.mark.parametrize("args", PARAMETER_ARGS)
def test_prepare_only_injects_what_papermill_injects(
    server: LocalServer, cli_env: list[str], tmp_path: Path, args: list[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 0", "print(x)")
    theirs = papermill_prepare(source, tmp_path / "theirs.ipynb", args)
    ours_path = tmp_path / "ours.ipynb"
    rc = main(["run", "notebook", "--upload", str(source), str(ours_path), "--prepare-only", *args, *cli_env])
    assert rc == 0
    ours = json.loads(ours_path.read_text())
    assert injected(ours)[:2] == injected(theirs)[:2]
    assert same(injected(ours)[2], injected(theirs)[2])


def test_parameter_files_merge_in_order(server: LocalServer, cli_env: list[str], tmp_path: Path) -> None:
    (tmp_path / "one.yaml").write_text("a: one\nb: one\n")
    (tmp_path / "two.yaml").write_text("b: two\nday: 2024-02-03\n")
    args = ["-f", str(tmp_path / "one.yaml"), "-f", str(tmp_path / "two.yaml"), "-y", "a: yaml"]
    source = write_notebook(tmp_path / "in.ipynb", "a = b = None")
    theirs = papermill_prepare(source, tmp_path / "theirs.ipynb", args)
    assert main(["run", "notebook", "--upload", str(source), "-o", str(tmp_path / "o.ipynb"), "--prepare-only",
                 *args, *cli_env]) == 0  # fmt: skip
    ours = json.loads((tmp_path / "o.ipynb").read_text())
    assert injected(ours) == injected(theirs)
    assert injected(ours)[2] == {"a": "yaml", "b": "two", "day": "2024-02-03"}


@pytest.mark.parametrize("kernel", ["fakejulia", "bash", "fakematlab"])
def test_other_languages_get_papermills_translator(
    server: LocalServer, cli_env: list[str], tmp_path: Path, kernel: str
) -> None:
    args = ["-p", "n", "3", "-p", "f", "nan", "-p", "s", "it's", "-p", "t", "True", "-y", "l: [1, two]"]
    source = write_notebook(tmp_path / "in.ipynb", "n = 0", kernel=kernel, language=FAKE_SPECS[kernel])
    theirs = papermill_prepare(source, tmp_path / "theirs.ipynb", args)
    out = tmp_path / "ours.ipynb"
    assert (
        main(["run", "notebook", "--upload", str(source), str(out), "--prepare-only", *args, *cli_env]) == 0
    )
    assert same(injected(json.loads(out.read_text())), injected(theirs))


def test_the_language_comes_from_the_servers_kernelspec(
    server: LocalServer, cli_env: list[str], tmp_path: Path
) -> None:
    # The notebook names the kernel but no language: papermill would give up; the server knows it is R.
    source = write_notebook(tmp_path / "in.ipynb", "x = 0", kernel="fake-r", language=None)
    out = tmp_path / "ours.ipynb"
    assert main(["run", "notebook", "--upload", str(source), str(out), "--prepare-only", "-p", "_x", "None",
                 "-p", "ok", "True", *cli_env]) == 0  # fmt: skip
    assert injected(json.loads(out.read_text()))[1] == RTranslator.codify({"_x": None, "ok": True})


def test_nan_inf_and_dashes_reach_the_kernel_and_the_server_file(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(server.root_dir / "p.ipynb", "x = y = z = 0", "print(repr(x), repr(y), repr(z))")
    rc = main(["run", "notebook", "p.ipynb", "p-out.ipynb", "-p", "x", "nan", "-p", "y", "-x", "-p", "z", "-inf",
               *cli_env])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    text = (server.root_dir / "p-out.ipynb").read_text()
    executed = json.loads(text)
    assert "".join(executed["cells"][2]["outputs"][0]["text"]) == "nan '-x' -inf\n"
    params = executed["metadata"]["papermill"]["parameters"]
    assert math.isnan(params["x"]) and params["y"] == "-x" and params["z"] == -math.inf
    assert '"x": NaN' in text  # as papermill (nbformat) writes it


# -- errors named for what they are ----------------------------------------------------------------


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_missing_kernelspec_lists_the_servers(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "1", kernel="nosuchkernel")
    assert main(["run", "notebook", "--upload", str(source), *cli_env]) == 2
    line = one_line(capsys.readouterr().err)
    assert "'nosuchkernel' is not on the server" in line
    assert "bash, fake-r, fakejulia, fakematlab, python3" in line
    assert main(["run", "notebook", "--upload", str(source), "-k", "neither", *cli_env]) == 2
    assert "'neither'" in one_line(capsys.readouterr().err)


def test_an_output_in_a_missing_folder_is_named(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(server.root_dir / "e.ipynb", "1")
    assert main(["run", "notebook", "e.ipynb", "no/such/dir/out.ipynb", *cli_env]) == 2
    line = one_line(capsys.readouterr().err)
    assert "no/such/dir/out.ipynb" in line and "'no/such/dir' does not exist" in line


@pytest.mark.parametrize("upload", [False, True])
def test_a_missing_input_is_exit_2(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str], upload: bool
) -> None:
    flags = ["--upload"] if upload else []
    assert main(["run", "notebook", *flags, "not-there.ipynb", *cli_env]) == 2
    assert "not-there.ipynb" in one_line(capsys.readouterr().err)


def test_output_given_twice_is_exit_2(server: LocalServer, cli_env: list[str]) -> None:
    assert main(["run", "notebook", "a.ipynb", "b.ipynb", "-o", "c.ipynb", *cli_env]) == 2


# -- the command line a scheduler sees -------------------------------------------------------------


def test_dash_prints_the_executed_notebook(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "n = 1", "print(n * 2)")
    assert main(["run", "notebook", "--upload", str(source), "-", "-p", "n", "21", *cli_env]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cells"][2]["outputs"][0]["text"] == "42\n"


def test_json_result_for_a_failed_run(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1", "y = 2", "1 / 0", "never = 1")
    out = tmp_path / "out.ipynb"
    assert main(["run", "notebook", "--upload", str(source), str(out), "--json", *cli_env]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "failed" and result["exit_status"] == 1
    assert result["failed_cell"] == 2  # the index in the input (the red note added before it is not counted)
    assert result["error"]["ename"] == "ZeroDivisionError"
    assert result["output"] == str(out)
    assert [c["execution_count"] for c in result["cells"]] == [1, 2, 3, None]
    assert all(c["duration_s"] >= 0 for c in result["cells"][:3])


def test_json_result_for_a_good_run(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1", "x + 1")
    assert main(["run", "notebook", "--upload", str(source), "--json", *cli_env]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "completed" and result["failed_cell"] is None and result["error"] is None
    assert result["output"] is None and result["duration_s"] > 0


def test_input_without_stdin_fails_the_cell_as_nbclient_does(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "name = input('who? ')", "print('after')")
    assert main(["run", "notebook", "--upload", str(source), "--json", "--timeout", "60", *cli_env]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["error"]["ename"] == "StdinNotImplementedError"


def test_stdin_file_answers_input_and_getpass(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "answers.txt").write_text("alice\ns3cret\n")
    source = write_notebook(
        tmp_path / "in.ipynb",
        "import getpass\nname = input('who? ')\nword = getpass.getpass('pass? ')",
        "print(name, len(word))",
    )
    argv = ["run", "notebook", "--upload", str(source), "-", "--stdin-file", str(tmp_path / "answers.txt")]
    assert main([*argv, "--timeout", "60", *cli_env]) == 0
    cells = json.loads(capsys.readouterr().out)["cells"]
    assert cells[1]["outputs"][-1]["text"] == "alice 6\n"


def test_stdin_answers_from_the_terminal(
    server: LocalServer,
    cli_env: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("bob\n"))
    source = write_notebook(tmp_path / "in.ipynb", "name = input('who? ')", "print('hi', name)")
    assert (
        main(["run", "notebook", "--upload", str(source), "-", "--stdin", "--timeout", "60", *cli_env]) == 0
    )
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cells"][1]["outputs"][-1]["text"] == "hi bob\n"
    assert "who? " in captured.err  # the prompt was shown here


def test_answers_running_out_fail_the_cell_and_never_hang(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "answers.txt").write_text("only one\n")
    source = write_notebook(tmp_path / "in.ipynb", "a = input()\nb = input()", "print('never')")
    argv = [
        "run",
        "notebook",
        "--upload",
        str(source),
        "--json",
        "--stdin-file",
        str(tmp_path / "answers.txt"),
    ]
    assert main([*argv, "--timeout", "60", *cli_env]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["error"]["ename"] == "KeyboardInterrupt" and result["failed_cell"] == 0


# -- papermill's other flags -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        pytest.param(["--inject-paths"], id="both"),
        pytest.param(["--inject-input-path"], id="input"),
        pytest.param(["--inject-output-path", "-p", "n", "1"], id="output-with-p"),
        pytest.param(["--inject-paths", "-p", "PAPERMILL_INPUT_PATH", "mine"], id="p-overrides-a-path"),
    ],
)
def test_inject_paths_injects_what_papermill_injects(
    server: LocalServer, cli_env: list[str], tmp_path: Path, flags: list[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 0", "print(x)")
    out = tmp_path / "out.ipynb"  # the same strings for both: the paths are injected as given
    theirs = papermill_prepare(source, out, flags)
    rc = main(["run", "notebook", "--upload", str(source), str(out), "--prepare-only", *flags, *cli_env])
    assert rc == 0
    ours = json.loads(out.read_text())
    assert injected(ours) == injected(theirs)


def test_engine_accepts_only_the_default(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1")
    assert main(["run", "notebook", "--upload", str(source), "--engine", "nbclient", *cli_env]) == 0
    capsys.readouterr()
    assert main(["run", "notebook", "--upload", str(source), "--engine", "papermill-dask", *cli_env]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--engine" in line and "'papermill-dask'" in line and "'nbclient'" in line


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_a_bad_autosave_interval_is_exit_2(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1")
    with contextlib.suppress(SystemExit):  # argparse's own refusal of a non-integer exits 2 itself
        assert (
            main(["run", "notebook", "--upload", str(source), "--autosave-cell-every", value, *cli_env]) == 2
        )
    assert "--autosave-cell-every" in capsys.readouterr().err


def json_failure(capsys: pytest.CaptureFixture[str], argv: list[str], status: int) -> dict[str, Any]:
    """``main(argv)`` exits with ``status``, one line on stderr, and one result object on stdout."""
    assert main(argv) == status
    captured = capsys.readouterr()
    one_line(captured.err)
    result: dict[str, Any] = json.loads(captured.out)
    assert result["exit_status"] == status and result["error"]["message"]
    return result


def test_json_reports_failures_before_the_run_starts(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = json_failure(capsys, ["run", "notebook", "--upload", "nowhere.ipynb", "--json", *cli_env], 2)
    assert missing["status"] == "not started" and "nowhere.ipynb" in missing["error"]["message"]
    assert missing["error"]["type"] == "ConfigError" and missing["cells"] == []

    source = write_notebook(tmp_path / "in.ipynb", "1", kernel="nosuchkernel")
    kernel = json_failure(capsys, ["run", "notebook", "--upload", str(source), "--json", *cli_env], 2)
    assert kernel["status"] == "not started" and "nosuchkernel" in kernel["error"]["message"]

    argv = ["run", "notebook", "--upload", str(source), "--json", *cli_env, "--token", "not-the-token"]
    refused = json_failure(capsys, argv, 3)
    assert refused["status"] == "not started" and "not-the-token" not in json.dumps(refused)


def test_json_with_the_notebook_on_stdout_is_refused(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both want stdout: refused before anything runs (exit 2); the result object says so."""
    source = write_notebook(tmp_path / "in.ipynb", "x = 1")
    result = json_failure(capsys, ["run", "notebook", "--upload", str(source), "-", "--json", *cli_env], 2)
    assert result["status"] == "not started" and "stdout" in result["error"]["message"]
