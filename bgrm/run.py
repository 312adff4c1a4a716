"""One command run: inputs -> jobs -> results -> report and exit status."""

from __future__ import annotations

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



def output_extension(job: str, opts) -> str:
    if job == "image":
        return "png"
    from bgrm.video.formats import FORMATS

    return FORMATS[opts.video_format].ext


def _say(message: str) -> None:
    click.echo(f"bgrm: {message}", err=True)


def _stdin_image(opts, model, device, threads) -> ExitStatus:
    """``bgrm image -``: bytes on stdin, PNG on stdout."""
    from bgrm.image import decode, encode_png, render
    from bgrm.segment import get_segmenter

    data = sys.stdin.buffer.read()
    if not data:
        raise ParameterError("-: nothing on standard input")
    decoded = decode(data, "<stdin>")
    for note in decoded.notes:
        _say(note)
    picture = render(decoded, opts, get_segmenter(model, device, threads))
    if sys.stdout.isatty():
        raise ParameterError("-: refusing to write a PNG to a terminal; redirect stdout")
    encode_png(picture, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return ExitStatus.OK


def run_command(job: str, opts, *, inputs, output_dir, recursive, jobs, device, threads,
                skip_existing, as_json, progress, show_traceback, scheduler) -> ExitStatus:
    inputs = list(inputs)
    if "-" in inputs:
        if job != "image" or len(inputs) > 1 or as_json or scheduler:
            raise ParameterError("- (stdin) works for `bgrm image` with a single input "
                                 "and without --json or --scheduler")
        model = resolve(opts.model)
        return _stdin_image(opts, model, device, threads)
    model = resolve(opts.model)
    entries = batch.expand(inputs, job, recursive)
    files = [e for e in entries if isinstance(e, Path)]
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{output_dir}: cannot create the output folder: "
                              f"{describe_os_error(exc)}") from None
    workers = jobs or batch.default_workers(job, len(files))
    threads = threads or max(1, (os.cpu_count() or 1) // max(1, min(workers, len(files) or 1)))
    runtime = batch.Runtime(model, device, threads, skip_existing, show_traceback)
    if device == "cuda" and workers > 1 and not model.custom:
        from bgrm.segment import check_device

        check_device(device)  # one clear error, not the same one for every file
    if workers <= 1 or model.custom:
        # Load (and so check) the model before the first file: a wrong graph
        # is one clear error, not one per file.
        from bgrm.segment import get_segmenter

        get_segmenter(model, device, threads)
    dsts = batch.name_outputs(files, output_dir, output_extension(job, opts))
    jobs_list = [batch.Job(job, src, dst, str(src), opts, runtime)
                 for src, dst in zip(files, dsts)]
    for entry in entries:
        if isinstance(entry, Result):
            _say(entry.error)

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = None
    if show_bar and jobs_list:
        from tqdm import tqdm

        unit = "file" if job == "image" else "frame"
        bar = tqdm(total=len(jobs_list) if job == "image" else None, unit=unit,
                   file=sys.stderr, dynamic_ncols=True, leave=True)

    def on_progress(index: int, n: int) -> None:
        if bar is not None:
            bar.update(n)

    def on_result(index: int, result: Result) -> None:
        printer = bar.write if bar is not None else (lambda m: click.echo(m, err=True))
        for note in result.notes:
            printer(f"bgrm: {note}")
        if not result.ok:
            if show_traceback and result.traceback:
                printer(result.traceback.rstrip())
            printer(f"bgrm: {result.error}")

    try:
        if scheduler:
            from bgrm.distributed import run_on_cluster

            results = run_on_cluster(scheduler, jobs_list, on_progress, on_result)
        else:
            results = batch.run(jobs_list, workers, on_progress, on_result)
    finally:
        if bar is not None:
            bar.close()
    done = iter(results)
    results = [entry if isinstance(entry, Result) else next(done) for entry in entries]
    if as_json:
        click.echo(json.dumps(api_results(results), indent=2))
    return exit_status(results)


