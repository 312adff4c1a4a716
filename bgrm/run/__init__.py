"""One way to run a batch: each input is one ``Task``, each task gives one ``Result``.

An ``Executor`` runs tasks somewhere: in this thread (``local.Inline``), on
threads of this process (``local.Threads``), on worker processes
(``processes.Processes``) or on a Dask cluster (``cluster.Cluster``). Each one
only starts tasks and emits what happens (``Progress``, ``Done``); what they
share is here, once, in ``Executor.run``:

- ``--skip-existing`` is decided before anything starts;
- each output is written under a held name and moved into place here, when its
  result is in hand, so a file reported failed (timed out, its worker or its
  cluster lost) is never written afterwards;
- results reach the listener in input order, progress as it comes;
- one interrupt path: on Ctrl-C or an error the executor's ``stop()`` runs with
  further Ctrl-C ignored, then one cleanup of held outputs and temporaries.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import traceback
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bgrm.errors import BgrmError, OutputError, one_line
from bgrm.models import ResolvedModel
from bgrm.outputs import commit, held_name, holding, remove_leftovers, remove_tmp
from bgrm.report import Result


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


def run_task(task: Task, progress: Callable[[int], None]) -> Result:
    """Process one file; every failure becomes the result's error, never an exception."""
    from bgrm.api import Session

    try:
        rt = task.runtime
        session = Session(rt.model, device=rt.device, threads=rt.threads, spinning=rt.spinning)
        with holding(task.dst, task.held) if task.held else contextlib.nullcontext():
            done = session.write(task.job, task.src, task.dst, task.options, progress)
        return Result(task.name, task.dst, notes=list(done.notes), crop_box=done.crop_box)
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
        """Results of ``tasks``, in their order; see the module's docstring."""
        listener = listener or Listener()
        token = uuid.uuid4().hex[:12]
        tasks = [replace(t, held=held_name(t.dst, f"{token}-{i}")) for i, t in enumerate(tasks)]
        results: list[Result | None] = [None] * len(tasks)
        told = 0  # results up to here went to listener.result, in input order

        def deliver(index: int, result: Result) -> None:
            nonlocal told
            results[index] = result
            listener.finished(index, result)
            while told < len(results) and results[told] is not None:
                listener.result(told, results[told])
                told += 1

        def emit(event: Progress | Done) -> None:
            if isinstance(event, Progress):
                listener.progress(event.index, event.n)
            elif results[event.index] is None:  # a late second word is ignored
                deliver(event.index, _commit(tasks[event.index], event.result))

        todo = []
        for i, task in enumerate(tasks):
            if task.runtime.skip_existing and task.dst.exists():
                deliver(i, Result(task.name, task.dst, skipped=True))
            else:
                todo.append((i, task))
        try:
            if todo:
                self.execute(todo, emit)
        except BaseException:
            with interrupts_ignored():
                try:
                    self.stop()
                finally:
                    self._clean(tasks, results)
            raise
        self._clean(tasks, results)
        return results  # type: ignore[return-value]

    def _clean(self, tasks: list[Task], results: list[Result | None]) -> None:
        """The one cleanup: held outputs never moved into place, and temporaries of
        workers that ended without removing their own."""
        for task, result in zip(tasks, results, strict=True):
            if result is None or not result.ok:
                remove_tmp(task.held)  # a file, or a PNG sequence's folder
        folders = {t.dst.parent for t in tasks}
        for pid in self.dead_pids:
            remove_leftovers(folders, pid)
        for name in self.leftovers:
            remove_tmp(Path(name))


def _commit(task: Task, result: Result) -> Result:
    if not result.ok or result.skipped or task.held is None:
        return result
    try:
        commit(task.held, task.dst)
    except OutputError as exc:
        return Result(task.name, error=one_line(str(exc)), notes=result.notes)
    return result


def executor_for(count: int, *, processes: int, file_threads: int, timeout: float | None,
                 scheduler: str | None, say: Callable[[str], None]) -> Executor:
    """The executor for ``count`` files: a cluster when given, ``processes`` worker
    processes, ``file_threads`` threads of this process, or this thread alone."""
    if scheduler:
        from bgrm.run.cluster import Cluster

        return Cluster(scheduler, timeout=timeout, say=say)
    if processes > 1 and count > 1:
        from bgrm.run.processes import Processes

        return Processes(processes, timeout=timeout)
    from bgrm.run.local import Inline, Threads

    if file_threads > 1 and count > 1:
        return Threads(file_threads, timeout=timeout)
    return Inline(timeout=timeout)
