"""Import httpx without its command-line client, which the ``watch`` agent never uses.

``httpx/__init__.py`` tries ``from ._main import main``, and ``_main`` imports click, rich and pygments
whenever they are all installed (papermill, jupyter and many images bring click): about 10 MB in an
agent that must stay under 35 MB. Marking ``httpx._main`` absent for the length of that one import
sends httpx to its own fallback (``httpx.main`` then only says the CLI is not installed); the mark is
removed at once, so an explicit ``import httpx._main`` later still works.
"""

from __future__ import annotations

import sys

__all__: list[str] = []

if "httpx" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
    try:
        import httpx  # noqa: F401
    finally:
        del sys.modules["httpx._main"]
