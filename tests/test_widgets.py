"""Output widgets and widget state under ``run notebook``, compared with nbclient on the same notebook."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

from lamplighter.localserver import LocalServer, start_local_server
from lamplighter.remote import Connection, NotebookRunner
from lamplighter.remote.widgets import WIDGET_STATE_MIME

pytest.importorskip("ipywidgets")

SOURCES = (
    "import ipywidgets as w\nfrom IPython.display import clear_output\nout = w.Output()\nslider = w.IntSlider(value=3)\n"
    "display(out, slider)",
    "with out:\n    print('inside')\n    display('shown in the widget')\nprint('outside')",
    "with out:\n    print('to be cleared')\n    clear_output()\n    print('after the clear')\nslider.value = 7",
    "print('last cell')",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    started = start_local_server(tmp_path_factory.mktemp("widget-server"))
    yield started
    started.stop()


def notebook() -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in SOURCES]
    # A stale state, as a notebook saved from an earlier session carries: it must not survive the run.
    nb.metadata["widgets"] = {WIDGET_STATE_MIME: {"state": {"stale": {"model_name": "X"}}}}
    loaded: dict[str, Any] = json.loads(nbformat.writes(nb))
    return loaded


async def nbclient_run(make: Callable[[], Any], tmp_path: Path, **options: Any) -> Any:
    """The anchor: nbclient on a fresh copy of the notebook, with a local kernel.

    Its local kernel now and then hangs in a widget cell (ipykernel and nbclient's own widget
    emulation; the lamplighter run before it is not involved), so a hung anchor is tried once more on
    a fresh kernel: that retry is for the reference only, never for the code under test.
    """
    (tmp_path / "home").mkdir(exist_ok=True)
    for attempt in (1, 2):
        nb = make()
        nb.metadata.pop("widgets", None)  # nbclient keeps a stale state when no widget replaces it
        client = NotebookClient(
            nb, kernel_name="python3", timeout=30, resources={"metadata": {"path": tmp_path}}, **options
        )
        try:
            await client.async_execute()
        except (CellTimeoutError, DeadKernelError):
            if attempt == 2:
                raise
            continue
        return nb
    raise AssertionError("unreachable: the second attempt returns or raises")


def normalised(value: Any) -> Any:
    """The same document with widget model ids numbered in order of appearance (models are opened in
    the same order under both runners, so the numbers agree)."""
    text = json.dumps(value)
    ids: dict[str, str] = {}
    for found in re.findall(r"[0-9a-f]{32}", text):
        ids.setdefault(found, f"model-{len(ids)}")
    for found, name in ids.items():
        text = text.replace(found, name)
    return json.loads(text)


async def test_output_widgets_and_widget_state_match_nbclient(server: LocalServer, tmp_path: Path) -> None:
    ours = notebook()
    for cell in ours["cells"]:
        cell["source"] = "".join(cell["source"])
    async with Connection(server.url, token=server.token) as conn:
        await NotebookRunner(conn).run(ours)

    theirs = await nbclient_run(lambda: nbformat.reads(json.dumps(notebook()), as_version=4), tmp_path)
    theirs_plain = json.loads(nbformat.writes(theirs))
    ours_plain = json.loads(nbformat.writes(nbformat.from_dict(ours)))

    def outputs(nb: dict[str, Any]) -> list[Any]:
        return [c["outputs"] for c in nb["cells"]]

    assert normalised(outputs(ours_plain)) == normalised(outputs(theirs_plain))
    # Normalised in the runners' own key order (a saved file sorts the keys, so the random ids).
    ours_state = ours["metadata"]["widgets"][WIDGET_STATE_MIME]
    expected = normalised(theirs["metadata"]["widgets"][WIDGET_STATE_MIME])
    got = normalised(ours_state)
    # nbclient's saved OutputModel outputs lag its own clear (they show "to be cleared", which the
    # widget no longer shows); what a front end shows is checked below instead.
    for document in (expected, got):
        for model in document["state"].values():
            if model["model_name"] == "OutputModel":
                model["state"].pop("outputs")
    assert got == expected
    assert "stale" not in ours_state["state"]

    # What that means: the widget holds what was printed inside it, after its clear; the cell does not.
    assert ["".join(o["text"]) for o in ours_plain["cells"][1]["outputs"]] == ["outside\n"]
    out_model = next(m for m in ours_state["state"].values() if m["model_name"] == "OutputModel")
    texts = [o.get("text") or o.get("data", {}).get("text/plain") for o in out_model["state"]["outputs"]]
    assert texts == ["after the clear\n"]
    slider = next(m for m in ours_state["state"].values() if m["model_name"] == "IntSliderModel")
    assert slider["state"]["value"] == 7


IMAGE_SOURCES = (
    "import ipywidgets as w\nimg = w.Image(value=bytes(range(256)), format='png')\ndisplay(img)",
    "img.value = b'the second picture'",
)


def image_notebook() -> Any:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_code_cell(source) for source in IMAGE_SOURCES]
    return nb


async def test_image_widget_bytes_are_saved_as_nbclient_saves_them(
    server: LocalServer, tmp_path: Path
) -> None:
    ours: dict[str, Any] = json.loads(nbformat.writes(image_notebook()))
    for cell in ours["cells"]:
        cell["source"] = "".join(cell["source"])
    async with Connection(server.url, token=server.token) as conn:
        await NotebookRunner(conn).run(ours)
    theirs = await nbclient_run(image_notebook, tmp_path)

    got = normalised(ours["metadata"]["widgets"][WIDGET_STATE_MIME])
    assert got == normalised(theirs["metadata"]["widgets"][WIDGET_STATE_MIME])
    # The bytes live in the model's buffers (the latest value for each path), not in its state.
    image = next(m for m in got["state"].values() if m["model_name"] == "ImageModel")
    assert "value" not in image["state"]
    second = base64.b64encode(b"the second picture").decode()
    assert image["buffers"] == [{"data": second, "encoding": "base64", "path": ["value"]}]


# The Output widget's outputs reach the kernel as a comm update from the front end; a cell that reads
# them in the very next cell sees them under nbclient, which sends no cell before the last one ended.
READBACK_SOURCES = (
    "out = w.Output()\ndisplay(out)",
    "with out:\n    print('captured')",
    "print(len(out.outputs), out.outputs[0]['text'].strip() if out.outputs else None)",
    "print('after')",
)
IMPORTS = {
    "named": "import ipywidgets as w",
    # A notebook that reaches ipywidgets through another library never names it.
    "hidden": "import importlib\nw = importlib.import_module('ipy' + 'widgets')",
}


@pytest.mark.parametrize("imported", sorted(IMPORTS))
async def test_the_next_cell_reads_what_an_output_widget_captured(
    server: LocalServer, tmp_path: Path, imported: str
) -> None:
    def readback() -> Any:
        nb = nbformat.v4.new_notebook(
            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
        )
        nb.cells = [nbformat.v4.new_code_cell(s) for s in (IMPORTS[imported], *READBACK_SOURCES)]
        return nb

    ours: dict[str, Any] = json.loads(nbformat.writes(readback()))
    for cell in ours["cells"]:
        cell["source"] = "".join(cell["source"])
    async with Connection(server.url, token=server.token) as conn:
        await NotebookRunner(conn).run(ours)
    theirs = await nbclient_run(readback, tmp_path)
    assert ["".join(o["text"]) for o in theirs.cells[3].outputs] == ["1 captured\n"]
    assert [o["text"] for o in ours["cells"][3]["outputs"]] == ["1 captured\n"]
    # Named: never pipelined; hidden: pipelining stops at the first Output widget.
    assert ours["metadata"]["lamplighter"]["pipelined"] is (imported == "hidden")
