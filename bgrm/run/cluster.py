"""``--scheduler tcp://HOST:PORT``: run a batch on a Dask distributed cluster.

Each file is one task whose body is ``run_task``, the same function a local
run uses, so a file comes out the same wherever it was made. The workers read
inputs and write outputs on a filesystem they share with the client, at the
paths the client named. A worker leaves its finished output under a held name;
the client moves it into place when the result reaches it, so a file reported
failed (the scheduler lost, the task past ``--timeout``) is never written after
that, by a worker still running it. A worker lost mid-file leaves no partial
output, and Dask runs the file again elsewhere.

A worker plugin keeps one model session per worker across tasks (and across
runs: workers outlive a ``bgrm`` invocation). Registry models are resolved
again on each worker, by name, from the worker's own models directory or its
bundled u2netp; custom model paths are used as given (shared storage).

Progress and the temporary file each attempt writes travel as Dask events on
one topic; results come back as task results.
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
from bgrm.errors import BgrmError, ClusterError, ParameterError
from bgrm.report import Result
from bgrm.run import Done, Emit, Executor, Progress, timed_out

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
                # Errors are left to run_task, which reports them as a local run does.
                get_segmenter(model, runtime.device, threads, runtime.spinning,
                              engine=runtime.engine)
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


def process(task, index: int, run: str, client_version: str):
    """The task: one file on a worker. Returns ``(progress_done, Result)``."""
    from distributed import get_worker

    from bgrm.outputs import tmp_name
    from bgrm.run import run_task

    worker = get_worker()
    if client_version != __version__:
        return 0, Result(task.name, error=(
            f"{task.name}: worker {worker.address} runs bgrm {__version__} and this "
            f"client bgrm {client_version}; install the same version everywhere"))
    sent = [0, 0, time.monotonic()]  # done, reported, when

    def report(**extra) -> None:
        worker.log_event(TOPIC, {"run": run, "i": index, "n": sent[0], **extra})
        sent[1], sent[2] = sent[0], time.monotonic()

    # The first event says where this attempt runs (for --timeout) and names its
    # temporary file, so the client can remove it should the worker die before
    # it is renamed or cleaned.
    report(tmp=str(tmp_name(task.dst)), worker=worker.address)

    def progress(n: int) -> None:
        sent[0] += n
        if time.monotonic() - sent[2] >= PROGRESS_EVERY_S:
            report()

    try:
        runtime = _plugin(worker).runtime(task.runtime)
    except BgrmError as exc:
        return 0, Result(task.name, error=f"{task.name}: on worker {worker.address}: {exc}")
    result = run_task(replace(task, runtime=runtime), progress)
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
        _, port = get_address_host_port(address)
        if not 0 < int(port) < 65536:  # else Client() waits out its connect timeout
            raise ValueError(f"port {port} is outside 1-65535")
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


def _failure(task, exc: BaseException) -> Result:
    kind = type(exc).__name__
    if kind == "KilledWorker":
        tries = getattr(exc, "allowed_failures", 0) + 1
        return Result(task.name, error=f"{task.name}: the worker processing it died, "
                                      f"{tries} times on different workers (out of memory?)")
    if kind in ("CancelledError", "FutureCancelledError"):
        return Result(task.name, error=f"{task.name}: cancelled on the cluster (the scheduler "
                                      "went away, or the task was cancelled there)")
    hint = ""
    if isinstance(exc, ImportError) and "bgrm" in str(exc):
        hint = " (every worker needs bgrm installed, the same version as here)"
    return Result(task.name, error=f"{task.name}: failed on the cluster: {kind}: {exc}{hint}")


@contextlib.contextmanager
def _quiet_dask():
    """Dask's loggers at CRITICAL while inside; each one's own level back after."""
    loggers = [logging.getLogger(name) for name in ["distributed",
                                                    *logging.root.manager.loggerDict]
               if name.split(".")[0] == "distributed"]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Cluster(Executor):
    """The tasks on the Dask cluster at ``address``, as many at once as it has threads."""

    def __init__(self, address: str, timeout: float | None = None,
                 say: Callable[[str], None] = lambda m: None):
        super().__init__(1, timeout)
        self.address, self.say = address, say
        self._client = None
        self._futures: dict[int, object] = {}

    def execute(self, items: list[tuple[int, object]], emit: Emit) -> None:
        require_dask()
        # Dask logs its reconnection attempts with tracebacks; each file's failure
        # already says what happened, in one line. Only while this batch runs:
        # the host process (the service, a notebook) keeps its own logging.
        quiet = contextlib.nullcontext() if items[0][1].runtime.traceback else _quiet_dask()
        with quiet:
            self._execute(items, emit)

    def _execute(self, items: list[tuple[int, object]], emit: Emit) -> None:
        self._client = _connect(self.address)
        try:
            _register(self._client, self.address)
            if not self._client.nthreads():
                self.say(f"no workers at {self.address} yet; waiting for some to join "
                         f"(dask worker {self.address})")
            # A video longer than --segment-seconds is split into segments over the
            # whole cluster, so one long file does not keep a single worker busy.
            from bgrm.video.segments_dask import run_long_videos

            items, long = run_long_videos(items, self.say)
            if items:
                _Run(self, dict(items), emit).loop()
            long(self._client, emit, self.timeout)
        finally:
            with contextlib.suppress(Exception):
                self._client.close()

    def stop(self) -> None:
        # Ctrl-C or a lost client: files not started are dropped; those running
        # finish or not on their workers, and are never moved into place.
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.cancel(list(self._futures.values()))


class _Run:
    """One batch on the client: submit ahead, forward events, gather results."""

    def __init__(self, cluster: Cluster, tasks: dict, emit: Emit):
        self.cluster, self.client, self.tasks, self.emit = cluster, cluster._client, tasks, emit
        self.futures = cluster._futures
        self.run = uuid.uuid4().hex
        self.events: queue.Queue = queue.Queue()  # filled on the client's event loop thread
        self.reported = dict.fromkeys(tasks, 0)  # progress forwarded: retries never count twice
        self.tmps: dict[int, set[str]] = {i: set() for i in tasks}  # each attempt's temporary
        self.running: dict[int, tuple[str, float]] = {}  # index -> (worker, since) for --timeout
        self.over: set[int] = set()  # reported failed by --timeout: later words are ignored
        self.todo = iter(tasks)
        self.window = [MIN_IN_FLIGHT, 0.0]  # tasks to keep submitted ahead, when last sized

    def loop(self) -> None:
        self.client.subscribe_topic(TOPIC, self._on_event)
        failed: set[int] = set()
        try:
            self._submit()
            remaining = len(self.tasks)
            while remaining:
                for index, result in self._next():
                    remaining -= 1
                    failed.update([index] if not result.ok else [])
                    self.emit(Done(index, result))
                self._submit()
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(TOPIC)
        # Temporaries of attempts whose worker died before cleaning up after
        # itself: a finished attempt renamed or removed its own.
        for index, names in self.tmps.items():
            if len(names) > 1 or index in failed:
                self.cluster.leftovers.update(names)

    def _on_event(self, event) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("run") == self.run:
            self.events.put(("progress", msg))

    def _submit(self) -> None:
        if time.monotonic() - self.window[1] > 5:  # workers come and go
            with contextlib.suppress(Exception):  # the scheduler away: keep the last size
                threads = sum(self.client.nthreads().values())
                self.window[0] = max(MIN_IN_FLIGHT, 4 * threads)
            self.window[1] = time.monotonic()
        count = self.window[0] - len(self.futures)
        for index in self.todo if count > 0 else ():
            task = self.tasks[index]
            future = self.client.submit(process, task, index, self.run, __version__,
                                        key=f"bgrm-{task.job}-{self.run}-{index}",
                                        retries=RETRIES, pure=False)
            future.add_done_callback(lambda f, i=index: self.events.put(("done", i)))
            self.futures[index] = future
            count -= 1
            if count <= 0:
                return

    def _wait(self) -> list:
        """The events ready now (at least one), or none when a --timeout falls due."""
        timeout = self.cluster.timeout
        wait_s = None
        if timeout and self.running:
            wait_s = max(0.0, min(t for _, t in self.running.values()) + timeout
                         - time.monotonic())
        try:
            batch = [self.events.get(timeout=wait_s)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self.events.get_nowait())
        return batch

    def _next(self) -> list[tuple[int, Result]]:
        """Results finished (or timed out) since the last call."""
        finished, out = [], []
        for what, payload in self._wait():
            if what == "progress":
                i = payload["i"]
                if "tmp" in payload:
                    self.tmps[i].add(payload["tmp"])
                    self.running[i] = (payload.get("worker"), time.monotonic())
                self._advance(i, payload["n"])
            elif payload in self.futures:
                finished.append(payload)
        out += self._expired()
        if finished:
            done = {i: self.futures.pop(i) for i in finished}
            ready = [i for i in finished if done[i].status == "finished"]
            try:
                # One round trip for every result that is ready.
                values = dict(zip(ready, self.client.gather([done[i] for i in ready]),
                                  strict=True)) if ready else {}
            except Exception:  # noqa: BLE001 - lost meanwhile: asked one by one below
                values = {}
            for index, future in done.items():
                self.running.pop(index, None)
                try:
                    count, result = values[index] if index in values else future.result()
                    self._advance(index, count)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:  # noqa: BLE001 - cancelled futures raise too
                    result = _failure(self.tasks[index], exc)
                if index not in self.over:
                    out.append((index, result))
        return out

    def _expired(self) -> list[tuple[int, Result]]:
        """Tasks past --timeout: failed now, cancelled, their worker restarted."""
        timeout = self.cluster.timeout
        out = []
        for index, (worker, since) in list(self.running.items()):
            if timeout and time.monotonic() - since >= timeout:
                del self.running[index]
                self.over.add(index)
                future = self.futures.get(index)
                if future is not None:
                    # Its "done" event still comes, and is counted then.
                    self.client.cancel([future])
                if worker:
                    # A hung task thread cannot be stopped but by its process:
                    # the nanny starts a fresh one (other tasks there are retried).
                    threading.Thread(target=self._restart, args=(worker,), daemon=True).start()
                out.append((index, timed_out(self.tasks[index], timeout,
                                             "; its worker is restarted")))
        return out

    def _restart(self, worker: str) -> None:
        with contextlib.suppress(Exception):
            self.client.restart_workers([worker], raise_for_error=False)

    def _advance(self, index: int, done: int) -> None:
        if index not in self.over and done > self.reported[index]:
            self.emit(Progress(index, done - self.reported[index]))
            self.reported[index] = done
