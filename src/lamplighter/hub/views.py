"""The hub service's status page and its JSON: every watched server with its verdict, reasons and planned stop.

Rendered from what the service's agents last decided: drawing the page asks no server anything
(no probe, no activity anywhere). Every value is escaped; the page reloads itself every 10 s.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lamplighter.model import Decision, format_duration, format_time
from lamplighter.platforms.jupyterhub import HubServer

__all__ = ["ServerRow", "render_page", "rows_json"]


@dataclass(frozen=True)
class ServerRow:
    """One watched server: its latest verdict, and where the service's view came from."""

    server: HubServer
    target: str
    decision: Decision | None
    source: str  # "report" (from the extension inside it) or "probe" (the service asked the server)
    direct_probes: int
    reports: int


def rows_json(rows: Iterable[ServerRow]) -> dict[str, Any]:
    return {
        "servers": [
            {
                "user": row.server.user,
                "server": row.server.name,
                "path": row.server.path,
                "source": row.source,
                "direct_probes": row.direct_probes,
                "reports": row.reports,
                **(
                    row.decision.to_dict()
                    if row.decision
                    else {"verdict": None, "reason": "no check yet", "reasons": []}
                ),
            }
            for row in rows
        ]
    }


_COLOURS = {"keep": "#1a7f37", "stop": "#cf222e", "skip": "#9a6700"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lamplighter hub</title>
<meta http-equiv="refresh" content="10">
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1f2328; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; vertical-align: top; padding: .4em .8em; border-bottom: 1px solid #d0d7de; }}
.verdict {{ font-weight: 600; }}
ul {{ margin: .2em 0 0 1em; padding: 0; color: #59636e; }}
</style></head><body>
<h1>lamplighter hub</h1>
<p>{count} server(s) watched at {now}. Looking at this page is nobody's activity.</p>
<table id="servers"><thead><tr><th>server</th><th>verdict</th><th>planned stop</th><th>why</th>
<th>seen by</th></tr></thead><tbody>
{rows}
</tbody></table>
<p><a href="{metrics}">metrics</a> · <a href="{status}">JSON</a></p>
</body></html>
"""


def render_page(rows: Iterable[ServerRow], *, now: datetime, prefix: str) -> str:
    lines = []
    listed = list(rows)
    for row in listed:
        decision = row.decision
        verdict = decision.action.value if decision else "none"
        stop = ""
        if decision is not None and decision.stop_at is not None:
            stop = f"{format_time(decision.stop_at, now)} (in {format_duration(decision.stop_at - now)})"
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in (decision.reasons[1:] if decision else ()))
        seen = "its own report" if row.source == "report" else "the service's probe"
        lines.append(
            f'<tr data-server="{html.escape(row.server.label, quote=True)}">'
            f"<td>{html.escape(row.server.label)}</td>"
            f'<td class="verdict" style="color:{_COLOURS.get(verdict, "#59636e")}">{verdict.upper()}</td>'
            f"<td>{html.escape(stop or 'none planned')}</td>"
            f"<td>{html.escape(decision.reason if decision else 'no check yet')}<ul>{reasons}</ul></td>"
            f"<td>{html.escape(seen)}</td></tr>"
        )
    return _PAGE.format(
        count=len(listed),
        now=html.escape(format_time(now, now)),
        rows="\n".join(lines),
        metrics=html.escape(f"{prefix}metrics", quote=True),
        status=html.escape(f"{prefix}api/status", quote=True),
    )
