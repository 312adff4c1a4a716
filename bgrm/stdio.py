"""Keeping bgrm's own stdout clean while libraries print."""

from __future__ import annotations

import contextlib
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
