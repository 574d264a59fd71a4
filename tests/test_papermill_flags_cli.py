"""papermill's ``-l/--language``, ``--stdout-file``/``--stderr-file`` and ``--help-notebook`` on
``run notebook``, against a real Jupyter server and papermill's own code.

``--help-notebook`` is compared with papermill's CLI (run in-process) on the same files; the parser
behind it with ``PythonTranslator.inspect`` over many cells. The fake ``R`` kernelspec runs ipykernel
under R's language, so which translator wrote the parameters shows in what the kernel runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from click.testing import CliRunner
from papermill.cli import papermill as papermill_cli
from papermill.translators import PythonTranslator

from lamplighter.cli import main
from lamplighter.localserver import LocalServer
from lamplighter.remote.notebook import INJECTED_TAG
from lamplighter.remote.notebook_help import NO_PARAMETERS_CELL, inspect_python
from lamplighter.remote.parameters import translate_parameters
from tests.fake_kernels import assert_nothing_left, start_server_with_languages
from tests.waiting import wait_until

PAPERMILL = str(Path(sys.executable).with_name("papermill"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    started = start_server_with_languages(tmp_path_factory.mktemp("papermill-flags-server"), {"fake-r": "R"})
    yield started
    started.stop()


@pytest.fixture
def cli_env(cli_env: list[str], server: LocalServer) -> Iterator[list[str]]:
    """conftest's ``cli_env``, and afterwards: no kernel or session left on the server."""
    yield cli_env
    assert_nothing_left(server)


def write_notebook(
    path: Path,
    *sources: str,
    kernel: str = "python3",
    language: str = "python",
    tagged: bool = True,
) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": language}
    nb.metadata["language_info"] = {"name": language}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    if sources and tagged:
        nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- --help-notebook -------------------------------------------------------------------------------

PARAMETER_CELLS = [
    pytest.param("alpha = 0.5  # the learning rate\nn: int = 10\nname = 'x'  # type: str\n", id="simple"),
    pytest.param("# Parameters\n\nflag = True\n# a comment line\nnothing = None\n", id="comments"),
    pytest.param("a = b = 1\nc = 2\n", id="chained-assignment-skipped"),
    pytest.param("values = [1,\n  2,  # two\n  3]  # a list\nd = {'k': 1,\n 'j': 2}\n", id="multiline"),
    pytest.param("x: 'List[str]' = ['a']  # quoted annotation\ny : Dict[str, int] = {}\n", id="annotations"),
    pytest.param("print('no assignment')\n", id="no-assignment"),
    pytest.param("very_long_parameter_name_here = 'a value'  # with a help text\nshort = 1  #\n", id="layout"),
    pytest.param("s = 'has # inside'  # help\nt = \"eq = sign\"\n", id="hash-and-equals-in-values"),
    pytest.param("import os\nroot = os.getcwd()  # type: str where it runs\n", id="type-comment-and-more"),
    pytest.param("", id="empty"),
]  # fmt: skip


@pytest.mark.parametrize("source", PARAMETER_CELLS)
def test_parameters_are_read_as_papermill_reads_them(source: str) -> None:
    theirs = [tuple(p) for p in PythonTranslator.inspect(nbformat.v4.new_code_cell(source))]
    ours = [(p.name, p.inferred_type_name, p.default, p.help) for p in inspect_python(source)]
    assert ours == theirs


def papermill_help(path: str) -> tuple[str, int]:
    """papermill's own ``--help-notebook`` output for ``path``, its CLI run in-process."""
    result = CliRunner().invoke(papermill_cli, ["--help-notebook", path], catch_exceptions=False)
    return result.stdout, result.exit_code


def without_usage(text: str) -> list[str]:
    """The text after the usage line (the only line that names the program)."""
    return text.splitlines()[1:]


HELP_NOTEBOOKS = [
    pytest.param(dict(sources=(PARAMETER_CELLS[0].values[0], "print(alpha)")), 0, id="python"),
    pytest.param(dict(sources=(PARAMETER_CELLS[3].values[0],)), 0, id="python-multiline"),
    pytest.param(dict(sources=("print(1)",)), 0, id="nothing-to-infer"),
    pytest.param(dict(sources=("x = 1",), kernel="ir", language="R"), 0, id="R-cannot-infer"),
    pytest.param(dict(sources=("x = 1",), tagged=False), NO_PARAMETERS_CELL, id="no-parameters-cell"),
]


@pytest.mark.parametrize(("notebook", "status"), HELP_NOTEBOOKS)
@pytest.mark.parametrize("upload", [False, True], ids=["server", "upload"])
def test_help_notebook_prints_what_papermill_prints(
    server: LocalServer,
    cli_env: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    notebook: dict[str, Any],
    status: int,
    upload: bool,
) -> None:
    # The notebook's kernelspec is not on the server: a kernel start (or a kernelspec check) would
    # fail with exit 2, so a good answer shows that none happened.
    notebook = {"kernel": "not-on-this-server", **notebook}
    write_notebook(server.root_dir / "help.ipynb", *notebook.pop("sources"), **notebook)
    monkeypatch.chdir(server.root_dir)  # both read "help.ipynb", and print that path
    theirs, their_status = papermill_help("help.ipynb")
    # --upload reads the local file and needs no server at all: no --url is given.
    argv = ["run", "notebook", "help.ipynb", "--help-notebook", *(["--upload"] if upload else cli_env)]
    assert main(argv) == status == their_status
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Usage: lamplighter run notebook [OPTIONS] PATH [OUTPUT]"
    assert without_usage(out) == without_usage(theirs)


def test_help_notebook_reads_the_language_given(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # papermill's --help-notebook ignores -k/-l (its run does not): here they mean what they mean
    # for the run, so an R-labelled notebook of Python code can be read as Python.
    write_notebook(server.root_dir / "r.ipynb", "x = 1  # one", kernel="fake-r", language="R")
    assert main(["run", "notebook", "r.ipynb", "--help-notebook", *cli_env]) == 0
    assert "Can't infer anything" in capsys.readouterr().out
    assert main(["run", "notebook", "r.ipynb", "--help-notebook", "-l", "python", *cli_env]) == 0
    assert f"{'  x: Unknown type (default 1)':<34}one" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("upload", [False, True], ids=["server", "upload"])
def test_help_notebook_on_a_missing_notebook_is_exit_2(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str], upload: bool
) -> None:
    flags = ["--upload"] if upload else []
    assert main(["run", "notebook", "gone.ipynb", "--help-notebook", *flags, *cli_env]) == 2
    captured = capsys.readouterr()
    assert "gone.ipynb" in one_line(captured.err)
    assert captured.out == ""


# -- -l/--language ---------------------------------------------------------------------------------


def injected_source(nb: dict[str, Any]) -> str:
    cell = next(c for c in nb["cells"] if INJECTED_TAG in c["metadata"].get("tags", []))
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else str(source)


@pytest.mark.parametrize("language", ["R", "julia", "bash"])
def test_language_translates_the_parameters_as_papermill_does(
    server: LocalServer, cli_env: list[str], tmp_path: Path, language: str
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "n = 0", "print(n)")
    args = ["-p", "n", "3", "-p", "s", "it's", "-p", "t", "True", "-p", "nothing", "None", "-l", language]
    theirs_path = tmp_path / "theirs.ipynb"
    done = subprocess.run(
        [PAPERMILL, str(source), str(theirs_path), "--prepare-only", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    ours_path = tmp_path / "ours.ipynb"
    argv = ["run", "notebook", "--upload", str(source), str(ours_path), "--prepare-only", *args, *cli_env]
    assert main(argv) == 0
    ours = injected_source(json.loads(ours_path.read_text()))
    assert ours == injected_source(json.loads(theirs_path.read_text()))
    # ... and not what the notebook's own language (Python) would have written.
    assert ours != translate_parameters(
        "python3", "python", {"n": 3, "s": "it's", "t": True, "nothing": None}
    )


def test_language_decides_what_the_kernel_runs(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The kernelspec says R, so without -l the parameters are R (`t = TRUE`, a NameError in Python).
    write_notebook(
        server.root_dir / "lang.ipynb", "t = None", "print(repr(t))", kernel="fake-r", language="R"
    )
    rc = main(
        ["run", "notebook", "lang.ipynb", "lang-out.ipynb", "-p", "t", "True", "-l", "python", *cli_env]
    )
    assert rc == 0, capsys.readouterr().err
    executed = json.loads((server.root_dir / "lang-out.ipynb").read_text())
    assert injected_source(executed) == "# Parameters\nt = True\n"
    assert "".join(executed["cells"][2]["outputs"][0]["text"]) == "True\n"


def test_an_unknown_language_is_exit_2_before_anything_runs(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(server.root_dir / "cobol.ipynb", "a = 0")
    rc = main(["run", "notebook", "cobol.ipynb", "cobol-out.ipynb", "-p", "a", "1", "-l", "cobol", *cli_env])
    assert rc == 2
    assert "'cobol'" in one_line(capsys.readouterr().err)
    assert not (server.root_dir / "cobol-out.ipynb").exists()


# -- --stdout-file / --stderr-file ----------------------------------------------------------------

STREAMS_CELLS = (
    "import sys, os, time\nmarker = None",
    # The first cell's output must be in the file while the run still goes on: this cell waits,
    # bounded, for the test to have seen it.
    "print('first', flush=True)\nprint('warn 1', file=sys.stderr, flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(marker) and time.monotonic() < deadline:\n    time.sleep(0.02)",
    "print('second')\nprint('warn 2', file=sys.stderr)\ndisplay('a display')\n42",
)


def test_stream_files_get_the_cells_output_as_it_arrives(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "seen"
    write_notebook(server.root_dir / "streams.ipynb", *STREAMS_CELLS)
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    argv = ["run", "notebook", "streams.ipynb", "streams-out.ipynb", "-r", "marker", str(marker),
            "--stdout-file", str(out_file), "--stderr-file", str(err_file), "--log-output", *cli_env]  # fmt: skip
    rc: list[int] = []
    runner = threading.Thread(target=lambda: rc.append(main(argv)))
    runner.start()
    try:
        wait_until(
            lambda: out_file.read_text() == "first\n" and err_file.read_text() == "warn 1\n",
            timeout_s=60,
            what="the first cell's stdout and stderr in their files",
            ignore=(FileNotFoundError,),
        )
        assert runner.is_alive()  # the run is still in its second cell
    finally:
        marker.touch()
        runner.join(timeout=120)
    assert rc == [0], capsys.readouterr().err
    # Streams only, as papermill writes them: no display data, no execute result.
    assert out_file.read_text() == "first\nsecond\n"
    assert err_file.read_text() == "warn 1\nwarn 2\n"
    logged = capsys.readouterr()  # and --log-output still shows everything on this terminal
    assert "first\n" in logged.out and "second\n" in logged.out and "'a display'" in logged.out
    assert "warn 2\n" in logged.err


def test_a_dash_stream_file_is_this_stdout(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1", "print('to stdout')\n'not a stream'")
    assert main(["run", "notebook", "--upload", str(source), "--stdout-file", "-", *cli_env]) == 0
    assert capsys.readouterr().out == "to stdout\n"
    assert main(["run", "notebook", "--upload", str(source), "--stdout-file", "-", "--json", *cli_env]) == 2
    captured = capsys.readouterr()
    assert "--stdout-file" in one_line(captured.err)
    assert json.loads(captured.out)["status"] == "not started"


@pytest.mark.parametrize("flag", ["--stdout-file", "--stderr-file"])
@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_a_stream_file_that_cannot_be_written_is_exit_2_before_any_kernel(
    server: LocalServer,
    cli_env: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    where: str,
) -> None:
    target = tmp_path / "no" / "such" / "folder" / "out.txt" if where == "missing-folder" else tmp_path
    write_notebook(server.root_dir / "unwritable.ipynb", "x = 1", "print(x)")
    argv = ["run", "notebook", "unwritable.ipynb", "unwritable-out.ipynb", flag, str(target), *cli_env]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert flag in line and str(target) in line
    # The output is saved before the kernel starts: it is not there, so nothing began.
    assert not (server.root_dir / "unwritable-out.ipynb").exists()


# -- --cwd -----------------------------------------------------------------------------------------


def test_cwd_is_described_as_a_server_path(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "notebook", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--cwd DIR The kernel's working directory, a path on the server" in text
    for flag in ("-l LANG, --language LANG", "--stdout-file FILE", "--stderr-file FILE", "--help-notebook"):
        assert flag in text


def test_a_stream_file_that_fills_up_does_not_stop_the_run(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /dev/full opens, and every write to it fails (ENOSPC): a full disk in the middle of a run.
    source = write_notebook(tmp_path / "in.ipynb", "x = 1", "print('one')", "print('two')")
    out = tmp_path / "out.ipynb"
    argv = ["run", "notebook", "--upload", str(source), str(out), "--stdout-file", "/dev/full", *cli_env]
    assert main(argv) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--stdout-file" in line]
    assert len(warnings) == 1 and "cannot write" in warnings[0], warnings
    executed = json.loads(out.read_text())
    assert ["".join(c["outputs"][0]["text"]) for c in executed["cells"][1:]] == ["one\n", "two\n"]


def test_what_an_output_widget_captures_is_not_logged_as_under_papermill(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # papermill logs only what nbclient puts in the cell: an output hook (`with out:`) takes the rest.
    pytest.importorskip("ipywidgets")
    source = write_notebook(
        tmp_path / "in.ipynb",
        "import ipywidgets as w\nout = w.Output()\ndisplay(out)",
        "with out:\n    print('in the widget')\nprint('in the cell')",
        tagged=False,
    )
    out_file = tmp_path / "stdout.txt"
    argv = ["run", "notebook", "--upload", str(source), "--stdout-file", str(out_file), "--log-output"]
    assert main([*argv, *cli_env]) == 0
    assert out_file.read_text() == "in the cell\n"
    assert "in the widget" not in capsys.readouterr().out


# -- parameters in paths, unknown parameters --------------------------------------------------------


def test_paths_are_formatted_with_the_parameters_as_papermill_formats_them(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "report-in.ipynb", "region = 'x'", "print(region)")
    out = tmp_path / "report-{region}-{pm[run_uuid]}.ipynb"
    argv = ["run", "notebook", "--upload", str(tmp_path / "report-{kind}.ipynb"), str(out)]
    assert main([*argv, "-p", "region", "eu", "-p", "kind", "in", *cli_env]) == 0, capsys.readouterr().err
    [written] = tmp_path.glob("report-eu-*.ipynb")
    run_uuid = written.stem.removeprefix("report-eu-")
    assert len(run_uuid) == 36 and run_uuid.count("-") == 4  # papermill's pm.run_uuid
    assert nbformat.read(written, as_version=4).cells[2].outputs[0]["text"] == "eu\n"
    assert source.exists()


@pytest.mark.parametrize(
    ("output", "says"),
    [("out-{missing}.ipynb", "missing parameter 'missing'"), ("out-{.ipynb", "not a format string")],
)
def test_a_path_whose_placeholder_cannot_be_filled_is_exit_2(
    server: LocalServer,
    cli_env: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    output: str,
    says: str,
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "x = 1")
    assert (
        main(["run", "notebook", "--upload", str(source), str(tmp_path / output), "-p", "x", "2", *cli_env])
        == 2
    )
    line = one_line(capsys.readouterr().err)
    assert says in line and "OUTPUT" in line
    assert not list(tmp_path.glob("out-*"))


def test_a_parameter_the_notebook_does_not_declare_is_warned_about_as_papermill_does(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_notebook(tmp_path / "in.ipynb", "alpha = 1", "print(alpha)")
    argv = ["run", "notebook", "--upload", str(source), str(tmp_path / "out.ipynb")]
    assert main([*argv, "-p", "alpha", "2", "-p", "beta", "3", *cli_env]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "unknown parameter" in line]
    assert len(warned) == 1 and warned[0].endswith("Passed unknown parameter: beta"), warned
