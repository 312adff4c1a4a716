"""The command line's own process and streams: its stdout kept clean while libraries
print, its log lines and warnings. Only bgrm's own processes call these."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """While inside, stdout (fd 1 too) points at stderr.

    bgrm's own stdout is the PNG of ``bgrm image -`` or the --json report,
    written after this; whatever a library prints meanwhile (a solver's
    warnings, onnxruntime banners), in this process or a worker, must not end
    up in the middle of it.
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


def quiet_pillow_warnings() -> None:
    """For a process bgrm owns (the command line's, its workers'): Pillow's warnings
    off. bgrm checks sizes and damaged files itself and says so in its own words;
    the library never touches the filters, which belong to its host."""
    import warnings

    warnings.filterwarnings("ignore", module=r"PIL\.")


class StderrHandler(logging.Handler):
    """bgrm's log records as the lines the command line always printed: the message
    alone, on whatever ``sys.stderr`` is at the time."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's own way: a broken stream is reported
            self.handleError(record)


@contextlib.contextmanager
def command_line_process() -> Iterator[None]:
    """While inside: bgrm's loggers print on stderr and Pillow's warnings are off;
    both put back after (a test may run the command line in its own process)."""
    import warnings

    logger = logging.getLogger("bgrm")
    handler = StderrHandler()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():  # main thread, before any worker starts
            quiet_pillow_warnings()
            yield
    finally:
        logger.removeHandler(handler)
