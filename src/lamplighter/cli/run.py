"""The ``run`` command: ``run notebook`` and ``run shell`` on a live Jupyter server.

Only parsing and printing live here; the work is :class:`~lamplighter.remote.notebook.NotebookRunner`
and :class:`~lamplighter.remote.terminal.TerminalSession`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import posixpath
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from lamplighter.cli.common import (
    CONNECTION_OPTIONS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    add_command,
    add_settings_options,
    connection_from_args,
    console,
    exit_code_for,
    report_failure,
    settings_from_args,
    start_logging,
)
from lamplighter.cli.options import add_option
from lamplighter.errors import CellFailed, ConfigError, LamplighterError, RemoteTimeout
from lamplighter.redaction import redact, redact_data
from lamplighter.settings import SAGEMAKER_APP_TYPES, parse_setting

if TYPE_CHECKING:
    from lamplighter.remote.connection import Connection
    from lamplighter.remote.notebook import NotebookStore, RunObserver
    from lamplighter.remote.stdin import InputAnswerer

# The runners (websockets, rich, yaml) are imported inside the commands, so `lamplighter watch`, which
# imports this module to build its parser, stays small.

__all__ = ["EXIT_SHELL_ERROR", "EXIT_SHELL_TIMEOUT", "add_run_parser"]

logger = logging.getLogger(__name__)

EXIT_SHELL_ERROR = 255  # run shell: lamplighter itself failed (as ssh does), not the remote command
EXIT_SHELL_TIMEOUT = 124  # run shell: --timeout ran out (as timeout(1) does)

_NOTEBOOK_EPILOG = """\
PATH and --output are paths on the server (relative to its root), or local files with --upload.
Without --output (or --inplace) the executed notebook is not saved.

exit status:
  0    every cell ran (with --allow-errors: failures are recorded in the notebook)
  1    a cell raised; the notebook is saved with a red note before that cell
       (--help-notebook: no cell is tagged 'parameters', as in papermill)
  2    bad arguments, settings or notebook
  3    cannot connect to the server, or it refused the token/cookies
  4    --cell-timeout or --timeout ran out (the kernel was interrupted)
  5    the kernel died or restarted during the run
  130  interrupted (Ctrl-C); the kernel and session are shut down either way
  143  terminated (SIGTERM); the same"""

_SHELL_EPILOG = f"""\
The command words are joined with spaces and run by the terminal's shell, as ssh does:
  lamplighter run shell -- 'ls *.ipynb | wc -l'
Output (stdout and stderr merged, as in a terminal) streams to stdout with ANSI escapes removed.

exit status: the remote command's own status (0-255); except
  {EXIT_SHELL_TIMEOUT}  --timeout ran out (Ctrl-C was sent to the command)
  {EXIT_SHELL_ERROR}  lamplighter itself failed: cannot connect, refused credentials, bad settings
  130  interrupted (Ctrl-C)
  2    bad arguments (from argument parsing, before anything ran)"""


def add_run_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``run notebook`` and ``run shell``."""
    run = subparsers.add_parser(
        "run", help="Run a notebook or shell commands on a Jupyter server.", description="Remote execution."
    )
    commands = run.add_subparsers(title="what to run", metavar="WHAT", parser_class=_RunParser)
    _add_notebook_parser(commands)
    _add_shell_parser(commands)
    run.set_defaults(handler=lambda args: _missing_subcommand(run))


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_connection_flags(parser: argparse.ArgumentParser) -> None:
    add_settings_options(
        parser,
        names=(*CONNECTION_OPTIONS, "region", "sagemaker_endpoint_url"),
        defaults={"log_level": "warning"},
    )
    studio = parser.add_argument_group("SageMaker Studio (instead of --url: log in with a presigned URL)")
    add_option(parser, "domain", group=studio)
    owner = studio.add_mutually_exclusive_group()
    add_option(parser, "space", group=owner, help="The space whose app runs the code.")
    add_option(parser, "user_profile", group=owner)
    add_option(parser, "login_as", group=studio)
    add_option(parser, "app_type", group=studio, default="jupyter")
    instance = parser.add_argument_group("SageMaker notebook instance (instead of --url: a presigned login)")
    add_option(
        parser, "notebook_instance", group=instance, help="The notebook instance whose server runs the code."
    )


# -- run notebook ------------------------------------------------------------------------------------


# papermill (click) takes the two words after -p as NAME VALUE whatever they look like; argparse would
# read "-p y -x" or "-p z -inf" as a flag. The words after these flags are escaped before parsing.
_VALUE_WORDS = {"-p": 2, "--parameters": 2, "--parameter": 2, "-r": 2, "--parameters_raw": 2,
                "--parameter-raw": 2, "-y": 1, "--parameters_yaml": 1, "--parameters-yaml": 1}  # fmt: skip
_ESCAPE = "\x00"


def _unescape(word: str) -> str:
    return word.removeprefix(_ESCAPE)


class _RunParser(Parser):
    """The parser of ``run``'s commands; with ``escape_values`` (``run notebook``), a parameter's value
    may start with a dash, as papermill's may."""

    escape_values = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(_escape_values(words) if self.escape_values else words, namespace)


def _escape_values(words: Sequence[str]) -> list[str]:
    out: list[str] = []
    pending = 0
    for word in words:
        if pending:
            out.append(_ESCAPE + word if word.startswith("-") else word)
            pending -= 1
            continue
        if word == "--":
            return [*out, *words[len(out) :]]
        out.append(word)
        pending = _VALUE_WORDS.get(word, 0)
    return out


def _add_notebook_parser(commands: argparse._SubParsersAction[_RunParser]) -> None:
    description = (
        "Start a kernel on the server, run the notebook's cells in order, save the executed "
        "notebook as cells finish, and shut the kernel down. Parameters and flags are papermill's: "
        "'papermill IN OUT -p a 1' becomes 'lamplighter run notebook IN OUT -p a 1 --url ...'."
    )
    parser = commands.add_parser(
        "notebook",
        help="Run every cell of a notebook on the server, nbclient-style, and save the outputs.",
        description=description,
        epilog=_NOTEBOOK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if isinstance(parser, _RunParser):
        parser.escape_values = True
    parser.add_argument(
        "path", metavar="PATH", help="The notebook: a server path, or a local file with --upload."
    )
    parser.add_argument(
        "output_path", metavar="OUTPUT", nargs="?", help="As --output (papermill's second argument)."
    )
    parser.add_argument("--upload", action="store_true", help="PATH and --output are local files.")
    out = parser.add_mutually_exclusive_group()
    add_option(
        parser,
        "output",
        group=out,
        help="Save the executed notebook here (as cells finish); '-': print it to stdout at the end.",
    )
    out.add_argument("--inplace", action="store_true", help="Save the executed notebook over PATH.")
    add_option(parser, "kernel")
    add_option(parser, "instance_type")
    add_option(parser, "keep_app")
    parser.add_argument(
        "--cwd",
        metavar="DIR",
        help="The kernel's working directory, a path on the server (the kernel runs there; papermill's "
        "--cwd is a local folder) [default: PATH's folder, or the root].",
    )
    params = parser.add_argument_group("parameters (papermill's flags and merge order: -b, -f, -y, -p, -r)")
    for name in ("parameters", "parameters_raw", "parameters_yaml"):
        add_option(parser, name, group=params, type=_unescape)
    add_option(parser, "parameters_file", group=params)
    add_option(parser, "parameters_base64", group=params)
    add_option(parser, "prepare_only", group=params)
    add_option(parser, "language", group=params)
    add_option(parser, "help_notebook", group=params)
    execution = parser.add_argument_group("execution")
    execution.add_argument("--allow-errors", action="store_true", help="Record failing cells and keep going.")
    add_option(parser, "cell_timeout", group=execution)
    answers = execution.add_mutually_exclusive_group()
    add_option(parser, "stdin", group=answers)
    add_option(parser, "stdin_file", group=answers)
    add_option(
        parser, "timeout", group=execution, help="Budget for the whole run, kernel start included [none]."
    )
    add_option(
        parser,
        "start_timeout",
        group=execution,
        default=60.0,
        help="Budget for the kernel to start and answer [60s].",
    )
    execution.add_argument(
        "--no-pipeline", dest="pipeline", action="store_false",
        help="Send each cell only after the previous one finished (slower; for kernels that misbehave).",
    )  # fmt: skip
    add_option(parser, "history", group=execution)
    papermill = parser.add_argument_group("papermill's other flags")
    for name in ("inject_paths", "inject_input_path", "inject_output_path", "engine"):
        add_option(parser, name, group=papermill)
    add_option(parser, "autosave_cell_every", group=papermill)
    add_option(parser, "request_save_on_cell_execute", group=papermill)
    display = parser.add_argument_group("display")
    add_option(parser, "log_output", group=display)
    add_option(parser, "stdout_file", group=display)
    add_option(parser, "stderr_file", group=display)
    add_option(parser, "report_mode", group=display)
    add_option(
        parser,
        "json",
        group=display,
        help="Print a JSON result (status, failed cell, error, duration, output, per-cell times) to stdout.",
    )
    display.add_argument(
        "--no-progress", action="store_true", help="No progress bar (it shows only on a TTY)."
    )
    _add_connection_flags(parser)
    parser.set_defaults(handler=_run_notebook)


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    """Every parameter flag merged; papermill's injected paths first, so a flag can override them."""
    from lamplighter.remote.parameters import merge_parameters

    files: list[tuple[str, str]] = []
    for name in args.parameters_file:
        try:
            files.append((name, Path(name).read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError(f"--parameters_file: cannot read {name} ({exc.strerror})") from exc
    paths: dict[str, Any] = {}
    if args.inject_paths or args.inject_input_path:
        paths["PAPERMILL_INPUT_PATH"] = args.path
    if args.inject_paths or args.inject_output_path:
        # As given on the command line, as papermill injects it; None when nothing is saved.
        paths["PAPERMILL_OUTPUT_PATH"] = _output_path(args)
    return paths | merge_parameters(
        base64_yaml=args.parameters_base64,
        files=files,
        yaml_texts=args.parameters_yaml,
        typed=args.parameters,
        raw=args.parameters_raw,
    )


async def _connect(args: argparse.Namespace) -> Connection:
    """The server connection: ``--url`` and a token or cookies, or a SageMaker presigned login."""
    if args.notebook_instance:
        return await _connect_notebook_instance(args)
    if not args.domain:
        return connection_from_args(args)
    if not (args.space or args.user_profile):
        raise ConfigError("--domain: name the app's --space (or --user-profile for Studio Classic)")
    if args.app_type == "code-editor":
        raise ConfigError(
            "--app-type: run needs a Jupyter app (jupyter, or jupyter-server for Studio Classic)"
        )
    from lamplighter.sagemaker.login import presigned_connection

    settings = settings_from_args(args)
    return await presigned_connection(
        args.domain,
        space=args.space,
        user_profile=args.user_profile,
        shared_space_user=args.login_as,
        app_type=SAGEMAKER_APP_TYPES[args.app_type],
        region=settings.region,
        endpoint_url=settings.sagemaker_endpoint_url,
        verify_tls=settings.verify_tls,
    )


async def _connect_notebook_instance(args: argparse.Namespace) -> Connection:
    from lamplighter.sagemaker.login import presigned_notebook_instance_connection

    if args.domain:
        raise ConfigError("--notebook-instance: a notebook instance has no --domain")
    settings = settings_from_args(args)
    return await presigned_notebook_instance_connection(
        args.notebook_instance,
        region=settings.region,
        endpoint_url=settings.sagemaker_endpoint_url,
        verify_tls=settings.verify_tls,
    )


def _log_level(args: argparse.Namespace) -> str:
    return str(parse_setting("log_level", args.log_level, "--log-level"))


_DEFAULT_ENGINE = "nbclient"
EXIT_TERMINATED = 128 + signal.SIGTERM  # as shells report a process that SIGTERM ended


class _Terminated(Exception):
    """The run ended on SIGTERM (after its cleanup): exit with :data:`EXIT_TERMINATED`."""


@contextlib.contextmanager
def _sigterm_cancels_the_run() -> Iterator[Callable[[], bool]]:
    """SIGTERM cancels the running task, as Ctrl-C does, so the runner's cleanup shuts its kernel and
    session down (Python's default for SIGTERM ends the process at once, leaving the kernel running).
    Yields a function telling whether SIGTERM arrived."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[bool] = []

    def on_term() -> None:
        received.append(True)
        if task is not None:
            task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        yield lambda: False
        return
    try:
        yield lambda: bool(received)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class _JsonReport:
    """``--json``: the one result object, printed once, also for a failure before any cell ran."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.printed = False

    def emit(self, result: Mapping[str, Any]) -> None:
        if self.wanted and not self.printed:
            self.printed = True
            print(json.dumps(result), flush=True)


def _run_notebook(args: argparse.Namespace) -> int:
    report = _JsonReport(args.json)
    started = time.monotonic()
    try:
        start_logging(args, _log_level(args))
        if args.engine not in (None, _DEFAULT_ENGINE):
            raise ConfigError(
                f"--engine: only papermill's default engine, {_DEFAULT_ENGINE!r}, is offered "
                f"(this runner reproduces it); got {args.engine!r}"
            )
        if args.autosave_cell_every < 0:
            raise ConfigError(
                f"--autosave-cell-every: expected 0 or more seconds, got {args.autosave_cell_every}"
            )
        parameters = _parameters(args)
        if args.help_notebook:
            return asyncio.run(_help_notebook(args))
        _parameterize_paths(args, parameters)
        # Opened before anything else happens, so a file that cannot be written stops the run before
        # its kernel starts (papermill finds out only at the first output).
        with _StreamFiles(args) as streams:
            return asyncio.run(_run_notebook_async(args, parameters, report, streams))
    except _Terminated:
        report.emit(
            _json_result(
                {}, None, time.monotonic() - started, None, status="not started", exit_status=EXIT_TERMINATED
            )
        )
        print(
            "lamplighter: terminated (SIGTERM); the run's kernel and session were shut down", file=sys.stderr
        )
        return EXIT_TERMINATED
    except LamplighterError as exc:
        # Bad arguments, a missing notebook or kernelspec, no connection: the run never began, and a
        # scheduler reading --json still gets its status and exit code.
        report.emit(_json_result({}, exc, time.monotonic() - started, None, status="not started"))
        raise


def _parameterize_paths(args: argparse.Namespace, parameters: Mapping[str, Any]) -> None:
    """``{name}`` in PATH and the output filled from the parameters, as papermill does (after the
    paths were injected as parameters, which papermill injects as given)."""
    from lamplighter.remote.parameters import parameterize_path

    for name, flag in (("path", "PATH"), ("output_path", "OUTPUT"), ("output", "--output")):
        value = getattr(args, name)
        if value and value != "-":
            setattr(args, name, parameterize_path(flag, value, parameters))


def _output_path(args: argparse.Namespace) -> str | None:
    if args.output and args.output_path:
        raise ConfigError("run notebook: give the output once, as OUTPUT or as --output")
    output = args.output or args.output_path
    if output and args.inplace:
        raise ConfigError("run notebook: --inplace and an output path exclude each other")
    if output == "-" and args.json:
        raise ConfigError("run notebook: --json and '-' (the notebook on stdout) both want stdout")
    return str(output) if output else (args.path if args.inplace else None)


_HELP_USAGE = "Usage: lamplighter run notebook [OPTIONS] PATH [OUTPUT]"


async def _help_notebook(args: argparse.Namespace) -> int:
    """``--help-notebook``: the notebook's declared parameters, read without a kernel (a local file
    with ``--upload``, else through the server's contents API)."""
    from lamplighter.remote.notebook import LocalNotebookStore, ServerNotebookStore
    from lamplighter.remote.notebook_help import notebook_help

    if args.upload:
        nb = await LocalNotebookStore(args.path).load()
    else:
        async with await _connect(args) as conn:
            nb = await ServerNotebookStore(conn, args.path).load()
    text, status = notebook_help(
        nb, args.path, usage=_HELP_USAGE, kernel_name=args.kernel, language=args.language
    )
    sys.stdout.write(text)
    sys.stdout.flush()
    return status


class _StreamFiles:
    """``--stdout-file`` and ``--stderr-file``: open for the run (``-``: this stdout), closed after."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.stdout: TextIO | None = None
        self.stderr: TextIO | None = None
        self._opened: list[TextIO] = []
        try:
            self.stdout = self._open("--stdout-file", args.stdout_file, args)
            self.stderr = self._open("--stderr-file", args.stderr_file, args)
        except BaseException:
            self.close()
            raise

    def _open(self, flag: str, name: str | None, args: argparse.Namespace) -> TextIO | None:
        if name is None:
            return None
        if name == "-":
            if args.json or (args.output or args.output_path) == "-":
                raise ConfigError(f"{flag}: '-' (this stdout) is taken by --json or the notebook on stdout")
            return sys.stdout
        try:
            handle = open(name, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise ConfigError(f"{flag}: cannot write {name} ({exc.strerror or exc})") from exc
        self._opened.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._opened:
            # A write that failed (a full disk) was reported then; closing flushes it again.
            with contextlib.suppress(OSError):
                handle.close()
        self._opened.clear()

    def __enter__(self) -> _StreamFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _run_notebook_async(
    args: argparse.Namespace, parameters: Mapping[str, Any], report: _JsonReport, streams: _StreamFiles
) -> int:
    with _sigterm_cancels_the_run() as terminated:
        try:
            return await _run_notebook_connected(args, parameters, report, streams, terminated)
        except asyncio.CancelledError:
            if not terminated():
                raise
            raise _Terminated from None


async def _run_notebook_connected(
    args: argparse.Namespace,
    parameters: Mapping[str, Any],
    report: _JsonReport,
    streams: _StreamFiles,
    terminated: Callable[[], bool],
) -> int:
    from lamplighter.remote.notebook import (
        LocalNotebookStore,
        MemoryNotebookStore,
        NotebookRunner,
        ServerNotebookStore,
    )

    output_path = _output_path(args)
    async with await _connect(args) as conn:
        source: NotebookStore
        output: NotebookStore | None = None
        memory = MemoryNotebookStore() if output_path == "-" else None
        if args.upload:
            source = LocalNotebookStore(args.path)
            if output_path and memory is None:
                output = LocalNotebookStore(output_path)
            cwd = args.cwd or ""
            session_path = posixpath.join(cwd, Path(args.path).name)
        else:
            source = ServerNotebookStore(conn, args.path)
            if output_path and memory is None:
                output = ServerNotebookStore(conn, output_path)
            cwd = args.cwd if args.cwd is not None else posixpath.dirname(args.path.strip("/"))
            session_path = (output_path if output is not None and output_path else args.path).strip("/")
        nb = await source.load()
        show_progress = not args.no_progress and not args.log_output and sys.stderr.isatty()
        observer, close_observer = _console_observer(
            log_output=args.log_output, progress=show_progress, files=streams
        )
        runner = NotebookRunner(
            conn,
            kernel_name=args.kernel,
            instance_type=args.instance_type,
            keep_app=args.keep_app,
            cwd=cwd,
            session_path=session_path,
            parameters=parameters,
            allow_errors=args.allow_errors,
            cell_timeout_s=args.cell_timeout,
            timeout_s=args.timeout,
            kernel_start_timeout_s=args.start_timeout,
            store=output or memory,
            # The notebook on stdout is printed once, at the end: saving it before is only work.
            autosave_interval_s=args.autosave_cell_every if memory is None else 0,
            save_after_cell=args.request_save_on_cell_execute and memory is None,
            pipeline=args.pipeline,
            observer=observer,
            report_mode=args.report_mode,
            stdin=_answerer(args),
            history=args.history,
            language=args.language,
        )
        if args.prepare_only:
            await runner.prepare(nb)
            _print_memory(memory)
            _print_saved(runner.saved_to if output is not None else None)
            return EXIT_OK
        started = time.monotonic()
        failure: LamplighterError | None = None
        try:
            result = await runner.run(nb)
        except CellFailed as exc:
            failure = exc
            close_observer()
            if not args.log_output:
                _print_traceback(exc.traceback, sys.stderr)
            raise
        except LamplighterError as exc:
            failure = exc
            close_observer()
            raise
        except asyncio.CancelledError:
            close_observer()
            raise
        finally:
            # One figure for the line and --json: the run, from the kernel's start to its shutdown
            # and the last save.
            duration_s = time.monotonic() - started
            _print_memory(memory)
            _print_saved(runner.saved_to if output is not None else None)
            report.emit(
                _json_result(
                    nb,
                    failure,
                    duration_s,
                    runner.saved_to if output is not None else None,
                    exit_status=EXIT_TERMINATED if terminated() else None,
                )
            )
        close_observer()
        allowed = f", {len(result.allowed_errors)} allowed errors" if result.allowed_errors else ""
        cells = "cell" if result.cells_executed == 1 else "cells"
        print(
            f"lamplighter: ran {result.cells_executed} {cells} in {round(duration_s, 3):.1f} s{allowed}",
            file=sys.stderr,
        )
        return EXIT_OK


def _answerer(args: argparse.Namespace) -> InputAnswerer | None:
    from lamplighter.remote.stdin import FileAnswers, TerminalAnswers

    if args.stdin:
        return TerminalAnswers()
    if args.stdin_file:
        try:
            return FileAnswers.from_text(Path(args.stdin_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--stdin-file: cannot read {args.stdin_file} ({exc.strerror})") from exc
    return None


def _print_memory(memory: Any) -> None:
    if memory is not None and memory.text is not None:
        sys.stdout.write(memory.text)
        sys.stdout.flush()


def _json_result(
    nb: Mapping[str, Any],
    failure: LamplighterError | None,
    duration_s: float,
    output: str | None,
    *,
    status: str | None = None,
    exit_status: int | None = None,
) -> dict[str, Any]:
    """``--json``: what a scheduler needs to know about the run, one object.

    Cells are counted as in the notebook as run (the input, with papermill's injected cell when one
    was added), never counting lamplighter's red note; every text from the server is redacted.
    """
    meta = (nb.get("metadata") or {}).get("lamplighter") or {}
    if status is not None:
        meta = {**meta, "status": status}
    cells = []
    note = meta.get("error_note_cell")  # this run's red note; one a previous run left is a cell as run
    run_cells = [c for i, c in enumerate(nb.get("cells") or []) if i != note]
    for index, cell in enumerate(run_cells):
        if cell.get("cell_type") != "code":
            continue
        timing = (cell.get("metadata") or {}).get("execution") or {}
        cells.append(
            {
                "index": index,
                "execution_count": cell.get("execution_count"),
                "duration_s": _span_s(timing.get("iopub.status.busy"), timing.get("iopub.status.idle")),
            }
        )
    return {
        # No status yet: the run failed before its kernel started (a kernelspec the server lacks).
        "status": meta.get("status", "not started" if failure else "completed"),
        "exit_status": exit_status if exit_status is not None else _exit_status(failure, meta),
        "failed_cell": meta.get("failed_cell", getattr(failure, "cell_index", None)),
        "error": None
        if failure is None
        else redact_data(
            {
                "type": type(failure).__name__,
                "ename": getattr(failure, "ename", None),
                "evalue": getattr(failure, "evalue", None),
                "message": str(failure),
            }
        ),
        "duration_s": round(duration_s, 3),
        "output": output,
        "cells": cells,
    }


def _span_s(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    from datetime import datetime

    try:
        span = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    except ValueError:
        return None
    return round(span.total_seconds(), 6)


def _exit_status(failure: LamplighterError | None, meta: Mapping[str, Any]) -> int:
    if failure is not None:
        return exit_code_for(failure)
    return EXIT_OK if meta.get("status") == "completed" else EXIT_INTERRUPTED


def _print_saved(where: str | None) -> None:
    if where is not None:
        print(f"lamplighter: executed notebook saved to {where}", file=sys.stderr)


def _print_traceback(lines: Sequence[str], stream: TextIO) -> None:
    """A cell's traceback, redacted; its colours only on a terminal (piped output is plain text)."""
    if not lines:
        return
    text = redact("\n".join(lines))
    if not stream.isatty():
        from lamplighter.remote.terminal import strip_ansi

        text = strip_ansi(text)
    print(text, file=stream)


def _console_observer(
    *, log_output: bool, progress: bool, files: _StreamFiles | None = None
) -> tuple[RunObserver, Callable[[], None]]:
    """The progress bar, ``--log-output`` and ``--stdout-file``/``--stderr-file`` as a run observer,
    and the function that closes it."""
    from lamplighter.remote.notebook import RunObserver
    from lamplighter.remote.session import ExecutionResult

    class _ConsoleObserver(RunObserver):
        """The progress bar (rich, stderr, TTY only) and ``--log-output`` streaming."""

        def __init__(self, *, log_output: bool, progress: bool) -> None:
            self._log_output = log_output
            self._files: dict[str, TextIO] = {}
            if files is not None and files.stdout is not None:
                self._files["stdout"] = files.stdout
            if files is not None and files.stderr is not None:
                self._files["stderr"] = files.stderr
            self._progress: Any = None
            self._task: Any = None
            if progress:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                )

                self._progress = Progress(
                    TextColumn("[progress.description]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=console(stderr=True),
                    transient=False,
                )

        def notebook_started(self, nb: Mapping[str, Any], cell_indices: Sequence[int]) -> None:
            if self._progress is not None:
                self._progress.start()
                self._task = self._progress.add_task("Executing", total=len(cell_indices))

        def cell_started(self, index: int, cell: Mapping[str, Any]) -> None:
            if self._progress is not None and self._task is not None:
                self._progress.update(self._task, description=f"Executing cell {index}")

        def cell_output(self, index: int, msg_type: str, content: Mapping[str, Any]) -> None:
            if msg_type == "stream" and self._files:
                self._to_file(str(content.get("name")), str(content.get("text", "")))
            if not self._log_output:
                return
            if msg_type == "stream":
                stream = sys.stderr if content.get("name") == "stderr" else sys.stdout
                stream.write(str(content.get("text", "")))
                stream.flush()
            elif msg_type in ("display_data", "execute_result"):
                text = (content.get("data") or {}).get("text/plain")
                if text:
                    print(text if isinstance(text, str) else "".join(text), flush=True)
            elif msg_type == "error":
                _print_traceback(list(content.get("traceback", [])), sys.stderr)

        def _to_file(self, name: str, text: str) -> None:
            # As papermill's log_output_message: each stream message written and flushed as it
            # arrives, so a file being followed (tail -f) shows a long cell's progress.
            handle = self._files.get(name)
            if handle is None:
                return
            try:
                handle.write(text)
                handle.flush()
            except OSError as exc:
                # A full disk must not stop the run: the notebook keeps the outputs anyway.
                logger.warning("--%s-file: cannot write (%s); no more output goes there", name, exc)
                del self._files[name]

        def cell_finished(self, index: int, cell: Mapping[str, Any], result: ExecutionResult) -> None:
            if self._progress is not None and self._task is not None:
                self._progress.advance(self._task)

        def close(self) -> None:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None

    observer = _ConsoleObserver(log_output=log_output, progress=progress)
    return observer, observer.close


# -- run shell ---------------------------------------------------------------------------------------


def _add_shell_parser(commands: argparse._SubParsersAction[Any]) -> None:
    parser = add_command(
        commands,
        "shell",
        "Run a shell command or script in a terminal on the server; exit with its status.",
        description="Run a command (or upload and run a script with bash) in a Jupyter terminal, stream "
        "its output, and exit with the command's own exit status.",
        epilog=_SHELL_EPILOG,
    )
    add_option(parser, "script", help="A local script to upload and run with bash ('-': stdin).")
    parser.add_argument(
        "--terminal",
        metavar="NAME",
        help="Use (or create) this named terminal and keep it [default: a fresh one].",
    )
    add_option(parser, "timeout")
    parser.add_argument(
        "words", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="The command and its words."
    )
    _add_connection_flags(parser)
    parser.set_defaults(handler=_run_shell)


def _run_shell(args: argparse.Namespace) -> int:
    words = list(args.words)
    if words and words[0] == "--":
        words = words[1:]
    if bool(words) == bool(args.script):
        print("lamplighter: run shell: give either -- COMMAND or --script FILE", file=sys.stderr)
        return 2
    try:
        start_logging(args, _log_level(args))
        script = _read_script(args.script) if args.script else None
        return asyncio.run(_run_shell_async(args, " ".join(words), script))
    except RemoteTimeout as exc:
        report_failure(exc, verbosity=args.verbosity)
        return EXIT_SHELL_TIMEOUT
    except LamplighterError as exc:
        report_failure(exc, verbosity=args.verbosity)
        return EXIT_SHELL_ERROR


def _read_script(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--script: cannot read {name} ({exc.strerror})") from exc


async def _run_shell_async(args: argparse.Namespace, command: str, script: str | None) -> int:
    def echo(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    from lamplighter.remote.terminal import TerminalSession

    async with await _connect(args) as conn, TerminalSession(conn, args.terminal) as term:
        if script is not None:
            result = await term.run_script(script, timeout_s=args.timeout, on_output=echo)
        else:
            result = await term.run(command, timeout_s=args.timeout, on_output=echo)
    return result.exit_code
