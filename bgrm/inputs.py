"""Input files, refused before any decoder opens them: what is not a regular,
readable, non-empty file gets one line that says what it is instead."""

from __future__ import annotations

import stat
from pathlib import Path

from bgrm.errors import InputError

# Beyond this many pixels an image (or a video's frame) is refused before it is
# decoded: a 30000x30000 "decompression bomb" would need ~10 GB just to hold.
# 16-bit scans and 100 MP medium-format photos still fit. Pillow's own guard
# (Image.MAX_IMAGE_PIXELS, a warning above 89 MP and an error above 179 MP) is
# left as the process has it: bgrm.image silences its warning where it opens a
# file, and gives its error this limit's message.
MAX_PIXELS = 150_000_000


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


def check_size(size: tuple[int, int], name: str) -> None:
    """Refuse a picture (or video frame) of more than MAX_PIXELS, before it is decoded."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise InputError(f"{name}: {w}x{h} is {w * h / 1e6:.0f} megapixels, more than the "
                         f"{MAX_PIXELS // 1_000_000} MP bgrm will decode (refused to "
                         "protect memory)")
