"""The status page at ``{base}lamplighter/``, in a real headless Chromium driven over the DevTools protocol.

Chromium is Debian's ``chromium`` package (``make unit`` installs it); the protocol is spoken with the
``websockets`` client the project already depends on. The page loads, its countdown moves, the
snooze buttons change the verdict and the deadline, a POST without ``_xsrf`` is refused.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from lamplighter.localserver import LocalServer
from lamplighter.views.page import render_page, sparkline_svg
from tests.conftest import ServerFactory
from tests.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab over the DevTools protocol: evaluate JavaScript, navigate, take a screenshot."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self._ws.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == number:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def js(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            return None  # the page is between two loads: "not yet" for wait_until
        return answer["result"].get("value")


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    if CHROMIUM is None:
        pytest.skip("no chromium: `make unit` installs Debian's chromium package")
    log = tmp_path / "chromium.log"
    with log.open("w") as out:
        browser = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=900,760", "about:blank"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        found = wait_until(
            lambda: re.search(r"DevTools listening on (ws://\S+)", log.read_text()),
            timeout_s=60,
            what="chromium's DevTools URL",
        )
        browser_url = found.group(1)
        with connect(browser_url, max_size=None) as control:
            target = Page(control).call("Target.createTarget", url="about:blank")["targetId"]
        page_url = browser_url.split("/devtools/")[0] + f"/devtools/page/{target}"
        with connect(page_url, max_size=None) as ws:
            yield Page(ws)
    finally:
        browser.terminate()
        browser.wait(timeout=30)


@pytest.fixture
def server(server_factory: ServerFactory, tmp_path: Path) -> LocalServer:
    return server_factory(
        extra_args=[
            '--ServerApp.jpserver_extensions={"lamplighter": True}',
            "--Lamplighter.idle_timeout=600",
            "--Lamplighter.process_signal=False",
            f"--Lamplighter.journal={tmp_path / 'ext.sqlite3'}",
        ]
    )


def _seconds(countdown: str) -> float:
    """``9:58`` / ``4:00:00`` / ``-0:03`` (the page's countdown) in seconds."""
    sign = -1 if countdown.startswith("-") else 1
    parts = [int(p) for p in countdown.lstrip("-").split(":")]
    total = 0
    for part in parts:
        total = total * 60 + part
    return sign * total


def test_page_countdown_and_snooze(page: Page, server: LocalServer) -> None:
    page.call("Page.enable")
    page.call("Page.navigate", url=f"{server.url}lamplighter/?token={server.token}")
    wait_until(
        lambda: page.js("document.readyState === 'complete' && document.getElementById('verdict').dataset.verdict"),
        timeout_s=20,
        what="the page to load with a verdict",
    )  # fmt: skip
    assert page.js("document.getElementById('verdict').textContent") == "KEEP"
    assert "idle for" in page.js("document.getElementById('reason').textContent")
    first = page.js("document.getElementById('countdown').textContent")
    assert 0 < _seconds(first) <= 600, first
    moved = wait_until(
        lambda: (t := page.js("document.getElementById('countdown').textContent")) != first and t,
        timeout_s=10,
        what="the countdown to move",
    )
    assert _seconds(moved) < _seconds(first)

    shot = os.environ.get("LAMPLIGHTER_SCREENSHOT_DIR")
    if shot:  # docs/status-page.png is made this way (README)
        import base64

        Path(shot, "status-page.png").write_bytes(
            base64.b64decode(page.call("Page.captureScreenshot")["data"])
        )

    # A POST without the _xsrf field is refused by the server's own XSRF check, and changes nothing.
    refused = page.js(
        f"fetch('{server.url}lamplighter/snooze', {{method: 'POST', body: new URLSearchParams({{hours: '4'}})}})"
        ".then(r => r.status)"
    )
    assert refused == 403
    assert "idle for" in page.js("document.getElementById('reason').textContent")

    page.js("document.getElementById('snooze-4h').click(); true")
    wait_until(
        lambda: "snoozed until" in (page.js("document.getElementById('reasons').textContent") or ""),
        timeout_s=20,
        what="the snooze to show in the verdict",
    )
    snoozed = page.js("document.getElementById('countdown').textContent")
    assert _seconds(snoozed) > 3.9 * 3600, snoozed

    page.js("document.getElementById('snooze-off').click(); true")
    wait_until(
        lambda: (
            "idle for" in (page.js("document.getElementById('reason').textContent") or "")
            and _seconds(page.js("document.getElementById('countdown').textContent") or "99:00:00") <= 600
        ),
        timeout_s=20,
        what="the end of the snooze to show",
    )


def test_page_needs_a_login(server: LocalServer) -> None:
    answer = httpx.get(f"{server.url}lamplighter/", timeout=10)
    assert answer.status_code in (302, 403) and "snooze" not in answer.text.lower()
    headers = {"Authorization": f"token {server.token}"}
    assert (
        httpx.post(
            f"{server.url}lamplighter/snooze", data={"hours": "2"}, headers=headers, timeout=10
        ).status_code
        == 400
    )


def test_rendering_escapes_every_value() -> None:
    status = {
        "verdict": "keep",
        "reason": "<b>x</b>",
        "reasons": ["<script>alert(1)</script>"],
        "stop_at": None,
    }
    from datetime import datetime, timezone

    html = render_page(status, [0, 1, 2], xsrf='"q', base="/", now=datetime.now(timezone.utc))
    assert "<script>alert" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "&quot;q" in html
    assert sparkline_svg([]).startswith("<svg") and "points=" in sparkline_svg([1.0, 0.0])
