"""A corpus of nasty inputs, generated here (never downloaded).

Each maker writes one file and returns its path. Valid-but-unusual inputs are
built from the real chelsea.png fixture so their outputs can be compared with
the output of a plain RGB copy of the same picture.
"""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JPEG_QUALITY = 95


def chelsea() -> Image.Image:
    return Image.open(FIXTURES / "chelsea.png").convert("RGB")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, depth: int, color_type: int, rows) -> bytes:
    """A PNG written by hand: ``rows`` yields each scanline's raw bytes (no filter byte)."""
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(b"\x00" + row) for row in rows) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def bomb_png(path: Path, side: int = 30000) -> Path:
    """A side x side 1-bit PNG: ~100 KB on disk, 900 MP (2.7 GB as RGB) once decoded."""
    row = bytes((side + 7) // 8)
    path.write_bytes(png_bytes(side, side, 1, 0, (row for _ in range(side))))
    return path


def text_bomb_png(path: Path, megabytes: int = 64) -> Path:
    """An 8x8 PNG with a zTXt comment that inflates to ``megabytes`` MB."""
    z = zlib.compressobj(9)
    block = bytes(1 << 20)
    text = b"".join(z.compress(block) for _ in range(megabytes)) + z.flush()
    png = png_bytes(8, 8, 8, 0, (bytes(8) for _ in range(8)))
    ihdr_end = 8 + 25
    path.write_bytes(png[:ihdr_end] + _chunk(b"zTXt", b"Comment\x00\x00" + text)
                     + png[ihdr_end:])
    return path


def bomb_jpeg(path: Path, side: int = 60000) -> Path:
    """A tiny JPEG whose frame header claims side x side pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


def png16(path: Path, image: Image.Image) -> Path:
    """A 16-bit-per-channel PNG (RGB, RGBA, L or LA) with the same picture as ``image``."""
    mode_types = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
    arr = np.asarray(image).astype(">u2") * 257
    if arr.ndim == 2:
        arr = arr[..., None]
    h, w = arr.shape[:2]
    path.write_bytes(png_bytes(w, h, 16, mode_types[image.mode], (r.tobytes() for r in arr)))
    return path


def exif_jpeg(path: Path, upright: Image.Image, orientation: int) -> Path:
    """A JPEG whose pixels are stored turned, with the EXIF tag that makes them upright."""
    undo = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(undo).save(path, "JPEG", quality=JPEG_QUALITY, exif=exif)
    return path


def palette_with_transparency(path: Path, hole: tuple[int, int, int, int]) -> Path:
    """chelsea in 64 colours plus one transparent index painted over ``hole``."""
    im = chelsea().quantize(64)
    arr = np.asarray(im).copy()
    x0, y0, x1, y1 = hole
    arr[y0:y1, x0:x1] = 64
    out = Image.fromarray(arr, "P")
    out.putpalette(im.getpalette()[:64 * 3] + [255, 0, 255])
    out.save(path, transparency=64)
    return path


def la(path: Path, hole: tuple[int, int, int, int]) -> Path:
    grey = chelsea().convert("L")
    alpha = Image.new("L", grey.size, 255)
    alpha.paste(0, hole)
    Image.merge("LA", (grey, alpha)).save(path)
    return path


def noisy_jpeg(path: Path, size=(2400, 1600), seed=0) -> Path:
    """A large, noisy photo: its PNG output takes a while to encode (a window for Ctrl-C)."""
    rng = np.random.default_rng(seed)
    arr = np.asarray(chelsea().resize(size)).astype(np.int16)
    arr = np.clip(arr + rng.integers(-12, 12, arr.shape), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=90)
    return path


SIZE = (451, 300)  # chelsea's
HOLE = (0, 0, 120, 90)  # made transparent in the inputs that carry alpha

# Unusual but valid images -> what their output must look like. ``ref``: the
# file whose output alpha this one must match within ``tol`` (mean absolute
# difference); ``size``: the output size; ``clear``: a box that must come out
# fully transparent; ``note``: a word the run must tell the user.
VALID: dict[str, dict] = {
    "ref_rgb.png": {"size": SIZE},
    "ref_grey.png": {"size": SIZE},
    "ref_jpeg.jpg": {"size": SIZE},
    "cmyk.jpg": {"size": SIZE, "ref": "ref_jpeg.jpg", "tol": 8},
    "rgb16.png": {"size": SIZE, "ref": "ref_rgb.png", "tol": 1},
    "grey16.png": {"size": SIZE, "ref": "ref_grey.png", "tol": 1},
    "rgba16.png": {"size": SIZE, "ref": "ref_rgb.png", "tol": 1},
    "la.png": {"size": SIZE, "clear": HOLE},
    "palette_trns.png": {"size": SIZE, "clear": HOLE},
    "one_pixel.png": {"size": (1, 1)},
    "strip.png": {"size": (6000, 40)},
    "animated.gif": {"size": Image.open(FIXTURES / "no_time_for_that_tiny.gif").size,
                     "note": "animated (24 frames)"},
    "jpeg_named.png": {"size": SIZE, "ref": "ref_jpeg.jpg", "tol": 0},
    **{f"exif_{o}.jpg": {"size": SIZE, "ref": "ref_jpeg.jpg", "tol": 8} for o in range(2, 9)},
}

# Broken inputs -> a phrase their one-line error must contain.
BROKEN: dict[str, str] = {
    "zero.jpg": "empty file",
    "page.jpg": "not an image",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "header_only.png": "",
    "bad_crc.png": "",
    "random.png": "not an image",
    "bomb.png": "30000x30000 is 900 megapixels, more than the 150 MP",
    "bomb.jpg": "60000x60000 is 3600 megapixels",
    "text_bomb.png": "too large",
}


def valid_corpus(folder: Path) -> dict[str, dict]:
    """Write the VALID files into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    pic = chelsea()
    assert pic.size == SIZE
    pic.save(folder / "ref_rgb.png")
    pic.convert("L").save(folder / "ref_grey.png")
    pic.save(folder / "ref_jpeg.jpg", quality=JPEG_QUALITY)
    pic.convert("CMYK").save(folder / "cmyk.jpg", quality=JPEG_QUALITY)
    png16(folder / "rgb16.png", pic)
    png16(folder / "grey16.png", pic.convert("L"))
    png16(folder / "rgba16.png", pic.convert("RGBA"))
    la(folder / "la.png", HOLE)
    palette_with_transparency(folder / "palette_trns.png", HOLE)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one_pixel.png")
    pic.resize((6000, 40)).save(folder / "strip.png")
    (folder / "animated.gif").write_bytes((FIXTURES / "no_time_for_that_tiny.gif").read_bytes())
    (folder / "jpeg_named.png").write_bytes((folder / "ref_jpeg.jpg").read_bytes())
    for orientation in range(2, 9):
        exif_jpeg(folder / f"exif_{orientation}.jpg", pic, orientation)
    assert sorted(p.name for p in folder.iterdir() if p.name in VALID) == sorted(VALID)
    return VALID


def broken_corpus(folder: Path) -> dict[str, str]:
    """Broken inputs -> a word their one-line error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good_png = (FIXTURES / "chelsea.png").read_bytes()
    good_jpg = (FIXTURES / "rocket.jpg").read_bytes()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "page.jpg").write_text("<!DOCTYPE html>\n<html><head><title>Photo</title></head>"
                                     "<body><img src='photo.jpg'></body></html>\n")
    (folder / "truncated.jpg").write_bytes(good_jpg[:len(good_jpg) * 6 // 10])
    (folder / "truncated.png").write_bytes(good_png[:len(good_png) * 6 // 10])
    (folder / "header_only.png").write_bytes(good_png[:8])
    bad_crc = bytearray(good_png)
    bad_crc[40] ^= 0xFF  # in the chunk after IHDR: its CRC no longer matches
    (folder / "bad_crc.png").write_bytes(bytes(bad_crc))
    (folder / "random.png").write_bytes(np.random.default_rng(1).bytes(4096))
    bomb_png(folder / "bomb.png")
    bomb_jpeg(folder / "bomb.jpg")
    text_bomb_png(folder / "text_bomb.png")
    return BROKEN


class PoolTask(NamedTuple):
    """A task for the worker-process tests: what its worker does, and a label."""

    action: str  # ok | sigkill | exit | done-then-die | hang
    value: int

    @property
    def name(self) -> str:
        return f"task {self.value}"


def pool_task(task, progress):
    """The worker's body in the worker-process tests."""
    action, value = task
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(3)
    elif action == "hang":
        time.sleep(3600)  # a file that never finishes: only --timeout ends it
    elif action == "done-then-die":
        # Answer as the worker loop would, then die before taking another task.
        conn = next(c.cell_contents for c in progress.__closure__
                    if hasattr(c.cell_contents, "send"))
        conn.send(("done", progress.__defaults__[0], f"done {value}"))
        conn.close()
        time.sleep(0.3)
        os._exit(0)
    time.sleep(0.05)
    return f"done {value}"


def pool_scenario(tasks: list, timeout: float | None = None) -> list:
    """Run ``pool_task`` over ``tasks`` ([action, value] pairs) on two worker
    processes; each result as a string."""
    from bgrm.run import Done
    from bgrm.run.processes import Processes

    def died(task, exitcode):
        how = f"signal {-exitcode}" if exitcode < 0 else f"exit {exitcode}"
        return f"died {task.value} {how}"

    results: list = [None] * len(tasks)

    def emit(event) -> None:
        if isinstance(event, Done):
            assert results[event.index] is None, "two results for one task"
            results[event.index] = event.result

    executor = Processes(2, timeout, fn=pool_task, on_death=died)
    executor.execute([(i, PoolTask(*t)) for i, t in enumerate(tasks)], emit)
    return [r if isinstance(r, str) else r.error for r in results]
