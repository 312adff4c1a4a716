"""One input file to one output file: what each job (``image``, ``video``) does.

Below the library (``bgrm.api``) and the executors (``bgrm.run``): both hand a
file here with a loaded segmenter, and the job's media module does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bgrm.errors import ModelError, ParameterError
from bgrm.media import EXTENSIONS
from bgrm.outputs import file_keys

if TYPE_CHECKING:
    from bgrm.options import ImageOptions, VideoOptions
    from bgrm.report import Processed

Progress = Callable[[int], None]


class Job(Protocol):
    """What each job (``image``, ``video``) provides, for one input file at a time."""

    name: str  # "image" | "video", as in the commands and the PARAMS table's jobs

    def output_extension(self, opts) -> str:
        """The extension of the files this job writes with ``opts``."""

    def process_file(self, src: Path, dst: Path, opts, segmenter,
                     progress: Progress | None = None) -> Processed:
        """Write ``src`` processed to ``dst`` atomically; return its notes for the
        user (and ``--crop``'s box).

        ``progress(n)`` hears about units done (the file, or frames); any
        failure is raised, as a ``BgrmError`` when the user can fix it.
        """


class _ImageJob:
    name = "image"

    def output_extension(self, opts: ImageOptions) -> str:
        return opts.format

    def process_file(self, src, dst, opts, segmenter, progress=None) -> Processed:
        from bgrm import image

        return image.process_file(src, dst, opts, segmenter, progress)


class _VideoJob:
    name = "video"

    def output_extension(self, opts: VideoOptions) -> str:
        from bgrm.video.formats import FORMATS

        return FORMATS[opts.video_format].ext  # "": a folder (PNG sequence)

    def process_file(self, src, dst, opts, segmenter, progress=None) -> Processed:
        from bgrm.video import pipeline

        return pipeline.process_file(src, dst, opts, segmenter, progress)


JOBS: dict[str, Job] = {"image": _ImageJob(), "video": _VideoJob()}


def check_destination(job: str, src: Path, dst: Path, opts) -> None:
    """The output rules the command line's naming keeps, for any caller's ``dst``:
    never the input's own file (same path, a link or a hard link to it), and the
    extension of the format written (none for a PNG sequence's folder)."""
    if file_keys(src) & file_keys(dst):
        raise ParameterError(f"dst {dst}: is the input {src} itself; an output never "
                             "replaces its input")
    ext = JOBS[job].output_extension(opts)
    fmt = f"video_format {opts.video_format}" if job == "video" else f"format {opts.format}"
    if ext and dst.suffix.lower() != f".{ext}":
        raise ParameterError(f"dst {dst}: {fmt} writes a .{ext} file, not "
                             f"{dst.suffix or 'a name without an extension'}")
    known = {e for exts in EXTENSIONS.values() for e in exts} | {".mov", ".png", ".wav"}
    if not ext and dst.suffix.lower() in known:
        raise ParameterError(f"dst {dst}: {fmt} writes a folder of PNG frames, not "
                             f"a {dst.suffix} file")


def write_file(job: str, src: Path, dst: Path, opts, segmenter,
               progress: Progress | None = None) -> Processed:
    """``src`` through ``job`` with ``segmenter`` into ``dst`` (checked by
    ``check_destination`` first); a model failure names the file."""
    check_destination(job, src, dst, opts)
    try:
        return JOBS[job].process_file(src, dst, opts, segmenter, progress)
    except ModelError as exc:
        # The model failed on this file only (its graph was checked at load).
        raise ModelError(f"{src}: {exc}") from exc
