"""``bgrm video long.mp4 --scheduler``: one long video's segments as Dask tasks.

The thin glue between ``bgrm.video.segments`` (plan, parts, join) and the
cluster code (connection, the workers' model cache, progress events). Each
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
import queue
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bgrm import __version__
from bgrm.errors import BgrmError
from bgrm.outputs import TMP_MARK
from bgrm.report import Result
from bgrm.video import segments


def _cluster():
    """The cluster module: its connection, plugin and event helpers."""
    from bgrm import distributed

    return distributed


class _Gone(Exception):
    """The segment's video was given up: its parts folder is gone."""


def parts_folder(dst: Path, run: str) -> Path:
    # Hidden and marked as bgrm's temporary: a folder input never picks it up.
    return dst.with_name(f".{dst.name}{TMP_MARK}parts-{run}")


# -- on the workers ----------------------------------------------------------------------


def make_part(job, folder: Path, span: segments.Span, run: str, client_version: str):
    """The task: one segment on a worker -> ``("part", Part)`` or ``("error", message)``."""
    from distributed import get_worker

    from bgrm.segment import get_segmenter

    cluster = _cluster()
    worker = get_worker()
    if client_version != __version__:
        return "error", (f"{job.name}: worker {worker.address} runs bgrm {__version__} and "
                         f"this client bgrm {client_version}; install the same version "
                         "everywhere")
    sent = [0, time.monotonic()]

    def progress(n: int) -> None:
        sent[0] += n
        if time.monotonic() - sent[1] >= cluster.PROGRESS_EVERY_S:
            if not folder.is_dir():
                raise _Gone(f"{job.name}: segment {span.index} given up")
            worker.log_event(cluster.TOPIC, {"run": run, "i": span.index, "n": sent[0]})
            sent[1] = time.monotonic()

    try:
        runtime = cluster._plugin(worker).runtime(job.runtime)
        segmenter = get_segmenter(runtime.model, runtime.device, runtime.threads,
                                  runtime.spinning)
        part = segments.make_part(job.src, folder, span, job.options, segmenter, progress)
    except BgrmError as exc:
        # The same on any worker: said once, not retried.
        return "error", " ".join(str(exc).split())
    worker.log_event(cluster.TOPIC, {"run": run, "i": span.index, "n": sent[0]})
    return "part", part


# -- on the client -----------------------------------------------------------------------


def plan_or_none(job) -> segments.Plan | None:
    """The job's plan when it is worth splitting, else None (run whole)."""
    if job.kind != "video" or (job.runtime.skip_existing and job.dst.exists()):
        return None
    try:
        plan = segments.plan(job.src, job.options, job.options.segment_seconds)
    except BgrmError:
        return None  # a broken file: its whole run says what is wrong, as usual
    return plan if plan.split else None


def run_on_cluster(address: str, jobs: list, on_progress: Callable[[int, int], None],
                   on_result: Callable[[int, Result], None]) -> list[Result]:
    """``distributed.run_on_cluster`` with long videos split: the others run one
    file per task first, then each long video over the whole cluster."""
    cluster = _cluster()
    cluster.require_dask()
    plans = {i: p for i, job in enumerate(jobs) if (p := plan_or_none(job)) is not None}
    whole = [i for i in range(len(jobs)) if i not in plans]
    results: list[Result | None] = [None] * len(jobs)
    if whole:
        done = cluster.run_on_cluster(
            address, [jobs[i] for i in whole],
            lambda k, n: on_progress(whole[k], n), lambda k, r: on_result(whole[k], r))
        for k, result in zip(whole, done, strict=True):
            results[k] = result
    if plans:
        client = cluster._connect(address)
        try:
            cluster._register(client, address)
            for index, plan in plans.items():
                result = run_split(client, jobs[index], plan,
                                   lambda n, i=index: on_progress(i, n))
                results[index] = result
                on_result(index, result)
        finally:
            with contextlib.suppress(Exception):
                client.close()
    return results  # type: ignore[return-value]


def run_split(client, job, plan: segments.Plan, progress: Callable[[int], None]) -> Result:
    """One video as ``plan``'s segments on the cluster, joined into ``job.dst``."""
    cluster = _cluster()
    run = uuid.uuid4().hex
    folder = parts_folder(job.dst, run)
    events: queue.Queue = queue.Queue()  # filled on the client's event loop thread
    reported = dict.fromkeys(range(len(plan.spans)), 0)  # retries never count twice

    def on_event(event) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("run") == run:
            events.put(("progress", msg["i"], msg["n"]))

    def advance(i: int, n: int) -> None:
        if n > reported[i]:
            progress(n - reported[i])
            reported[i] = n

    futures: dict[int, object] = {}
    try:
        folder.mkdir(parents=True)
        client.subscribe_topic(cluster.TOPIC, on_event)
        for span in plan.spans:
            future = client.submit(make_part, job, folder, span, run, __version__,
                                   key=f"bgrm-segment-{run}-{span.index}",
                                   retries=cluster.RETRIES, pure=False)
            future.add_done_callback(lambda f, i=span.index: events.put(("done", i, 0)))
            futures[span.index] = future
        parts, error = [], None
        while futures and error is None:
            what, i, n = events.get()
            if what == "progress":
                advance(i, n)
                continue
            future = futures.pop(i, None)
            if future is None:
                continue
            try:
                kind, value = future.result()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - lost workers, cancellations
                error = cluster._failure(job, exc).error
                continue
            if kind == "error":
                error = value
            else:
                advance(i, value.count)
                parts.append(value)
        if error is not None:
            return Result(job.name, error=error)
        count = segments.join(parts, job.src, job.dst, job.options, job.name)
        notes = list(dict.fromkeys(note for p in sorted(parts, key=lambda p: p.index)
                                   for note in p.notes))
        return Result(job.name, job.dst, notes=notes) if count else \
            Result(job.name, error=f"{job.name}: no video frames could be decoded")
    except BgrmError as exc:
        return Result(job.name, error=" ".join(str(exc).split()))
    finally:
        # Ctrl-C, a failed segment or done: segments still running stop at their
        # next report (their folder is gone), those not started never start.
        with contextlib.suppress(Exception):
            client.cancel(list(futures.values()))
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(cluster.TOPIC)
        shutil.rmtree(folder, ignore_errors=True)
