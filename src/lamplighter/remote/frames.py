"""The Jupyter kernel message protocol on a websocket: headers, and frames in both framings.

The server offers the ``v1.kernel.websocket.jupyter.org`` binary framing when asked and falls back to
legacy JSON text frames when the client (or a proxy) picks no subprotocol; both are read and written
here (``research/remote.md`` §2). No I/O: :mod:`lamplighter.remote.session` moves the frames.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from lamplighter.errors import MalformedAnswer

__all__ = ["PROTOCOL_VERSION", "V1_SUBPROTOCOL", "Message", "decode_frame", "encode_frame", "new_header"]

V1_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"
PROTOCOL_VERSION = "5.3"


@dataclass(frozen=True, slots=True)
class Message:
    """What we keep of a message from the kernel: where it came from, what it answers, what it says."""

    channel: str
    msg_type: str
    parent_id: str | None
    """The ``msg_id`` of the request this message belongs to (``None``: the server's own, or a broadcast)."""
    content: dict[str, Any]
    date: str
    buffers: tuple[bytes, ...] = ()
    """The message's binary buffers (a widget's ``buffer_paths`` values, e.g. an Image's bytes)."""
    session: str = ""
    """The sender's ``header.session``: a kernel process draws a new one each time it starts."""


def new_header(msg_type: str, *, session_id: str, username: str) -> dict[str, Any]:
    """A fresh message header (a new ``msg_id``) for a request from this client's session."""
    return {
        "msg_id": uuid.uuid4().hex,
        "session": session_id,
        "username": username,
        # The protocol wants a send date in every header; this is not a decision clock.
        "date": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "msg_type": msg_type,
        "version": PROTOCOL_VERSION,
    }


def _parse_json(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedAnswer(f"kernel websocket: {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedAnswer(f"kernel websocket: {what} is not an object")
    return value


def decode_frame(frame: str | bytes, v1: bool) -> Message:
    """One websocket frame → a message (metadata is not kept: nothing here reads it)."""
    if v1:
        if isinstance(frame, str):
            raise MalformedAnswer("kernel websocket: a text frame on the v1 protocol")
        count = int.from_bytes(frame[:8], "little")
        offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
        if count < 6:
            raise MalformedAnswer("kernel websocket: a v1 frame with too few parts")
        channel = frame[offsets[0] : offsets[1]].decode()
        header = _parse_json(frame[offsets[1] : offsets[2]], "header")
        parent = _parse_json(frame[offsets[2] : offsets[3]], "parent header")
        content = _parse_json(frame[offsets[4] : offsets[5]], "content")
        # The last offset is the frame's end; the parts between content and it are the buffers.
        buffers = tuple(bytes(frame[offsets[i] : offsets[i + 1]]) for i in range(5, count - 1))
    else:
        buffers = ()
        if isinstance(frame, bytes):
            # Legacy binary frame (a message with buffers): uint32 count, offsets, JSON, buffers.
            (count,) = struct.unpack("!I", frame[:4])
            starts = struct.unpack("!" + "I" * count, frame[4 : 4 * (count + 1)])
            ends = (*starts[1:], len(frame))
            msg = _parse_json(frame[starts[0] : ends[0]], "message")
            buffers = tuple(bytes(frame[starts[i] : ends[i]]) for i in range(1, count))
        else:
            msg = _parse_json(frame, "message")
        channel = str(msg.get("channel", ""))
        header, parent, content = (
            msg.get("header") or {},
            msg.get("parent_header") or {},
            msg.get("content") or {},
        )
    return Message(
        channel=channel,
        msg_type=str(header.get("msg_type", "")),
        parent_id=parent.get("msg_id"),
        content=content,
        date=str(header.get("date", "")),
        buffers=buffers,
        session=str(header.get("session", "")),
    )


def encode_frame(channel: str, header: dict[str, Any], content: dict[str, Any], v1: bool) -> str | bytes:
    """A request as one websocket frame: v1 binary parts, or one legacy JSON text frame."""
    if not v1:
        msg = {"channel": channel, "header": header, "parent_header": {}, "metadata": {}, "content": content}
        return json.dumps(msg, separators=(",", ":"))
    parts = [
        channel.encode(),
        *(json.dumps(p, separators=(",", ":")).encode() for p in (header, {}, {}, content)),
    ]
    offsets = [8 * (len(parts) + 2)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join([len(offsets).to_bytes(8, "little"), *(o.to_bytes(8, "little") for o in offsets), *parts])
