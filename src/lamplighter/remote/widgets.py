"""Jupyter widgets as nbclient sees them: the state of every widget model, and the Output widget.

nbclient acts as a small front end (``nbclient/client.py::handle_comm_msg`` and
``nbclient/output_widget.py``), and so does this module:

- every ``comm_open``/``comm_msg`` with a ``state`` updates that model's state, which the runner saves
  in ``metadata.widgets`` (nbclient's ``store_widget_state``);
- an ``OutputModel`` whose ``msg_id`` is set captures the outputs of that request (``with out:``): they
  go into the widget's ``outputs``, not the cell's, and ``clear_output`` clears the widget; each change is
  sent back to the kernel as a comm ``update``, as a front end does, so ``out.outputs`` reads true.

Binary values (an ``Image`` widget's bytes) travel outside the state, as message buffers named by
``buffer_paths``; like nbclient, the registry keeps the latest buffer for each path of each model and
saves them base64-encoded in that model's ``buffers``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lamplighter.remote.outputs import output_from

__all__ = ["WIDGET_STATE_MIME", "OutputWidget", "WidgetRegistry"]

logger = logging.getLogger(__name__)

WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
_OUTPUT_MODEL = ("@jupyter-widgets/output", "OutputModel")

#: Sends a comm message to the kernel: ``(comm_id, data)``.
CommSender = Callable[[str, dict[str, Any]], None]


class OutputWidget:
    """An ``ipywidgets.Output`` seen from the front end: its outputs, and the request it captures."""

    def __init__(self, comm_id: str, state: dict[str, Any], send: CommSender) -> None:
        self.comm_id = comm_id
        self.state = state
        self.outputs: list[dict[str, Any]] = list(state.get("outputs") or [])
        self.msg_id: str = ""
        self._send = send
        self._clear_pending = False

    def output(self, msg_type: str, content: Mapping[str, Any]) -> None:
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self.outputs = []
                self._sync()
            return
        output = output_from(msg_type, content)
        if output is None:
            return
        if self._clear_pending:
            self.outputs = []
            self._clear_pending = False
        last = self.outputs[-1] if self.outputs else None
        if (
            last is not None
            and last["output_type"] == "stream"
            and output["output_type"] == "stream"
            and last["name"] == output["name"]
        ):
            last["text"] += output["text"]  # nbclient's widget merges streams plainly
        else:
            self.outputs.append(output)
        self._sync()

    def _sync(self) -> None:
        self.state["outputs"] = self.outputs
        self._send(self.comm_id, {"method": "update", "state": {"outputs": self.outputs}, "buffer_paths": []})


class WidgetRegistry:
    """Every widget model's state, and the Output widgets capturing requests (a stack per request)."""

    def __init__(self, send: CommSender) -> None:
        self.state: dict[str, dict[str, Any]] = {}
        self._send = send
        self._outputs: dict[str, OutputWidget] = {}
        self._hooks: dict[str, list[OutputWidget]] = {}
        # comm_id → buffer path → nbclient's saved form of that buffer (the latest one wins).
        self._buffers: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}

    def handle(self, msg_type: str, content: Mapping[str, Any], buffers: Sequence[bytes] = ()) -> None:
        """A ``comm_open``, ``comm_msg`` or ``comm_close`` from the kernel, with its binary buffers."""
        comm_id = str(content.get("comm_id", ""))
        data = content.get("data") or {}
        if not isinstance(data, dict) or data.get("method") == "echo_update":
            # ipywidgets 8 echoes every update a front end sent; the echo of an Output widget's
            # outputs lags (the kernel reads it only between cells), and would undo a later clear.
            return
        state = data.get("state")
        if isinstance(state, dict):
            self.state.setdefault(comm_id, {}).update(state)
            widget = self._outputs.get(comm_id)
            if widget is not None and "outputs" in state:
                widget.outputs = list(state["outputs"])  # the kernel's own change (append_stdout)
            paths = data.get("buffer_paths")
            if isinstance(paths, list) and paths:
                self._keep_buffers(comm_id, paths, buffers)
        if msg_type == "comm_open" and content.get("target_name") == "jupyter.widget":
            model = self.state.get(comm_id, {})
            if (model.get("_model_module"), model.get("_model_name")) == _OUTPUT_MODEL:
                self._outputs[comm_id] = OutputWidget(comm_id, model, self._send)
        elif msg_type == "comm_msg" and isinstance(state, dict) and "msg_id" in state:
            widget = self._outputs.get(comm_id)
            if widget is not None:
                self._capture(widget, str(state.get("msg_id") or ""))

    def _keep_buffers(self, comm_id: str, paths: list[Any], buffers: Sequence[bytes]) -> None:
        kept = self._buffers.setdefault(comm_id, {})
        for path, buffer in zip(paths, buffers, strict=False):
            if not isinstance(path, list):
                continue
            kept[tuple(str(p) for p in path)] = {
                "data": base64.b64encode(buffer).decode("ascii"),
                "encoding": "base64",
                "path": path,
            }

    def _capture(self, widget: OutputWidget, msg_id: str) -> None:
        if msg_id:
            self._hooks.setdefault(msg_id, []).append(widget)
        elif widget.msg_id:
            stack = self._hooks.get(widget.msg_id, [])
            if widget in stack:
                stack.remove(widget)
        widget.msg_id = msg_id

    @property
    def has_output_widgets(self) -> bool:
        """Whether the kernel opened an Output widget, whose outputs it reads back from our updates."""
        return bool(self._outputs)

    def hook_for(self, msg_id: str) -> OutputWidget | None:
        """The Output widget capturing ``msg_id``'s outputs now (the innermost), if any."""
        stack = self._hooks.get(msg_id)
        return stack[-1] if stack else None

    def metadata(self) -> dict[str, Any] | None:
        """``metadata.widgets`` as nbclient writes it, or None when no widget model was seen."""
        if not self.state:
            return None
        models: dict[str, Any] = {}
        for model_id, state in self.state.items():
            if "_model_name" not in state:
                continue
            models[model_id] = {
                "model_name": state.get("_model_name"),
                "model_module": state.get("_model_module"),
                "model_module_version": state.get("_model_module_version"),
                "state": state,
            }
            if self._buffers.get(model_id):
                models[model_id]["buffers"] = list(self._buffers[model_id].values())
        return {WIDGET_STATE_MIME: {"state": models, "version_major": 2, "version_minor": 0}}
