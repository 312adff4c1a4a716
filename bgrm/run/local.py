"""Executors in this process: one file at a time in the calling thread, or several
files at once on threads (onnxruntime, SuperLU and Pillow's codecs release the GIL)."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time

from bgrm.outputs import remove_leftovers, remove_tmp
from bgrm.run.base import Done, Emit, Executor, Progress, Task, run_task, timed_out


class _TimedOut(BaseException):
    """Raised by the timer inside a file that ran too long; a BaseException so that
    no ``except Exception`` in the file's code takes it for the file's own error."""


class Inline(Executor):
    """One file after another in the calling thread.

    Ctrl-C (and ``--timeout``, by a timer signal) lands inside the file and
    unwinds it: its temporary output is removed, its ffmpeg processes closed.
    """

    def execute(self, items: list[tuple[int, Task]], emit: Emit) -> None:
        timer = self.timeout and threading.current_thread() is threading.main_thread()
        for index, task in items:
            def progress(n: int, i=index) -> None:
                emit(Progress(i, n))

            if not timer:
                emit(Done(index, run_task(task, progress)))
                continue
            previous = signal.signal(signal.SIGALRM, _alarm)
            try:
                try:
                    # Inside the try: a tiny timeout can fire before the next line.
                    signal.setitimer(signal.ITIMER_REAL, self.timeout)
                    result = run_task(task, progress)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _TimedOut:
                # Unwound like Ctrl-C; what it left half-written is removed now.
                remove_leftovers({task.dst.parent}, os.getpid())
                result = timed_out(task, self.timeout)
            finally:
                signal.signal(signal.SIGALRM, previous)
            emit(Done(index, result))

    def stop(self) -> None:
        # Ctrl-C can land inside atomic_path's cleanup, after the temporary
        # file was made and before it was removed.
        self.dead_pids.add(os.getpid())


def _alarm(signum, frame):
    raise _TimedOut


class Threads(Executor):
    """Several files at once on threads of this process.

    Events reach ``emit`` from the calling thread only. On Ctrl-C no new file
    is started and the files already under way are finished (each is written
    whole or not at all). A thread past ``--timeout`` cannot be stopped: its
    file is reported failed, its late output is never moved into place, and a
    fresh thread takes the next file.
    """

    def execute(self, items: list[tuple[int, Task]], emit: Emit) -> None:
        self._todo = iter(items)
        self._take = threading.Lock()
        self._stopping = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._retired: set[threading.Thread] = set()  # abandoned past the timeout
        self._threads: list[threading.Thread] = []
        for _ in range(min(self.width, len(items))):
            self._spawn()
        running = set(self._threads)
        started: dict[int, tuple[threading.Thread, float]] = {}
        while running:
            wait = None
            if self.timeout and started:
                wait = max(0.0, min(t for _, t in started.values()) + self.timeout
                           - time.monotonic())
            try:
                kind, i, payload = self._events.get(timeout=wait)
            except queue.Empty:
                self._retire_overdue(started, running, items, emit)
                continue
            if kind == "exit":
                running.discard(payload)
            elif kind == "start":
                started[i] = (payload, time.monotonic())
            elif kind == "progress":
                emit(Progress(i, payload))
            else:
                started.pop(i, None)
                emit(Done(i, payload))

    def _worker(self) -> None:
        """One thread: the next file, until none is left, Ctrl-C, or it is retired."""
        me = threading.current_thread()
        events = self._events
        while not self._stopping.is_set() and me not in self._retired:
            with self._take:
                item = next(self._todo, None)
            if item is None:
                break
            i, task = item
            events.put(("start", i, me))
            result = run_task(task, lambda n, i=i: events.put(("progress", i, n)))
            if me in self._retired and task.held is not None:
                # Reported failed already: its late output is dropped here.
                remove_tmp(task.held)  # a file, or a PNG sequence's folder
            events.put(("done", i, result))
        events.put(("exit", -1, me))

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._worker, name=f"bgrm-file-{len(self._threads)}",
                                  daemon=True)
        self._threads.append(thread)
        thread.start()

    def _retire_overdue(self, started: dict, running: set, items: list[tuple[int, Task]],
                        emit: Emit) -> None:
        """Files past --timeout are reported failed; a fresh thread replaces each one's."""
        for i, (thread, t0) in list(started.items()):
            if time.monotonic() - t0 >= self.timeout:
                del started[i]
                self._retired.add(thread)
                running.discard(thread)
                emit(Done(i, timed_out(dict(items)[i], self.timeout)))
                self._spawn()
                running.add(self._threads[-1])

    def stop(self) -> None:
        stopping = getattr(self, "_stopping", None)
        if stopping is not None:
            stopping.set()
            for thread in self._threads:
                thread.join(self.timeout)
        self.dead_pids.add(os.getpid())
