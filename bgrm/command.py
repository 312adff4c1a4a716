"""One command run: check the inputs, plan the run, hand the tasks to an executor,
tell the user (progress bar, one line per failed file, --json) and give the exit status."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from bgrm import batch
from bgrm.api import JOBS, Session
from bgrm.errors import ExitStatus, OutputError, ParameterError
from bgrm.models import ResolvedModel, resolve
from bgrm.outputs import describe_os_error
from bgrm.plan import executor, plan
from bgrm.report import Result, api_results, exit_status
from bgrm.run import Listener, Runtime, Task
from bgrm.settings import RunSettings
from bgrm.stdio import stdout_to_stderr


def _say(message: str) -> None:
    click.echo(f"bgrm: {message}", err=True)


def _check_background(opts) -> None:
    """Read --bg-image once, up front: a bad one is one usage error, not one per file."""
    from bgrm.errors import InputError
    from bgrm.image import load_background

    try:
        load_background(opts.bg_image)
    except InputError as exc:
        raise ParameterError(f"--bg-image {exc}") from exc


def _stdin_image(opts, model: ResolvedModel, settings: RunSettings) -> ExitStatus:
    """``bgrm image -``: bytes on stdin, the picture (PNG, or --format) on stdout."""
    from bgrm.image import encode

    if sys.stdout.isatty():
        raise ParameterError("-: refusing to write a PNG to a terminal; redirect stdout")
    if sys.stdin.isatty():
        raise ParameterError("-: standard input is a terminal; pipe an image in "
                             "(cat photo.jpg | bgrm image - > out.png)")
    data = sys.stdin.buffer.read()
    if not data:
        raise ParameterError("-: nothing on standard input")
    with stdout_to_stderr():
        session = Session(model, device=settings.device, threads=settings.threads,
                          engine=settings.engine)
        picture, decoded = session.cut(data, opts, "<stdin>")
        for note in decoded.notes:
            _say(note)
    encode(picture, sys.stdout.buffer, opts.format, decoded.exif, "<stdin>")
    sys.stdout.buffer.flush()
    return ExitStatus.OK


def _check_output_dir(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{output_dir}: cannot create the output folder: "
                          f"{describe_os_error(exc)}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        # One clear error now, not the same one after every file's work.
        read_only = os.statvfs(output_dir).f_flag & os.ST_RDONLY
        raise OutputError(f"{output_dir}: cannot write into the output folder: "
                          + ("read-only file system" if read_only else "permission denied"))


def _load_or_check_model(runtime: Runtime, workers: int, scheduler: str | None,
                         count: int) -> None:
    """Check the model (and device) once, before the first file: a wrong graph is
    one clear error, not one per file. Say when workers each load a big model."""
    model, device = runtime.model, runtime.device
    if device == "cuda" and workers > 1 and not model.custom:
        from bgrm.segment import check_device

        check_device(device)  # one clear error, not the same one for every file
    if workers <= 1 and not scheduler:
        # Loaded here and kept: the files run in this process on the same session.
        Session(model, device=device, threads=runtime.threads, spinning=runtime.spinning,
                lanes=runtime.lanes, engine=runtime.engine)
    elif model.custom:
        from bgrm.segment import check_model

        check_model(model, runtime.engine)  # and let it go: the workers load their own copies
    if min(workers, count) > 1 and model.big:
        _say(f"{min(workers, count)} worker processes each load their own copy of "
             f"{model.spec.name}"
             + (f" (~{model.spec.approx_mb:.0f} MB on disk)" if not model.custom else ""))


class _Console(Listener):
    """The progress bar on stderr, and each file's notes and failure, in input order."""

    def __init__(self, job: str, tasks: list[Task], opts, show_bar: bool,
                 show_traceback: bool):
        self.show_traceback, self.bar = show_traceback, None
        if show_bar and tasks:
            from bgrm.progress import ProgressBar

            self.bar = ProgressBar(job, tasks, opts)

    def progress(self, index: int, n: int) -> None:
        # Video frames; images count whole files, failed and skipped ones too (finished).
        if self.bar is not None:
            self.bar.advance(index, n)

    def finished(self, index: int, result: Result) -> None:
        if self.bar is not None:
            self.bar.finished(index, result)

    def result(self, index: int, result: Result) -> None:
        printer = self.bar.write if self.bar is not None else (lambda m: click.echo(m, err=True))
        for note in result.notes:
            printer(f"bgrm: {note}")
        if not result.ok:
            if self.show_traceback and result.traceback:
                printer(result.traceback.rstrip())
            printer(f"bgrm: {result.error}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_command(job: str, opts, *, inputs, output_dir, recursive, settings: RunSettings,
                as_json: bool = False, progress: bool | None = None) -> ExitStatus:
    """Run ``job`` with ``opts`` on ``inputs`` under ``settings``; tell the user; the
    exit status."""
    from bgrm.engine import check_engine

    # --engine openvino without it: one usage error first
    check_engine(settings.engine, settings.device)
    inputs = list(inputs)
    if opts.edges.vitmatte:
        from bgrm.vitmatte import model_path

        model_path(opts.edges.vitmatte_model)  # missing or corrupt: one error before any work
    if "-" in inputs:
        if job != "image" or len(inputs) > 1 or as_json or settings.scheduler:
            raise ParameterError("- (stdin) works for `bgrm image` with a single input "
                                 "and without --json or --scheduler")
        if output_dir is not None:
            raise ParameterError("- (stdin) writes its PNG to stdout; -o/--output-dir "
                                 "does not apply")
        if opts.bg_type == "image":
            _check_background(opts)
        return _stdin_image(opts, resolve(opts.model, opts.model_family), settings)
    if job == "image" and opts.bg_type == "image":
        _check_background(opts)
    model = resolve(opts.model, opts.model_family)
    entries = batch.expand(inputs, job, recursive, warn=_say, output_dir=output_dir)
    files = [e for e in entries if isinstance(e, Path)]
    if output_dir is not None:
        _check_output_dir(output_dir)
    how = plan(job, opts, model, files, settings)
    _load_or_check_model(how.runtime, settings.workers, settings.scheduler, len(files))
    runner = executor(settings, len(files), how.file_threads, say=_say)
    dsts = batch.name_outputs(files, output_dir, JOBS[job].output_extension(opts), inputs)
    tasks = [Task(job, src, dst, str(src), opts, how.runtime)
             for src, dst in zip(files, dsts, strict=True)]
    for entry in entries:
        if isinstance(entry, Result):  # missing, the same file as an earlier input, skipped
            for line in [entry.error] if entry.error else entry.notes:
                _say(line)
    show_bar = sys.stderr.isatty() if progress is None else progress
    console = _Console(job, tasks, opts, show_bar, settings.traceback)
    try:
        with stdout_to_stderr():
            results = runner.run(tasks, console) if tasks else []
    finally:
        console.close()
    done = iter(results)
    results = [entry if isinstance(entry, Result) else next(done) for entry in entries]
    if as_json:
        click.echo(json.dumps(api_results(results), indent=2))
    return exit_status(results)
