"""IOPub messages → nbformat v4 outputs, the way nbclient builds them and JupyterLab shows them.

``clear_output(wait=True)`` clears just before the next output; ``display_id`` updates rewrite every
earlier display with that id, across cells; consecutive stream outputs of the same name are merged, with
carriage returns and backspaces applied (as JupyterLab shows them and nbclient's ``coalesce_streams``
saves). No I/O: :class:`~lamplighter.remote.session.Execution` feeds these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["OUTPUT_TYPES", "DisplayRegistry", "OutputArea", "Outputs", "is_rate_limit_notice", "output_from"]

OUTPUT_TYPES = frozenset(
    {"stream", "display_data", "execute_result", "error", "clear_output", "update_display_data"}
)
"""The IOPub message types that change a request's outputs."""

_RATE_LIMIT_NOTICE = re.compile(r"IOPub (message|data) rate exceeded")
# nbclient's coalesce_streams rules: text before a carriage return on the same line is overwritten,
# a backspace deletes the character before it.
_CARRIAGE_RETURN = re.compile(r"[^\n]*\r(?=[^\n])")
_BACKSPACE = re.compile(r"[^\n]\b")

Outputs = list[dict[str, Any]]


def is_rate_limit_notice(msg_type: str, content: Mapping[str, Any]) -> bool:
    """Whether this is the stream notice the server sends in place of output it dropped."""
    return msg_type == "stream" and bool(_RATE_LIMIT_NOTICE.search(str(content.get("text", ""))))


class DisplayRegistry:
    """Where each ``display_id`` was shown: ``update_display_data`` rewrites all of them, across cells."""

    def __init__(self) -> None:
        self._shown: dict[str, list[tuple[Outputs, int]]] = {}

    def update(self, display_id: str, content: Mapping[str, Any]) -> None:
        for outputs, index in self._shown.get(display_id, ()):
            outputs[index]["data"] = content.get("data", {})
            outputs[index]["metadata"] = content.get("metadata", {})

    def record(self, display_id: str, outputs: Outputs, index: int) -> None:
        self._shown.setdefault(display_id, []).append((outputs, index))

    def forget(self, outputs: Outputs) -> None:
        for display_id, places in self._shown.items():
            self._shown[display_id] = [(o, i) for o, i in places if o is not outputs]


class OutputArea:
    """Turns one request's IOPub messages into nbformat outputs, with nbclient's and JupyterLab's rules."""

    def __init__(self, outputs: Outputs, displays: DisplayRegistry) -> None:
        self.outputs = outputs
        self._displays = displays
        self._clear_pending = False

    def handle(self, msg_type: str, content: Mapping[str, Any]) -> None:
        if msg_type == "clear_output":
            if content.get("wait"):
                self._clear_pending = True
            else:
                self._clear()
            return
        display_id = None
        if msg_type in ("display_data", "execute_result", "update_display_data"):
            transient = content.get("transient") or {}
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            if display_id:
                self._displays.update(display_id, content)
        if msg_type == "update_display_data":
            return
        output = output_from(msg_type, content)
        if output is None:
            return
        if self._clear_pending:
            self._clear()
        if output["output_type"] == "stream" and self._merge_stream(output):
            return
        if display_id:
            self._displays.record(display_id, self.outputs, len(self.outputs))
        self.outputs.append(output)

    def _clear(self) -> None:
        self._clear_pending = False
        self.outputs.clear()
        self._displays.forget(self.outputs)

    def _merge_stream(self, output: dict[str, Any]) -> bool:
        last = self.outputs[-1] if self.outputs else None
        if last is None or last.get("output_type") != "stream" or last.get("name") != output["name"]:
            output["text"] = _apply_overwrites(output["text"])
            return False
        # Only the last line of the old text can be touched by a new \r or \b.
        text = last["text"]
        cut = text.rfind("\n") + 1
        last["text"] = text[:cut] + _apply_overwrites(text[cut:] + output["text"])
        return True


def _apply_overwrites(text: str) -> str:
    if "\r" in text:
        text = _CARRIAGE_RETURN.sub("", text)
    if "\b" in text:
        while True:
            shorter = _BACKSPACE.sub("", text)
            if shorter == text:
                break
            text = shorter
    return text


def output_from(msg_type: str, content: Mapping[str, Any]) -> dict[str, Any] | None:
    """The nbformat v4 output for an IOPub message, or None for messages that are not outputs."""
    if msg_type == "stream":
        return {
            "output_type": "stream",
            "name": content.get("name", "stdout"),
            "text": content.get("text", ""),
        }
    if msg_type == "display_data":
        return {
            "output_type": "display_data",
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
        }
    if msg_type == "execute_result":
        return {
            "output_type": "execute_result",
            "data": content.get("data", {}),
            "metadata": content.get("metadata", {}),
            "execution_count": content.get("execution_count"),
        }
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback", [])),
        }
    return None
