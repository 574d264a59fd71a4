"""Talking to a live Jupyter server: the connection, and the kernel, notebook and terminal runners."""

from __future__ import annotations

from lamplighter.remote.connection import Connection

__all__ = ["Connection"]
