"""The two AWS services the fleet check talks to besides SageMaker: SNS ``Publish`` and CloudWatch Logs'
``FilterLogEvents``, on one free 127.0.0.1 port for real boto3 clients (``endpoint_url``, or the
``AWS_ENDPOINT_URL_SNS`` / ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` variables of :meth:`SideServices.env`).

SNS speaks the query protocol botocore uses for it (a form-encoded ``POST /`` with ``Action=Publish``,
an XML answer, errors as ``<ErrorResponse>``); a topic must be made first (:meth:`create_topic`), as the
real ``Publish`` answers ``NotFound`` for an unknown topic. CloudWatch Logs speaks JSON 1.1 (``X-Amz-
Target: Logs_20140328.FilterLogEvents``, millisecond timestamps, ``nextToken`` pages).

Log shipping is SageMaker's: every app of the :class:`~tests.emulators.sagemaker.SageMakerEmulator` has
a container log, ``app_container.log`` beside its metadata file (:func:`app_log`), which SageMaker ships
to the log group ``/aws/sagemaker/studio``, stream ``{domain}/{space or user}/{AppType}/{AppName}``; every
notebook instance has ``/var/log/jupyter.log`` (:func:`notebook_instance_log`, outside its Jupyter root),
shipped to ``/aws/sagemaker/NotebookInstances``, stream ``{NotebookInstanceName}/jupyter.log``. Lines
are ingested when a query comes (each new line is stamped with the log file's modification time, about
when it was written), so a test needs no shipping thread. A log group exists once a stream of it has
lines; before that ``FilterLogEvents`` answers ``ResourceNotFoundException``. ``filterPattern`` takes what
the fleet check sends: terms and quoted phrases that must all occur (an empty pattern matches every
event); anything else is refused, not guessed at.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from tests.emulators.notebook_instances import EmulatedNotebookInstance
from tests.emulators.sagemaker import EmulatedApp, SageMakerEmulator

__all__ = [
    "NOTEBOOK_INSTANCE_LOG_GROUP",
    "STUDIO_LOG_GROUP",
    "Published",
    "SideServices",
    "app_log",
    "notebook_instance_log",
]

STUDIO_LOG_GROUP = "/aws/sagemaker/studio"
NOTEBOOK_INSTANCE_LOG_GROUP = "/aws/sagemaker/NotebookInstances"
_TERMS = re.compile(r'"([^"]*)"|(\S+)')


def app_log(app: EmulatedApp) -> Path:
    """The app's container log (``/var/log/apps/app_container.log`` in a real app)."""
    return app.metadata_path.parent / "app_container.log"


def notebook_instance_log(instance: EmulatedNotebookInstance) -> Path:
    """The instance's ``/var/log/jupyter.log``: beside its Jupyter root (no instance name has a dot)."""
    return instance.workdir.parent / f"{instance.name}.var-log" / "jupyter.log"


@dataclass(frozen=True)
class Published:
    """One SNS message as it was published."""

    topic_arn: str
    message: str
    subject: str | None


@dataclass
class _Stream:
    offset: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)


class _Error(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    side: SideServices


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target", "")
        if target.startswith("Logs_20140328."):
            status, data, kind = self.server.side._logs(target.partition(".")[2], body)
        else:
            status, data, kind = self.server.side._sns(body)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("x-amzn-RequestId", secrets.token_hex(8))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class SideServices:
    """SNS and CloudWatch Logs for the apps of ``sm``: ``with SideServices(sm) as side:``."""

    def __init__(self, sm: SageMakerEmulator, *, page_size: int = 10_000) -> None:
        self.sm = sm
        self.page_size = page_size
        self.published: list[Published] = []
        self.calls: list[str] = []
        self.deny_logs = False  # FilterLogEvents answers AccessDeniedException (a role without logs:)
        self._topics: set[str] = set()
        self._streams: dict[tuple[str, str], _Stream] = {}  # (log group, stream name)
        self._lock = threading.Lock()
        self._http = _Server(("127.0.0.1", 0), _Handler)
        self._http.side = self
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def endpoint_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def env(self) -> dict[str, str]:
        """The variables that send boto3's SNS and CloudWatch Logs clients here."""
        return {
            "AWS_ENDPOINT_URL_SNS": self.endpoint_url,
            "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": self.endpoint_url,
        }

    def __enter__(self) -> SideServices:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()

    def create_topic(self, name: str) -> str:
        arn = f"arn:aws:sns:{self.sm.region}:{self.sm.account_id}:{name}"
        with self._lock:
            self._topics.add(arn)
        return arn

    # -- SNS ----------------------------------------------------------------------------------

    def _sns(self, body: bytes) -> tuple[int, bytes, str]:
        form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
        request_id = secrets.token_hex(8)
        try:
            action = form.get("Action")
            with self._lock:
                self.calls.append(f"sns:{action}")
            if action != "Publish":
                raise _Error("InvalidAction", f"{action} is not emulated")
            topic = form.get("TopicArn", "")
            message = form.get("Message")
            subject = form.get("Subject")
            if message is None or message == "":
                raise _Error("InvalidParameter", "Invalid parameter: Empty message")
            if len(message.encode()) > 262_144:
                raise _Error("InvalidParameter", "Invalid parameter: Message too long")
            if subject is not None and (len(subject) > 100 or not subject.isascii() or "\n" in subject):
                raise _Error("InvalidParameter", "Invalid parameter: Subject")
            with self._lock:
                if topic not in self._topics:
                    raise _Error("NotFound", "Topic does not exist", 404)
                self.published.append(Published(topic, message, subject))
        except _Error as exc:
            xml = (
                "<ErrorResponse><Error><Type>Sender</Type>"
                f"<Code>{escape(exc.code)}</Code><Message>{escape(exc.message)}</Message></Error>"
                f"<RequestId>{request_id}</RequestId></ErrorResponse>"
            )
            return exc.status, xml.encode(), "text/xml"
        xml = (
            '<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            f"<PublishResult><MessageId>{secrets.token_hex(16)}</MessageId></PublishResult>"
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></PublishResponse>"
        )
        return 200, xml.encode(), "text/xml"

    # -- CloudWatch Logs ----------------------------------------------------------------------

    def _logs(self, operation: str, body: bytes) -> tuple[int, bytes, str]:
        kind = "application/x-amz-json-1.1"
        try:
            with self._lock:
                self.calls.append(f"logs:{operation}")
            if operation != "FilterLogEvents":
                raise _Error("UnknownOperationException", f"{operation} is not emulated")
            if self.deny_logs:
                raise _Error(
                    "AccessDeniedException", "User is not authorized to perform: logs:FilterLogEvents"
                )
            params = json.loads(body or b"{}")
            return 200, json.dumps(self._filter_log_events(params)).encode(), kind
        except _Error as exc:
            return exc.status, json.dumps({"__type": exc.code, "message": exc.message}).encode(), kind

    def _ship(self) -> None:
        """Ingest the new lines of every app's and instance's log (SageMaker's shipping, done lazily)."""
        now_ms = int(time.time() * 1000)
        logs = [
            (STUDIO_LOG_GROUP, f"{app.domain_id}/{app.owner}/{app.app_type}/{app.app_name}", app_log(app))
            for app in self.sm.iter_apps()
        ]
        logs += [
            (NOTEBOOK_INSTANCE_LOG_GROUP, f"{instance.name}/jupyter.log", notebook_instance_log(instance))
            for instance in self.sm.iter_notebook_instances()
        ]
        for group, name, path in logs:
            if not path.exists():
                continue
            written_ms = min(now_ms, int(path.stat().st_mtime * 1000))
            stream = self._streams.setdefault((group, name), _Stream())
            with path.open("rb") as handle:
                handle.seek(stream.offset)
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]  # a half-written line waits for its end
            stream.offset += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                if line.strip():
                    stream.events.append(
                        {
                            "logStreamName": name,
                            "timestamp": written_ms,
                            "ingestionTime": now_ms,
                            "message": line,
                            "eventId": secrets.token_hex(16),
                        }
                    )

    def _filter_log_events(self, params: dict[str, Any]) -> dict[str, Any]:
        group = params.get("logGroupName") or params.get("logGroupIdentifier")
        if not isinstance(group, str) or not group:
            raise _Error("InvalidParameterException", "logGroupName or logGroupIdentifier is required")
        if params.get("logStreamNames") and params.get("logStreamNamePrefix"):
            raise _Error(
                "InvalidParameterException", "logStreamNames and logStreamNamePrefix cannot both be given"
            )
        limit = int(params.get("limit") or self.page_size)
        if not 1 <= limit <= 10_000:
            raise _Error("InvalidParameterException", "limit must be between 1 and 10000")
        terms = _parse_pattern(str(params.get("filterPattern") or ""))
        with self._lock:
            self._ship()
            streams = {name: stream for (of, name), stream in self._streams.items() if of == group}
            if not any(stream.events for stream in streams.values()):
                raise _Error("ResourceNotFoundException", "The specified log group does not exist.")
            names = params.get("logStreamNames")
            prefix = str(params.get("logStreamNamePrefix") or "")
            start = int(params.get("startTime") or 0)
            end = int(params.get("endTime") or 2**62)
            events = sorted(
                (
                    event
                    for name, stream in streams.items()
                    if (name in names if names else name.startswith(prefix))
                    for event in stream.events
                    if start <= event["timestamp"] <= end and all(t in event["message"] for t in terms)
                ),
                key=lambda e: (e["timestamp"], e["logStreamName"]),
            )
        offset = 0
        if params.get("nextToken"):
            try:
                offset = int(json.loads(base64.b64decode(params["nextToken"]))["offset"])
            except (ValueError, KeyError, TypeError, binascii.Error):
                raise _Error("InvalidParameterException", "The specified nextToken is invalid.") from None
        out: dict[str, Any] = {"events": events[offset : offset + limit], "searchedLogStreams": []}
        if offset + limit < len(events):
            out["nextToken"] = base64.b64encode(json.dumps({"offset": offset + limit}).encode()).decode()
        return out


def _parse_pattern(pattern: str) -> list[str]:
    """Terms and quoted phrases (CloudWatch's simplest filter patterns); others are refused."""
    if any(ch in pattern for ch in "{}[]?*") or re.search(r"(^|\s)[-+]", pattern):
        raise _Error("InvalidParameterException", f"filterPattern {pattern!r} is not emulated")
    return [quoted or bare for quoted, bare in _TERMS.findall(pattern)]
