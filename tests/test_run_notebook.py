"""The notebook runner and ``lamplighter run notebook`` against a real Jupyter server."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from nbclient import NotebookClient

from lamplighter.cli import main
from lamplighter.errors import CellFailed, ConfigError, RemoteTimeout
from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.remote import (
    Connection,
    KernelSession,
    LocalNotebookStore,
    NotebookRunner,
    shutdown_kernel,
    start_kernel,
)
from lamplighter.remote.notebook import (
    _GUARD_CELL,
    ERROR_TAG,
    INJECTED_TAG,
    MemoryNotebookStore,
    ServerNotebookStore,
)
from tests.waiting import wait_until, wait_until_async

DATA = Path(__file__).parent / "data" / "remote"
PYTHON = {"name": "python3", "display_name": "Python 3", "language": "python"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """One real server for the module; every test checks it left no kernel or session behind."""
    started = start_local_server(
        tmp_path_factory.mktemp("notebook-server"), extra_args=["--KernelRestarter.time_to_dead=0.3"]
    )
    yield started
    started.stop()


def notebook(*sources: str, tags: dict[int, list[str]] | None = None) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": PYTHON})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    loaded: dict[str, Any] = json.loads(nbformat.writes(nb))
    return loaded


def nothing_left(server: LocalServer) -> None:
    headers = {"Authorization": f"token {server.token}"}
    for what in ("kernels", "sessions", "terminals"):
        assert httpx.get(f"{server.url}api/{what}", headers=headers).json() == [], what


def code_outputs(nb: dict[str, Any]) -> list[tuple[Any, list[Any]]]:
    return [(c.get("execution_count"), c["outputs"]) for c in nb["cells"] if c["cell_type"] == "code"]


# -- the runner ------------------------------------------------------------------------------------


async def test_outputs_match_nbclient(server: LocalServer, tmp_path: Path) -> None:
    ours = await LocalNotebookStore(DATA / "outputs.ipynb").load()
    async with Connection(server.url, token=server.token) as conn:
        result = await NotebookRunner(conn, allow_errors=True).run(ours)
    assert [e.ename for e in result.allowed_errors] == ["ValueError"]

    (tmp_path / "home").mkdir(exist_ok=True)  # the isolated HOME must exist for an in-process kernel
    theirs = nbformat.read(DATA / "outputs.ipynb", as_version=4)
    client = NotebookClient(
        theirs,
        kernel_name="python3",
        allow_errors=True,
        coalesce_streams=True,
        resources={"metadata": {"path": tmp_path}},
    )
    await client.async_execute()
    on_disk = [
        json.loads(nbformat.writes(nbformat.from_dict(nb))) for nb in (ours, theirs)
    ]  # same line splitting
    assert code_outputs(on_disk[0]) == code_outputs(on_disk[1])

    # And what that means, spelled out: streams merged, clear_output(wait=True), display updates, \r.
    cells = ours["cells"]
    assert cells[2]["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "hello\nsecond line\n"},
        {"output_type": "stream", "name": "stderr", "text": "oops\n"},
    ]
    assert cells[3]["outputs"][0]["data"]["text/html"] == "<b>bold</b>"
    assert cells[4]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "step 2\n"}]
    assert cells[5]["outputs"][0]["data"]["text/markdown"] == "version 2"  # updated by the next cell
    assert cells[6]["outputs"] == []
    assert cells[7]["outputs"][0]["text"] == "100%\n"
    assert cells[9]["execution_count"] is None and cells[9]["outputs"] == []  # skip-execution
    nothing_left(server)


async def test_parameters_are_injected_and_a_failure_stops_the_run(
    server: LocalServer, tmp_path: Path
) -> None:
    (server.root_dir / "after-error.txt").unlink(missing_ok=True)
    nb = await LocalNotebookStore(DATA / "outputs.ipynb").load()
    saved = LocalNotebookStore(tmp_path / "executed.ipynb")
    async with Connection(server.url, token=server.token) as conn:
        runner = NotebookRunner(conn, parameters={"greeting": "hi", "repeat": 2}, store=saved)
        with pytest.raises(CellFailed) as failure:
            await runner.run(nb)
    assert failure.value.ename == "ValueError" and failure.value.evalue == "boom"

    on_disk = await saved.load()
    cells = on_disk["cells"]
    assert "parameters" in cells[1]["metadata"]["tags"]
    assert cells[2]["metadata"]["tags"] == [INJECTED_TAG]
    assert cells[2]["source"] == '# Parameters\ngreeting = "hi"\nrepeat = 2\n'  # papermill's quoting
    assert cells[3]["outputs"][0]["text"] == "hihi\nsecond line\n"
    assert on_disk["metadata"]["papermill"]["parameters"] == {"greeting": "hi", "repeat": 2}
    failed_at = next(i for i, c in enumerate(cells) if c["source"] == 'raise ValueError("boom")')
    assert failure.value.cell_index == failed_at - 1  # the index before the note was put in front of it
    assert ERROR_TAG in cells[failed_at - 1]["metadata"]["tags"]
    assert "ValueError: boom" in cells[failed_at - 1]["source"]
    assert cells[failed_at]["outputs"][-1]["ename"] == "ValueError"
    assert cells[failed_at + 1]["outputs"] == [] and cells[failed_at + 1]["execution_count"] is None
    assert on_disk["metadata"]["lamplighter"]["status"] == "failed"
    assert not (server.root_dir / "after-error.txt").exists()
    nothing_left(server)


async def test_pipelined_run_never_runs_a_cell_after_a_failure(server: LocalServer) -> None:
    nb = await LocalNotebookStore(DATA / "stops_at_error.ipynb").load()
    async with Connection(server.url, token=server.token) as conn:
        with pytest.raises(CellFailed) as failure:
            await NotebookRunner(conn, parameters={"marker": "pipelined"}).run(nb)
    assert failure.value.ename == "ZeroDivisionError"
    assert nb["metadata"]["lamplighter"]["pipelined"] is True
    assert (server.root_dir / "pipelined-before.txt").exists()
    assert sorted(p.name for p in server.root_dir.glob("pipelined-after-*")) == []
    nothing_left(server)


async def test_the_guard_refuses_cells_sent_after_a_failure_however_late(server: LocalServer) -> None:
    # ipykernel aborts only requests already queued when a cell fails; the guard covers a late one too.
    async with Connection(server.url, token=server.token) as conn:
        kernel_id = await start_kernel(conn, "python3")
        try:
            async with KernelSession(conn, kernel_id) as ks:
                assert (await ks.execute(_GUARD_CELL, silent=True, store_history=False)).ok
                assert (await ks.execute("x = 1")).ok
                assert (await ks.execute("1 / 0")).status == "error"
                late = await ks.execute("open('late.txt', 'w').write('ran')")
                assert late.status == "error" and late.ename == "InputRejected"
        finally:
            await shutdown_kernel(conn, kernel_id)
    assert not (server.root_dir / "late.txt").exists()
    nothing_left(server)


def _history_rows(path: str, marker: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(
            db.execute("SELECT count(*) FROM history WHERE source_raw LIKE ?", (f"%{marker}%",)).fetchone()[0]
        )


async def test_the_run_keeps_its_history_in_memory_as_nbclient_does(
    server: LocalServer, tmp_path: Path
) -> None:
    probe = "print(get_ipython().history_manager.hist_file)"
    os.makedirs(os.environ["HOME"], exist_ok=True)  # nbclient's kernel looks for ~/.ipython
    reference = nbformat.v4.new_notebook(metadata={"kernelspec": PYTHON})
    reference.cells = [nbformat.v4.new_code_cell(probe)]
    await NotebookClient(reference, kernel_name="python3").async_execute()
    assert reference.cells[0].outputs[0]["text"] == ":memory:\n"
    kept, written = (f"kept-{uuid.uuid4().hex}", f"written-{uuid.uuid4().hex}")
    runs: dict[str, dict[str, Any]] = {}
    async with Connection(server.url, token=server.token) as conn:
        for history, marker in (("file", written), ("memory", kept)):
            # Two cells, so the memory run is pipelined; In[] still answers from memory.
            nb = notebook(probe, f"{marker!r}; print(In[1])")
            await NotebookRunner(conn, history=history).run(nb)
            runs[history] = nb
    texts = {history: [c["outputs"][0]["text"] for c in nb["cells"]] for history, nb in runs.items()}
    assert texts["memory"] == [":memory:\n", probe + "\n"]
    history_file = texts["file"][0].strip()
    assert history_file != ":memory:"
    assert texts["file"][1] == probe + "\n"
    # The file run's cells reached the server's history file; the memory run's never did.
    assert _history_rows(history_file, written) == 1
    assert _history_rows(history_file, kept) == 0
    nothing_left(server)


def test_history_mode_is_checked(server: LocalServer) -> None:
    with pytest.raises(ConfigError, match="history: expected one of memory, file"):
        NotebookRunner(Connection(server.url, token=server.token), history="disk")


async def test_cell_timeout_interrupts_fails_and_saves(server: LocalServer, tmp_path: Path) -> None:
    nb = notebook(
        "print('started')", "import time\ntime.sleep(60)", "open('after-timeout.txt', 'w').write('ran')"
    )
    saved = LocalNotebookStore(tmp_path / "executed.ipynb")
    began = time.monotonic()
    async with Connection(server.url, token=server.token) as conn:
        with pytest.raises(RemoteTimeout, match="cell 1: ran past the per-cell timeout"):
            await NotebookRunner(conn, cell_timeout_s=1.0, store=saved).run(nb)
    assert time.monotonic() - began < 20
    cells = (await saved.load())["cells"]
    assert cells[0]["outputs"][0]["text"] == "started\n"
    assert ERROR_TAG in cells[1]["metadata"]["tags"] and "timeout" in cells[1]["source"]
    assert cells[2]["outputs"][-1]["ename"] == "KeyboardInterrupt"
    assert not (server.root_dir / "after-timeout.txt").exists()
    nothing_left(server)


async def test_a_timed_out_cell_keeps_its_count_and_outputs_as_nbclient_does(
    server: LocalServer, tmp_path: Path
) -> None:
    sources = ("print('started')", "import time\nprint('before', flush=True)\ntime.sleep(60)")
    ours = notebook(*sources)
    async with Connection(server.url, token=server.token) as conn:
        with pytest.raises(RemoteTimeout):
            await NotebookRunner(conn, cell_timeout_s=1.5).run(ours)

    (tmp_path / "home").mkdir(exist_ok=True)
    theirs = nbformat.reads(json.dumps(notebook(*sources)), as_version=4)
    client = NotebookClient(
        theirs, kernel_name="python3", timeout=2, interrupt_on_timeout=True, allow_errors=True,
        resources={"metadata": {"path": tmp_path}},
    )  # fmt: skip
    await client.async_execute()

    def shape(cell: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
        # Tracebacks name the kernel's temporary cell file (its pid): compare all but their text.
        outputs = [{k: v for k, v in o.items() if k != "traceback"} for o in cell["outputs"]]
        return cell["execution_count"], outputs

    ours_cell = [c for c in ours["cells"] if c["cell_type"] == "code"][1]
    expected = shape(json.loads(json.dumps(theirs["cells"][1])))
    assert shape(ours_cell) == expected
    assert expected[0] == 2 and expected[1][-1]["ename"] == "KeyboardInterrupt"
    assert ours_cell["outputs"][-1]["traceback"]
    assert "iopub.execute_input" in ours_cell["metadata"]["execution"]
    nothing_left(server)


# -- when the notebook is saved -------------------------------------------------------------------


class RecordingStore(MemoryNotebookStore):
    """Keeps every save: when it happened, and the notebook as saved."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[float, dict[str, Any]]] = []

    async def save(self, nb: Mapping[str, Any]) -> None:
        await super().save(nb)
        self.saves.append((time.monotonic(), json.loads(self.text or "{}")))

    def outputs_saved(self, cell: int) -> list[Any]:
        return [] if not self.saves else self.saves[-1][1]["cells"][cell]["outputs"]


async def test_a_burst_of_fast_cells_is_saved_together(server: LocalServer) -> None:
    """Saving after each of 60 fast cells would steal the CPU the kernel needs: saves during the run
    come at least a second apart; the last one holds every output."""
    store = RecordingStore()
    nb = notebook(*(f"print({i})" for i in range(60)))
    async with Connection(server.url, token=server.token) as conn:
        await NotebookRunner(conn, store=store).run(nb)
    times = [when for when, _ in store.saves]
    assert 2 <= len(times) < 60
    assert all(later - earlier >= 0.99 for earlier, later in itertools.pairwise(times[:-1]))
    last = store.saves[-1][1]
    assert [c["outputs"][0]["text"] for c in last["cells"]] == [f"{i}\n" for i in range(60)]
    nothing_left(server)


@pytest.mark.parametrize(
    ("save_after_cell", "autosave_s"), [(True, 0), (False, 0.3)], ids=["after-the-cell", "autosave-mid-cell"]
)
async def test_a_finished_cell_is_saved_while_the_next_one_runs(
    server: LocalServer, save_after_cell: bool, autosave_s: float
) -> None:
    flag = server.root_dir / f"release-{uuid.uuid4().hex[:8]}.txt"
    nb = notebook(
        "print('first')",
        f"import os, time\nwhile not os.path.exists({flag.name!r}):\n    time.sleep(0.05)",
    )
    store = RecordingStore()
    async with Connection(server.url, token=server.token) as conn:
        runner = NotebookRunner(
            conn, store=store, save_after_cell=save_after_cell, autosave_interval_s=autosave_s
        )
        run = asyncio.create_task(runner.run(nb))
        try:
            await wait_until_async(
                lambda: store.outputs_saved(0), timeout_s=30, what="a save holding the first cell's output"
            )
            assert not run.done()
        finally:
            flag.write_text("go")
            await asyncio.wait_for(run, 60)
    nothing_left(server)


async def test_a_notebook_someone_saved_meanwhile_is_not_saved_over(
    server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Someone opens the output in JupyterLab while the run goes on, edits it and saves: the run's next
    # save would lose their edit. It goes to a sibling path instead, and nothing of either is lost.
    flag = server.root_dir / f"release-{uuid.uuid4().hex[:8]}.txt"
    name = f"edited-{uuid.uuid4().hex[:8]}.ipynb"
    nb = notebook(
        f"import os, time\nwhile not os.path.exists({flag.name!r}):\n    time.sleep(0.05)", "print('done')"
    )
    headers = {"Authorization": f"token {server.token}"}
    async with Connection(server.url, token=server.token) as conn:
        runner = NotebookRunner(conn, store=ServerNotebookStore(conn, name))
        run = asyncio.create_task(runner.run(nb))
        try:
            url = f"{server.url}api/contents/{name}"

            def first_save() -> dict[str, Any] | None:
                answer = httpx.get(url, headers=headers)
                return answer.json()["content"] if answer.status_code == 200 else None

            # What JupyterLab does: read the notebook, add a cell, save it through the contents API.
            theirs = await wait_until_async(first_save, timeout_s=30, what="the run's first save")
            theirs["cells"].insert(0, nbformat.v4.new_markdown_cell("a note of the user's"))
            body = {"type": "notebook", "format": "json", "content": theirs}
            async with httpx.AsyncClient() as client:
                assert (await client.put(url, json=body, headers=headers)).status_code == 200
        finally:
            flag.write_text("go")
        await asyncio.wait_for(run, 60)
    kept = nbformat.read(server.root_dir / name, as_version=4)
    assert kept.cells[0].source == "a note of the user's"
    [sibling] = server.root_dir.glob(name.replace(".ipynb", ".lamplighter-*.ipynb"))
    executed = nbformat.read(sibling, as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "done\n"
    assert runner.saved_to == f"server:{sibling.name}"
    assert any("changed on the server since" in r.getMessage() for r in caplog.records)
    for path in (server.root_dir / name, sibling):
        path.unlink()
    nothing_left(server)


async def test_a_local_output_someone_saved_meanwhile_is_not_saved_over(
    server: LocalServer, tmp_path: Path
) -> None:
    flag = server.root_dir / f"release-{uuid.uuid4().hex[:8]}.txt"
    nb = notebook(
        f"import os, time\nwhile not os.path.exists({flag.name!r}):\n    time.sleep(0.05)", "print('done')"
    )
    output = tmp_path / "out.ipynb"
    async with Connection(server.url, token=server.token) as conn:
        runner = NotebookRunner(conn, store=LocalNotebookStore(output))
        run = asyncio.create_task(runner.run(nb))
        try:
            await wait_until_async(output.exists, timeout_s=30, what="the run's first save")
            theirs = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("the user's own")])
            await asyncio.to_thread(nbformat.write, theirs, output)  # an editor saving in place
        finally:
            flag.write_text("go")
        await asyncio.wait_for(run, 60)
    assert nbformat.read(output, as_version=4).cells[0].source == "the user's own"
    [sibling] = await asyncio.to_thread(lambda: list(tmp_path.glob("out.lamplighter-*.ipynb")))
    assert nbformat.read(sibling, as_version=4).cells[1].outputs[0]["text"] == "done\n"
    assert runner.saved_to == str(sibling)
    nothing_left(server)


async def test_without_save_after_cell_only_the_start_and_the_end_are_saved(server: LocalServer) -> None:
    store = RecordingStore()
    nb = notebook(*(f"print({i})" for i in range(5)))
    async with Connection(server.url, token=server.token) as conn:
        await NotebookRunner(conn, store=store, save_after_cell=False, autosave_interval_s=0).run(nb)
    assert len(store.saves) == 2
    assert store.saves[0][1]["cells"][0]["outputs"] == [] and store.outputs_saved(4)[0]["text"] == "4\n"
    nothing_left(server)


# -- the command ---------------------------------------------------------------------------------


def test_cli_runs_a_server_notebook_and_leaves_a_users_session_alone(
    server: LocalServer, cli_env: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = server.root_dir / "square.ipynb"
    path.write_text(json.dumps(notebook("n = 1", "print(n * n)", tags={0: ["parameters"]})))
    headers = {"Authorization": f"token {server.token}"}
    body = {"path": "square.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    users = httpx.post(f"{server.url}api/sessions", json=body, headers=headers).json()
    try:
        rc = main(["run", "notebook", "square.ipynb", "-o", "square-out.ipynb", "-p", "n", "3", *cli_env])
        assert rc == 0, capsys.readouterr().err
        executed = nbformat.read(server.root_dir / "square-out.ipynb", as_version=4)  # joins split lines
        assert executed["cells"][2]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "9\n"}]
        assert "ran 3 cells" in capsys.readouterr().err
        sessions = httpx.get(f"{server.url}api/sessions", headers=headers).json()
        assert [s["id"] for s in sessions] == [users["id"]]  # the user's session and kernel were not touched
    finally:
        httpx.delete(f"{server.url}api/sessions/{users['id']}", headers=headers)
    nothing_left(server)


def test_cli_exit_code_for_a_failed_cell(
    server: LocalServer, cli_env: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.ipynb"
    argv = [
        "run",
        "notebook",
        "--upload",
        str(DATA / "stops_at_error.ipynb"),
        "-o",
        str(out),
        "-r",
        "marker",
        "cli",
    ]
    assert main([*argv, *cli_env]) == 1
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err and f"saved to {out}" in err
    assert any(ERROR_TAG in c["metadata"].get("tags", []) for c in json.loads(out.read_text())["cells"])
    assert (server.root_dir / "cli-before.txt").exists() and not list(server.root_dir.glob("cli-after-*"))
    nothing_left(server)


@pytest.mark.parametrize(
    ("cell", "flags", "status"),
    [
        ("import time\ntime.sleep(60)", ["--cell-timeout", "0.5"], 4),
        ("import time\ntime.sleep(60)", ["--timeout", "3s"], 4),
        ("import os\nos.kill(os.getpid(), 9)", [], 5),
    ],
    ids=["cell-timeout", "run-timeout", "kernel-died"],
)
def test_cli_exit_codes_for_timeouts_and_a_dead_kernel(
    server: LocalServer, cli_env: list[str], tmp_path: Path, cell: str, flags: list[str], status: int
) -> None:
    source = tmp_path / "nb.ipynb"
    source.write_text(json.dumps(notebook("print('first')", cell)))
    assert main(["run", "notebook", "--upload", str(source), *flags, *cli_env]) == status
    nothing_left(server)


def test_cli_exit_code_for_a_refused_token(server: LocalServer, cli_env: list[str]) -> None:
    argv = ["run", "notebook", "--upload", str(DATA / "outputs.ipynb"), "--token", "wrong", *cli_env]
    assert main(argv) == 3


@pytest.mark.slow  # a fresh interpreter, then a kernel, then the interrupt
def test_ctrl_c_keeps_finished_cells_and_shuts_everything_down(server: LocalServer, tmp_path: Path) -> None:
    source, out = tmp_path / "slow.ipynb", tmp_path / "out.ipynb"
    source.write_text(json.dumps(notebook("print('finished')", "import time\ntime.sleep(60)")))
    env = {**os.environ, "LAMPLIGHTER_TOKEN": server.token}
    code = "import sys; from lamplighter.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = [
        sys.executable,
        "-c",
        code,
        "run",
        "notebook",
        "--upload",
        str(source),
        "-o",
        str(out),
        "--url",
        server.url,
    ]
    with subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        # The first cell's output reaches the file while the second cell is still running.
        def first_output() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            return out.exists() and bool(json.loads(out.read_text())["cells"][0]["outputs"])  # atomic saves

        wait_until(first_output, timeout_s=30, what="the first cell's output in the saved notebook")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    cells = json.loads(out.read_text())["cells"]
    assert cells[0]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "finished\n"}]
    assert ERROR_TAG in cells[1]["metadata"]["tags"] and "interrupted" in cells[1]["source"]
    nothing_left(server)


@pytest.fixture(autouse=True)
def _no_stray_files(server: LocalServer) -> Iterator[None]:
    yield
    for leftover in server.root_dir.glob("*.txt"):
        leftover.unlink()
    shutil.rmtree(server.root_dir / ".ipynb_checkpoints", ignore_errors=True)
