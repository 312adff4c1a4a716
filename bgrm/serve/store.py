"""The service's durable job state: one SQLite database in the data dir.

A job and its files are one row each; every change of state is one
transaction, so what a crash leaves is always a state the service can resume
from: a job is either there with all its files, or not at all; a file is
queued, done or failed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    uuid TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,                     -- image | video
    params TEXT NOT NULL,                   -- the request's parameters (JSON)
    created REAL NOT NULL,
    finished REAL                           -- NULL while files are queued
);
CREATE TABLE IF NOT EXISTS files (
    uuid TEXT NOT NULL,
    number INTEGER NOT NULL,
    name TEXT NOT NULL,                     -- the upload's filename, made safe
    filename TEXT NOT NULL,                 -- the result's download name
    src TEXT NOT NULL,                      -- paths inside the job's folder
    dst TEXT NOT NULL,
    state TEXT NOT NULL,                    -- queued | done | failed
    error TEXT,
    crop TEXT,                              -- JSON [left, top, right, bottom] or NULL
    frames INTEGER,                         -- a finished video's frames
    PRIMARY KEY (uuid, number)
);
CREATE INDEX IF NOT EXISTS queued ON files (state, uuid);
"""


@dataclass(frozen=True)
class FileRow:
    number: int
    name: str
    filename: str
    src: str
    dst: str
    state: str
    error: str | None
    crop: tuple[int, int, int, int] | None
    frames: int | None = None


@dataclass(frozen=True)
class JobRow:
    seq: int
    uuid: str
    kind: str
    params: dict
    created: float
    finished: float | None
    files: tuple[FileRow, ...]


class Store:
    """The database, shared by the event loop's handlers and the runner's thread."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            # WAL: readers never wait for the writer; FULL: a job answered is on disk.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(files)")}
            if "frames" not in columns:  # a data dir of an earlier bgrm
                self._db.execute("ALTER TABLE files ADD COLUMN frames INTEGER")
        # Reads on a connection of their own: /v1/results/ never waits for a write's
        # fsync, so it can be answered on the event loop itself.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._db.close()
            self._reader.close()

    def _write(self, *statements: tuple[str, tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def check_writable(self) -> None:
        """Raise when a write cannot be made now (a read-only or broken database)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")

    def add(self, uuid: str, kind: str, params: dict, files: list[FileRow]) -> None:
        self._write(
            ("INSERT INTO jobs (uuid, kind, params, created) VALUES (?, ?, ?, ?)",
             (uuid, kind, json.dumps(params), time.time())),
            *(("INSERT INTO files (uuid, number, name, filename, src, dst, state) "
               "VALUES (?, ?, ?, ?, ?, ?, 'queued')",
               (uuid, f.number, f.name, f.filename, f.src, f.dst)) for f in files))

    def finish_file(self, uuid: str, number: int, error: str | None,
                    crop: tuple[int, int, int, int] | None = None,
                    frames: int | None = None) -> None:
        """File ``number`` done (or failed with ``error``); the job finished with its last."""
        self._write(
            ("UPDATE files SET state = ?, error = ?, crop = ?, frames = ? "
             "WHERE uuid = ? AND number = ?",
             ("failed" if error else "done", error, json.dumps(crop) if crop else None,
              frames, uuid, number)),
            ("UPDATE jobs SET finished = ? WHERE uuid = ? AND finished IS NULL AND NOT EXISTS "
             "(SELECT 1 FROM files WHERE uuid = ? AND state = 'queued')",
             (time.time(), uuid, uuid)))

    def job(self, uuid: str) -> JobRow | None:
        with self._read_lock:
            row = self._reader.execute("SELECT seq, uuid, kind, params, created, finished FROM jobs "
                                   "WHERE uuid = ?", (uuid,)).fetchone()
            if row is None:
                return None
            files = self._reader.execute("SELECT number, name, filename, src, dst, state, error, "
                                         "crop, frames FROM files WHERE uuid = ? "
                                         "ORDER BY number", (uuid,)).fetchall()
        return _job(row, files)

    def ahead(self, seq: int) -> int:
        """Files still queued in jobs that came before job ``seq``."""
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM files JOIN jobs USING (uuid) "
                                    "WHERE state = 'queued' AND seq < ?", (seq,)).fetchone()[0]

    def queued(self) -> int:
        with self._read_lock:
            return self._reader.execute("SELECT count(*) FROM files WHERE state = 'queued'"
                                    ).fetchone()[0]

    def uuids(self, unfinished: bool = False, finished_before: float | None = None,
              created_before: float | None = None) -> list[str]:
        """Jobs in arrival order: all, the unfinished ones, those finished before a
        time, or those unfinished and created before a time (stuck)."""
        sql, args = "SELECT uuid FROM jobs", ()
        if created_before is not None:
            sql, args = sql + " WHERE finished IS NULL AND created < ?", (created_before,)
        elif unfinished:
            sql += " WHERE finished IS NULL"
        elif finished_before is not None:
            sql, args = sql + " WHERE finished < ?", (finished_before,)
        with self._read_lock:
            return [r[0] for r in self._reader.execute(sql + " ORDER BY seq", args).fetchall()]

    def delete(self, uuid: str) -> None:
        self._write(("DELETE FROM files WHERE uuid = ?", (uuid,)),
                    ("DELETE FROM jobs WHERE uuid = ?", (uuid,)))


def _job(row, files) -> JobRow:
    return JobRow(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], tuple(
        FileRow(f[0], f[1], f[2], f[3], f[4], f[5], f[6],
                tuple(json.loads(f[7])) if f[7] else None, f[8]) for f in files))
