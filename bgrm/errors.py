"""Errors a user can cause, each carrying the exit status it maps to.

Library code raises these; only the CLI turns them into an exit status, so
nothing but ``cli.main`` calls ``sys.exit``.
"""

from __future__ import annotations

import signal
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    FAILED = 1  # at least one input failed; the others were written
    USAGE = 2  # bad options or parameters (Click uses 2 as well)
    INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class BgrmError(Exception):
    """A failure explained to the user in one line, without a traceback."""

    exit_status = ExitStatus.FAILED


class InputError(BgrmError):
    """An input file that cannot be processed (unreadable, corrupt, unsupported)."""


class OutputError(BgrmError):
    """An output that cannot be written (permissions, full disk, name clash)."""


class ModelError(BgrmError):
    """A model that is missing, corrupt or of the wrong shape."""

    exit_status = ExitStatus.USAGE


class ParameterError(BgrmError):
    """An option or API parameter outside its allowed values."""

    exit_status = ExitStatus.USAGE


class DownloadError(BgrmError):
    """A model download that failed on the way (network, HTTP status, cut short)."""


class ClusterError(BgrmError):
    """The Dask scheduler cannot be reached, or its workers cannot run bgrm."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for the user: its first line, or its
    type's name when it has no message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def a_or_an(word: str) -> str:
    """``word`` with its article: "an isnet", "a u2net" (said "you")."""
    return f"{'an' if word[:1].lower() in 'aeio' else 'a'} {word}"


def one_line(text: str) -> str:
    """A whole message folded onto one line (a per-file error keeps all it says)."""
    return " ".join(text.split()) or "(no message)"


def _exit_as_signal(signum, frame):
    # SystemExit unwinds finally blocks (temporary outputs removed, ffmpeg
    # children and workers stopped), then the process exits as the signal would.
    raise SystemExit(128 + signum)


def unwind_on_termination() -> None:
    """SIGTERM and SIGHUP (`kill`, `timeout`, a closed terminal) unwind like Ctrl-C;
    a signal already ignored (SIGHUP under nohup) stays ignored."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, _exit_as_signal)
