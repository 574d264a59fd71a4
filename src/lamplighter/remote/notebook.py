"""Running a whole notebook on a Jupyter server: :class:`NotebookRunner`, built on :class:`KernelSession`.

The runner starts its own kernel (and a session, so the run shows in JupyterLab's running panel), runs
the code cells in order and builds their outputs the way nbclient does (the output rules live in
:mod:`lamplighter.remote.outputs`), then shuts both down, also when cancelled. It also owns the
notebook-level conventions:

- papermill's parameters: a cell tagged ``injected-parameters`` is put right after the first cell tagged
  ``parameters`` (or replaces an earlier injected cell, or goes first), and the values are recorded in
  ``metadata.papermill.parameters``;
- cells tagged ``skip-execution`` and empty cells are left alone; a cell tagged ``raises-exception`` may
  fail without stopping the run;
- a failed, timed-out or interrupted cell is preceded by a markdown cell tagged ``lamplighter-error``
  (and papermill's ``papermill-error-cell-tag``) that says what happened;
- the notebook is saved through a :class:`NotebookStore` before the first cell, as cells finish
  (coalesced in the background, at most about once a second, so saving never holds up the kernel),
  every ``autosave_interval_s`` during a long cell, and once more at the end, whatever the end was.

Pipelining: to keep the kernel's queue fed, the next cell's ``execute_request`` is sent before the
current one finishes. ``stop_on_error`` alone cannot make that safe: ipykernel only aborts requests that
have *reached* it when a cell fails, so one still in flight would run. So pipelining is only used on
IPython kernels, only when no cell may fail (no ``allow_errors``, no ``raises-exception`` tag), and only
after a silent setup request installs a guard in the kernel: an AST transformer that rejects every cell
once one has failed. A cell behind a failing one can therefore never run, however late it arrives.
Widgets end it too (see ``_WIDGETS_MODULE``): a cell sent ahead would read an Output widget a cell late.

On IPython kernels another silent setup request keeps the run's history in memory, as nbclient's
``ipython_hist_file=":memory:"`` does (``history="file"`` leaves it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from lamplighter.errors import (
    CellFailed,
    ConfigError,
    KernelDied,
    LamplighterError,
    MalformedAnswer,
    NotFound,
    RemoteError,
    RemoteTimeout,
)
from lamplighter.remote.cells import PARAMETERS_TAG, cell_source, cell_tags
from lamplighter.remote.connection import Connection
from lamplighter.remote.kernels import (
    check_kernelspec,
    interrupt_kernel,
    shutdown_kernel,
    start_kernel,
    start_kernel_model,
)
from lamplighter.remote.notebook_help import infer_parameters
from lamplighter.remote.parameters import translate_parameters
from lamplighter.remote.session import Execution, ExecutionResult, KernelSession
from lamplighter.remote.stdin import InputAnswerer

__all__ = [
    "ERROR_TAG",
    "INJECTED_TAG",
    "PARAMETERS_TAG",
    "RAISES_TAG",
    "SKIP_TAG",
    "LocalNotebookStore",
    "MemoryNotebookStore",
    "NotebookResult",
    "NotebookRunner",
    "NotebookStore",
    "RunObserver",
    "ServerNotebookStore",
    "inject_parameters",
    "notebook_text",
]

logger = logging.getLogger(__name__)


SKIP_TAG = "skip-execution"
INJECTED_TAG = "injected-parameters"
RAISES_TAG = "raises-exception"
ERROR_TAG = "lamplighter-error"
_PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
_PIPELINE_DEPTH = 2
# An Output widget's outputs reach the kernel as our comm update, queued behind any cell already sent:
# a cell reading ``out.outputs`` would see them a cell late. So no pipelining for a notebook that names
# ipywidgets, and none after the first Output widget in one that reaches it through another library.
_WIDGETS_MODULE = "ipywidgets"

# Runs in a throwaway namespace (nothing lands in the user's), with silent=True (no history, no count).
_GUARD_SOURCE = '''
import ast
import threading
from IPython.core.error import InputRejected

_failed = []

def _drain_iopub():
    # Let the IOPub thread send what is queued (the previous cell's idle, this cell's busy) before this
    # cell runs: a cell that kills the kernel then does not take the previous cell's end with it.
    try:
        done = threading.Event()
        get_ipython().kernel.iopub_thread.schedule(done.set)
        done.wait(1.0)
    except Exception:
        pass

class LamplighterStopAfterFailure(ast.NodeTransformer):
    """lamplighter: once a cell failed, refuse every later cell, so cells sent ahead never run."""

    def visit(self, node):
        if _failed:
            raise InputRejected("not run: an earlier cell failed")
        _drain_iopub()
        return node

def _after(result):
    if not result.success:
        _failed.append(True)

_ip = get_ipython()
_ip.ast_transformers.append(LamplighterStopAfterFailure())
_ip.events.register("post_run_cell", _after)
'''
_GUARD_CELL = f"exec({_GUARD_SOURCE!r}, {{'get_ipython': get_ipython, '__name__': 'lamplighter_guard'}})"

# nbclient (so papermill) starts IPython kernels with --HistoryManager.hist_file=:memory:; a kernel the
# server starts writes every cell to the shared history.sqlite instead, from a thread that costs ~1 ms
# of kernel CPU per cell. This does at runtime what that flag does at start: the file keeps an empty,
# ended session, and In/Out and %history work from memory. Any surprise leaves the history as it was.
_MEMORY_HISTORY_SOURCE = """
hm = get_ipython().history_manager
if hm.enabled and str(hm.hist_file) != ":memory:":
    thread, hm.save_thread = hm.save_thread, None
    hm.using_thread = False
    if thread is not None:
        thread.stop()
    hm.end_session()
    hm.db.close()
    hm.hist_file = ":memory:"
    hm.init_db()
    hm.new_session()
"""
_MEMORY_HISTORY_CELL = f"exec({_MEMORY_HISTORY_SOURCE!r}, {{'get_ipython': get_ipython}})"
HISTORY_MODES = ("memory", "file")


# -- stores ----------------------------------------------------------------------------------------


class NotebookStore(Protocol):
    """Where a notebook is read from and saved to."""

    @property
    def description(self) -> str:
        """Where it is, for messages (``server:dir/nb.ipynb`` or a local path)."""
        ...

    async def load(self) -> dict[str, Any]: ...

    async def save(self, nb: Mapping[str, Any]) -> None: ...


class ServerNotebookStore:
    """A notebook on the server, read and written through the contents API (``path`` is relative to its root).

    Someone may open the notebook in JupyterLab while a run saves it, edit it and save. Before each
    save after its first, the store checks the file's ``last_modified`` against its own last save, as
    JupyterLab checks before it saves; when someone else wrote it meanwhile, this save and every later
    one go to a sibling path (``name.lamplighter-XXXXXXXX.ipynb``), so neither version is lost.
    """

    def __init__(self, conn: Connection, path: str) -> None:
        self.conn = conn
        self.path = path.strip("/")
        if not self.path:
            raise ConfigError("notebook path: empty")
        self._saved_mtime: str | None = None  # last_modified of the file as our last save left it
        # Once on a path of its own nobody else writes there (and a contents manager whose times do
        # not round-trip cannot move it twice).
        self._moved = False

    @property
    def description(self) -> str:
        return f"server:{self.path}"

    async def load(self) -> dict[str, Any]:
        try:
            model = await self.conn.get(
                f"api/contents/{quote(self.path)}", params={"type": "notebook", "content": "1"}
            )
        except NotFound as exc:
            raise ConfigError(f"{self.description}: no such notebook on the server") from exc
        content = model.get("content") if isinstance(model, dict) else None
        if not isinstance(content, dict) or not isinstance(content.get("cells"), list):
            raise MalformedAnswer(f"{self.description}: the server did not answer with a notebook")
        return content

    async def save(self, nb: Mapping[str, Any]) -> None:
        body = {"type": "notebook", "format": "json", "content": nb}
        # Python's json (the server's too) writes and reads NaN and Infinity, as papermill's saved
        # parameters need; httpx's encoder refuses them.
        content = json.dumps(body, ensure_ascii=False).encode("utf-8")
        if self._saved_mtime is not None and not self._moved:
            await self._step_aside_from_other_writers()
        try:
            model = await self.conn.request("PUT", f"api/contents/{quote(self.path)}", content=content)
        except RemoteError as exc:
            await self._explain_failed_save(exc)
            raise
        mtime = model.get("last_modified") if isinstance(model, dict) else None
        self._saved_mtime = str(mtime) if mtime else None

    async def _step_aside_from_other_writers(self) -> None:
        try:
            model = await self.conn.get(f"api/contents/{quote(self.path)}", params={"content": "0"})
        except NotFound:
            return  # removed meanwhile: nobody's version to keep, so the run's is written again
        mtime = model.get("last_modified") if isinstance(model, dict) else None
        if mtime is None or str(mtime) == self._saved_mtime:
            return
        moved = _unique_path(self.path)
        logger.warning(
            "%s changed on the server since the run last saved it (someone saved it at %s); the run "
            "saves to server:%s from now on, and leaves theirs as it is",
            self.description,
            mtime,
            moved,
        )
        self.path, self._moved = moved, True

    async def _explain_failed_save(self, exc: RemoteError) -> None:
        """Turn "the folder is not there" (which the server reports as 404 or 500) into a ConfigError."""
        folder = posixpath.dirname(self.path)
        if not folder or exc.status not in (404, 500):
            return
        try:
            await self.conn.get(f"api/contents/{quote(folder)}", params={"content": "0"})
        except NotFound:
            raise ConfigError(
                f"{self.description}: cannot save there, the folder {folder!r} does not exist on the server"
            ) from exc
        except RemoteError:
            return


class LocalNotebookStore:
    """A notebook file on this machine; saves are atomic (write a temporary file, then rename).

    As :class:`ServerNotebookStore` does, a file someone else wrote since this store's last save (an
    editor that has it open) is left alone: this save and every later one go to a sibling path.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._saved: tuple[int, int] | None = None  # (inode, mtime in ns) as our last save left the file
        self._moved = False

    @property
    def description(self) -> str:
        return str(self.path)

    async def load(self) -> dict[str, Any]:
        try:
            text = await asyncio.to_thread(self.path.read_text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the notebook ({exc.strerror or exc})") from exc
        try:
            loaded: Any = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{self.path}: not a notebook (not JSON)") from exc
        if not isinstance(loaded, dict) or not isinstance(loaded.get("cells", []), list):
            raise ConfigError(f"{self.path}: not a notebook")
        if loaded.get("nbformat") != 4:
            return _upgrade(text, self.path)
        notebook: dict[str, Any] = loaded
        _rejoin_lines(notebook)
        return notebook

    async def save(self, nb: Mapping[str, Any]) -> None:
        text = notebook_text(nb)
        try:
            await asyncio.to_thread(self._write, text)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot save the notebook ({exc.strerror or exc})") from exc

    def _write(self, text: str) -> None:
        if self._saved is not None and not self._moved:
            self._step_aside_from_other_writers()
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            written = os.stat(tmp)  # the rename keeps its inode and time
            os.replace(tmp, self.path)
            self._saved = (written.st_ino, written.st_mtime_ns)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _step_aside_from_other_writers(self) -> None:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return  # removed meanwhile: nobody's version to keep
        if (now.st_ino, now.st_mtime_ns) == self._saved:
            return
        moved = Path(_unique_path(str(self.path)))
        logger.warning(
            "%s changed since the run last saved it (someone else wrote it); the run saves to %s from "
            "now on, and leaves theirs as it is",
            self.path,
            moved,
        )
        self.path, self._moved = moved, True


class MemoryNotebookStore:
    """Keeps the latest save as text (for ``--output -``: printed once the run is over)."""

    description = "stdout"

    def __init__(self) -> None:
        self.text: str | None = None

    async def load(self) -> dict[str, Any]:
        raise ConfigError("stdout: cannot read a notebook from the output")

    async def save(self, nb: Mapping[str, Any]) -> None:
        self.text = notebook_text(nb)


def notebook_text(nb: Mapping[str, Any]) -> str:
    """A notebook as lamplighter writes files: nbformat's layout (indent 1, sorted keys), NaN allowed."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _rejoin_lines(nb: dict[str, Any]) -> None:
    """Join the line lists nbformat writes on disk into strings, as the contents API serves them."""
    for cell in nb.get("cells", []):
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
        for output in cell.get("outputs") or []:
            if isinstance(output.get("text"), list):
                output["text"] = "".join(output["text"])
            for mime, value in (output.get("data") or {}).items():
                if isinstance(value, list) and not mime.endswith("json"):
                    output["data"][mime] = "".join(value)


def _upgrade(text: str, path: Path) -> dict[str, Any]:
    """An older notebook format, upgraded to v4 by nbformat (imported here: it takes a while to load)."""
    import nbformat

    try:
        nb = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
    except Exception as exc:  # nbformat raises many kinds for a file that is not a notebook
        raise ConfigError(f"{path}: not a notebook ({type(exc).__name__})") from exc
    upgraded: dict[str, Any] = json.loads(json.dumps(nb))
    return upgraded


_SAVE_GAP_S = 1.0
"""The least time between two saves during a run (the first and the last save are not held back)."""
_SAVE_DUTY = 0.1
"""The largest share of the run's time spent saving."""


class _Autosaver:
    """Saves in the background, coalescing requests, so the cell loop never waits for a save.

    A save is not free: the notebook is serialised here (nbformat's indented layout is pure-Python JSON)
    and, on a server, validated again by its contents manager, on the CPUs the kernel needs. Measured on
    200 trivial cells, saving after each one added ~1.2 ms of client CPU per cell and made the kernel's
    own busy time per cell ~2x longer. So a save follows another by at least :data:`_SAVE_GAP_S`, and by
    nine times its own duration (at most :data:`_SAVE_DUTY` of the time): a cell that runs a second or
    more is saved when it finishes (or within about a second), a burst of fast cells is saved together.
    """

    def __init__(self, store: NotebookStore | None, nb: dict[str, Any]) -> None:
        self._store = store
        self._nb = nb
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._next_save_at = 0.0
        self._hurry = asyncio.Event()
        self.failures = 0

    def request(self) -> None:
        if self._store is None:
            return
        self._dirty = True
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="notebook-autosave")

    async def _drain(self) -> None:
        while self._dirty:
            pause = self._next_save_at - time.monotonic()
            if pause > 0 and not self._hurry.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), pause)
            if self._hurry.is_set():
                return  # flush() takes over
            self._dirty = False
            await self._save_once(raise_errors=False)

    async def _save_once(self, *, raise_errors: bool) -> None:
        if self._store is None:
            return
        began = time.monotonic()
        # A deep copy taken now, between messages, is a consistent picture; the run goes on meanwhile.
        snapshot = json.loads(json.dumps(self._nb))
        try:
            await self._store.save(snapshot)
        except LamplighterError as exc:
            self.failures += 1
            if raise_errors:
                raise
            logger.warning("could not save %s: %s", self._store.description, exc)
        finally:
            now = time.monotonic()
            took = now - began
            self._next_save_at = now + max(_SAVE_GAP_S, took * (1 - _SAVE_DUTY) / _SAVE_DUTY)

    async def save_now(self) -> None:
        """Save at once and raise on failure (the first save, so a bad output path fails early)."""
        await self._save_once(raise_errors=True)

    async def flush(self) -> None:
        """Let a save in progress finish (never cut one off: two writers could race), then save the end state."""
        self._hurry.set()
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._dirty = False
        await self._save_once(raise_errors=True)


# -- parameters ------------------------------------------------------------------------------------


def inject_parameters(
    nb: dict[str, Any],
    parameters: Mapping[str, Any],
    *,
    kernel_name: str | None = None,
    language: str | None = None,
    report_mode: bool = False,
) -> None:
    """Insert papermill's ``injected-parameters`` cell into ``nb``, in place, as papermill does.

    The translator is papermill's for ``kernel_name``, else for ``language`` (default: the notebook's
    ``language_info.name``, then ``kernelspec.language``). The cell replaces an earlier injected one,
    or goes after the first cell tagged ``parameters``, or first; ``metadata.papermill.parameters``
    records the values.
    """
    kernel_name = kernel_name or (nb.get("metadata", {}).get("kernelspec") or {}).get("name")
    source = translate_parameters(kernel_name, language or _notebook_language(nb), parameters)
    cell = _new_cell(nb, "code", source, tags=[INJECTED_TAG])
    if report_mode:
        cell["metadata"]["jupyter"] = {"source_hidden": True}
    cells: list[dict[str, Any]] = nb["cells"]
    injected = [i for i, c in enumerate(cells) if INJECTED_TAG in cell_tags(c)]
    marked = [i for i, c in enumerate(cells) if PARAMETERS_TAG in cell_tags(c)]
    if injected:
        cells[injected[0]] = cell
    elif marked:
        cells.insert(marked[0] + 1, cell)
    else:
        logger.warning("no cell is tagged %r; the parameters go first", PARAMETERS_TAG)
        cells.insert(0, cell)
    nb.setdefault("metadata", {}).setdefault("papermill", {})["parameters"] = dict(parameters)


def _warn_unknown(
    nb: Mapping[str, Any], parameters: Mapping[str, Any], *, kernel_name: str, language: str | None
) -> None:
    """papermill's warning for a parameter the ``parameters`` cell does not declare (a typo, most
    often); unlike papermill, none where that cell's language cannot be read."""
    declared = infer_parameters(nb, kernel_name=kernel_name or None, language=language, explain=False)
    if declared is None:
        return
    names = {p.name for p in declared}
    for name in parameters:
        if name not in names:
            logger.warning("Passed unknown parameter: %s", name)


def _notebook_language(nb: Mapping[str, Any]) -> str:
    metadata = nb.get("metadata") or {}
    # papermill's order: language_info first, kernelspec for old notebooks; case kept ("R").
    language = (metadata.get("language_info") or {}).get("name") or (metadata.get("kernelspec") or {}).get(
        "language"
    )
    return str(language or "")


def _new_cell(nb: Mapping[str, Any], cell_type: str, source: str, *, tags: list[str]) -> dict[str, Any]:
    cell: dict[str, Any] = {"cell_type": cell_type, "metadata": {"tags": tags}, "source": source}
    if cell_type == "code":
        cell.update(execution_count=None, outputs=[])
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5):
        cell["id"] = uuid.uuid4().hex[:8]
    return cell


# -- the runner ------------------------------------------------------------------------------------


class RunObserver:
    """Hooks the runner calls as it goes (all no-ops here): subclass and override what you need."""

    def notebook_started(self, nb: Mapping[str, Any], cell_indices: Sequence[int]) -> None:
        """Before the first cell; ``cell_indices`` are the cells that will run."""

    def cell_started(self, index: int, cell: Mapping[str, Any]) -> None:
        """When the runner starts waiting for a cell."""

    def cell_output(self, index: int, msg_type: str, content: Mapping[str, Any]) -> None:
        """For every output message of a cell, as it arrives (``stream``, ``display_data``, ``error``…)."""

    def cell_finished(self, index: int, cell: Mapping[str, Any], result: ExecutionResult) -> None:
        """After a cell's reply and its last output."""


@dataclass(frozen=True)
class NotebookResult:
    """A finished run: the executed notebook, how many cells ran, and the errors that were allowed."""

    notebook: dict[str, Any]
    cells_executed: int
    duration_s: float
    kernel_name: str
    allowed_errors: tuple[CellFailed, ...] = ()


@dataclass
class _Step:
    index: int
    cell: dict[str, Any]
    execution: Execution
    may_fail: bool


class NotebookRunner:
    """Runs notebooks on one server; each :meth:`run` starts and shuts down its own kernel.

    Options (keyword-only; times in seconds, None means no limit):

    - ``kernel_name``: kernelspec to start; default the notebook's ``metadata.kernelspec.name``, else the
      server's default.
    - ``cwd``: the kernel's working directory, as a server path (default: the server root).
    - ``session_path``: the path the session is registered under (default: ``cwd``/the store's name).
    - ``parameters``: papermill parameters to inject (see :func:`inject_parameters`).
    - ``allow_errors``: record failing cells and go on, instead of stopping at the first.
    - ``cell_timeout_s``: ``per_cell`` budget, from when the kernel starts the cell; on expiry the kernel
      is interrupted and the run fails with :class:`RemoteTimeout`.
    - ``timeout_s``: the whole run, kernel start included; same handling.
    - ``kernel_start_timeout_s``, ``output_drain_timeout_s``: see :class:`KernelSession`.
    - ``store``: where to save the notebook as it runs (None: not saved).
    - ``autosave_interval_s``: how often to save while one cell runs long (0 or None: never mid-cell).
    - ``save_after_cell``: save as cells finish (coalesced, see :class:`_Autosaver`); False: only at the
      start, the end and on ``autosave_interval_s`` (papermill's ``--no-request-save-on-cell-execute``).
    - ``pipeline``: send cells ahead when that is safe (see the module docstring).
    - ``observer``: a :class:`RunObserver` for progress and live output.
    - ``report_mode``: papermill's report mode: the injected cell's source is hidden.
    - ``language``: write the parameters in this language's syntax instead of the kernelspec's
      (papermill's ``--language``; the kernel name's own translator still comes first, as there).
    - ``stdin``: answers the cells' ``input()``/``getpass()``; without it they raise
      ``StdinNotImplementedError``, as under nbclient.
    - ``history``: IPython kernels: ``"memory"`` keeps the run's input history in memory, as nbclient
      and papermill do (nothing written to the server's ``history.sqlite``); ``"file"`` leaves the
      kernel's history file in use.
    - ``instance_type``: Studio Classic: the kernel runs on a KernelGateway app of this type, which is
      deleted after the run (``{base}sagemaker/api/apps/{name}``) unless ``keep_app``.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        kernel_name: str | None = None,
        cwd: str = "",
        session_path: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        allow_errors: bool = False,
        cell_timeout_s: float | None = None,
        timeout_s: float | None = None,
        kernel_start_timeout_s: float = 60.0,
        output_drain_timeout_s: float = 4.0,
        store: NotebookStore | None = None,
        autosave_interval_s: float | None = 30.0,
        save_after_cell: bool = True,
        pipeline: bool = True,
        observer: RunObserver | None = None,
        report_mode: bool = False,
        stdin: InputAnswerer | None = None,
        instance_type: str | None = None,
        keep_app: bool = False,
        history: str = "memory",
        language: str | None = None,
    ) -> None:
        if history not in HISTORY_MODES:
            raise ConfigError(f"history: expected one of {', '.join(HISTORY_MODES)}, got {history!r}")
        self.history = history
        self.conn = conn
        self.language = language
        self.instance_type = instance_type
        self.keep_app = keep_app
        self._app_name: str | None = None  # the Studio Classic KernelGateway app this run's kernel runs on
        self.report_mode = report_mode
        self.stdin = stdin
        self.kernel_name = kernel_name
        self.cwd = cwd.strip("/")
        self.session_path = session_path
        self.parameters = dict(parameters or {})
        self.allow_errors = allow_errors
        self.cell_timeout_s = cell_timeout_s
        self.timeout_s = timeout_s
        self.kernel_start_timeout_s = kernel_start_timeout_s
        self.output_drain_timeout_s = output_drain_timeout_s
        self.store = store
        self.autosave_interval_s = autosave_interval_s
        self.save_after_cell = save_after_cell
        self.pipeline = pipeline
        self.observer = observer or RunObserver()
        self.saved_to: str | None = None
        """Where the last run's final save went (None if there was none, or it failed)."""

    def cells_to_run(self, nb: Mapping[str, Any]) -> list[int]:
        """Indices of the cells a run executes: code cells that are not empty and not tagged ``skip-execution``."""
        return [
            i
            for i, cell in enumerate(nb["cells"])
            if cell.get("cell_type") == "code"
            and cell_source(cell).strip()
            and SKIP_TAG not in cell_tags(cell)
        ]

    async def run(self, nb: dict[str, Any]) -> NotebookResult:
        """Execute ``nb`` in place and return it; raises :class:`CellFailed`, :class:`RemoteTimeout`,
        :class:`KernelDied` or another :class:`RemoteError` after saving what ran.
        """
        started = time.monotonic()
        deadline = None if self.timeout_s is None else started + self.timeout_s
        self.saved_to = None
        kernel_name = await self._prepare(nb)
        indices = self.cells_to_run(nb)
        for index in indices:
            nb["cells"][index]["outputs"] = []
            nb["cells"][index]["execution_count"] = None
        # The input's widget state describes models of a kernel that is gone; this run's replaces it.
        nb.setdefault("metadata", {}).pop("widgets", None)
        saver = _Autosaver(self.store, nb)
        run_meta: dict[str, Any] = {"status": "running", "kernel_name": kernel_name or "default"}
        nb.setdefault("metadata", {})["lamplighter"] = run_meta
        kernel_id: str | None = None
        session_id: str | None = None
        # As papermill does: the output exists (and its path is known to work) before any cell runs.
        await saver.save_now()
        try:
            kernel_id = await self._start_kernel(kernel_name or None, deadline)
            session_id = await self._create_session(kernel_id)
            budget = self.kernel_start_timeout_s
            if deadline is not None:
                budget = max(0.1, min(budget, deadline - time.monotonic()))
            async with KernelSession(
                self.conn,
                kernel_id,
                kernel_start_timeout_s=budget,
                output_drain_timeout_s=self.output_drain_timeout_s,
            ) as ks:
                if ks.kernel_info.get("language_info"):
                    nb["metadata"]["language_info"] = ks.kernel_info["language_info"]
                if self.history == "memory" and ks.implementation == "ipython":
                    await self._keep_history_in_memory(ks)
                self.observer.notebook_started(nb, indices)
                try:
                    allowed = await self._run_cells(ks, nb, indices, deadline, saver)
                finally:
                    widgets = ks.widgets.metadata()
                    if widgets is not None:  # nbclient's store_widget_state
                        nb["metadata"]["widgets"] = widgets
            run_meta["status"] = "completed"
            return NotebookResult(
                notebook=nb,
                cells_executed=len(indices),
                duration_s=time.monotonic() - started,
                kernel_name=kernel_name or "default",
                allowed_errors=tuple(allowed),
            )
        except CellFailed as exc:
            run_meta.update(status="failed", failed_cell=exc.cell_index, ename=exc.ename, evalue=exc.evalue)
            raise
        except RemoteTimeout:
            run_meta["status"] = "timed out"
            raise
        except KernelDied as exc:
            run_meta["status"] = "kernel restarted" if exc.restarted else "kernel died"
            raise
        except (RemoteError, asyncio.CancelledError, KeyboardInterrupt) as exc:
            run_meta["status"] = "interrupted" if not isinstance(exc, RemoteError) else "failed"
            raise
        finally:
            run_meta["duration_s"] = round(time.monotonic() - started, 3)
            await self._cleanup(kernel_id, session_id, interrupt=run_meta["status"] == "interrupted")
            # A failed save must not hide why the run itself failed: then it is only logged.
            await self._final_save(saver, raise_errors=run_meta["status"] == "completed")

    async def prepare(self, nb: dict[str, Any]) -> None:
        """papermill's ``--prepare-only``: check the kernelspec, inject the parameters and save; run nothing."""
        await self._prepare(nb)
        if self.store is not None:
            await self.store.save(nb)
            self.saved_to = self.store.description

    async def _prepare(self, nb: dict[str, Any]) -> str:
        """Check the kernelspec on the server and inject the parameters in its language; its name."""
        wanted = self.kernel_name or (nb.get("metadata", {}).get("kernelspec") or {}).get("name")
        kernel_name, language = await check_kernelspec(self.conn, str(wanted) if wanted else None)
        if self.parameters:
            _warn_unknown(nb, self.parameters, kernel_name=kernel_name, language=self.language or language)
            inject_parameters(
                nb,
                self.parameters,
                kernel_name=kernel_name,
                language=self.language or language or None,
                report_mode=self.report_mode,
            )
        return kernel_name

    async def _start_kernel(self, kernel_name: str | None, deadline: float | None) -> str:
        start = self._start_and_place(kernel_name)
        if deadline is None:
            return await start
        try:
            return await asyncio.wait_for(start, max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise RemoteTimeout(
                f"the kernel did not start within the run's timeout ({self.timeout_s:g} s)"
            ) from None

    async def _start_and_place(self, kernel_name: str | None) -> str:
        if self.instance_type is None:
            return await start_kernel(self.conn, kernel_name, path=self.cwd)
        model = await start_kernel_model(
            self.conn, kernel_name, path=self.cwd, instance_type=self.instance_type
        )
        self._app_name = str(model["app_name"])
        logger.info("the kernel runs on KernelGateway app %s (%s)", self._app_name, self.instance_type)
        return str(model["id"])

    async def _delete_app(self) -> None:
        """Studio Classic: deleting the kernel leaves its KernelGateway app running (and billed)."""
        name, self._app_name = self._app_name, None
        if name is None or self.keep_app:
            return
        try:
            await self.conn.request("DELETE", f"sagemaker/api/apps/{quote(name, safe='')}")
            logger.info("deleted KernelGateway app %s", name)
        except NotFound:
            pass
        except RemoteError as exc:
            logger.warning("could not delete KernelGateway app %s: %s", name, exc)

    async def _create_session(self, kernel_id: str) -> str | None:
        """Register a session for our kernel; never join a session someone else has on the same path."""
        base = self.session_path or posixpath.join(self.cwd, "lamplighter-run.ipynb")
        for path in (base, _unique_path(base)):
            body = {
                "path": path,
                "type": "notebook",
                "name": posixpath.basename(path),
                "kernel": {"id": kernel_id},
            }
            model = await self.conn.request("POST", "api/sessions", json_body=body)
            if not isinstance(model, dict):
                raise MalformedAnswer(f"POST {self.conn.display_url}api/sessions: not a session model")
            if (model.get("kernel") or {}).get("id") == kernel_id:
                return str(model["id"])
            logger.info("session path %s is in use by another kernel; using a private path", path)
        raise MalformedAnswer("the server keeps answering with another kernel's session")

    async def _cleanup(self, kernel_id: str | None, session_id: str | None, *, interrupt: bool) -> None:
        if interrupt and kernel_id is not None:
            # A kernel busy in a cell ignores the polite shutdown request for the server's whole
            # shutdown_wait_time (5 s) before it is killed; interrupted first, it goes at once.
            with contextlib.suppress(RemoteError):
                await interrupt_kernel(self.conn, kernel_id)
        if session_id is not None:
            try:
                await self.conn.request("DELETE", f"api/sessions/{session_id}")
            except NotFound:
                pass
            except RemoteError as exc:
                if exc.status != 410:
                    logger.warning("could not delete session %s: %s", session_id, exc)
        if kernel_id is not None:
            try:
                await shutdown_kernel(self.conn, kernel_id)
            except RemoteError as exc:
                logger.warning("could not shut down kernel %s: %s", kernel_id, exc)
        await self._delete_app()

    async def _final_save(self, saver: _Autosaver, *, raise_errors: bool) -> None:
        if self.store is None:
            return
        try:
            await saver.flush()
        except LamplighterError as exc:
            logger.error("the executed notebook could not be saved to %s: %s", self.store.description, exc)
            if raise_errors:
                raise
            return
        self.saved_to = self.store.description

    async def _keep_history_in_memory(self, ks: KernelSession) -> None:
        result = await ks.execute(_MEMORY_HISTORY_CELL, silent=True, store_history=False, timeout_s=30.0)
        if not result.ok:
            logger.info("the kernel keeps its history file (%s: %s)", result.ename, result.evalue)

    async def _arm_guard(self, ks: KernelSession) -> bool:
        result = await ks.execute(_GUARD_CELL, silent=True, store_history=False, timeout_s=30.0)
        if not result.ok:
            logger.info("pipelining off: the kernel refused the guard (%s: %s)", result.ename, result.evalue)
        return result.ok

    async def _run_cells(
        self,
        ks: KernelSession,
        nb: dict[str, Any],
        indices: list[int],
        deadline: float | None,
        saver: _Autosaver,
    ) -> list[CellFailed]:
        cells: list[dict[str, Any]] = nb["cells"]
        may_fail = {i: self.allow_errors or RAISES_TAG in cell_tags(cells[i]) for i in indices}
        pipelined = (
            self.pipeline
            and len(indices) > 1
            and ks.implementation == "ipython"
            and not any(may_fail.values())
            and not any(_WIDGETS_MODULE in cell_source(cells[i]) for i in indices)
            and await self._arm_guard(ks)
        )
        depth = _PIPELINE_DEPTH if pipelined else 1
        nb["metadata"]["lamplighter"]["pipelined"] = pipelined
        allowed: list[CellFailed] = []
        queue = deque(indices)
        inflight: deque[_Step] = deque()
        lost: KernelDied | None = None  # the kernel died before the next cell could be sent
        ticker = asyncio.create_task(self._autosave_ticker(saver), name="notebook-autosave-ticker")
        try:
            while queue or inflight:
                if ks.widgets.has_output_widgets:
                    depth = 1  # see _WIDGETS_MODULE
                while queue and len(inflight) < depth and lost is None:
                    index = queue.popleft()
                    try:
                        inflight.append(await self._submit(ks, index, cells[index], may_fail[index]))
                    except KernelDied as exc:
                        # Waiting for the cells already sent blames the one that was running.
                        lost = exc
                if not inflight and lost is not None:
                    raise lost  # it died between cells: none was running
                step = inflight.popleft()
                self.observer.cell_started(step.index, step.cell)
                result = await self._wait(step, nb, deadline)
                step.cell["execution_count"] = result.execution_count
                step.cell.setdefault("metadata", {})["execution"] = dict(result.timing)
                self.observer.cell_finished(step.index, step.cell, result)
                if self.save_after_cell:
                    saver.request()
                if result.status == "ok":
                    continue
                failure = _cell_failed(step, result)
                if step.may_fail:
                    allowed.append(failure)
                    continue
                _mark(nb, step.cell, f"Execution stopped: this cell raised {result.ename}: {result.evalue}")
                raise failure
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            # Cells sent ahead of a failure never ran (aborted or refused): show them as not run.
            for step in inflight:
                step.execution.discard()
                step.cell["outputs"] = []
                step.cell["execution_count"] = None
        return allowed

    async def _submit(self, ks: KernelSession, index: int, cell: dict[str, Any], may_fail: bool) -> _Step:
        def on_output(msg_type: str, content: Mapping[str, Any]) -> None:
            self.observer.cell_output(index, msg_type, content)

        # The cell's own list collects the outputs, so display updates and autosaves see them live.
        execution = await ks.submit(
            cell_source(cell),
            stop_on_error=not may_fail,
            outputs=cell["outputs"],
            on_output=on_output,
            stdin=self.stdin,
        )
        return _Step(index=index, cell=cell, execution=execution, may_fail=may_fail)

    async def _wait(self, step: _Step, nb: dict[str, Any], deadline: float | None) -> ExecutionResult:
        try:
            return await step.execution.result(timeout_s=self.cell_timeout_s, deadline=deadline)
        except RemoteTimeout as exc:
            _stopped_at(nb, step, f"Execution stopped: {exc}")
            raise RemoteTimeout(f"cell {step.index}: {exc}") from exc
        except KernelDied as exc:
            what = "was restarted" if exc.restarted else "died"
            _stopped_at(nb, step, f"Execution stopped: the kernel {what} while this cell ran ({exc})")
            raise KernelDied(f"cell {step.index}: {exc}", restarted=exc.restarted) from exc
        except asyncio.CancelledError:
            _stopped_at(nb, step, "Execution stopped: interrupted (Ctrl-C or SIGTERM) while this cell ran")
            raise

    async def _autosave_ticker(self, saver: _Autosaver) -> None:
        if not self.autosave_interval_s or self.autosave_interval_s <= 0:
            return
        while True:
            await asyncio.sleep(self.autosave_interval_s)
            saver.request()


def _stopped_at(nb: dict[str, Any], step: _Step, message: str) -> None:
    """The run stops in this cell: keep what it did, put the red note before it, record its index."""
    _keep_what_ran(step)
    _mark(nb, step.cell, message)
    nb["metadata"]["lamplighter"]["failed_cell"] = step.index


def _keep_what_ran(step: _Step) -> None:
    """A cell stopped before its reply did run: keep its count and timings, as nbclient does (its
    outputs, the KeyboardInterrupt traceback included, are already in the cell)."""
    step.cell["execution_count"] = step.execution.execution_count
    if step.execution.timing:
        step.cell.setdefault("metadata", {})["execution"] = step.execution.timing


def _cell_failed(step: _Step, result: ExecutionResult) -> CellFailed:
    source = cell_source(step.cell)
    first_line = source.strip().splitlines()[0] if source.strip() else ""
    return CellFailed(
        f"cell {step.index} (In [{result.execution_count}]: {first_line[:60]!r}) raised {result.ename}: {result.evalue}",
        ename=result.ename or "Error",
        evalue=result.evalue or "",
        traceback=list(result.traceback),
        cell_index=step.index,
    )


def _mark(nb: dict[str, Any], cell: dict[str, Any], message: str) -> None:
    """Put a red markdown cell before ``cell`` saying why the run stopped there (once)."""
    cells: list[dict[str, Any]] = nb["cells"]
    position = next((i for i, c in enumerate(cells) if c is cell), None)
    if position is None or (position > 0 and ERROR_TAG in cell_tags(cells[position - 1])):
        return
    text = message.replace("<", "&lt;").replace(">", "&gt;")
    source = f'<span style="color:red; font-size:1.4em;">lamplighter: {text}</span>'
    cells.insert(position, _new_cell(nb, "markdown", source, tags=[ERROR_TAG, _PAPERMILL_ERROR_TAG]))
    # Where this run's note went, so a report can count the cells as run (without it).
    nb.setdefault("metadata", {}).setdefault("lamplighter", {})["error_note_cell"] = position
    cell.setdefault("metadata", {}).setdefault("lamplighter", {})["status"] = "failed"


def _unique_path(path: str) -> str:
    stem, ext = posixpath.splitext(path)
    return f"{stem}.lamplighter-{uuid.uuid4().hex[:8]}{ext or '.ipynb'}"
