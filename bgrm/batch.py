"""Many inputs per run: expand them, name the outputs, run the jobs, collect results."""

from __future__ import annotations

import importlib
import os
import stat
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bgrm.errors import BgrmError
from bgrm.models import ResolvedModel
from bgrm.outputs import SUFFIX, is_output_name, remove_leftovers
from bgrm.report import Result

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".heic", ".heif", ".hif", ".avif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".mpg",
                    ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
# Where each kind of job is done, imported only when a job of that kind runs.
PROCESSORS = {"image": "bgrm.image", "video": "bgrm.video.pipeline"}
EXTENSIONS = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS}


@dataclass(frozen=True)
class Runtime:
    """How the model runs, the same for every file of a run."""

    model: ResolvedModel
    device: str = "auto"
    threads: int | None = None
    skip_existing: bool = False
    traceback: bool = False
    # onnxruntime's idle threads spin for a while after each run; when other
    # work (matting) follows on the same cores, that spinning only steals them.
    spinning: bool = True


@dataclass(frozen=True)
class Job:
    kind: str  # image | video
    src: Path
    dst: Path
    name: str  # the input as the user named it
    options: Any  # ImageOptions | VideoOptions
    runtime: Runtime


def expand(inputs: list[str], kind: str, recursive: bool,
           warn: Callable[[str], None] | None = None) -> list[Path | Result]:
    """Files as given; folders as their images (or videos), never bgrm's own outputs.

    A missing input becomes a failed Result in its place, so the report keeps
    the order the user gave. ``warn`` hears about folders with nothing to do.
    A file met a second time (named twice, through a link, or inside a folder
    also given) is processed once: its later places hold a Result that says
    which input it is the same file as.
    """
    files: list[Path | Result] = []
    for item in inputs:
        if not item.strip():
            # Path("") is the current folder: an empty argument (an unset shell
            # variable) must not quietly mean "every picture here".
            files.append(Result(item, error="'': an empty input name"))
            continue
        path = Path(item)
        if path.is_dir():
            try:
                found = path.rglob("*") if recursive else path.iterdir()
                chosen = sorted(p for p in found if p.is_file()
                                and p.suffix.lower() in EXTENSIONS[kind]
                                and not _hidden(p.relative_to(path))
                                and not is_output_name(p))
            except OSError as exc:
                files.append(Result(item, error=f"{item}: cannot read the folder: "
                                    f"{exc.strerror or exc}"))
                continue
            if not chosen and warn is not None:
                where = "in it or its sub-folders" if recursive else \
                    "in it (--recursive looks into sub-folders)"
                warn(f"{item}: no {kind}s to process {where}")
            files.extend(chosen)
        elif path.exists():
            files.append(path)
        else:
            files.append(Result(item, error=f"{item}: no such file or folder"))
    return _once(files)


def _once(files: list[Path | Result]) -> list[Path | Result]:
    """Later copies of a file already listed -> a Result naming the first."""
    first: dict[tuple[int, int], Path] = {}
    out: list[Path | Result] = []
    for entry in files:
        if isinstance(entry, Path):
            try:
                st = entry.stat()
                # (device, inode) for files; FIFOs and devices are left to their job.
                key = (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None
            except OSError:
                key = None
            if key is not None and key in first:
                out.append(Result(str(entry), same_as=str(first[key]),
                                  notes=[f"{entry}: the same file as {first[key]}; "
                                         "processed once"]))
                continue
            if key is not None:
                first[key] = entry
        out.append(entry)
    return out


def _hidden(relative: Path) -> bool:
    # Dot files and dot folders (macOS "._photo.jpg" forks, .thumbnails/) are
    # not the user's pictures; naming one explicitly still processes it.
    return any(part.startswith(".") for part in relative.parts)


def name_outputs(files: list[Path], output_dir: Path | None, ext: str,
                 roots: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """``<stem>_processed.<ext>`` beside each input or in ``output_dir``.

    In ``output_dir``, a file found inside one of the folders among ``roots``
    (the inputs as given) keeps its place in that folder's tree:
    ``shots/a/x.jpg`` with root ``shots`` -> ``out/a/x_processed.png``. Two
    inputs that would still share an output (same stem from two folders
    given) never overwrite each other: later ones get ``_2``, ``_3``... in
    input order, so reruns give the same names.
    """
    taken: set[Path] = set()
    inputs = {p.resolve() for p in files}
    # abspath, not resolve(): a linked folder or file keeps the place it was found at.
    folders = [Path(os.path.abspath(r)) for r in roots if r.strip() and Path(r).is_dir()]
    names = []
    for src in files:
        folder = src.parent if output_dir is None else output_dir / _place(src, folders)
        base = f"{src.stem}{SUFFIX}"
        dot = f".{ext}" if ext else ""  # no extension: a folder (PNG sequence)
        dst = folder / f"{base}{dot}"
        n = 2
        while dst.resolve() in taken or dst.resolve() in inputs:
            dst = folder / f"{base}_{n}{dot}"
            n += 1
        taken.add(dst.resolve())
        names.append(dst)
    return names


def _place(src: Path, folders: list[Path]) -> Path:
    """Where ``src`` sits inside the first given folder that holds it ('' if none)."""
    parent = Path(os.path.abspath(src)).parent
    for folder in folders:
        if parent.is_relative_to(folder):
            return parent.relative_to(folder)
    return Path()


def run_job(job: Job, progress: Callable[[int], None]) -> Result:
    """Process one file; every failure becomes the result's error, never an exception."""
    if job.runtime.skip_existing and job.dst.exists():
        return Result(job.name, job.dst, skipped=True)
    try:
        from bgrm.segment import get_segmenter

        segmenter = get_segmenter(job.runtime.model, job.runtime.device, job.runtime.threads,
                                  job.runtime.spinning)
        module = importlib.import_module(PROCESSORS[job.kind])
        done = module.process_file(job.src, job.dst, job.options, segmenter, progress)
        return Result(job.name, job.dst, notes=list(done.notes), crop_box=done.crop_box)
    except BgrmError as exc:
        # The traceback is kept for --traceback; the user sees the one line.
        return Result(job.name, error=_one_line(str(exc)), traceback=traceback.format_exc())
    except MemoryError:
        return Result(job.name, error=f"{job.name}: out of memory",
                      traceback=traceback.format_exc())
    except Exception as exc:  # noqa: BLE001 - one file's bug must not stop the batch
        return Result(job.name, error=f"{job.name}: internal error: {type(exc).__name__}: "
                      f"{_one_line(str(exc))}", traceback=traceback.format_exc())


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def _death(job: Job, pid: int, exitcode: int | None) -> Result:
    remove_leftovers({job.dst.parent}, pid)
    how = f"killed by signal {-exitcode}" if exitcode and exitcode < 0 else f"exit {exitcode}"
    hint = " (out of memory?)" if exitcode == -9 else ""
    return Result(job.name, error=f"{job.name}: the worker processing it died ({how}){hint}")


# Mean picture size from which plain cutouts run on threads too: around there
# encoding the PNG takes as long as the inference.
_LARGE_INPUT_PIXELS = 4_000_000


def default_file_threads(kind: str, files: list[Path], matting: bool = False) -> int:
    """Files processed at once on threads of the one process, by default.

    Measured on 2 cores (bench/bench.py, 3-5 alternated runs): a second
    process costs its own interpreter, onnxruntime and pymatting imports
    (~1 s) before its first file, which a run of a few photos never earns
    back. Threads share the imports and the one model; onnxruntime, numba
    (matting) and Pillow's codecs release the GIL. Two files at once pay off
    where each file has much single-threaded work besides the inference:
    alpha matting (5 small photos: 4.2 s vs 5.1 s one at a time) and large
    photos (a mean of 4 MP or more, from the headers of the first 8), whose
    PNG encoding rivals the inference (two 12 MP: 3.1 s vs 3.4 s). Small
    photos without matting go one at a time, each inference on all cores
    (5 photos: 1.9 s vs 2.1 s, and 560 MB instead of 860 MB).
    ``--jobs N`` still gives N processes, each file isolated from a crash or
    out-of-memory kill of another.
    """
    if kind != "image" or len(files) < 2:
        return 1
    if not matting and _mean_pixels(files[:8]) < _LARGE_INPUT_PIXELS:
        return 1
    return max(1, min(os.cpu_count() or 1, len(files)))


def _mean_pixels(files: list[Path]) -> float:
    """Mean width x height of ``files``, from their headers (nothing is decoded)."""
    import warnings

    from PIL import Image

    sizes = []
    for path in files:
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                continue  # a FIFO would block the open; its job refuses it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as im:
                    sizes.append(im.width * im.height)
        except Exception:  # noqa: BLE001, S112 - its own job says what is wrong with it
            continue
    return sum(sizes) / len(sizes) if sizes else 0.0


def run(jobs: list[Job], workers: int, on_progress: Callable[[int, int], None],
        on_result: Callable[[int, Result], None], file_threads: int = 1) -> list[Result]:
    """Run the jobs inline (one worker, ``file_threads`` files at a time) or on a
    pool; results in input order."""
    if workers <= 1 and file_threads > 1 and len(jobs) > 1:
        return _run_threads(jobs, file_threads, on_progress, on_result)
    if workers <= 1 or len(jobs) <= 1:
        results = []
        try:
            for i, job in enumerate(jobs):
                result = run_job(job, lambda n, i=i: on_progress(i, n))
                on_result(i, result)
                results.append(result)
        except BaseException:
            # Ctrl-C can land inside atomic_path's cleanup, after the temporary
            # file was made and before it was removed.
            remove_leftovers({job.dst.parent for job in jobs}, os.getpid())
            raise
        return results
    from bgrm.pool import run_pool

    return run_pool(jobs, run_job, workers, on_progress=on_progress, on_result=on_result,
                    on_death=_death)


def _run_threads(jobs: list[Job], count: int, on_progress: Callable[[int, int], None],
                 on_result: Callable[[int, Result], None]) -> list[Result]:
    """Several files at once on threads of this process; results in input order.

    Results and progress reach the callbacks from this (the main) thread only.
    On Ctrl-C no new file is started and the files already under way are
    finished (each is written whole or not at all) before it is re-raised.
    """
    import queue
    import threading

    results: list = [None] * len(jobs)
    todo = iter(enumerate(jobs))
    take = threading.Lock()
    stop = threading.Event()
    events: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            with take:
                item = next(todo, None)
            if item is None:
                break
            i, job = item
            events.put(("done", i, run_job(job, lambda n, i=i: events.put(("progress", i, n)))))
        events.put(("exit", -1, None))

    threads = [threading.Thread(target=worker, name=f"bgrm-file-{n}", daemon=True)
               for n in range(min(count, len(jobs)))]
    for thread in threads:
        thread.start()
    running = len(threads)
    try:
        while running:
            kind, i, payload = events.get()
            if kind == "exit":
                running -= 1
            elif kind == "progress":
                on_progress(i, payload)
            else:
                results[i] = payload
                on_result(i, payload)
    except BaseException:
        stop.set()
        try:
            for thread in threads:
                thread.join()
        finally:
            remove_leftovers({job.dst.parent for job in jobs}, os.getpid())
        raise
    return results
