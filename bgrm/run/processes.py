"""Worker processes, one file each at a time: a dying or hung worker fails only its file.

concurrent.futures breaks the whole pool when one worker is killed (OOM,
SIGKILL); here each worker has its own pipe, the parent watches the pipes and
the process sentinels together, and a worker that vanishes, or runs past
``--timeout``, is replaced after its file is reported failed. No polling: the
parent sleeps in ``wait``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from bgrm.errors import unwind_on_termination
from bgrm.run.base import Done, Emit, Executor, Progress, died, run_task, timed_out
from bgrm.stdio import quiet_pillow_warnings, stdout_to_stderr

Fn = Callable[[Any, Callable[[int], None]], Any]


def _worker(conn, fn: Fn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    unwind_on_termination()
    quiet_pillow_warnings()  # as in the command line's process: this one is bgrm's own
    # The parent's stdout carries --json; anything a library prints in a worker
    # (warnings, C-level banners) goes to stderr instead.
    with stdout_to_stderr():
        while True:
            try:
                item = conn.recv()
            except EOFError:
                return
            if item is None:
                return
            index, task = item
            conn.send(("started", index, None))
            # ``fn`` turns every error of its file into a result; anything that
            # escapes ends this worker, and the parent reports the file as failed.
            result = fn(task, lambda n, i=index: conn.send(("progress", i, n)))
            conn.send(("done", index, result))


def _context():
    # Workers fork from a clean server that has imported numpy and Pillow but
    # never onnxruntime: forking a parent whose onnxruntime threads may hold
    # locks is how pools deadlock, and the parent may well have loaded a model.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["bgrm._forkserver", "bgrm.run", "bgrm.image"])
        return ctx
    return mp.get_context("spawn")


class Processes(Executor):
    """``width`` worker processes. ``fn(task, progress)`` makes a task's result
    (``run_task``; tests give their own), ``on_death(task, exitcode)`` the
    result of a task whose worker died."""

    def __init__(self, width: int, timeout: float | None = None, *, fn: Fn = run_task,
                 on_death: Callable[[Any, int | None], Any] = died):
        super().__init__(width, timeout)
        self.fn, self.on_death = fn, on_death
        self._pool: _Pool | None = None

    def execute(self, items: list[tuple[int, Any]], emit: Emit) -> None:
        self._pool = pool = _Pool(self, dict(items), emit)
        try:
            for _ in range(min(self.width, len(items))):
                pool.start_worker()
            while pool.busy:
                pool.step()
        finally:
            for proc in pool.idle:
                proc.join(timeout=5)

    def stop(self) -> None:
        """Stop every busy worker (SIGTERM unwinds it: temporaries removed) and wait."""
        workers = [proc for proc, _ in self._pool.busy.values()] if self._pool else []
        for proc in workers:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in workers:
            _end(proc, grace=10)
            self.dead_pids.add(proc.pid)


class _Pool:
    """The workers of one ``Processes.execute``: who holds which task, since when."""

    def __init__(self, executor: Processes, tasks: dict, emit: Emit):
        self.executor, self.tasks, self.emit = executor, tasks, emit
        self.ctx = _context()
        self.pending = list(tasks)[::-1]
        self.busy: dict = {}  # conn -> (process, index)
        self.idle: list = []
        self.started: dict[int, float] = {}  # index -> when its worker said it began
        self.tries: dict[int, int] = {}  # index -> workers that died holding it

    def start_worker(self) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.executor.fn), daemon=True)
        proc.start()
        child.close()
        self.assign(parent, proc)

    def assign(self, conn, proc) -> None:
        index = self.pending.pop()
        self.busy[conn] = (proc, index)
        # A worker dead already: its pipe reads EOF, and step() hands the task on.
        with contextlib.suppress(OSError):
            conn.send((index, self.tasks[index]))

    def lost(self, conn, proc, index: int, result) -> None:
        """A worker ended holding ``index``: report it (unless retried), replace the worker."""
        del self.busy[conn]
        self.executor.dead_pids.add(proc.pid)
        self.started.pop(index, None)
        if result is not None:
            self.emit(Done(index, result))
        if self.pending:
            self.start_worker()

    def step(self) -> None:
        """Sleep until a worker speaks or ends, or a --timeout falls due; handle it."""
        timeout = self.executor.timeout
        wait_s = None
        if timeout and self.started:
            wait_s = max(0.0, min(self.started.values()) + timeout - time.monotonic())
        sentinels = {proc.sentinel: conn for conn, (proc, _) in self.busy.items()}
        ready = wait(list(self.busy) + list(sentinels), timeout=wait_s)
        if not ready:
            self.expire()
        for obj in ready:
            conn = obj if obj in self.busy else sentinels.get(obj)
            if conn in self.busy:
                self.read(conn)

    def expire(self) -> None:
        timeout = self.executor.timeout
        for conn, (proc, index) in list(self.busy.items()):
            if index in self.started and time.monotonic() - self.started[index] >= timeout:
                _end(proc, grace=2)
                self.lost(conn, proc, index, timed_out(self.tasks[index], timeout,
                                                       "; its worker was replaced"))

    def read(self, conn) -> None:
        proc, index = self.busy[conn]
        try:
            # A worker that died leaves its pipe readable (EOF) as well.
            if not conn.poll():
                if proc.is_alive():
                    return
                raise EOFError
            kind, i, payload = conn.recv()
        except (EOFError, OSError):
            _reap(proc)
            self.tries[index] = self.tries.get(index, 0) + 1
            if index not in self.started and self.tries[index] < 3:
                # It died between two files, before it began this one: the file
                # is not to blame; a fresh worker takes it.
                self.pending.append(index)
                self.lost(conn, proc, index, None)
            else:
                self.lost(conn, proc, index, self.executor.on_death(self.tasks[index],
                                                                    proc.exitcode))
            return
        if kind == "started":
            self.started[i] = time.monotonic()
        elif kind == "progress":
            self.emit(Progress(i, payload))
        else:
            self.started.pop(i, None)
            del self.busy[conn]
            self.emit(Done(i, payload))
            if self.pending:
                self.assign(conn, proc)
            else:
                with contextlib.suppress(OSError):  # it may have died since
                    conn.send(None)
                self.idle.append(proc)


def _end(proc, grace: float) -> None:
    """SIGTERM (it unwinds: temporaries removed, ffmpeg closed), then SIGKILL after ``grace``."""
    if proc.is_alive():
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGTERM)
    proc.join(timeout=grace)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _reap(proc) -> None:
    """Wait for a worker whose pipe closed; one that lingers is killed."""
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()
