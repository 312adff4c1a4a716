"""Output names and atomic writes: a file is either complete or not there."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

from bgrm.errors import OutputError

TMP_MARK = ".bgrm-tmp-"
SUFFIX = "_processed"


def tmp_name(dst: Path) -> Path:
    """A hidden sibling of ``dst`` that keeps its extension (ffmpeg picks the
    container from it) and carries the pid, so leftovers can be traced."""
    return dst.with_name(f".{dst.stem}{TMP_MARK}{os.getpid()}{dst.suffix}")


def file_keys(path: Path) -> set:
    """What identifies the file ``path`` names: its resolved path (symlinks
    followed) and, when it exists, its device and inode (hard links). Two paths
    sharing a key are one file; an output must share none with its input."""
    keys: set = {path.resolve()}
    with contextlib.suppress(OSError):
        st = path.stat()
        keys.add((st.st_dev, st.st_ino))
    return keys


def describe_os_error(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


@contextlib.contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a temporary path to write; rename it onto ``dst`` only on success.

    On any failure, Ctrl-C included, the temporary file is removed and ``dst``
    is left as it was.
    """
    tmp = tmp_name(dst)
    try:
        # A sub-folder of -o mirroring the input tree is made on first use.
        dst.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, final_path(dst))
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write: {describe_os_error(exc)}") from exc
    finally:
        # OSError, not only FileNotFoundError: on a read-only or vanished
        # folder the unlink fails too, and must not hide the real error.
        with contextlib.suppress(OSError):
            tmp.unlink()


# (output, where to put it instead): set while an executor runs a file whose
# output it renames into place itself, once it has the file's result in hand.
_HOLD: ContextVar[tuple[Path, Path] | None] = ContextVar("bgrm_hold", default=None)


def held_name(dst: Path, token: str) -> Path:
    """Where a finished output waits for ``commit``: hidden, marked as bgrm's own
    temporary, unique to one run (``token``) and one input."""
    return dst.with_name(f".{dst.stem}{TMP_MARK}held-{token}{dst.suffix}")


def final_path(dst: Path) -> Path:
    """Where a finished output is renamed to: ``dst``, or its held name while an
    executor holds it (``holding``). Every writer of outputs renames through this."""
    held = _HOLD.get()
    return held[1] if held and held[0] == dst else dst


@contextlib.contextmanager
def holding(dst: Path, held: Path) -> Iterator[None]:
    """While inside, ``atomic_path(dst)`` renames the finished file onto ``held``."""
    reset = _HOLD.set((dst, held))
    try:
        yield
    finally:
        _HOLD.reset(reset)


def commit(held: Path, dst: Path) -> None:
    """Move a held output into place (atomically: same folder).

    A folder output (a sequence of files) replaces an earlier folder whole:
    that one is moved aside first and removed after.
    """
    try:
        _replace(held, dst)
    except OutputError:
        remove_tmp(held)
        raise
    except OSError as exc:
        remove_tmp(held)
        raise OutputError(f"{dst}: cannot write: {describe_os_error(exc)}") from exc


@contextlib.contextmanager
def atomic_folder(dst: Path) -> Iterator[Path]:
    """``atomic_path`` for a folder (a PNG sequence): filled under a hidden
    temporary name, renamed onto ``dst`` only when complete.

    An earlier ``dst`` folder is moved aside first and removed after, so
    whatever is found at ``dst`` is always one whole run's output; a folder
    holding anything else is refused before any work (``check_replaceable``).
    """
    check_replaceable(dst)
    tmp = tmp_name(dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        _replace(tmp, final_path(dst))  # held by an executor: its commit replaces dst whole
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write: {describe_os_error(exc)}") from exc
    finally:
        remove_tmp(tmp)


def _replace(src: Path, dst: Path) -> None:
    """os.replace, also for a folder onto an earlier folder (which os.replace
    refuses unless empty): that one is moved aside first and removed after."""
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        check_replaceable(dst)  # again: the folder may have been filled meanwhile
        old = dst.with_name(f".{dst.name}{TMP_MARK}{os.getpid()}.old")
        os.rename(dst, old)
        os.rename(src, dst)
        remove_tmp(old)
    else:
        os.replace(src, dst)


def sequence_names(dst: Path) -> re.Pattern:
    """The names bgrm writes inside the PNG-sequence folder ``dst``: its numbered
    frames and its audio (bgrm.video.writer)."""
    return re.compile(re.escape(dst.name) + r"(_\d+\.png|\.wav)")


def check_replaceable(dst: Path) -> None:
    """Refuse a folder at ``dst`` that a PNG sequence would replace unless it holds
    nothing but an earlier sequence's files: anything else there is the user's."""
    if not dst.is_dir() or dst.is_symlink():
        return  # nothing there, or a file: the rename itself refuses a file or link
    ours = sequence_names(dst)
    try:
        foreign = [p.name for p in dst.iterdir()
                   if not (ours.fullmatch(p.name) and p.is_file() and not p.is_symlink())]
    except OSError as exc:
        raise OutputError(f"{dst}: cannot write: {describe_os_error(exc)}") from exc
    if foreign:
        raise OutputError(f"{dst}: a folder that holds other files ({', '.join(sorted(foreign)[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}), not only an earlier PNG "
                          "sequence of bgrm's; move it or choose another -o")


def remove_tmp(path: Path) -> None:
    """Remove a temporary file or folder, quietly: it may be gone already."""
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_leftovers(folders, pid: int) -> None:
    """Remove temporary files (and PNG-sequence folders) a killed worker ``pid``
    may have left in ``folders``."""
    for folder in folders:
        for pattern in (f".*{TMP_MARK}{pid}.*", f".*{TMP_MARK}{pid}"):
            for path in Path(folder).glob(pattern):
                remove_tmp(path)


# <stem>_processed, or <stem>_processed_2 when two inputs shared a stem (or the
# first name was an input's own).
_OUTPUT_STEM = re.compile(r"(.+)" + re.escape(SUFFIX) + r"(?:_(\d+))?")


def output_of(path: Path) -> tuple[str, int] | None:
    """The stem of the input whose output ``path`` is named like, and its number
    (``("x", 1)`` for ``x_processed.png``, ``("x", 2)`` for ``x_processed_2.mov``),
    or None."""
    found = _OUTPUT_STEM.fullmatch(path.stem)
    return (found.group(1), int(found.group(2) or 1)) if found else None


def in_sequence(path: Path) -> bool:
    """True for a frame or the audio inside a PNG sequence's folder: its name is the
    folder's own (``x_processed/x_processed_000001.png``), as only bgrm names them."""
    return _OUTPUT_STEM.fullmatch(path.parent.name) is not None and \
        sequence_names(path.parent).fullmatch(path.name) is not None
