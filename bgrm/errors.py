"""Errors a user can cause, each carrying the exit status it maps to.

Library code raises these; only the CLI turns them into an exit status, so
nothing but ``cli.main`` calls ``sys.exit``.
"""

from __future__ import annotations

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
