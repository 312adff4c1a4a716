"""A process pool in which a dying worker fails only the file it was on.

concurrent.futures breaks the whole pool when one worker is killed (OOM,
SIGKILL); here each worker has its own pipe, the parent watches the pipes and
the process sentinels together, and a worker that vanishes is replaced after
its file is reported failed. No polling: the parent sleeps in ``wait``.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

Progress = Callable[[int], None]
Task = Callable[[Any, Progress], Any]


def _on_term(signum, frame):
    # SystemExit unwinds the worker's finally blocks: temporary outputs are
    # removed and ffmpeg children are closed before the process ends.
    raise SystemExit(128 + signum)


def _worker(conn, fn: Task) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C does
    signal.signal(signal.SIGTERM, _on_term)
    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:  # not under nohup
        signal.signal(signal.SIGHUP, _on_term)
    # The parent's stdout carries --json; anything a library prints in a worker
    # (pymatting's warnings, C-level banners) goes to stderr instead.
    try:
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):
        sys.stdout = sys.stderr
    while True:
        try:
            item = conn.recv()
        except EOFError:
            return
        if item is None:
            return
        index, job = item
        conn.send(("started", index, None))
        # ``fn`` turns every error of its file into a result; anything that
        # escapes ends this worker, and the parent reports the file as failed.
        result = fn(job, lambda n, i=index: conn.send(("progress", i, n)))
        conn.send(("done", index, result))


def _context():
    # Workers fork from a clean server that has imported numpy and Pillow but
    # never onnxruntime: forking a parent whose onnxruntime threads may hold
    # locks is how pools deadlock, and the parent may well have loaded a model.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["bgrm._forkserver", "bgrm.batch", "bgrm.image"])
        return ctx
    return mp.get_context("spawn")


def run_pool(jobs: list, fn: Task, workers: int, *, on_progress: Callable[[int, int], None],
             on_result: Callable[[int, Any], None],
             on_death: Callable[[Any, int, int], Any]) -> list:
    """Run ``fn(job, progress)`` for every job on ``workers`` processes.

    ``on_death(job, pid, exitcode)`` makes the result of a job whose worker
    died. Results come back in the order of ``jobs``.
    """
    ctx = _context()
    results: list = [None] * len(jobs)
    pending = list(enumerate(jobs))[::-1]
    busy: dict = {}  # conn -> (process, index)
    idle: list = []

    def start():
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, fn), daemon=True)
        proc.start()
        child.close()
        return parent, proc

    started: set = set()  # indices a worker has begun (it said so)
    tries: dict = {}  # index -> workers that died holding it

    def assign(conn, proc):
        index, job = pending.pop()
        busy[conn] = (proc, index)
        # A worker dead already: its pipe reads EOF, and the loop below hands
        # the job on.
        with contextlib.suppress(OSError):
            conn.send((index, job))

    try:
        for _ in range(min(workers, len(jobs))):
            conn, proc = start()
            assign(conn, proc)
        while busy:
            sentinels = {proc.sentinel: conn for conn, (proc, _) in busy.items()}
            ready = wait(list(busy) + list(sentinels))
            for obj in ready:
                conn = obj if obj in busy else sentinels.get(obj)
                if conn not in busy:
                    continue
                proc, index = busy[conn]
                try:
                    # A worker that died leaves its pipe readable (EOF) as well.
                    if not conn.poll():
                        if proc.is_alive():
                            continue
                        raise EOFError
                    kind, i, payload = conn.recv()
                except (EOFError, OSError):
                    _reap(proc)
                    del busy[conn]
                    tries[index] = tries.get(index, 0) + 1
                    if index not in started and tries[index] < 3:
                        # It died between two files, before it began this one:
                        # the file is not to blame; a fresh worker takes it.
                        pending.append((index, jobs[index]))
                    else:
                        results[index] = on_death(jobs[index], proc.pid, proc.exitcode)
                        on_result(index, results[index])
                    if pending:
                        conn, proc = start()
                        assign(conn, proc)
                    continue
                if kind == "started":
                    started.add(i)
                    continue
                if kind == "progress":
                    on_progress(i, payload)
                    continue
                results[i] = payload
                on_result(i, payload)
                del busy[conn]
                if pending:
                    assign(conn, proc)
                else:
                    with contextlib.suppress(OSError):  # it may have died since
                        conn.send(None)
                    idle.append((conn, proc))
    except BaseException:
        with _interrupts_ignored():
            _stop([(c, p) for c, (p, _) in busy.items()], on_death_cleanup=on_death,
                  jobs=jobs, busy=busy)
        raise
    finally:
        for _conn, proc in idle:
            proc.join(timeout=5)
    return results


def _reap(proc) -> None:
    """Wait for a worker whose pipe closed; one that lingers is killed."""
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()


@contextlib.contextmanager
def _interrupts_ignored():
    """A second Ctrl-C must not cut short the stopping of the workers (each
    removes its temporary file as it ends); the first one is re-raised after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop(workers, *, on_death_cleanup, jobs, busy) -> None:
    """Ctrl-C or an error in the parent: stop every worker and wait for it."""
    for _, proc in workers:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)
    for conn, proc in workers:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        # Let the caller clean what a killed worker may have left behind.
        on_death_cleanup(jobs[busy[conn][1]], proc.pid, proc.exitcode)
