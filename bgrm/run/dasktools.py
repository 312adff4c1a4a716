"""What the Dask client and its workers share, for whole files (``cluster``) and
long videos' segments (``splits``): the event topic, the workers' model
cache, the version check and the failure messages.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import replace
from pathlib import Path

from bgrm.errors import ParameterError
from bgrm.report import Result
from bgrm.version import __version__

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


def require_dask() -> None:
    """A ParameterError that says what to install, when Dask distributed is missing."""
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
        from bgrm.segment import SEGMENTERS

        for path in list(self._stamps):
            SEGMENTERS.forget(path)
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
                from bgrm.segment import SEGMENTERS

                SEGMENTERS.forget(model.path)  # replaced on disk since it was loaded
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


def plugin(worker) -> ModelCache:
    """The worker's ``ModelCache``, made here when it is not registered yet."""
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None:  # registered after this worker's task began: one of its own
        plugin = ModelCache()
        plugin.setup(worker)
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin


class Events:
    """The client's one event pump, for a batch of files and a long video's segments
    alike: one run's progress reports (the shared topic, picked out by run id) and
    its futures' completions, in one queue filled on the client's event loop thread.

    Events are ``("progress", {"i": index, "n": units done, ...})`` and
    ``("done", index)``.
    """

    def __init__(self, client, run: str):
        self.client, self.run = client, run
        self._queue: queue.Queue = queue.Queue()

    def open(self) -> None:
        self.client.subscribe_topic(TOPIC, self._on_event)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the scheduler may be gone
            self.client.unsubscribe_topic(TOPIC)

    def _on_event(self, event) -> None:
        msg = event[1]
        if isinstance(msg, dict) and msg.get("run") == self.run:
            self._queue.put(("progress", msg))

    def watch(self, future, index: int) -> None:
        """A ``("done", index)`` event when ``future`` finishes, however it does."""
        future.add_done_callback(lambda f: self._queue.put(("done", index)))

    def next(self, timeout: float | None) -> list[tuple[str, object]]:
        """The events ready now, waiting up to ``timeout`` seconds (None: for ever)
        for the first; [] when none came in time."""
        try:
            batch = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self._queue.get_nowait())
        return batch


def version_mismatch(name: str, worker, client_version: str) -> str | None:
    """Why ``worker`` cannot run ``name`` for a client of ``client_version``, or None."""
    if client_version == __version__:
        return None
    return (f"{name}: worker {worker.address} runs bgrm {__version__} and this client "
            f"bgrm {client_version}; install the same version everywhere")


def failure(task, exc: BaseException) -> Result:
    """A task's Dask failure (lost workers, cancelled, raised) as its result."""
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
