"""The SQLite journal: every decision that changed, every action and its outcome, and the agent's memory.

All SQL of the project lives here, parameterised. The database runs in WAL mode so ``lamplighter
journal`` can read while an agent writes. Timestamps are stored as UTC ISO-8601 text. sqlite3
errors are translated here and nowhere else: a journal that cannot be opened (not SQLite, a folder
that cannot be made, a newer schema) is a bad ``--journal`` setting, :class:`ConfigError` (exit 2);
one that fails later, while reading or writing, is :class:`JournalError`. What is written goes
through :func:`~lamplighter.redaction.redact` first.

The journal also keeps one agent per target: :meth:`Journal.claim` holds an ``flock`` on a lock file
next to the database, named by a hash of the target, for as long as the agent runs. The kernel drops
the lock when the process ends, however it ends, so a crashed agent never blocks its successor.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from lamplighter.errors import ConfigError, JournalError
from lamplighter.model import Decision, Memory, parse_timestamp
from lamplighter.redaction import redact, redact_data
from lamplighter.server_url import server_key

__all__ = ["Journal", "JournalEvent"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    target TEXT NOT NULL,
    kind TEXT NOT NULL,
    verdict TEXT,
    summary TEXT NOT NULL,
    idle_since TEXT,
    stop_at TEXT,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS memory (
    target TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class JournalEvent:
    """One journal row. ``kind`` is decision, action, agent, snooze or onstart."""

    id: int
    at: datetime
    target: str
    kind: str
    verdict: str | None
    summary: str
    idle_since: datetime | None
    stop_at: datetime | None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "target": self.target,
            "kind": self.kind,
            "verdict": self.verdict,
            "summary": self.summary,
            "idle_since": self.idle_since.isoformat() if self.idle_since else None,
            "stop_at": self.stop_at.isoformat() if self.stop_at else None,
            "detail": self.detail,
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


class Journal:
    """An open journal database. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] > SCHEMA_VERSION:
                self._db.close()
                raise ConfigError(f"journal {path}: written by a newer lamplighter (schema {row[0]})")
        except sqlite3.Error as exc:
            self._close_quietly()
            raise ConfigError(f"journal {path}: cannot open ({exc}); check --journal") from exc
        except OSError as exc:
            raise ConfigError(f"journal {path}: cannot create ({exc.strerror}); check --journal") from exc

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    @classmethod
    def in_memory(cls) -> Journal:
        """A scratch journal that lives and dies with this process (``status`` acts through one)."""
        return cls(Path(":memory:"))

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def claim(self, target: str) -> Iterator[None]:
        """Be the one agent watching ``target`` with this journal while the block runs.

        Raises :class:`ConfigError` (exit 2), naming the holder's pid, when another agent holds the
        claim: two agents would both stop the app and journal it twice.
        """
        digest = hashlib.sha256(server_key(target).encode()).hexdigest()[:16]
        lock_path = self.path.with_name(f"{self.path.name}.{digest}.lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # Like a journal that cannot be opened: a bad --journal setting, found at start.
            raise ConfigError(f"journal {self.path}: cannot create {lock_path} ({exc.strerror})") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise ConfigError(
                        f"journal {self.path}: cannot lock {lock_path} ({exc.strerror})"
                    ) from exc
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise ConfigError(
                    f"{target} is already watched by pid {holder} with the journal {self.path}; "
                    "stop that agent first"
                ) from None
            # The pid is for the message above; the lock itself is the flock, not the file's content.
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    @contextmanager
    def _sql(self, what: str) -> Iterator[sqlite3.Connection]:
        try:
            yield self._db
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: cannot {what} ({exc})") from exc

    # -- writing ------------------------------------------------------------------------------

    def record(
        self,
        target: str,
        kind: str,
        summary: str,
        *,
        at: datetime,
        verdict: str | None = None,
        idle_since: datetime | None = None,
        stop_at: datetime | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._sql("record an event") as db:
            db.execute(
                "INSERT INTO events (at, target, kind, verdict, summary, idle_since, stop_at, detail)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    at.isoformat(),
                    redact(target),
                    kind,
                    verdict,
                    redact(summary),
                    _iso(idle_since),
                    _iso(stop_at),
                    json.dumps(redact_data(detail or {}), sort_keys=True, default=str),
                ),
            )

    def record_decision(self, target: str, decision: Decision, *, at: datetime) -> None:
        self.record(
            target,
            "decision",
            decision.reason,
            at=at,
            verdict=decision.action.value,
            idle_since=decision.idle_since,
            stop_at=decision.stop_at,
            detail={
                "reasons": list(decision.reasons),
                "cull_kernels": list(decision.cull_kernels),
                "cull_terminals": list(decision.cull_terminals),
                "next_check_at": decision.next_check_at.isoformat(),
            },
        )

    def record_stop(
        self,
        target: str,
        decision: Decision,
        *,
        summary: str,
        outcome: str,
        stopper: str,
        decided_at: datetime,
        done_at: datetime | None,
    ) -> None:
        """A stop (or delete) acted on: by what, why, and two figures against the deadline: when it was
        decided (``decided_after_s``) and, once known, when the target was verified gone (``overshoot_s``;
        ``done_at`` None for a stop only requested)."""

        def after(moment: datetime | None) -> float | None:
            if moment is None or decision.stop_at is None:
                return None
            return (moment - decision.stop_at).total_seconds()

        detail: dict[str, Any] = {
            "stopper": stopper,
            "reasons": list(decision.reasons),
            "decided_at": decided_at.isoformat(),
            "decided_after_s": after(decided_at),
        }
        if done_at is not None:
            detail["overshoot_s"] = after(done_at)
        self.record(
            target,
            "action",
            summary,
            at=done_at or decided_at,
            verdict=outcome,
            idle_since=decision.idle_since,
            stop_at=decision.stop_at,
            detail=detail,
        )

    def save_memory(self, target: str, memory: Memory, *, at: datetime) -> None:
        with self._sql("save the agent's memory") as db:
            db.execute(
                "INSERT INTO memory (target, data, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(target) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (target, memory.to_json(), at.isoformat()),
            )

    # -- reading ------------------------------------------------------------------------------

    def load_memory(self, target: str) -> Memory:
        with self._sql("read the agent's memory") as db:
            row = db.execute("SELECT data FROM memory WHERE target = ?", (target,)).fetchone()
        return Memory.from_json(row[0]) if row else Memory()

    def events(
        self,
        *,
        since: datetime | None = None,
        target: str | None = None,
        kind: str | None = None,
        limit: int = 1000,
    ) -> list[JournalEvent]:
        """Events oldest first; ``limit`` keeps the newest ones."""
        clauses, params = [], []
        if since is not None:
            clauses.append("at >= ?")
            params.append(since.isoformat())
        if target is not None:
            clauses.append("target = ?")
            params.append(target)
        if kind is not None:
            clauses.append("kind = ?")
            params.append(kind)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._sql("read events") as db:
            rows = db.execute(
                "SELECT id, at, target, kind, verdict, summary, idle_since, stop_at, detail FROM "
                f"(SELECT * FROM events {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
                (*params, limit),
            ).fetchall()
        return [
            JournalEvent(
                id=row[0],
                at=parse_timestamp(row[1]),
                target=row[2],
                kind=row[3],
                verdict=row[4],
                summary=row[5],
                idle_since=parse_timestamp(row[6]) if row[6] else None,
                stop_at=parse_timestamp(row[7]) if row[7] else None,
                detail=_load_detail(row[8]),
            )
            for row in rows
        ]


def _load_detail(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
