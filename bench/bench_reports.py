"""Benchmark of the hub service's reports: what one check of one server costs the service, a report against a probe.

Measured in one run, on loopback:
  - the anchor: one direct probe of a real local Jupyter server (``JupyterServer.snapshot``: what the
    service does at each check of a server without the extension);
  - one report received by the service's endpoint over TCP (``POST {prefix}api/report``, client and
    service on this machine), and the service's own share of it (the route alone: parse, the token's
    owner from the cache, the book), for a body describing three kernels and a terminal;
  - one check of a reporting server by the service (its probe reads the fresh report: no request).

Prints medians with the spread (min-max) and each figure's ratio to the anchor, and what the medians
mean for a hub of 10,000 servers reporting once a minute (from the route's median). The token check with the hub is left out:
it is cached for 5 minutes per token, one hub request per server per 5 minutes.

Usage: .venv/bin/python bench/bench_reports.py [--n 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from lamplighter.hub.reports import ReportBook, ReportedProbe, snapshot_to_dict
from lamplighter.hub.service import HubService, ServiceHooks, _Request
from lamplighter.localserver import start_local_server
from lamplighter.platforms.jupyter import JupyterServer
from lamplighter.remote.connection import Connection
from lamplighter.settings import load_settings
from lamplighter.views.metrics import Metrics


class _CachedOwners:
    """The token's owner as the cache holds it after the first report (the hub is not asked again)."""

    lookups = 0

    async def owner(self, token: str) -> dict[str, Any] | None:
        return {"kind": "user", "name": "bench", "scopes": ["access:servers!server=bench/"]}


def _spread(samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return f"median {statistics.median(ms):8.3f} ms  (min {min(ms):.3f}, max {max(ms):.3f})"


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = start_local_server(Path(tmp) / "server")
        try:
            async with Connection(server.url, token=server.token) as conn:
                direct = JupyterServer(conn)
                snapshot = await direct.snapshot()
                probes = []
                for _ in range(n):
                    started = time.perf_counter()
                    await direct.snapshot()
                    probes.append(time.perf_counter() - started)

            settings = load_settings({"service_url": "http://127.0.0.1:0"}, env={})
            book = ReportBook()
            service = HubService(
                settings,
                ServiceHooks(book, Metrics()),
                _CachedOwners(),  # type: ignore[arg-type]
                own_token="own",
            )
            url = await service.start()
            now = datetime.now(timezone.utc).isoformat()
            body = {
                "user": "bench",
                "server_name": "",
                "interval_s": 60,
                "decision": {"verdict": "keep", "reason": "in use", "reasons": ["in use"], "stop_at": now},
                "snapshot": snapshot_to_dict(snapshot),
            }
            kernel = {"name": "python3", "execution_state": "idle", "last_activity": now, "connections": 1}
            body["snapshot"]["kernels"] = [{"id": f"k{i}", "path": f"n{i}.ipynb", **kernel} for i in range(3)]
            body["snapshot"]["terminals"] = [{"name": "1", "last_activity": now}]
            raw = json.dumps(body).encode()
            reports = []
            async with httpx.AsyncClient(headers={"Authorization": "token t"}) as client:
                for _ in range(n):
                    started = time.perf_counter()
                    answer = await client.post(url + "api/report", content=raw)
                    reports.append(time.perf_counter() - started)
                    assert answer.status_code == 202, answer.text
            routed = []
            request = _Request("POST", "/api/report", {"authorization": "token t"}, raw)
            for _ in range(n):
                started = time.perf_counter()
                answer_ = await service.route(request)
                routed.append(time.perf_counter() - started)
                assert answer_.status == 202
            await service.close()

            reader = ReportedProbe(direct, book, ("bench", ""), target="t", started=None)
            reads = []
            for _ in range(n):
                started = time.perf_counter()
                await reader.snapshot()
                reads.append(time.perf_counter() - started)
            assert reader.direct_probes == 0
        finally:
            server.process.terminate()
            server.process.wait(30)

    anchor = statistics.median(probes)
    print(f"report body: {len(raw)} bytes; {n} samples each")
    print(f"anchor: direct probe of a local server  {_spread(probes)}")
    for label, samples in (
        ("report received (TCP POST)", reports),
        ("  of which the service's route", routed),
        ("check of a reporting server", reads),
    ):
        ratio = statistics.median(samples) / anchor
        print(f"{label:<40}{_spread(samples)}  = {ratio:.2g} x the probe")
    per_s = 10_000 / 60
    load = per_s * statistics.median(routed)
    print(
        f"10,000 servers reporting once a minute: {per_s:.0f} reports/s, {load * 100:.1f} % of one core for "
        "the service's route (plus reading the TCP request), no request to any server"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="samples of each figure")
    asyncio.run(main(parser.parse_args().n))
