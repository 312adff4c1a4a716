"""Input files, refused before any decoder opens them: what is not a regular,
readable, non-empty file gets one line that says what it is instead."""

from __future__ import annotations

import stat
from pathlib import Path

from bgrm.errors import InputError


def check_file(path: Path, name: str, kind: str) -> None:
    """Raise ``InputError`` unless ``path`` is a regular file with bytes in it.

    ``kind`` ("image" or "video") words the message. Other errors of ``stat``
    (a link loop, a name too long) are left to the decoder, which names them.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{name}: is a folder, not {'an image' if kind == 'image' else 'a video'}")
    if not stat.S_ISREG(st.st_mode):
        # A pipe with no writer would block forever, /dev/zero never ends.
        hint = "; give the bytes on standard input with - instead" if kind == "image" else ""
        raise InputError(f"{name}: not a regular file (a pipe or a device){hint}")
    if st.st_size == 0:
        raise InputError(f"{name}: empty file (0 bytes)")
