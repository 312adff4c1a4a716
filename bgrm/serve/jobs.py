"""Jobs of the service: a request's files and parameters become the same options
and ``Task``s as on the command line, run by one long-lived ``bgrm.run.Runner``
on a thread of its own, with their state in the data dir.

The data dir holds ``jobs.sqlite3`` (``store``) and one folder per job,
``jobs/<uuid>/in/`` (the uploads, named by position) and ``jobs/<uuid>/out/``
(the results, renamed into place whole). A job is durable once its uuid is
answered; a process started after a crash finishes what the last one left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import threading
import time
import traceback
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path

from bgrm.api import JOBS
from bgrm.errors import BgrmError, ModelError, ParameterError
from bgrm.models import REGISTRY, SEGMENTATION_MODELS, models_dir, resolve, status
from bgrm.options import CONVERT_TO, from_params
from bgrm.outputs import TMP_MARK, commit, remove_leftovers, remove_tmp
from bgrm.report import Result, api_results
from bgrm.run import Executor, Listener, Runner, Runtime, Task, held_path
from bgrm.serve.store import FileRow, JobRow, Store
from bgrm.serve.upload import Form

# A background is sent as a file in one of these fields, never named by a path.
BACKGROUND_FIELDS = ("bg_image", "bg_video")
# --timeout's default in serve: a photo never takes this long here (a 50 MP photo
# with alpha matting, ~1 min on 2 cores), so past it the file is hung. A video
# scales with its frames (a 1080p frame with matting takes ~3 s here).
IMAGE_TIMEOUT_S = 600.0
VIDEO_TIMEOUT_S, VIDEO_FRAME_S = 600.0, 10.0
UNKNOWN_VIDEO_TIMEOUT_S = 6 * 3600.0  # no duration in the header


@dataclass(frozen=True)
class Settings:
    """How every request's files run: the run options of ``bgrm serve``."""

    device: str = "auto"
    threads: int | None = None
    processes: int | None = None
    scheduler: str | None = None
    timeout: float | None = None  # None: the defaults above
    engine: str = "auto"  # bgrm.engine.choose


def default_timeout(tasks: list[Task]) -> float:
    """Seconds allowed per file for a batch: the largest any of its files needs."""
    from bgrm.progress import estimate_frames

    worst = 0.0
    for task in tasks:
        if task.job == "image":
            worst = max(worst, IMAGE_TIMEOUT_S)
            continue
        try:
            frames = estimate_frames(task.src, task.options)
        except Exception:  # noqa: BLE001 - a header it cannot read: the file's job says why
            frames = None
        worst = max(worst, VIDEO_TIMEOUT_S + VIDEO_FRAME_S * frames if frames
                    else UNKNOWN_VIDEO_TIMEOUT_S)
    return worst


def runtime_for(settings: Settings, job: str, model) -> Runtime:
    """How a request's files of ``job`` run the model under the service's settings."""
    # One file at a time on every core, or the cores shared by --jobs processes;
    # on a cluster each worker sizes its own (run.cluster).
    threads = settings.threads or (None if settings.scheduler else max(
        1, (os.cpu_count() or 1) // (settings.processes or 1)))
    lanes = 1
    if job == "video" and not settings.scheduler:
        from bgrm.segment import video_lanes

        threads, lanes = video_lanes(model, settings.device, threads)
    # onnxruntime's threads spin between runs when allowed; here the event loop
    # shares the cores and must get them at once.
    return Runtime(model, settings.device, threads, spinning=False, lanes=lanes,
                   engine=settings.engine)


def make_executor(settings: Settings, say) -> Executor:
    """Where the files run. Not ``executor_for``'s ``Inline``: the runner's thread
    is not the main thread, where its --timeout timer works; ``Threads`` of one
    file at a time has the same speed and times out anywhere."""
    if settings.scheduler:
        from bgrm.run.cluster import Cluster, require_dask

        require_dask()
        return Cluster(settings.scheduler, timeout=settings.timeout, say=say)
    if settings.processes and settings.processes > 1:
        from bgrm.run.processes import Processes

        return Processes(settings.processes, timeout=settings.timeout)
    from bgrm.run.local import Threads

    return Threads(1, timeout=settings.timeout)


def request_options(fields: dict[str, str], backgrounds: dict[str, Path]):
    """(job, options) from a request's form fields and background uploads, checked
    by the same ``PARAMS`` table as the command line; a bad one is a ParameterError."""
    convert_to = fields.get("convert_to", "")
    job = {v: k for k, v in CONVERT_TO.items()}.get(convert_to.strip())
    if job is None:
        raise ParameterError(f"convert_to: {convert_to!r} is not one of "
                             + ", ".join(CONVERT_TO.values()))
    for name in BACKGROUND_FIELDS:
        if name in fields:
            raise ParameterError(f"{name}: send the background as a file upload in the "
                                 f"field {name}, not as text")
    model = fields.get("model", "").strip()
    if model and model not in REGISTRY:
        raise ParameterError(f"model: {model!r} is not a model name; use one of "
                             f"{', '.join(SEGMENTATION_MODELS)} (a request cannot name a "
                             "file on the server)")
    params = {**fields, **{k: str(v) for k, v in backgrounds.items()}}
    opts = from_params(job, params)
    if job == "video" and opts.video_format == "png_sequence":
        raise ParameterError("video_format: png_sequence writes a folder of files, which "
                             "the service cannot send as one download; use mov or webm")
    return job, opts


def model_for(opts):
    """The model a job runs, or a ParameterError that says how to get it."""
    try:
        return resolve(opts.model, opts.model_family, notice=lambda message: None)
    except ModelError:
        spec = REGISTRY.get(opts.model or "")
        if spec is None:
            raise
        if status(spec).status == "missing":
            raise ModelError(f"model {spec.name} is not installed on this server; install "
                             f"it there with: bgrm models install {spec.name} (~"
                             f"{spec.approx_mb:.0f} MB), or send model=u2netp, which is "
                             "bundled") from None
        raise ModelError(f"model {spec.name} on this server is corrupt; reinstall it there "
                         f"with: bgrm models install {spec.name}") from None


class _Recorder(Listener):
    """A job's files as they finish: into the database; frames done, in memory."""

    def __init__(self, service: Service, key: str, tasks: dict[int, Task]):
        self.service, self.key, self.tasks = service, key, tasks

    def progress(self, number: int, n: int) -> None:
        if self.tasks[number].job != "video":
            return  # a photo reports itself done, which its state says already
        frames = self.service.frames
        frames[self.key] = frames.get(self.key, 0) + n

    def finished(self, number: int, result: Result) -> None:
        error = self.service.scrub(result.error, self.tasks[number]) if result.error else None
        self.service.store.finish_file(self.key, number, error, result.crop_box)


class Service:
    """The data dir, its database and the runner: what the routes call."""

    def __init__(self, root: Path, settings: Settings, say=lambda message: None):
        self.root = root.expanduser().resolve()
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.settings, self.say = settings, say
        self.store = Store(self.root / "jobs.sqlite3")
        timeout_for = None if settings.timeout else default_timeout
        self.runner = Runner(make_executor(settings, say), timeout_for=timeout_for)
        self.frames: dict[str, int] = {}  # progress of running jobs (video frames)
        self._thread: threading.Thread | None = None
        self.abandoned = False  # closed with files still running on threads

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Finish what a crash left, then run jobs on a thread of their own."""
        self.resume()
        self._thread = threading.Thread(target=self._loop, name="bgrm-runner", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                if not self.runner.step(block=True):
                    return
            except Exception:  # noqa: BLE001 - a bug in one batch must not stop the service
                traceback.print_exc(file=sys.stderr)

    def close(self, grace: float = 10.0) -> bool:
        """Take no more work; wait up to ``grace`` s for the files under way. Files
        not finished stay queued for the next start; their temporaries are removed."""
        closer = threading.Thread(target=self.runner.close, daemon=True)
        closer.start()
        deadline = time.monotonic() + grace
        for thread in (closer, self._thread):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        done = not (closer.is_alive() or (self._thread and self._thread.is_alive()))
        if not done:
            remove_leftovers([self.jobs_dir / key / "out" for key in
                              self.store.uuids(unfinished=True)], os.getpid())
            self.abandoned = True
        else:
            self.store.close()
        return done

    # -- jobs ---------------------------------------------------------------------------

    def new_folder(self) -> tuple[str, Path]:
        """A new job's uuid (uuid4: 122 random bits, what guards its results) and folder."""
        key = str(uuidlib.uuid4())
        folder = self.jobs_dir / key
        (folder / "in").mkdir(parents=True)
        (folder / "out").mkdir()
        return key, folder

    def accept(self, key: str, folder: Path, form: Form) -> None:
        """A fully uploaded request -> a queued job (or a BgrmError: nothing kept)."""
        backgrounds = {u.field: u.path for u in form.files if u.field in BACKGROUND_FIELDS}
        inputs = [u for u in form.files if u.field not in BACKGROUND_FIELDS]
        if not inputs:
            raise ParameterError("no files: send them as multipart file fields "
                                 "(files, or file[0], file[1]...)")
        job, opts = request_options(form.fields, backgrounds)
        model = model_for(opts)
        ext = JOBS[job].output_extension(opts)
        rows, taken = [], set()
        for n, upload in enumerate(inputs):
            stem, filename, k = Path(upload.name).stem or "file", "", 1
            while not filename or filename in taken:
                filename = f"{stem}_processed{'' if k == 1 else f'_{k}'}.{ext}"
                k += 1
            taken.add(filename)
            rows.append(FileRow(n, upload.name, filename, str(upload.path.relative_to(folder)),
                                f"out/{n}_processed.{ext}", "queued", None, None))
        params = {**form.fields, **{k: str(p.relative_to(folder)) for k, p in backgrounds.items()}}
        tasks = self._tasks(job, opts, model, folder, rows)
        self.store.add(key, job, params, rows)
        with contextlib.suppress(RuntimeError):  # closing: the next start runs it
            self.runner.submit(tasks, _Recorder(self, key, tasks), key=key, forget=True)

    def _tasks(self, job: str, opts, model, folder: Path, rows) -> dict[int, Task]:
        runtime = runtime_for(self.settings, job, model)
        return {r.number: Task(job, folder / r.src, folder / r.dst, r.name, opts, runtime)
                for r in rows}

    def resume(self) -> None:
        """At start: drop uploads a crash cut short; finish or queue again the files
        of every unfinished job, in arrival order."""
        known = set(self.store.uuids())
        for folder in self.jobs_dir.iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
        for key in self.store.uuids(unfinished=True):
            self._resume(self.store.job(key))

    def _resume(self, job: JobRow) -> None:
        folder = self.jobs_dir / job.uuid
        queued = [f for f in job.files if f.state == "queued"]
        try:
            params = dict(job.params)
            backgrounds = {k: folder / params.pop(k) for k in BACKGROUND_FIELDS if k in params}
            kind, opts = request_options(params, backgrounds)
            tasks = self._tasks(kind, opts, model_for(opts), folder, queued)
        except BgrmError as exc:  # a model removed since: its files fail, with the reason
            for f in queued:
                self.store.finish_file(job.uuid, f.number, f"{f.name}: {self.scrub(str(exc))}")
            return
        for number, task in list(tasks.items()):
            held = held_path(task.dst, job.uuid, number)
            with contextlib.suppress(BgrmError):
                if held.exists():  # finished, not yet moved into place
                    commit(held, task.dst)
            if task.dst.exists():  # whole: only ever renamed into place
                self.store.finish_file(job.uuid, number, None)
                del tasks[number]
        for path in (folder / "out").glob(f"*{TMP_MARK}*"):
            remove_tmp(path)  # half-written by the process that crashed
        if tasks:
            self.runner.submit(tasks, _Recorder(self, job.uuid, tasks), key=job.uuid,
                               forget=True)

    def expire(self, keep: float) -> int:
        """Remove jobs finished more than ``keep`` seconds ago: rows, then files."""
        old = self.store.uuids(finished_before=time.time() - keep)
        for key in old:
            self.store.delete(key)
            self.frames.pop(key, None)
            shutil.rmtree(self.jobs_dir / key, ignore_errors=True)
        return len(old)

    # -- answers ------------------------------------------------------------------------

    def answer(self, key: str) -> dict | None:
        """The hosted API's results object for job ``key``, or None if unknown."""
        job = self.store.job(key)
        if job is None:
            return None
        results, urls = [], {}
        for f in job.files:
            if f.state == "done":
                result = Result(f.name, Path(f.filename), crop_box=f.crop)
                urls[id(result)] = f"/v1/files/{key}/{f.number}/{_quote(f.filename)}"
                results.append(result)
            elif f.state == "failed":
                results.append(Result(f.name, error=f.error))
        answer = api_results(results, url=lambda r: urls[id(r)])
        finished = job.finished is not None
        if finished:
            self.frames.pop(key, None)
        done = sum(f.state != "queued" for f in job.files)
        answer.update(finished=finished, queue_count=0 if finished else self.store.ahead(job.seq),
                      progress={"files": len(job.files), "done": done,
                                "frames": self.frames.get(key, 0)})
        return answer

    def download(self, key: str, number: int) -> tuple[Path, str] | None:
        """(path, download name) of a finished result; None for anything else."""
        job = self.store.job(key)
        row = next((f for f in job.files if f.number == number), None) if job else None
        if row is None or row.state != "done":
            return None
        path = (self.jobs_dir / key / row.dst).resolve()
        # The real file must be inside the data dir, whatever a link there says.
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path, row.filename

    def scrub(self, text: str, task: Task | None = None) -> str:
        """An error for the client: no path of this server in it."""
        if task is not None:
            text = text.replace(str(task.src), task.name).replace(str(task.dst), task.name)
        for folder in (self.root, models_dir(), Path(__file__).resolve().parent.parent):
            text = re.sub(re.escape(str(folder)) + r"[^\s'\"]*", "<server file>", text)
        return text


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
