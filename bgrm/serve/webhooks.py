"""Webhooks: a finished job's results object POSTed to the URL its request named.

Deliveries are durable: each is a row of an SQLite table (``Outbox``) written
before anything is sent, so a receiver that is down, answers 5xx, 408 or 429,
or a server that restarts, only delays it. ``Deliverer`` is the thread that
sends them, retrying with exponential backoff until the job's results expire.
A 2xx answer delivers; any other answer gives up, as does a poster that raises
``GiveUp`` (an address it refuses). Delivery is at least once: a crash between
the receiver's 2xx and its record sends the same body again, with the same
``X-Bgrm-Job`` header, which is what a receiver deduplicates on.

With an API key set, ``X-Bgrm-Signature: sha256=<hex>`` is the HMAC-SHA256 of
the exact body bytes keyed by the API key (``sign``; receivers check it with
``verify`` or its few lines in their own language). The key is never stored
in the table nor written to the log.

Each attempt's outcome goes to the ``bgrm.serve`` logger: the job's uuid, the
attempt's number, the HTTP status or the network error, and what comes next.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LOGGER = logging.getLogger("bgrm.serve")

SCHEMA = """
CREATE TABLE IF NOT EXISTS webhooks (
    uuid TEXT PRIMARY KEY,                  -- the job's: one delivery per job
    url TEXT NOT NULL,
    body BLOB NOT NULL,                     -- the exact bytes sent and signed
    created REAL NOT NULL,
    expires REAL NOT NULL,                  -- no attempt from then on
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    state TEXT NOT NULL,                    -- pending | delivered | failed | expired
    last_error TEXT                         -- the last attempt's status or error
);
CREATE INDEX IF NOT EXISTS webhooks_due ON webhooks (state, next_at);
"""

PENDING, DELIVERED, FAILED, EXPIRED = "pending", "delivered", "failed", "expired"
# The receiver may get better on its own: a timeout, too many requests.
RETRIED_4XX = (408, 429)
BACKOFF_BASE_S, BACKOFF_CAP_S = 2.0, 600.0
JITTER = 0.1  # +-10%: receivers back after an outage do not get every retry at once
BATCH = 100  # rows read at a time


class GiveUp(Exception):
    """Raised by a poster for a delivery that no retry can make (a refused address)."""


@dataclass(frozen=True)
class Delivery:
    """One webhook's row."""

    uuid: str
    url: str
    body: bytes
    created: float
    expires: float
    attempts: int
    next_at: float
    state: str
    last_error: str | None


_COLUMNS = "uuid, url, body, created, expires, attempts, next_at, state, last_error"


def sign(key: str, body: bytes) -> str:
    """The ``X-Bgrm-Signature`` of ``body``: "sha256=" and its hex HMAC-SHA256 under ``key``."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def verify(key: str, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``body``'s signature under ``key`` (a constant-time compare)."""
    if not header:
        return False
    return hmac.compare_digest(sign(key, body).encode(), header.strip().encode("utf-8", "replace"))


def backoff(attempts: int, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S,
            rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait after ``attempts`` failed attempts: base, 2 base, 4 base... up to cap."""
    raw = base * 2.0 ** min(max(attempts - 1, 0), 40)  # 2**40: past any cap, never overflows
    return min(cap, raw * rng(1 - JITTER, 1 + JITTER))


def verdict(status: int | None) -> str:
    """What an answer's HTTP status means: DELIVERED, PENDING (retry) or FAILED.
    ``None``: no answer (a network error, a timeout), retried."""
    if status is None or status >= 500 or status in RETRIED_4XX:
        return PENDING
    if 200 <= status < 300:
        return DELIVERED
    return FAILED  # 4xx: the request is wrong for this receiver; 1xx, 3xx: not followed


class Outbox:
    """The deliveries, in their own table of the SQLite file at ``path``; safe to
    share between threads. ``base`` and ``cap``: the backoff's first and longest wait."""

    def __init__(self, path: Path | str, base: float = BACKOFF_BASE_S,
                 cap: float = BACKOFF_CAP_S):
        self.base, self.cap = base, cap
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None,
                                   timeout=10.0)
        self._lock = threading.Lock()
        with self._lock:
            # Another connection (the job store's) may write the same file.
            self._db.execute("PRAGMA busy_timeout=10000")
            # WAL: readers do not wait for a writer; FULL: an added row is on disk.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self):
        """The connection, in a write transaction no other thread or process interleaves."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _write(self, sql: str, args: tuple) -> int:
        """One statement in a transaction of its own; the rows it changed."""
        with self._transaction() as db:
            return db.execute(sql, args).rowcount

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def add(self, uuid: str, url: str, body: bytes, expires_at: float,
            now: float | None = None) -> bool:
        """Queue ``body`` for ``url``, due at once. False when job ``uuid`` has a delivery
        already (a job finished again after a crash): that one stands, sent or not."""
        now = time.time() if now is None else now
        return self._write(
            f"INSERT INTO webhooks ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, 0, ?, ?, NULL) "
            "ON CONFLICT (uuid) DO NOTHING",
            (uuid, url, bytes(body), now, expires_at, now, PENDING)) == 1

    def get(self, uuid: str) -> Delivery | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM webhooks WHERE uuid = ?", (uuid,))
        return Delivery(*rows[0]) if rows else None

    def due(self, now: float | None = None, limit: int = BATCH) -> list[Delivery]:
        """Pending deliveries whose time has come and whose results have not expired,
        the longest waiting first."""
        now = time.time() if now is None else now
        rows = self._read(f"SELECT {_COLUMNS} FROM webhooks WHERE state = ? AND next_at <= ? "
                          "AND expires > ? ORDER BY next_at, created LIMIT ?",
                          (PENDING, now, now, limit))
        return [Delivery(*row) for row in rows]

    def next_at(self, now: float | None = None) -> float | None:
        """When the next pending delivery is due (maybe past); None when none is."""
        now = time.time() if now is None else now
        row = self._read("SELECT min(next_at) FROM webhooks WHERE state = ? AND expires > ?",
                         (PENDING, now))
        return row[0][0]

    def attempted(self, uuid: str, status: int | None, error: str | None = None,
                  now: float | None = None, give_up: bool = False) -> str:
        """Record an attempt: its HTTP ``status``, or None and the network ``error``.
        Returns the delivery's new state; PENDING has its next try scheduled, and a
        next try that would come after the results expire is EXPIRED instead."""
        now = time.time() if now is None else now
        state = FAILED if give_up else verdict(status)
        outcome = f"HTTP {status}" if status is not None else (error or "no answer")
        with self._transaction() as db:
            row = db.execute("SELECT attempts, expires, state FROM webhooks WHERE uuid = ?",
                             (uuid,)).fetchone()
            if row is None:
                return EXPIRED  # forgotten (its job expired) while it was being sent
            if row[2] != PENDING:
                return row[2]  # settled already: its first record stands
            attempts, expires = row[0] + 1, row[1]
            next_at = now + backoff(attempts, self.base, self.cap)
            if state == PENDING and next_at >= expires:
                state = EXPIRED
            db.execute("UPDATE webhooks SET attempts = ?, next_at = ?, state = ?, "
                       "last_error = ? WHERE uuid = ?",
                       (attempts, next_at, state, outcome, uuid))
        return state

    def expire(self, now: float | None = None) -> list[str]:
        """Mark the pending deliveries whose results expired; their uuids."""
        now = time.time() if now is None else now
        # Read first: a round with nothing to expire takes no write lock from the job store.
        if not self._read("SELECT 1 FROM webhooks WHERE state = ? AND expires <= ? LIMIT 1",
                          (PENDING, now)):
            return []
        with self._transaction() as db:
            uuids = [r[0] for r in db.execute(
                "SELECT uuid FROM webhooks WHERE state = ? AND expires <= ?", (PENDING, now))]
            db.execute("UPDATE webhooks SET state = ? WHERE state = ? AND expires <= ?",
                       (EXPIRED, PENDING, now))
        return uuids

    def forget(self, uuid: str) -> None:
        """Drop job ``uuid``'s delivery, whatever its state (its results are gone)."""
        self._write("DELETE FROM webhooks WHERE uuid = ?", (uuid,))

    def pending(self, now: float | None = None) -> int:
        """Deliveries still to make before their results expire."""
        now = time.time() if now is None else now
        return self._read("SELECT count(*) FROM webhooks WHERE state = ? AND expires > ?",
                          (PENDING, now))[0][0]


Poster = Callable[[str, bytes, dict], int]


class Deliverer:
    """The thread that sends the outbox's deliveries with ``post(url, body, headers)
    -> HTTP status`` (which raises on a network error, ``GiveUp`` for a URL it
    refuses), signed with ``key`` when there is one. It sleeps until the next
    delivery is due or one is added (``add``, ``wake``); it never polls."""

    # Longest sleep with nothing due: a row another process added is seen by then.
    IDLE_S = 300.0
    # After an unexpected error (the database unreadable a moment): no busy loop.
    ERROR_WAIT_S = 5.0

    def __init__(self, outbox: Outbox, post: Poster, key: str | None = None, *,
                 logger: logging.Logger = LOGGER, clock: Callable[[], float] = time.time):
        self.outbox, self._post, self._key = outbox, post, key or None
        self.log, self.clock = logger, clock
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Send every pending delivery, those a previous process left included."""
        if self._thread is not None:
            raise RuntimeError("this Deliverer was started already")
        self._thread = threading.Thread(target=self._run, name="bgrm-webhooks", daemon=True)
        self._wake.set()
        self._thread.start()

    def close(self, timeout: float = 5.0) -> bool:
        """Stop within ``timeout`` s (a post under way is not waited for longer);
        undelivered rows stay pending for the next start. True when stopped."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def add(self, uuid: str, url: str, body: bytes, expires_at: float) -> bool:
        """``Outbox.add``, then send it at once."""
        added = self.outbox.add(uuid, url, body, expires_at, now=self.clock())
        self.wake()
        return added

    def wake(self) -> None:
        """Look at the outbox now (a row was added there)."""
        self._wake.set()

    def headers(self, uuid: str, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "X-Bgrm-Job": uuid}
        if self._key:
            headers["X-Bgrm-Signature"] = sign(self._key, body)
        return headers

    def _run(self) -> None:
        while not self._stopping:
            # Cleared before the outbox is read: a row added from now on sets it again.
            self._wake.clear()
            try:
                self._round()
                wait = self._sleep()
            except Exception:  # noqa: BLE001 - one bad round must not end deliveries
                if self._stopping:
                    return  # the outbox was closed under a post
                self.log.exception("webhooks: delivery round failed; retrying in %g s",
                                   self.ERROR_WAIT_S)
                wait = self.ERROR_WAIT_S
            self._wake.wait(wait)

    def _round(self) -> None:
        for uuid in self.outbox.expire(self.clock()):
            self.log.warning("webhook %s: given up, its results expired before delivery",
                             uuid, extra={"uuid": uuid, "webhook_state": EXPIRED})
        while not self._stopping:
            rows = self.outbox.due(self.clock())
            for row in rows:
                if self._stopping:
                    return
                self._send(row)
            if len(rows) < BATCH:
                return

    def _sleep(self) -> float:
        now = self.clock()
        next_at = self.outbox.next_at(now)
        return self.IDLE_S if next_at is None else min(self.IDLE_S, max(0.0, next_at - now))

    def _send(self, row: Delivery) -> None:
        status, error, give_up = None, None, False
        try:
            status = int(self._post(row.url, row.body, self.headers(row.uuid, row.body)))
        except GiveUp as exc:
            error, give_up = f"refused: {exc}", True
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is retried
            error = f"{type(exc).__name__}: {exc}"
        if error and self._key:
            error = error.replace(self._key, "<key>")
        state = self.outbox.attempted(row.uuid, status, error, self.clock(), give_up=give_up)
        self._report(row, status, error, state)

    def _report(self, row: Delivery, status: int | None, error: str | None, state: str) -> None:
        attempt = row.attempts + 1
        outcome = f"HTTP {status}" if status is not None else error
        extra = {"uuid": row.uuid, "attempt": attempt, "status": status, "webhook_state": state}
        if state == DELIVERED:
            self.log.info("webhook %s attempt %d: %s, delivered", row.uuid, attempt, outcome,
                          extra=extra)
        elif state == PENDING:
            after = self.outbox.get(row.uuid)
            wait = max(0.0, after.next_at - self.clock()) if after else 0.0
            self.log.warning("webhook %s attempt %d: %s, retrying in %.1f s", row.uuid,
                             attempt, outcome, wait, extra=extra)
        else:
            why = "its results expire first" if state == EXPIRED else "given up"
            self.log.warning("webhook %s attempt %d: %s, %s", row.uuid, attempt, outcome, why,
                             extra=extra)
