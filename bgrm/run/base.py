"""What every executor shares: the task, its events, ``run_task`` and the ``Runner``
(see ``bgrm.run``)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bgrm.errors import BgrmError, OutputError, one_line
from bgrm.filejobs import write_file
from bgrm.models import ResolvedModel
from bgrm.outputs import commit, held_name, holding, remove_leftovers, remove_tmp
from bgrm.report import Processed, Result


@dataclass(frozen=True)
class Runtime:
    """How the model runs, the same for every file of a run."""

    model: ResolvedModel
    device: str = "auto"
    threads: int | None = None
    skip_existing: bool = False
    traceback: bool = False
    # onnxruntime's idle threads spin for a while after each run; when other
    # work (matting) follows on the same cores, that spinning only steals them.
    spinning: bool = True
    # A video's frames in the model at once, each run on ``threads`` threads
    # (segment.video_lanes).
    lanes: int = 1
    # auto | onnxruntime | openvino (bgrm.engine.choose)
    engine: str = "auto"


@dataclass(frozen=True)
class Task:
    """One input file to process into one output file."""

    job: str  # image | video
    src: Path
    dst: Path
    name: str  # the input as the user named it
    options: Any  # ImageOptions | VideoOptions
    runtime: Runtime
    held: Path | None = None  # where the output waits for Executor.run to move it to dst


@dataclass(frozen=True)
class Progress:
    index: int
    n: int  # units done since the last report: the file, or frames


@dataclass(frozen=True)
class Done:
    index: int
    result: Result


Emit = Callable[[Progress | Done], None]


class Listener:
    """Hears about a run: progress as it comes, each result as it finishes and
    again in input order."""

    def progress(self, index: int, n: int) -> None:
        pass

    def finished(self, index: int, result: Result) -> None:
        pass

    def result(self, index: int, result: Result) -> None:
        pass


def process_task(task: Task, progress: Callable[[int], None]) -> Processed:
    """``task``'s file through its job, on the model its runtime names (loaded once
    per process and settings), as ``bgrm.Session.write`` does."""
    from bgrm.segment import get_segmenter

    rt = task.runtime
    segmenter = get_segmenter(rt.model, rt.device, rt.threads, rt.spinning, rt.lanes,
                              rt.engine)
    return write_file(task.job, task.src, task.dst, task.options, segmenter, progress)


Work = Callable[[Task, Callable[[int], None]], Processed]


def run_task(task: Task, progress: Callable[[int], None], work: Work = process_task) -> Result:
    """``work(task, progress)`` for one file; every failure becomes the result's
    error, never an exception."""
    start = time.monotonic()
    try:
        with holding(task.dst, task.held) if task.held else contextlib.nullcontext():
            done = work(task, progress)
        return Result(task.name, task.dst, notes=list(done.notes), crop_box=done.crop_box,
                      seconds=time.monotonic() - start)
    except BgrmError as exc:
        # The traceback is kept for --traceback; the user sees the one line.
        return Result(task.name, error=one_line(str(exc)), traceback=traceback.format_exc())
    except MemoryError:
        return Result(task.name, error=f"{task.name}: out of memory",
                      traceback=traceback.format_exc())
    except Exception as exc:  # noqa: BLE001 - one file's bug must not stop the batch
        return Result(task.name, error=f"{task.name}: internal error: {type(exc).__name__}: "
                      f"{one_line(str(exc))}", traceback=traceback.format_exc())


def timed_out(task: Task, seconds: float, replaced: str = "") -> Result:
    return Result(task.name, error=f"{task.name}: stopped after --timeout {seconds:g} s "
                                   f"(hung or too slow){replaced}")


def died(task: Task, exitcode: int | None) -> Result:
    how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exit {exitcode}"
    hint = " (out of memory?)" if exitcode == -9 else ""
    return Result(task.name, error=f"{task.name}: the worker processing it died ({how}){hint}")


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
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


class Executor(ABC):
    """Runs tasks somewhere; subclasses say where (``execute``) and how to stop."""

    def __init__(self, width: int = 1, timeout: float | None = None):
        self.width = width  # files at once
        self.timeout = timeout  # seconds per file, or None
        self.dead_pids: set[int] = set()  # processes whose temporaries may be left
        self.leftovers: set[str] = set()  # temporary files known to be left

    @abstractmethod
    def execute(self, items: list[tuple[int, Task]], emit: Emit) -> None:
        """Run every ``(index, task)``; emit ``Progress`` and exactly one ``Done``
        per index, from the calling thread."""

    @abstractmethod
    def stop(self) -> None:
        """Ctrl-C or an error: end what is running and wait for it."""

    def run(self, tasks: list[Task], listener: Listener | None = None) -> list[Result]:
        """Results of ``tasks``, in their order: one job on a ``Runner``, run in this
        thread (Ctrl-C and ``--timeout``'s timer land here); see the module's docstring."""
        runner = Runner(self)
        key = runner.submit(tasks, listener)
        while runner.step(block=False):
            pass
        return runner.results(key)

    def clean(self, tasks: list[Task], done: list[bool]) -> None:
        """The one cleanup after a batch: held outputs never moved into place, and
        temporaries of workers that ended without removing their own."""
        for task, ok in zip(tasks, done, strict=True):
            if not ok and task.held is not None:
                remove_tmp(task.held)  # a file, or a PNG sequence's folder
        folders = {t.dst.parent for t in tasks}
        for pid in self.dead_pids:
            remove_leftovers(folders, pid)
        for name in self.leftovers:
            remove_tmp(Path(name))
        # A long-lived runner reuses the executor: the next batch starts clean.
        self.dead_pids.clear()
        self.leftovers.clear()


def held_path(dst: Path, key: str, number: int) -> Path:
    """Where file ``number`` of job ``key`` waits, finished, to be moved to ``dst``:
    named by both, so a process started after a crash finds it again."""
    return held_name(dst, f"{key}-{number}")


@dataclass
class _Job:
    key: str
    tasks: dict[int, Task]  # file number -> task, in input order
    listener: Listener
    results: dict[int, Result] = field(default_factory=dict)
    told: int = 0  # results of the first ``told`` files went to listener.result
    cancelled: bool = False
    forget: bool = False  # dropped from the runner once its last result is told

    def __post_init__(self) -> None:
        self.order = list(self.tasks)

    def deliver(self, number: int, result: Result) -> None:
        self.results[number] = result
        self.listener.finished(number, result)
        order = self.order
        while self.told < len(order) and order[self.told] in self.results:
            self.listener.result(order[self.told], self.results[order[self.told]])
            self.told += 1


class Runner:
    """Jobs as they come, on one executor: ``submit``, ``cancel``, ``close``.

    Each job is a list of tasks; its listener hears about them by file number,
    in input order. ``step`` runs the files queued now (jobs in arrival order,
    files of one kind together) as one batch of the executor, in the calling
    thread: the command line calls it until its one job is done; the service
    calls it in a loop on a thread of its own. A finished output waits under
    ``held_path`` until its result is in hand here, then is moved into place.
    """

    def __init__(self, executor: Executor,
                 timeout_for: Callable[[list[Task]], float | None] | None = None):
        self.executor = executor
        self.timeout_for = timeout_for  # seconds per file for a batch, or keep the executor's
        self._lock = threading.Condition()
        self._queue: list[tuple[_Job, int]] = []
        self._jobs: dict[str, _Job] = {}
        self._closed = False
        self._running = False

    def submit(self, tasks: list[Task] | dict[int, Task], listener: Listener | None = None,
               key: str | None = None, forget: bool = False) -> str:
        """Queue a job: ``tasks`` as a list (numbered 0...) or by file number. With
        ``forget`` its results go to its listener only (``results`` cannot tell them)."""
        key = key or uuid.uuid4().hex[:12]
        numbered = tasks if isinstance(tasks, dict) else dict(enumerate(tasks))
        job = _Job(key, {n: replace(t, held=held_path(t.dst, key, n))
                         for n, t in numbered.items()}, listener or Listener(), forget=forget)
        skipped = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the runner is closed")
            self._jobs[key] = job
            for n, task in job.tasks.items():
                if task.runtime.skip_existing and task.dst.exists():
                    skipped.append(n)
                else:
                    self._queue.append((job, n))
            self._lock.notify_all()
        for n in skipped:
            self._deliver(job, n, Result(job.tasks[n].name, job.tasks[n].dst, skipped=True))
        return key

    def _deliver(self, job: _Job, number: int, result: Result) -> None:
        job.deliver(number, result)
        if job.forget and job.told == len(job.tasks):
            with self._lock:
                self._jobs.pop(job.key, None)

    def results(self, key: str) -> list[Result]:
        """A finished job's results in input order (the job is then forgotten)."""
        with self._lock:
            job = self._jobs.pop(key)
        return [job.results[n] for n in job.tasks]

    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    def cancel(self, key: str) -> None:
        """Drop a job: its files not started are never run, those running are never
        moved into place, and its listener hears nothing more."""
        with self._lock:
            job = self._jobs.pop(key, None)
            if job is not None:
                job.cancelled = True
                self._queue = [item for item in self._queue if item[0] is not job]

    def close(self) -> None:
        """Take no more jobs, drop those not started, and end the batch running (its
        files under way finish or not; none is moved into place after this)."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancelled = True
            self._queue.clear()
            running = self._running
            self._lock.notify_all()
        if running:
            self.executor.stop()

    def step(self, block: bool = True) -> bool:
        """Run the files queued now as one batch, in this thread; False when there is
        nothing to run (and, with ``block``, only once the runner is closed)."""
        batch = self._take(block)
        if not batch:
            return False
        tasks = [job.tasks[n] for job, n in batch]
        if self.timeout_for is not None:
            self.executor.timeout = self.timeout_for(tasks)
        done = [False] * len(batch)

        def emit(event: Progress | Done) -> None:
            job, n = batch[event.index]
            if isinstance(event, Progress):
                if not job.cancelled:
                    job.listener.progress(n, event.n)
            elif not done[event.index]:  # a late second word is ignored
                if job.cancelled:
                    return
                result = _commit(tasks[event.index], event.result)
                done[event.index] = result.ok
                self._deliver(job, n, result)

        try:
            self.executor.execute(list(enumerate(tasks)), emit)
        except BaseException as exc:
            with interrupts_ignored():
                try:
                    self.executor.stop()
                finally:
                    self._finish(tasks, done)
            if isinstance(exc, Exception):
                # A bug in the executor: each file it left unanswered fails with it,
                # so no job waits for ever on a long-lived runner.
                for index, (job, n) in enumerate(batch):
                    if n not in job.results and not job.cancelled:
                        self._deliver(job, n, Result(tasks[index].name, error=(
                            f"{tasks[index].name}: internal error: {type(exc).__name__}: "
                            f"{one_line(str(exc))}"), traceback=traceback.format_exc()))
            raise
        self._finish(tasks, done)
        return True

    def _take(self, block: bool) -> list[tuple[_Job, int]]:
        """The queued files of the head's kind, in arrival order, up to another kind."""
        with self._lock:
            while block and not self._queue and not self._closed:
                self._lock.wait()
            if self._closed or not self._queue:
                return []
            kind = self._queue[0][0].tasks[self._queue[0][1]].job
            count = next((i for i, (job, n) in enumerate(self._queue)
                          if job.tasks[n].job != kind), len(self._queue))
            batch, self._queue = self._queue[:count], self._queue[count:]
            self._running = True
            return batch

    def _finish(self, tasks: list[Task], done: list[bool]) -> None:
        with self._lock:
            self._running = False
        self.executor.clean(tasks, done)


def _commit(task: Task, result: Result) -> Result:
    if not result.ok or result.skipped or task.held is None:
        return result
    try:
        commit(task.held, task.dst)
    except OutputError as exc:
        return Result(task.name, error=one_line(str(exc)), notes=result.notes)
    return result
