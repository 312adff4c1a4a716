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
import fcntl
import json
import os
import re
import shutil
import sys
import threading
import time
import traceback
import uuid as uuidlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bgrm.api import JOBS
from bgrm.batch import output_name
from bgrm.errors import BgrmError, ModelError, ParameterError
from bgrm.models import REGISTRY, SEGMENTATION_MODELS, ResolvedModel, resolve, status
from bgrm.options import CONVERT_TO, FOLDER_FORMATS, from_params
from bgrm.outputs import TMP_MARK, commit, remove_leftovers, remove_tmp
from bgrm.plan import executor, plan
from bgrm.report import Result, api_results
from bgrm.run import Listener, Runner, Task, held_path
from bgrm.serve import fetch, webhooks
from bgrm.serve.metrics import Metrics
from bgrm.serve.store import FileRow, JobRow, Store
from bgrm.serve.upload import Form, Upload, extension, safe_name, too_many_files
from bgrm.settings import RunSettings

# A background is sent as a file in one of these fields, never named by a path.
BACKGROUND_FIELDS = ("bg_image", "bg_video")
# The service's own fields, beside the API's parameters: inputs by URL (fetched by
# the server) and where to POST the results when the job is done.
SERVICE_FIELDS = ("image_url", "webhook_url")
# --timeout's default in serve: a photo never takes this long here (a 50 MP photo
# with alpha matting, ~1 min on 2 cores), so past it the file is hung. A video
# scales with its frames (a 1080p frame with matting takes ~3 s here).
IMAGE_TIMEOUT_S = 600.0
VIDEO_TIMEOUT_S, VIDEO_FRAME_S = 600.0, 10.0
UNKNOWN_VIDEO_TIMEOUT_S = 6 * 3600.0  # no duration in the header
# A job unfinished this long after its results would have expired is stuck (a
# queue ahead of it that never moves): it expires too.
STUCK_S = 24 * 3600.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server's disk."""

    max_upload: int = 2 * 10**9  # bytes of one request's files
    max_files: int = 100  # input files of one request
    min_free: int = 10**9  # bytes kept free on the data dir's disk for the jobs under way


def default_timeout(tasks: list[Task]) -> float:
    """Seconds allowed per file for a batch: the largest any of its files needs."""
    from bgrm.video.reader import estimate_frames

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


def request_options(fields: dict[str, str], backgrounds: dict[str, Path],
                    operator_models: Mapping[str, ResolvedModel] | None = None):
    """(job, options) from a request's form fields and background uploads, checked
    by the same ``PARAMS`` table as the command line; a bad one is a ParameterError.
    ``operator_models``: the names ``--custom-model`` serves besides the registry's."""
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
    served = [*SEGMENTATION_MODELS, *(operator_models or {})]
    if model and model not in REGISTRY and model not in (operator_models or {}):
        raise ParameterError(f"model: {model!r} is not a model name; use one of "
                             f"{', '.join(served)} (a request cannot name a file on the "
                             "server)")
    if model in (operator_models or {}) and fields.get("model_family", "").strip():
        raise ParameterError(f"model_family: {model} is this server's own model, run as "
                             f"{operator_models[model].spec.family}; leave model_family out")
    params = {**{k: v for k, v in fields.items() if k not in SERVICE_FIELDS},
              **{k: str(v) for k, v in backgrounds.items()}}
    opts = from_params(job, params)
    if job == "video" and opts.video_format in FOLDER_FORMATS:
        raise ParameterError(f"video_format: {opts.video_format} writes a folder of files, which "
                             "the service cannot send as one download; use mov or webm")
    return job, opts


def model_for(opts, operator_models: Mapping[str, ResolvedModel] | None = None):
    """The model a job runs, or a ParameterError that says how to get it."""
    if opts.model in (operator_models or {}):
        return operator_models[opts.model]
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


def fetch_inputs(folder: Path, urls: list[str], first: int, budget: int,
                 policy: fetch.Policy) -> list[tuple[Upload, str | None]]:
    """Each URL fetched into ``folder`` as upload number ``first``, ``first + 1``...
    with what is left of the request's ``budget`` of bytes: (upload, None), or
    (upload, the reason it failed) for a file that then fails alone."""
    out = []
    for number, url in enumerate(urls, first):
        dest = folder / f"{number}.fetched"
        try:
            name = fetch.fetch(url, dest, max_bytes=max(0, budget), policy=policy)
        except fetch.FetchError as exc:
            shown = safe_name(urlsplit(url).path.rsplit("/", 1)[-1] or "image")
            out.append((Upload("image_url", shown, dest), f"{shown}: {exc}"))
            continue
        path = dest.rename(dest.with_suffix(extension(name) or ".fetched"))
        upload = Upload("image_url", name, path, path.stat().st_size)
        budget -= upload.size
        out.append((upload, None))
    return out


def _rows(inputs: list[Upload], folder: Path, ext: str) -> list[FileRow]:
    """The files of a new job: each input's result named as the command line names
    it (``<stem>_processed.<ext>``, numbered after the first of a stem)."""
    rows, taken = [], set()
    for n, upload in enumerate(inputs):
        filename = output_name(Path(upload.name).stem or "file", ext, taken.__contains__)
        taken.add(filename)
        rows.append(FileRow(n, upload.name, filename, str(upload.path.relative_to(folder)),
                            f"out/{n}_processed.{ext}", "queued", None, None))
    return rows


class _Recorder(Listener):
    """A job's files as they finish: into the database, with a video's frame count;
    frames done so far, in memory."""

    def __init__(self, service: Service, key: str, tasks: dict[int, Task]):
        self.service, self.key, self.tasks = service, key, tasks

    def progress(self, number: int, n: int) -> None:
        if self.tasks[number].job != "video":
            return  # a photo reports itself done, which its state says already
        running = self.service.frames.setdefault(self.key, {})
        running[number] = running.get(number, 0) + n

    def finished(self, number: int, result: Result) -> None:
        task = self.tasks[number]
        error = self.service.scrub(result.error, task) if result.error else None
        running = self.service.frames.get(self.key, {})
        frames = running.get(number) if task.job == "video" else None
        self.service.file_finished(self.key, task.job, number, error, result.crop_box, frames,
                                   result.seconds)
        running.pop(number, None)
        if not running:
            self.service.frames.pop(self.key, None)


def hold(root: Path):
    """An exclusive lock on the data dir, for as long as the returned file is open:
    a second server there would resume, and so destroy, this one's jobs."""
    root.mkdir(parents=True, exist_ok=True)
    lock = open(root / "serve.lock", "a+")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip()
        lock.close()
        raise ParameterError(f"--data-dir {root}: another bgrm serve holds it"
                             f"{f' (pid {pid})' if pid.isdigit() else ''}; stop that one, "
                             "or give this one a --data-dir of its own") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


class Service:
    """The data dir, its database and the runner: what the routes call."""

    def __init__(self, root: Path, settings: RunSettings, say=lambda message: None,
                 limits: Limits = Limits(),
                 operator_models: Mapping[str, ResolvedModel] | None = None, *,
                 keep: float = 86400.0, api_key: str | None = None,
                 allow_private_urls: bool = False):
        self.root = root.expanduser().resolve()
        self._lock = hold(self.root)  # before anything in the folder is read
        self.jobs_dir = self.root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.settings, self.say, self.limits, self.keep = settings, say, limits, keep
        self.operator_models = dict(operator_models or {})
        self.store = Store(self.root / "jobs.sqlite3")
        timeout_for = None if settings.timeout else default_timeout
        # The runner's thread is not the main thread, where Inline's --timeout timer
        # works: a long-lived runner has threads (one file at a time) or processes.
        self.runner = Runner(executor(settings, 1, long_lived=True, say=say),
                             timeout_for=timeout_for)
        # Frames done so far of the videos running: job -> file number -> frames.
        self.frames: dict[str, dict[int, int]] = {}
        self._thread: threading.Thread | None = None
        self.abandoned = False  # closed with files still running on threads
        self.state = "starting"  # -> ready -> stopping (GET /ready)
        self.policy = fetch.Policy(allow_private=allow_private_urls)
        self.outbox = webhooks.Outbox(self.root / "jobs.sqlite3")
        self.deliverer = webhooks.Deliverer(self.outbox, self._post, api_key)
        self.metrics = Metrics(self._gauges())

    # -- life ---------------------------------------------------------------------------

    def start(self) -> None:
        """Finish what a crash left, then run jobs on a thread of their own."""
        self.resume()
        self._thread = threading.Thread(target=self._loop, name="bgrm-runner", daemon=True)
        self._thread.start()
        self.deliverer.start()
        self.state = "ready"

    def readiness(self) -> str | None:
        """None when new jobs can be taken and run; else why not."""
        if self.state != "ready":
            return f"the server is {self.state}"
        if self._thread is None or not self._thread.is_alive():
            return "the runner has stopped"
        if self._lock.closed:
            return "the data dir is no longer held"
        try:
            self.store.check_writable()
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return f"the job database cannot be written: {self.scrub(str(exc))}"
        return None

    def _gauges(self) -> dict:
        from bgrm.segment import SEGMENTERS

        return {"bgrm_queue_files": ("Files queued or running", self.store.queued),
                "bgrm_models_loaded": ("Model sessions loaded", lambda: len(SEGMENTERS)),
                "bgrm_webhooks_pending": ("Webhook deliveries not yet made",
                                          self.outbox.pending)}

    def _post(self, url: str, body: bytes, headers: dict) -> int:
        try:
            return fetch.post(url, body, headers, policy=self.policy)
        except fetch.URLRefused as exc:
            raise webhooks.GiveUp(str(exc)) from None

    def file_finished(self, key: str, kind: str, number: int, error: str | None, crop,
                      frames: int | None, seconds: float | None = None) -> None:
        """One file's end, in the database and the metrics; with the job's last, the
        job's (and its webhook, when it has one)."""
        self.store.finish_file(key, number, error, crop, frames)
        self.metrics.file_done(kind, error is None, seconds)
        job = self.store.job(key)
        if job is not None and job.finished is not None:
            failed = sum(f.state == "failed" for f in job.files)
            self.metrics.job_done(kind, len(job.files) - failed, failed)
            self._hook(job)

    def _hook(self, job: JobRow) -> None:
        url = job.params.get("webhook_url", "").strip()
        if url and job.finished is not None:
            body = json.dumps(self.answer(job.uuid)).encode()
            self.deliverer.add(job.uuid, url, body, job.finished + self.keep)

    def _loop(self) -> None:
        from bgrm.image import release_backgrounds

        while True:
            try:
                if not self.runner.step(block=True):
                    return
            except Exception:  # noqa: BLE001 - a bug in one batch must not stop the service
                traceback.print_exc(file=sys.stderr)
            finally:
                release_backgrounds()  # a job's background is not kept past its batch

    def close(self, grace: float = 10.0) -> bool:
        """Take no more work; wait up to ``grace`` s for the files under way. Files
        not finished stay queued for the next start; their temporaries are removed;
        webhooks not delivered are sent by the next start."""
        self.state = "stopping"
        self.deliverer.close(min(2.0, grace))
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
            self.outbox.close()
            self._lock.close()  # the data dir is free for the next server
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
        """A fully uploaded request -> a queued job (or a BgrmError: nothing kept).
        Its ``image_url``s are fetched here; one that fails fails its file alone."""
        backgrounds = {u.field: u.path for u in form.files if u.field in BACKGROUND_FIELDS}
        inputs = [u for u in form.files if u.field not in BACKGROUND_FIELDS]
        urls, webhook = form.urls, form.fields.get("webhook_url", "").strip()
        if not inputs and not urls:
            raise ParameterError("no files: send them as multipart file fields "
                                 "(files, or file[0], file[1]...), or image_url fields")
        if len(inputs) + len(urls) > self.limits.max_files:
            raise too_many_files(self.limits.max_files)
        job, opts = request_options(form.fields, backgrounds, self.operator_models)
        model = model_for(opts, self.operator_models)
        for url, field in [*((u, "image_url") for u in urls), (webhook, "webhook_url")]:
            if url:
                try:
                    fetch.check(url, self.policy, field=field)
                except fetch.URLRefused as exc:
                    raise ParameterError(str(exc)) from None
        budget = self.limits.max_upload - sum(u.size for u in form.files)
        fetched = fetch_inputs(folder / "in", urls, len(form.files), budget, self.policy)
        inputs += [upload for upload, _ in fetched]
        rows = _rows(inputs, folder, JOBS[job].output_extension(opts))
        params = {**form.fields, **{k: str(p.relative_to(folder)) for k, p in backgrounds.items()}}
        failed = {len(inputs) - len(fetched) + i: error for i, (_, error) in enumerate(fetched)
                  if error}
        tasks = self._tasks(job, opts, model, folder, [r for r in rows if r.number not in failed])
        self.store.add(key, job, params, rows)
        self.metrics.upload_bytes.inc(sum(u.size for u in form.files)
                                      + sum(u.size for u, _ in fetched))
        for number, error in failed.items():
            self.file_finished(key, job, number, error, None, None)
        if tasks:
            with contextlib.suppress(RuntimeError):  # closing: the next start runs it
                self.runner.submit(tasks, _Recorder(self, key, tasks), key=key, forget=True)

    def _tasks(self, job: str, opts, model, folder: Path, rows) -> dict[int, Task]:
        files = [folder / r.src for r in rows]
        runtime = plan(job, opts, model, files, self.settings, long_lived=True).runtime
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
        for key in self.store.uuids(finished_before=time.time()):
            # Finished as the last process ended, its webhook perhaps not yet queued
            # (a delivery already queued, or made, is left as it is).
            job = self.store.job(key)
            if job is not None and job.params.get("webhook_url") \
                    and self.outbox.get(key) is None:
                self._hook(job)

    def _resume(self, job: JobRow) -> None:
        folder = self.jobs_dir / job.uuid
        queued = [f for f in job.files if f.state == "queued"]
        try:
            params = dict(job.params)
            backgrounds = {k: folder / params.pop(k) for k in BACKGROUND_FIELDS if k in params}
            kind, opts = request_options(params, backgrounds, self.operator_models)
            tasks = self._tasks(kind, opts, model_for(opts, self.operator_models), folder,
                                queued)
        except BgrmError as exc:  # a model removed since: its files fail, with the reason
            for f in queued:
                self.file_finished(job.uuid, job.kind, f.number,
                                   f"{f.name}: {self.scrub(str(exc))}", None, None)
            return
        for number, task in list(tasks.items()):
            held = held_path(task.dst, job.uuid, number)
            with contextlib.suppress(BgrmError):
                if held.exists():  # finished, not yet moved into place
                    commit(held, task.dst)
            if task.dst.exists():  # whole: only ever renamed into place
                self.file_finished(job.uuid, job.kind, number, None, None, None)
                del tasks[number]
        for path in (folder / "out").glob(f"*{TMP_MARK}*"):
            remove_tmp(path)  # half-written by the process that crashed
        if tasks:
            self.runner.submit(tasks, _Recorder(self, job.uuid, tasks), key=job.uuid,
                               forget=True)

    def expire(self, keep: float) -> int:
        """Remove jobs finished more than ``keep`` seconds ago, and jobs still
        unfinished ``keep`` after the longest a queue of files could take (stuck):
        rows, then files. A job that cannot be removed is said, with its uuid."""
        now = time.time()
        old = self.store.uuids(finished_before=now - keep)
        old += self.store.uuids(created_before=now - keep - STUCK_S)
        for key in old:
            try:
                self.runner.cancel(key)
                self.outbox.forget(key)
                self.store.delete(key)
                self.frames.pop(key, None)
                shutil.rmtree(self.jobs_dir / key)
            except Exception as exc:  # noqa: BLE001 - said, and the next pass tries again
                self.say(f"job {key}: could not expire it: {type(exc).__name__}: "
                         f"{self.scrub(str(exc))}")
        return len(old)

    def room(self) -> int:
        """Bytes a new upload may take before the disk's free space falls below the
        reserve (negative: already below)."""
        return shutil.disk_usage(self.root).free - self.limits.min_free

    def model_choices(self) -> dict[str, dict[str, str]]:
        """The models a request may name, with what a client may know of each (never
        a path): the registry's and this server's own."""
        choices = {}
        for name in SEGMENTATION_MODELS:
            spec = REGISTRY[name]
            choices[name] = {"family": spec.family, "licence": spec.licence,
                             "status": status(spec).status}
        for name, model in self.operator_models.items():
            choices[name] = {"family": model.spec.family, "licence": "the operator's",
                             "status": "operator"}
        return choices

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
        done = sum(f.state != "queued" for f in job.files)
        running = self.frames.get(key, {})
        frames = sum(f.frames or 0 for f in job.files if f.state != "queued") + sum(
            n for number, n in list(running.items())
            if any(f.number == number and f.state == "queued" for f in job.files))
        answer.update(finished=finished, queue_count=0 if finished else self.store.ahead(job.seq),
                      progress={"files": len(job.files), "done": done, "frames": frames})
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
        """An error for the client: every path of this server as its file name (an
        upload's as the client named it)."""
        known = {str(self.jobs_dir): "jobs"}
        if task is not None:
            known.update({str(task.src): task.name, str(task.dst): Path(task.dst).name})
        return scrub(text, known)


def scrub(text: str, known: Mapping[str, str] | None = None) -> str:
    """``text`` with every absolute path in it replaced by its file name: paths in
    ``known`` by the name given, quoted paths (which may hold spaces) and bare ones."""
    for path, name in sorted((known or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    text = _QUOTED_PATH.sub(lambda m: m[1] + _name(m[2]) + m[1], text)
    return _BARE_PATH.sub(lambda m: _name(m[0]), text)


# A path in quotes may hold spaces; a bare one ends at a space or punctuation. The
# look-behind leaves URLs (scheme://host/path) and fractions (1/2) alone.
_QUOTED_PATH = re.compile(r"""(['"])((?:/|[A-Za-z]:\\)[^'"\n]*)\1""")
_BARE_PATH = re.compile(r"""(?<![\w.:/~-])(?:/|[A-Za-z]:\\)[^\s'"(),;]+""")


def _name(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1] or "<server file>"


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
