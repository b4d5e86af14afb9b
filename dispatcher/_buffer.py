"""The local buffer: a bounded, ordered queue of signal lines in SQLite (WAL), shared by every process of a site.

Tables::

    signals  (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT)   -- compact JSON lines, oldest first
    state    (key TEXT PRIMARY KEY, value TEXT)                    -- 'site', 'dropped' (not yet reported)
    inflight (id = 1, batch_id, last_seq, head)                    -- the batch being sent, if any

Invariants that keep it cheap and exact:

- rows are only ever deleted as a *prefix* (delivered batch, oldest dropped),
  so the row count is ``max(seq) - min(seq) + 1``;
- the batch in flight is written down before its first attempt and resumed
  after a restart with the same ``batch_id`` and the same rows (those of them
  still buffered), so the gateway's dedupe by ``batch_id`` makes delivery
  exactly-once;
- ``head`` holds the signals the dispatcher itself put in front of the batch
  (the ``dropped`` report): they are not buffer rows, so overflow cannot drop a
  report of overflow.

Every write is one ``BEGIN IMMEDIATE`` transaction, so several processes
appending to one file stay consistent; only one of them sends (the one
holding :func:`sender_lease`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from protocol.lease import FileLease

_SCHEMA = """
CREATE TABLE IF NOT EXISTS signals (seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inflight (
    id INTEGER PRIMARY KEY CHECK (id = 1), batch_id TEXT NOT NULL, last_seq INTEGER NOT NULL, head TEXT NOT NULL
);
INSERT OR IGNORE INTO state (key, value) VALUES ('dropped', '0');
"""


@dataclass(frozen=True)
class Batch:
    """The batch in flight: its id and lines (reports first, then buffer rows up to ``last_seq``, in order)."""

    batch_id: str
    lines: list[str]
    last_seq: int
    resumed: bool


class SignalBuffer:
    """Bounded, persistent, ordered signal lines for one site (thread-safe; several processes may share the file)."""

    def __init__(self, path: str | os.PathLike[str], site: str, max_buffered: int, busy_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.max_buffered = max_buffered
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._transaction() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                row = db.execute("SELECT value FROM state WHERE key = 'site'").fetchone()
                if row is None:
                    db.execute("INSERT INTO state (key, value) VALUES ('site', ?)", (site,))
                elif row[0] != site:
                    raise ValueError(f"buffer_path: this buffer belongs to site {row[0]!r}, not {site!r}")
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @staticmethod
    def _bounds(db: sqlite3.Connection) -> tuple[int, int] | None:
        low, high = db.execute("SELECT min(seq), max(seq) FROM signals").fetchone()
        return None if low is None else (low, high)

    def append(self, line: str) -> int:
        """Add one line at the end; when over ``max_buffered``, drop the oldest rows. Returns how many were dropped."""
        with self._transaction() as db:
            db.execute("INSERT INTO signals (body) VALUES (?)", (line,))
            low, high = self._bounds(db) or (0, -1)
            excess = high - low + 1 - self.max_buffered
            if excess > 0:
                db.execute("DELETE FROM signals WHERE seq < ?", (low + excess,))
                db.execute("UPDATE state SET value = CAST(value AS INTEGER) + ? WHERE key = 'dropped'", (excess,))
            return max(0, excess)

    def size(self) -> int:
        """Signals buffered, the batch in flight included (its ``head`` reports excluded)."""
        with self._lock:
            bounds = self._bounds(self._db)
        return 0 if bounds is None else bounds[1] - bounds[0] + 1

    def dropped_pending(self) -> int:
        """Signals dropped by overflow and not yet reported to the gateway."""
        with self._lock:
            return int(self._db.execute("SELECT value FROM state WHERE key = 'dropped'").fetchone()[0])

    def pending(self) -> bool:
        """Whether anything is left to deliver: rows, a batch in flight, an unreported drop count."""
        with self._lock:
            db = self._db
            return (
                self._bounds(db) is not None
                or db.execute("SELECT 1 FROM inflight").fetchone() is not None
                or int(db.execute("SELECT value FROM state WHERE key = 'dropped'").fetchone()[0]) > 0
            )

    def next_batch(
        self,
        max_signals: int,
        max_bytes: int,
        overhead: int,
        new_id: Callable[[], str],
        dropped_report: Callable[[int], str | None],
    ) -> Batch | None:
        """The batch in flight if there is one, else a new one formed from the oldest rows (``None``: nothing to send).

        A new batch starts with the ``dropped`` report when overflow dropped
        signals since the last one (``dropped_report(n)`` renders it, or returns
        ``None`` when such reports are switched off); the counter then resets.
        The batch holds at most ``max_signals`` lines and its body at most
        ``max_bytes`` (``overhead`` is the body without signals).
        """
        with self._transaction() as db:
            row = db.execute("SELECT batch_id, last_seq, head FROM inflight").fetchone()
            if row is not None:
                batch_id, last_seq, head_json = row
                head = json.loads(head_json)
                lines = head + [body for (body,) in db.execute("SELECT body FROM signals WHERE seq <= ? ORDER BY seq", (last_seq,))]
                if lines:
                    return Batch(batch_id, lines, last_seq, resumed=True)
                db.execute("DELETE FROM inflight")  # everything it held was dropped by overflow
            dropped = int(db.execute("SELECT value FROM state WHERE key = 'dropped'").fetchone()[0])
            head = []
            if dropped > 0:
                db.execute("UPDATE state SET value = '0' WHERE key = 'dropped'")
                report = dropped_report(dropped)
                if report is not None:
                    head.append(report)
            lines = list(head)
            size = overhead + sum(len(line.encode("utf-8")) + 1 for line in lines)
            last_seq = 0
            for seq, body in db.execute("SELECT seq, body FROM signals ORDER BY seq LIMIT ?", (max(0, max_signals - len(lines)),)):
                size += len(body.encode("utf-8")) + 1
                if size > max_bytes and lines:
                    break
                lines.append(body)
                last_seq = seq
            if not lines:
                return None
            batch_id = new_id()
            db.execute("INSERT INTO inflight (id, batch_id, last_seq, head) VALUES (1, ?, ?, ?)", (batch_id, last_seq, json.dumps(head)))
            return Batch(batch_id, lines, last_seq, resumed=False)

    def complete(self, batch_id: str) -> None:
        """The batch left the site (delivered, or answered as a duplicate): remove it and its rows."""
        with self._transaction() as db:
            row = db.execute("SELECT last_seq FROM inflight WHERE batch_id = ?", (batch_id,)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM signals WHERE seq <= ?", (row[0],))
            db.execute("DELETE FROM inflight")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()



def sender_lease(buffer_path: Path) -> FileLease:
    """The lease on ``<buffer>.sender.lock``: one sender per buffer file, across processes.

    Several processes of one site (web workers) append to the same buffer; the
    one holding this lease sends, the others only append and try again later
    (without ``flock``, on Windows, one process per buffer file is assumed).
    """
    return FileLease(buffer_path.with_name(buffer_path.name + ".sender.lock"))
