"""``--scheduler tcp://HOST:PORT``: run a batch on a Dask distributed cluster.

Each file is one task whose body is ``batch.run_job``, the same function a
local run uses, so a file comes out the same wherever it was made. The
workers read inputs and write outputs on a filesystem they share with the
client, at the paths the client named; outputs are written atomically, so a
worker lost mid-file leaves no partial output, and Dask runs the file again
elsewhere.

A worker plugin keeps one model session per worker across tasks (and across
runs: workers outlive a ``bgrm`` invocation). Registry models are resolved
again on each worker, by name, from the worker's own models directory or its
bundled u2netp; custom model paths are used as given (shared storage).

Progress and the temporary file each attempt writes travel as Dask events on
one topic; results come back as task results, in job order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bgrm import __version__
from bgrm.errors import BgrmError, ExitStatus, ParameterError
from bgrm.outputs import remove_tmp
from bgrm.report import Result

try:
    from distributed import WorkerPlugin
except ImportError as exc:  # the optional extra is not installed
    WorkerPlugin = object  # type: ignore[assignment,misc]
    _MISSING: ImportError | None = exc
else:
    _MISSING = None

PLUGIN_NAME = "bgrm-models"
TOPIC = "bgrm-progress"  # one shared topic: the scheduler keeps a bounded log per topic
RETRIES = 2  # for an exception escaping a task; lost workers are Dask's allowed-failures
PROGRESS_EVERY_S = 0.25  # at most this often per task, so long videos do not flood
MIN_IN_FLIGHT = 64  # tasks submitted ahead; more with more worker threads


class ClusterError(BgrmError):
    """The scheduler cannot be reached, or its workers cannot run bgrm."""

    exit_status = ExitStatus.FAILED


def require_dask() -> None:
    if _MISSING is not None:
        raise ParameterError("--scheduler needs Dask distributed, which is not installed "
                             f"({_MISSING}); install it with: pip install 'bgrm[dask]'")


# -- on the workers ----------------------------------------------------------------------


class ModelCache(WorkerPlugin):
    """One segmenter per model, device and thread count on each worker.

    ``segment.get_segmenter`` already caches per process (a Dask worker is one
    process); this plugin adds what a long-lived, multi-threaded worker needs:
    re-resolving the model where the worker is, loading it once under a lock
    when several task threads start together, noticing a model file replaced
    on disk between runs, and freeing the sessions when the plugin goes.
    """

    name = PLUGIN_NAME
    idempotent = True  # a later run reuses the workers' loaded models

    def setup(self, worker) -> None:
        state = getattr(worker, "state", None)
        self.nthreads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", 1)
        self._lock = threading.Lock()
        self._stamps: dict[str, tuple | None] = {}  # model path -> its file when loaded
        self._resolved: dict[str, tuple] = {}  # registry name -> (ResolvedModel, stamp)

    def teardown(self, worker) -> None:
        from bgrm import segment

        for path in list(self._stamps):
            _forget(segment, path)
        self._stamps.clear()
        self._resolved.clear()

    def runtime(self, runtime):
        """``runtime`` as this worker runs it: its model file, its thread count."""
        from bgrm.segment import get_segmenter

        if runtime.threads:
            threads = runtime.threads
        else:
            from dask.system import CPU_COUNT

            # Task threads share the cores: each session gets its share.
            threads = max(1, CPU_COUNT // max(1, self.nthreads))
        with self._lock:
            model = runtime.model
            if not model.custom:
                model = self._resolve(model.spec.name)
            runtime = replace(runtime, model=model, threads=threads)
            stamp = _stamp(model.path)
            if self._stamps.get(str(model.path), stamp) != stamp:
                from bgrm import segment

                _forget(segment, str(model.path))  # replaced on disk since it was loaded
            self._stamps[str(model.path)] = stamp
            with contextlib.suppress(Exception):
                # Errors are left to run_job, which reports them as a local run does.
                get_segmenter(model, runtime.device, threads, runtime.spinning)
        return runtime

    def _resolve(self, name: str):
        """``models.resolve(name)`` on this worker, its md5 check done once per file."""
        from bgrm.models import REGISTRY, installed_path, resolve

        installed = installed_path(REGISTRY[name])
        hit = self._resolved.get(name)
        if hit is not None:
            model, stamp = hit
            # Still the file resolve would pick (an install wins over the
            # bundled copy), and unchanged since it was checked.
            if (model.path == installed or not installed.is_file()) and \
                    stamp is not None and _stamp(model.path) == stamp:
                return model
        model = resolve(name)
        self._resolved[name] = (model, _stamp(model.path))
        return model


def _stamp(path: Path) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _forget(segment, path: str) -> None:
    for key in [k for k in segment._CACHE if k[0] == path]:
        del segment._CACHE[key]


def _plugin(worker) -> ModelCache:
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None:  # registered after this worker's task began: one of its own
        plugin = ModelCache()
        plugin.setup(worker)
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin


def process(job, index: int, run: str, client_version: str):
    """The task: one file on a worker. Returns ``(progress_done, Result)``."""
    from distributed import get_worker

    from bgrm.batch import run_job
    from bgrm.outputs import tmp_name

    worker = get_worker()
    if client_version != __version__:
        return 0, Result(job.name, error=(
            f"{job.name}: worker {worker.address} runs bgrm {__version__} and this "
            f"client bgrm {client_version}; install the same version everywhere"))
    sent = [0, 0, time.monotonic()]  # done, reported, when

    def report(**extra) -> None:
        worker.log_event(TOPIC, {"run": run, "i": index, "n": sent[0], **extra})
        sent[1], sent[2] = sent[0], time.monotonic()

    # The first event names this attempt's temporary file, so the client can
    # remove it should the worker die before it is renamed or cleaned.
    report(tmp=str(tmp_name(job.dst)))

    def progress(n: int) -> None:
        sent[0] += n
        if time.monotonic() - sent[2] >= PROGRESS_EVERY_S:
            report()

    try:
        runtime = _plugin(worker).runtime(job.runtime)
    except BgrmError as exc:
        return 0, Result(job.name, error=f"{job.name}: on worker {worker.address}: {exc}")
    result = run_job(replace(job, runtime=runtime), progress)
    if sent[0] != sent[1]:
        report()
    return sent[0], result


# -- on the client -----------------------------------------------------------------------


def _connect(address: str):
    from distributed import Client
    from distributed.comm import get_address_host_port

    try:
        # Checked before Client(): a client that failed to start on a bad
        # address hangs for a minute in its finaliser.
        get_address_host_port(address)
    except NotImplementedError:  # a transport without host:port (inproc)
        pass
    except (ValueError, TypeError) as exc:
        raise ParameterError(f"--scheduler {address}: not a Dask scheduler address "
                             f"({exc}); use tcp://HOST:PORT") from None
    try:
        return Client(address, set_as_default=False, name="bgrm")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc} "
                           "(is `dask scheduler` running there?)") from None


def _register(client, address: str) -> None:
    register = getattr(client, "register_plugin", None) or client.register_worker_plugin
    try:
        register(ModelCache(), name=PLUGIN_NAME)
    except Exception as exc:  # noqa: BLE001 - whatever the worker raised, said once
        raise ClusterError(f"a worker of {address} cannot load bgrm "
                           f"({type(exc).__name__}: {exc}); every worker needs bgrm and "
                           "its models installed: pip install 'bgrm[dask]'") from None


def _failure(job, exc: BaseException) -> Result:
    kind = type(exc).__name__
    if kind == "KilledWorker":
        tries = getattr(exc, "allowed_failures", 0) + 1
        return Result(job.name, error=f"{job.name}: the worker processing it died, "
                                      f"{tries} times on different workers (out of memory?)")
    if kind in ("CancelledError", "FutureCancelledError"):
        return Result(job.name, error=f"{job.name}: cancelled on the cluster (the scheduler "
                                      "went away, or the task was cancelled there)")
    hint = ""
    if isinstance(exc, ImportError) and "bgrm" in str(exc):
        hint = " (every worker needs bgrm installed, the same version as here)"
    return Result(job.name, error=f"{job.name}: failed on the cluster: {kind}: {exc}{hint}")


def run_on_cluster(address: str, jobs: list, on_progress: Callable[[int, int], None],
                   on_result: Callable[[int, Result], None]) -> list[Result]:
    """Run ``jobs`` on the Dask cluster at ``address``; results in job order.

    ``on_progress(index, n)`` and ``on_result(index, result)`` are called on
    the calling thread, as a local run calls them.
    """
    require_dask()
    if not jobs:
        return []
    if not jobs[0].runtime.traceback:
        # Dask logs its reconnection attempts with tracebacks; each file's
        # failure already says what happened, in one line.
        for name in ["distributed", *logging.root.manager.loggerDict]:
            if name.split(".")[0] == "distributed":
                logging.getLogger(name).setLevel(logging.CRITICAL)
    client = _connect(address)
    try:
        return _run(client, address, jobs, on_progress, on_result)
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _run(client, address, jobs, on_progress, on_result) -> list[Result]:
    _register(client, address)
    if not client.nthreads():
        from click import echo

        echo(f"bgrm: no workers at {address} yet; waiting for some to join "
             f"(dask worker {address})", err=True)
    run = uuid.uuid4().hex
    events: queue.Queue = queue.Queue()  # filled on the client's event loop thread
    reported = [0] * len(jobs)  # progress forwarded per job: retries never count twice
    tmps: list[set[str]] = [set() for _ in jobs]  # temporaries each attempt announced

    def on_event(event) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("run") == run:
            events.put(("progress", msg))

    client.subscribe_topic(TOPIC, on_event)
    results: list[Result | None] = [None] * len(jobs)
    futures: dict[int, object] = {}
    todo = iter(range(len(jobs)))
    kind = jobs[0].kind

    window = [MIN_IN_FLIGHT, 0.0]  # tasks to keep submitted ahead, when last sized

    def submit() -> None:
        if time.monotonic() - window[1] > 5:  # workers come and go
            with contextlib.suppress(Exception):  # the scheduler away: keep the last size
                threads = sum(client.nthreads().values())
                window[0] = max(MIN_IN_FLIGHT, 4 * threads)
            window[1] = time.monotonic()
        count = window[0] - len(futures)
        if count <= 0:
            return
        for index in todo:
            future = client.submit(process, jobs[index], index, run, __version__,
                                   key=f"bgrm-{kind}-{run}-{index}", retries=RETRIES,
                                   pure=False)
            future.add_done_callback(lambda f, i=index: events.put(("done", i)))
            futures[index] = future
            count -= 1
            if count <= 0:
                return

    def advance(index: int, done: int) -> None:
        if done > reported[index]:
            on_progress(index, done - reported[index])
            reported[index] = done

    def finish(index: int, result: Result) -> None:
        results[index] = result
        on_result(index, result)

    try:
        submit()
        remaining = len(jobs)
        while remaining:
            batch = [events.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(events.get_nowait())
            finished = []
            for what, payload in batch:
                if what == "progress":
                    if "tmp" in payload:
                        tmps[payload["i"]].add(payload["tmp"])
                    advance(payload["i"], payload["n"])
                elif payload in futures:
                    finished.append(payload)
            if finished:
                remaining -= len(finished)
                done = {i: futures.pop(i) for i in finished}
                ready = [i for i in finished if done[i].status == "finished"]
                try:
                    # One round trip for every result that is ready.
                    values = dict(zip(ready, client.gather([done[i] for i in ready]),
                                      strict=True)) if ready else {}
                except Exception:  # noqa: BLE001 - lost meanwhile: asked one by one below
                    values = {}
                for index, future in done.items():
                    try:
                        count, result = values[index] if index in values else future.result()
                        advance(index, count)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException as exc:  # noqa: BLE001 - cancelled futures raise too
                        result = _failure(jobs[index], exc)
                    finish(index, result)
            submit()
    except BaseException:
        # Ctrl-C or a lost client: files not started are dropped; those running
        # finish or not on their workers, atomically either way.
        with contextlib.suppress(Exception):
            client.cancel(list(futures.values()))
        raise
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(TOPIC)
    _remove_leftovers(tmps, results)
    return results  # type: ignore[return-value]


def _remove_leftovers(tmps: list[set[str]], results: list) -> None:
    """Temporaries of attempts whose worker died before cleaning up after itself.

    A finished attempt renamed or removed its own, so only files run more than
    once, or not to the end, are looked at: one unlink per name, no listing.
    """
    for names, result in zip(tmps, results, strict=True):
        if len(names) > 1 or not result.ok:
            for name in names:
                remove_tmp(Path(name))  # a file, or a PNG sequence's folder
