"""Many inputs per run: expand them, name the outputs, and how many files at once.

The files are run by an executor (bgrm.run)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from bgrm.media import EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from bgrm.outputs import SUFFIX, file_keys, in_sequence, output_of
from bgrm.report import Result


def expand(inputs: list[str], kind: str, recursive: bool,
           warn: Callable[[str], None] | None = None,
           output_dir: Path | None = None) -> list[Path | Result]:
    """Files as given; folders as their images (or videos), never bgrm's own outputs.

    A missing input becomes a failed Result in its place, so the report keeps
    the order the user gave. ``warn`` hears about folders with nothing to do.
    A file met a second time (named twice, through a link, or inside a folder
    also given) is processed once: its later places hold a Result that says
    which input it is the same file as. A file of a folder that bgrm wrote
    (``own_outputs``) holds a Result that says so (``skipped_output``).
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
                listed = [p for p in found if p.is_file() and not _hidden(p.relative_to(path))]
            except OSError as exc:
                files.append(Result(item, error=f"{item}: cannot read the folder: "
                                    f"{exc.strerror or exc}"))
                continue
            ours = own_outputs(listed, output_dir)
            chosen = sorted(p for p in listed if p.suffix.lower() in EXTENSIONS[kind]
                            and p not in ours)
            if not chosen and warn is not None:
                where = "in it or its sub-folders" if recursive else \
                    "in it (--recursive looks into sub-folders)"
                warn(f"{item}: no {kind}s to process {where}")
            files.extend(_skipped(ours, kind))
            files.extend(chosen)
        elif path.exists():
            files.append(path)
        else:
            files.append(Result(item, error=f"{item}: no such file or folder"))
    return _once(files)


def own_outputs(listed: list[Path], output_dir: Path | None = None
                ) -> dict[Path, tuple[str, str]]:
    """Which files of a folder's listing bgrm could have written: ``X_processed.ext``
    beside an input ``X.*`` of either kind, or in this run's ``output_dir``; the
    frames of a PNG sequence's folder. Each maps to (what to name as skipped,
    why): a sequence is named once, by its folder.

    ``X_processed_N`` counts as bgrm's only up to the number it could have
    reached: one more than the inputs ``X.*`` beside it (name_outputs numbers
    inputs sharing a stem, and steps over an input that has the first name).
    """
    media: dict[tuple[Path, str], list[Path]] = {}
    for p in listed:
        if p.suffix.lower() in _MEDIA:
            media.setdefault((p.parent, p.stem), []).append(p)
    out = Path(os.path.abspath(output_dir)) if output_dir is not None else None
    ours: dict[Path, tuple[str, str]] = {}
    for p in listed:
        named = output_of(p)
        if in_sequence(p):
            ours[p] = (str(p.parent), "a PNG sequence bgrm wrote")
        elif named is None or p.suffix.lower() not in _MEDIA:
            continue
        elif named[1] <= len(media.get((p.parent, named[0]), [])) + 1 and \
                (p.parent, named[0]) in media:
            first = sorted(media[p.parent, named[0]])[0].name
            ours[p] = (str(p), f"named as bgrm's output for {first}")
        elif out is not None and Path(os.path.abspath(p)).is_relative_to(out):
            ours[p] = (str(p), "named as bgrm's output, in the output folder -o")
    return ours


_MEDIA = frozenset(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def _skipped(ours: dict[Path, tuple[str, str]], kind: str) -> list[Result]:
    """One Result per skipped output of this kind (a PNG sequence's folder once)."""
    named = sorted({why for p, why in ours.items() if p.suffix.lower() in EXTENSIONS[kind]})
    return [Result(shown, skipped_output=why,
                   notes=[f"{shown}: skipped, {why} (name it alone to process it)"])
            for shown, why in named]


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
    # An output is never an input's own file: its path, through a link or a hard link.
    inputs = set().union(*(file_keys(p) for p in files))
    # abspath, not resolve(): a linked folder or file keeps the place it was found at.
    folders = [Path(os.path.abspath(r)) for r in roots if r.strip() and Path(r).is_dir()]
    names = []
    for src in files:
        folder = src.parent if output_dir is None else output_dir / _place(src, folders)
        def used(name: str, folder: Path = folder) -> bool:
            return (folder / name).resolve() in taken or bool(file_keys(folder / name) & inputs)

        dst = folder / output_name(src.stem, ext, used)
        taken.add(dst.resolve())
        names.append(dst)
    return names


def output_name(stem: str, ext: str, taken: Callable[[str], bool]) -> str:
    """The one rule for an output's name: ``<stem>_processed.<ext>``, or ``_2``,
    ``_3``... after it while ``taken(name)`` (no extension: a PNG sequence's folder)."""
    dot = f".{ext}" if ext else ""
    name, n = f"{stem}{SUFFIX}{dot}", 2
    while taken(name):
        name, n = f"{stem}{SUFFIX}_{n}{dot}", n + 1
    return name


def _place(src: Path, folders: list[Path]) -> Path:
    """Where ``src`` sits inside the first given folder that holds it ('' if none)."""
    parent = Path(os.path.abspath(src)).parent
    for folder in folders:
        if parent.is_relative_to(folder):
            return parent.relative_to(folder)
    return Path()


# Mean picture size from which plain cutouts run on threads too: around there
# encoding the PNG takes as long as the inference.
_LARGE_INPUT_PIXELS = 4_000_000


def default_file_threads(kind: str, files: list[Path], matting: bool = False) -> int:
    """Files processed at once on threads of the one process, by default.

    A second process costs its own interpreter, onnxruntime and scipy
    imports before its first file, which a run of a few photos never earns
    back. Threads share the imports and the one model; onnxruntime, SuperLU
    (matting) and Pillow's codecs release the GIL. Two files at once pay off
    where each file has much single-threaded work besides the inference:
    alpha matting, and large photos (a mean of 4 MP or more, from the headers
    of the first 8), whose PNG encoding rivals the inference. Small photos
    without matting go one at a time, each inference on all cores. The
    measured figures are in the README's Speed section (bench/bench.py).
    ``--workers N`` still gives N processes, each file isolated from a crash or
    out-of-memory kill of another.
    """
    if kind != "image" or len(files) < 2:
        return 1
    if not matting and _mean_pixels(files[:8]) < _LARGE_INPUT_PIXELS:
        return 1
    return max(1, min(os.cpu_count() or 1, len(files)))


def _mean_pixels(files: list[Path]) -> float:
    """Mean width x height of ``files``, from their headers (nothing is decoded)."""
    from PIL import Image

    sizes = []
    for path in files:
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                continue  # a FIFO would block the open; its job refuses it
            with Image.open(path) as im:
                sizes.append(im.width * im.height)
        except Exception:  # noqa: BLE001, S112 - its own job says what is wrong with it
            continue
    return sum(sizes) / len(sizes) if sizes else 0.0
