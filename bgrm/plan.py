"""One plan for a run, whichever door it came in by: the command line's
``bgrm image`` / ``bgrm video`` and the service's requests alike.

``settings.SETTINGS`` is the one table of run settings, whose values
``settings.RunSettings`` carries. ``plan`` turns a job's options, its model, its files and the settings into
the ``Runtime`` every file runs with and how many files run at once;
``executor`` picks where they run. Outputs are named by one rule,
``batch.output_name``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bgrm import batch
from bgrm.models import ResolvedModel
from bgrm.run import Executor, Runtime
from bgrm.settings import RunSettings


@dataclass(frozen=True)
class Plan:
    runtime: Runtime  # how every file runs the model
    file_threads: int  # files at once on threads of one process


def plan(job: str, opts, model: ResolvedModel, files: list[Path], settings: RunSettings, *,
         long_lived: bool = False) -> Plan:
    """How the model runs for every file, and how many files at once.

    ``long_lived``: the service, whose runner takes one file at a time beside
    the event loop. On a cluster each worker sizes and places its own sessions
    (run.cluster). A command runs one process by default: images run several
    files at once on its threads where each has work besides the model
    (``batch.default_file_threads``), a video uses every core per file.
    """
    scheduler, workers = settings.scheduler, settings.workers
    matting = opts.matting.enabled
    # A 1024-input model: one file at a time (a second inference at once would
    # double its activation memory, and one already keeps every core busy).
    file_threads = 1 if long_lived or scheduler or settings.processes or model.big else \
        batch.default_file_threads(job, files, matting)
    threads, lanes = settings.threads, 1
    if not scheduler:
        at_once = max(1, min(workers * file_threads, len(files) or 1)) if not long_lived \
            else workers
        threads = threads or max(1, (os.cpu_count() or 1) // at_once)
        if job == "video":
            from bgrm.segment import video_lanes

            threads, lanes = video_lanes(model, settings.device, threads)
    # The one place that decides onnxruntime's spinning (the preload, run_task and
    # run.cluster all read runtime.spinning, so one session is made). Video overlaps
    # decode, inference, masks and encode on threads, where spinning only steals
    # their cores; in the service the event loop shares the cores and must get one
    # at once.
    spinning = not long_lived and not matting and job == "image"
    runtime = Runtime(model, settings.device, threads, settings.skip_existing,
                      settings.traceback, spinning=spinning, lanes=lanes,
                      engine=settings.engine)
    return Plan(runtime, file_threads)


def executor(settings: RunSettings, count: int, file_threads: int = 1, *,
             long_lived: bool = False, say: Callable[[str], None]) -> Executor:
    """Where ``count`` files run: a cluster when given, ``--workers`` worker processes,
    threads of this process, or this thread alone. A long-lived runner (the
    service's, on a thread of its own, where ``Inline``'s SIGALRM timer cannot
    reach) always has an executor of threads or processes."""
    timeout = settings.timeout
    if settings.scheduler:
        from bgrm.run.cluster import Cluster, require_dask

        require_dask()
        return Cluster(settings.scheduler, timeout=timeout, say=say)
    if settings.workers > 1 and (count > 1 or long_lived):
        from bgrm.run.processes import Processes

        return Processes(settings.workers, timeout=timeout)
    from bgrm.run.local import Inline, Threads

    if long_lived or file_threads > 1 and count > 1:
        return Threads(file_threads, timeout=timeout)
    return Inline(timeout=timeout)
