"""One command run: inputs -> jobs -> results -> report and exit status."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import click

from bgrm import batch
from bgrm.errors import ExitStatus, OutputError, ParameterError
from bgrm.models import resolve
from bgrm.outputs import describe_os_error
from bgrm.report import Result, api_results, exit_status


@contextlib.contextmanager
def _stdout_to_stderr():
    """While files are processed, stdout (fd 1 too) points at stderr.

    bgrm's own stdout is the PNG of ``bgrm image -`` or the --json report,
    written after this; whatever a library prints meanwhile (pymatting's
    warnings, onnxruntime banners) must not end up in the middle of it.
    """
    try:
        fd, err = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream (tests)
        fd = err = None
    if fd is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    os.dup2(err, fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _check_background(opts) -> None:
    """Read --bg-image once, up front: a bad one is one usage error, not one per file."""
    from bgrm.errors import InputError
    from bgrm.image import load_background

    try:
        load_background(opts.bg_image)
    except InputError as exc:
        raise ParameterError(f"--bg-image {exc}") from exc


def output_extension(job: str, opts) -> str:
    if job == "image":
        return opts.format
    from bgrm.video.formats import FORMATS

    return FORMATS[opts.video_format].ext


def _say(message: str) -> None:
    click.echo(f"bgrm: {message}", err=True)


def _stdin_image(opts, model, device, threads) -> ExitStatus:
    """``bgrm image -``: bytes on stdin, the picture (PNG, or --format) on stdout."""
    from bgrm.image import decode, encode, render
    from bgrm.segment import get_segmenter

    if sys.stdout.isatty():
        raise ParameterError("-: refusing to write a PNG to a terminal; redirect stdout")
    if sys.stdin.isatty():
        raise ParameterError("-: standard input is a terminal; pipe an image in "
                             "(cat photo.jpg | bgrm image - > out.png)")
    data = sys.stdin.buffer.read()
    if not data:
        raise ParameterError("-: nothing on standard input")
    with _stdout_to_stderr():
        decoded = decode(data, "<stdin>")
        for note in decoded.notes:
            _say(note)
        picture = render(decoded, opts, get_segmenter(model, device, threads))
    encode(picture, sys.stdout.buffer, opts.format, decoded.exif)
    sys.stdout.buffer.flush()
    return ExitStatus.OK


def run_command(job: str, opts, *, inputs, output_dir, recursive, jobs, device, threads,
                skip_existing, as_json, progress, show_traceback, scheduler) -> ExitStatus:
    inputs = list(inputs)
    if opts.edges.vitmatte:
        from bgrm.vitmatte import model_path

        model_path(opts.edges.vitmatte_model)  # missing or corrupt: one error before any work
    if "-" in inputs:
        if job != "image" or len(inputs) > 1 or as_json or scheduler:
            raise ParameterError("- (stdin) works for `bgrm image` with a single input "
                                 "and without --json or --scheduler")
        if output_dir is not None:
            raise ParameterError("- (stdin) writes its PNG to stdout; -o/--output-dir "
                                 "does not apply")
        if opts.bg_type == "image":
            _check_background(opts)
        model = resolve(opts.model, opts.model_family)
        return _stdin_image(opts, model, device, threads)
    if job == "image" and opts.bg_type == "image":
        _check_background(opts)
    model = resolve(opts.model, opts.model_family)
    entries = batch.expand(inputs, job, recursive, warn=_say)
    files = [e for e in entries if isinstance(e, Path)]
    if output_dir is not None:
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
    # On a cluster each worker sizes and places its own sessions (bgrm.distributed).
    # One process by default: images run several files at once on its threads
    # (batch.default_file_threads), video uses all cores per file.
    workers = 1 if scheduler else jobs or 1
    # Files at once in this process; --jobs N means N processes, one file each.
    matting = opts.matting.enabled
    # A 1024-input model: one file at a time (a second inference at once would
    # double its activation memory, and one already keeps every core busy).
    file_threads = 1 if scheduler or jobs or model.big else \
        batch.default_file_threads(job, files, matting)
    if not scheduler:
        at_once = max(1, min(workers * file_threads, len(files) or 1))
        threads = threads or max(1, (os.cpu_count() or 1) // at_once)
    # The one place that decides onnxruntime's spinning for a run (the preload
    # below, batch.run_job and bgrm.distributed all read runtime.spinning, so
    # one session is made). Video overlaps decode, inference, masks and
    # encode on threads: measured 0.51 vs 0.60 CPU-s per frame without it.
    runtime = batch.Runtime(model, device, threads, skip_existing, show_traceback,
                            spinning=not matting and job == "image")
    if device == "cuda" and workers > 1 and not model.custom:
        from bgrm.segment import check_device

        check_device(device)  # one clear error, not the same one for every file
    if (workers <= 1 and not scheduler) or model.custom:
        # Load (and so check) the model before the first file: a wrong graph
        # is one clear error, not one per file.
        from bgrm.segment import check_model, get_segmenter

        if workers <= 1 and not scheduler:
            get_segmenter(model, device, threads, runtime.spinning)
        else:
            check_model(model)  # and let it go: the workers load their own copies
    if min(workers, len(files)) > 1 and model.big:
        _say(f"{min(workers, len(files))} worker processes each load their own copy of "
             f"{model.spec.name}"
             + (f" (~{model.spec.approx_mb:.0f} MB on disk)" if not model.custom else ""))
    dsts = batch.name_outputs(files, output_dir, output_extension(job, opts), inputs)
    jobs_list = [batch.Job(job, src, dst, str(src), opts, runtime)
                 for src, dst in zip(files, dsts, strict=True)]
    for entry in entries:
        if isinstance(entry, Result):
            for line in [entry.error] if entry.error else entry.notes:
                _say(line)

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show_bar and jobs_list:
        from bgrm.progress import Progress

        bar = Progress(job, jobs_list, opts)

    def on_progress(index: int, n: int) -> None:
        # Images count whole files, failed and skipped ones too (in on_result).
        if bar is not None:
            bar.advance(index, n)

    finished: dict[int, Result] = {}
    said = 0  # results up to here have been told, in input order

    def on_result(index: int, result: Result) -> None:
        # Workers finish in any order; the user hears about files in the order given.
        nonlocal said
        finished[index] = result
        if bar is not None:
            bar.finished(index, result)
        printer = bar.write if bar is not None else (lambda m: click.echo(m, err=True))
        while said in finished:
            done = finished.pop(said)
            said += 1
            for note in done.notes:
                printer(f"bgrm: {note}")
            if not done.ok:
                if show_traceback and done.traceback:
                    printer(done.traceback.rstrip())
                printer(f"bgrm: {done.error}")

    try:
        with _stdout_to_stderr():
            if scheduler and job == "video":
                # Long videos are split into segments over the cluster.
                from bgrm.video.segments_dask import run_on_cluster

                results = run_on_cluster(scheduler, jobs_list, on_progress, on_result)
            elif scheduler:
                from bgrm.distributed import run_on_cluster

                results = run_on_cluster(scheduler, jobs_list, on_progress, on_result)
            else:
                results = batch.run(jobs_list, workers, on_progress, on_result, file_threads)
    finally:
        if bar is not None:
            bar.close()
    done = iter(results)
    results = [entry if isinstance(entry, Result) else next(done) for entry in entries]
    if as_json:
        click.echo(json.dumps(api_results(results), indent=2))
    return exit_status(results)


