"""The hub service's own HTTP endpoint: reports from the servers in, the status page and metrics out.

Listens on ``service_url`` (a hub-managed service with a ``url`` gets ``JUPYTERHUB_SERVICE_URL``;
the hub then routes ``/services/NAME/`` to it) under ``service_prefix``:

- ``POST {prefix}api/report``: a server's report (:mod:`lamplighter.hub.reports`), with the
  server's own token; 202 accepted, 400 not a report, 401 no token, 403 not this token's server.
- ``GET {prefix}``: the status page; ``GET {prefix}api/status``: the same as JSON;
  ``GET {prefix}metrics``: Prometheus (:class:`~lamplighter.views.metrics.Metrics`, one ``target``
  label per server). These three need the service's own token, a hub admin's, or one with the
  unfiltered scope ``read:servers`` (a Prometheus service's role), as ``Authorization: token T`` or
  ``Bearer T`` (what Prometheus sends).

Nothing here is on a user's route, so none of it is anybody's activity in the hub; and nothing here
asks a server anything: the page is drawn from the agents' last verdicts.

A small asyncio HTTP/1.1 responder (one request per connection), like ``watch --metrics-port``'s:
the service runs where the hub runs, which need not have a web framework installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from lamplighter.errors import ConfigError, RemoteError
from lamplighter.hub.reports import (
    MAX_REPORT_BYTES,
    BadReport,
    LookBeforeStop,
    ReportBook,
    ReportedProbe,
    TokenOwners,
    may_report,
    parse_report,
)
from lamplighter.hub.views import ServerRow, render_page, rows_json
from lamplighter.journal import Journal
from lamplighter.model import Decision
from lamplighter.platforms.base import Probe
from lamplighter.platforms.jupyterhub import HubServer
from lamplighter.settings import Settings
from lamplighter.signals import Signal
from lamplighter.views.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from lamplighter.agent import Agent

__all__ = ["HubService", "ServiceHooks", "check_service_url", "serving"]

logger = logging.getLogger(__name__)

_HEAD_TIMEOUT_S = 10.0


@dataclass
class _Watched:
    server: HubServer
    probe: ReportedProbe
    decision: Decision | None = None


class ServiceHooks:
    """The fleet's hooks (:class:`~lamplighter.hub.hooks.FleetHooks`): each server's probe reads its
    reports first, its agent is metered, and its latest verdict is kept for the page."""

    def __init__(self, book: ReportBook, metrics: Metrics) -> None:
        self.book = book
        self.metrics = metrics
        self.watched: dict[str, _Watched] = {}

    def probe_for(self, server: HubServer, target: str, direct: Probe) -> Probe:
        probe = ReportedProbe(
            direct, self.book, (server.user, server.name), target=target, started=server.started
        )
        self.watched[target] = _Watched(server, probe)
        return probe

    def instrument(
        self, server: HubServer, target: str, probe: Probe
    ) -> tuple[Probe, tuple[Signal, ...], Callable[[Decision], None]]:
        watched = self.watched[target]
        metered, _, seen = self.metrics.instrument(probe, kind="hub")

        def on_decision(decision: Decision) -> None:
            watched.decision = decision
            seen(decision)

        return metered, (LookBeforeStop(watched.probe),), on_decision

    def watching(self, server: HubServer, target: str, agent: Agent) -> None:
        self.book.listen((server.user, server.name), agent.wake)

    def ended(self, server: HubServer, target: str) -> None:
        self.book.forget((server.user, server.name))
        self.metrics.forget(target)
        self.watched.pop(target, None)

    def rows(self) -> list[ServerRow]:
        return [
            ServerRow(
                server=w.server,
                target=target,
                decision=w.decision,
                source="report" if w.probe.last is not None else "probe",
                direct_probes=w.probe.direct_probes,
                reports=w.probe.reported,
            )
            for target, w in sorted(self.watched.items())
        ]


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    kind: str = "application/json"

    @classmethod
    def error(cls, status: int, message: str) -> _Answer:
        return cls(status, json.dumps({"message": message}).encode())


_STATUS_TEXT = {200: "OK", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden"}
_STATUS_TEXT |= {404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large", 502: "Bad Gateway"}


class HubService:
    """The listener; :attr:`url` is where it is bound (port 0 becomes the port the kernel gave)."""

    def __init__(
        self,
        settings: Settings,
        hooks: ServiceHooks,
        owners: TokenOwners,
        *,
        own_token: str,
        clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        prefix = settings.service_prefix
        self.prefix = "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"
        self._listen = _listen_address(settings.service_url or "")
        self.hooks = hooks
        self._owners = owners
        self._own_token = own_token
        self._clock = clock
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> str:
        host, port = self._listen
        self._server = await asyncio.start_server(self._answer, host, port, limit=MAX_REPORT_BYTES)
        bound = self._server.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in str(bound[0]) else str(bound[0])
        self.url = f"http://{shown}:{bound[1]}{self.prefix}"
        logger.info("reports, status page and metrics at %s", self.url)
        return self.url

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- HTTP ----------------------------------------------------------------------------------

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await _read_request(reader)
            answer = _Answer.error(413, "too large") if request is None else await self.route(request)
            reason = _STATUS_TEXT.get(answer.status, "")
            writer.write(
                f"HTTP/1.1 {answer.status} {reason}\r\nContent-Type: {answer.kind}\r\n"
                f"Content-Length: {len(answer.body)}\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n".encode()
                + answer.body
            )
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
            ValueError,
        ):
            pass
        except Exception:
            logger.exception("the service's endpoint failed on a request")
        finally:
            writer.close()

    async def route(self, request: _Request) -> _Answer:
        if not request.path.startswith(self.prefix):
            return _Answer.error(404, f"lamplighter serves under {self.prefix}")
        rest = request.path[len(self.prefix) :]
        if rest == "api/report":
            if request.method != "POST":
                return _Answer.error(405, "POST a report here")
            return await self._report(request)
        pages: dict[str, Callable[[], _Answer]] = {
            "": self._page,
            "api/status": self._status,
            "metrics": self._metrics,
        }
        view = pages.get(rest)
        if view is None:
            return _Answer.error(404, "no such page")
        if request.method != "GET":
            return _Answer.error(405, "GET only")
        refused = await self._admin_only(request)
        return refused if refused is not None else view()

    async def _report(self, request: _Request) -> _Answer:
        book = self.hooks.book
        token = _token(request)
        if token is None:
            return _Answer.error(401, "a report needs the server's own token (Authorization: token …)")
        try:
            report = parse_report(request.body, received=book.now(), seq=book.next_seq())
        except BadReport as exc:
            return _Answer.error(400, f"not a report: {exc}")
        try:
            owner = await self._owners.owner(token)
        except RemoteError as exc:
            return _Answer.error(502, f"cannot ask the hub who the token is: {exc}")
        refused = "the hub does not know the token" if owner is None else may_report(owner, *report.key)
        if refused is not None:
            logger.warning("report for %s/%s refused: %s", report.user, report.server_name, refused)
            return _Answer.error(403, f"refused: {refused}")
        book.add(report)
        body = {"accepted": True, "fresh_for_s": round(report.fresh_until - report.received, 3)}
        return _Answer(202, json.dumps(body).encode())

    async def _admin_only(self, request: _Request) -> _Answer | None:
        token = _token(request)
        if token is None:
            return _Answer.error(401, "a token that may read every server is needed")
        if hmac.compare_digest(token.encode(), self._own_token.encode()):
            return None
        try:
            owner = await self._owners.owner(token)
        except RemoteError as exc:
            return _Answer.error(502, f"cannot ask the hub who the token is: {exc}")
        if owner is not None and (owner.get("admin") or "read:servers" in (owner.get("scopes") or ())):
            return None  # what the hub would show this token of every server anyway
        return _Answer.error(403, "only tokens that may read every server (read:servers), and hub admins")

    def _page(self) -> _Answer:
        page = render_page(self.hooks.rows(), now=self._clock(), prefix=self.prefix)
        return _Answer(200, page.encode(), "text/html; charset=utf-8")

    def _status(self) -> _Answer:
        return _Answer(200, json.dumps(rows_json(self.hooks.rows()), indent=2).encode())

    def _metrics(self) -> _Answer:
        return _Answer(200, self.hooks.metrics.render(), CONTENT_TYPE)


def _token(request: _Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    return None


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    """One request; ``None`` when its body is over the limit."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=_HEAD_TIMEOUT_S)
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length") or 0)
    if length > MAX_REPORT_BYTES:
        return None
    body = await asyncio.wait_for(reader.readexactly(length), timeout=_HEAD_TIMEOUT_S) if length else b""
    return _Request(method.upper(), target.split("?", 1)[0], headers, body)


def check_service_url(settings: Settings) -> None:
    """A bad ``service_url`` is a configuration error found before anything starts."""
    if settings.service_url:
        _listen_address(settings.service_url)


def _listen_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"service_url: expected http://HOST:PORT, got {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"service_url: bad port in {url!r}") from None
    return parts.hostname, port if port is not None else 80


@contextlib.asynccontextmanager
async def serving(
    settings: Settings,
    journal: Journal,
    *,
    hub_url: str,
    token: str,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[HubService | None]:
    """The service's endpoint while the block runs; ``None`` (nothing listens) without ``service_url``."""
    if not settings.service_url:
        yield None
        return
    hooks = ServiceHooks(ReportBook(), Metrics(journal))
    owners = TokenOwners(
        hub_url, verify_tls=settings.verify_tls, timeout_s=settings.request_timeout.total_seconds(), tls=tls
    )
    service = HubService(settings, hooks, owners, own_token=token)
    await service.start()
    try:
        yield service
    finally:
        await service.close()
