"""``bgrm video long.mp4 --scheduler``: one long video's segments as Dask tasks.

The thin glue between ``bgrm.video.segments`` (plan, parts, join) and what the
Dask client and workers share (``dasktools``: the workers' model cache,
progress events). Each
segment is one task; its part is written atomically into a hidden folder
beside the output, which the client removes at the end whatever happened.
A worker lost mid-segment leaves at most a temporary file in that folder, and
Dask runs the segment again elsewhere. A segment still running when its video
is given up (a failure elsewhere, Ctrl-C) finds the folder gone at its next
progress report and stops. The client joins the parts and writes the output
atomically: it is there whole, or not at all.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bgrm.errors import BgrmError
from bgrm.outputs import TMP_MARK, holding
from bgrm.report import Result
from bgrm.run.base import Done, Progress, timed_out
from bgrm.run.dasktools import (
    PROGRESS_EVERY_S,
    RETRIES,
    TOPIC,
    Events,
    failure,
    plugin,
    version_mismatch,
)
from bgrm.version import __version__
from bgrm.video import segments


class _Gone(Exception):
    """The segment's video was given up: its parts folder is gone."""


def parts_folder(dst: Path, run: str) -> Path:
    # Hidden and marked as bgrm's temporary: a folder input never picks it up.
    return dst.with_name(f".{dst.name}{TMP_MARK}parts-{run}")


# -- on the workers ----------------------------------------------------------------------


def make_part(task, folder: Path, span: segments.Span, run: str, client_version: str):
    """The task: one segment on a worker -> ``("part", Part)`` or ``("error", message)``."""
    from distributed import get_worker

    from bgrm.segment import get_segmenter

    worker = get_worker()
    mismatch = version_mismatch(task.name, worker, client_version)
    if mismatch:
        return "error", mismatch
    sent = [0, time.monotonic()]

    def progress(n: int) -> None:
        sent[0] += n
        if time.monotonic() - sent[1] >= PROGRESS_EVERY_S:
            if not folder.is_dir():
                raise _Gone(f"{task.name}: segment {span.index} given up")
            worker.log_event(TOPIC, {"run": run, "i": span.index, "n": sent[0]})
            sent[1] = time.monotonic()

    try:
        runtime = plugin(worker).runtime(task.runtime)
        segmenter = get_segmenter(runtime.model, runtime.device, runtime.threads,
                                  runtime.spinning, engine=runtime.engine)
        part = segments.make_part(task.src, folder, span, task.options, segmenter, progress)
    except BgrmError as exc:
        # The same on any worker: said once, not retried.
        return "error", " ".join(str(exc).split())
    worker.log_event(TOPIC, {"run": run, "i": span.index, "n": sent[0]})
    return "part", part


# -- on the client -----------------------------------------------------------------------


def plan_or_none(task, say: Callable[[str], None] = lambda m: None) -> segments.Plan | None:
    """The task's plan when it is worth splitting, else None (run whole); ``say``
    hears why a long video is not split."""
    if task.job != "video" or (task.runtime.skip_existing and task.dst.exists()):
        return None
    try:
        plan = segments.plan(task.src, task.options, task.options.segment_seconds)
    except BgrmError:
        return None  # a broken file: its whole run says what is wrong, as usual
    why = segments.why_whole(task.options)
    if why and plan.duration and plan.duration > task.options.segment_seconds:
        say(f"{task.name}: not split into segments, runs whole on one worker: {why}")
    return plan if plan.split else None


def run_long_videos(items: list[tuple[int, object]], say: Callable[[str], None]):
    """``(the other items, run)``: ``run(client, emit, timeout)`` runs the long
    videos among ``items``, one after the other, each over the whole cluster, and
    emits their progress and results as ``Cluster`` does."""
    plans = {i: p for i, task in items if (p := plan_or_none(task, say)) is not None}
    long = [(i, t) for i, t in items if i in plans]

    def run(client, emit, timeout: float | None) -> None:
        for index, task in long:
            result = run_split(client, task, plans[index],
                               lambda n, i=index: emit(Progress(i, n)), timeout)
            emit(Done(index, result))

    return [(i, t) for i, t in items if i not in plans], run


def run_split(client, task, plan: segments.Plan, progress: Callable[[int], None],
              timeout: float | None = None) -> Result:
    """One video as ``plan``'s segments on the cluster, joined into ``task.dst`` (or
    its held name, which ``Executor.run`` moves into place); ``timeout``: seconds
    for the whole video."""
    split = _Split(client, task, plan, progress)
    try:
        split.submit()
        parts, failed = split.wait(timeout)
        return failed if failed is not None else split.join(parts)
    except BgrmError as exc:
        return Result(task.name, error=" ".join(str(exc).split()))
    finally:
        split.close()


class _Split:
    """One video's segments on the cluster: submitted, awaited, joined, cleaned up."""

    def __init__(self, client, task, plan: segments.Plan, progress: Callable[[int], None]):
        self.client, self.task, self.plan, self.progress = client, task, plan, progress
        self.run = uuid.uuid4().hex
        self.folder = parts_folder(task.dst, self.run)
        self.events = Events(client, self.run)
        self.reported = dict.fromkeys(range(len(plan.spans)), 0)  # retries never count twice
        self.futures: dict[int, object] = {}

    def advance(self, i: int, n: int) -> None:
        if n > self.reported[i]:
            self.progress(n - self.reported[i])
            self.reported[i] = n

    def submit(self) -> None:
        """The parts folder, the progress subscription, one task per segment."""
        self.folder.mkdir(parents=True)
        self.events.open()
        for span in self.plan.spans:
            future = self.client.submit(make_part, self.task, self.folder, span, self.run,
                                        __version__, key=f"bgrm-segment-{self.run}-{span.index}",
                                        retries=RETRIES, pure=False)
            self.events.watch(future, span.index)
            self.futures[span.index] = future

    def wait(self, timeout: float | None) -> tuple[list[segments.Part], Result | None]:
        """``(every part, None)``, or at the first failure or the timeout
        ``(the parts so far, the failed Result)``."""
        parts: list[segments.Part] = []
        error = None
        until = None if not timeout else time.monotonic() + timeout
        while self.futures and error is None:
            ready = self.events.next(None if until is None else
                                     max(0.0, until - time.monotonic()))
            if not ready:
                return parts, timed_out(self.task, timeout)
            for what, payload in ready:
                if error is not None:
                    break  # the video is given up: the rest is not counted
                if what == "progress":
                    self.advance(payload["i"], payload["n"])
                    continue
                future = self.futures.pop(payload, None)
                if future is None:
                    continue
                part, error = self.settle(future)
                if part is not None:
                    self.advance(payload, part.count)
                    parts.append(part)
        return parts, None if error is None else Result(self.task.name, error=error)

    def settle(self, future) -> tuple[segments.Part | None, str | None]:
        """A finished segment: ``(its part, None)`` or ``(None, why it failed)``."""
        try:
            kind, value = future.result()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - lost workers, cancellations
            return None, failure(self.task, exc).error
        return (None, value) if kind == "error" else (value, None)

    def join(self, parts: list[segments.Part]) -> Result:
        task = self.task
        with holding(task.dst, task.held) if task.held else contextlib.nullcontext():
            count = segments.join(parts, task.src, task.dst, task.options, task.name)
        notes = list(dict.fromkeys(note for p in sorted(parts, key=lambda p: p.index)
                                   for note in p.notes))
        return Result(task.name, task.dst, notes=notes) if count else \
            Result(task.name, error=f"{task.name}: no video frames could be decoded")

    def close(self) -> None:
        # Ctrl-C, a failed segment or done: segments still running stop at their
        # next report (their folder is gone), those not started never start.
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.futures.values()))
        self.events.close()
        shutil.rmtree(self.folder, ignore_errors=True)
