"""One image: decode (orientation, any mode) -> mask -> matte -> compose -> PNG, WebP or JPEG."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from bgrm import compose, edges
from bgrm.errors import InputError, OutputError, first_line
from bgrm.inputs import check_file, check_size
from bgrm.options import ImageOptions

# zlib's run-length strategy at level 1: on 12 MP cutouts 0.6 s instead of
# 2.0 s (level 6, the default) for files 0-15% larger; plain level 1 is as
# fast but 25% larger. The README's "Speed" section has the figures.
PNG_COMPRESS_LEVEL = 1
PNG_STRATEGY = 3  # zlib Z_RLE
# JPEG output (opaque results only): 4:4:4 at 95 keeps a cut edge free of
# chroma bleeding, which 4:2:0 smears over a solid background colour.
JPEG_QUALITY = 95
# EXIF tag of the orientation: decode() applies it to the pixels, so an output
# that kept it would be turned a second time by every viewer.
_ORIENTATION = 0x0112
# render()'s picture.info key for the --crop box (left, top, right, bottom).
CROP_BOX = "bgrm_crop_box"


@dataclass
class Decoded:
    rgb: np.ndarray  # HxWx3 uint8, upright
    alpha: np.ndarray | None  # the input's own transparency, if it had any
    notes: list[str] = field(default_factory=list)
    # The input's RGB colour profile (Display P3 phone photos, Adobe RGB), kept
    # so the output shows the same colours; None for sRGB-by-default inputs.
    icc_profile: bytes | None = None
    # The input's EXIF (camera, date, GPS...) without its orientation, which
    # the pixels already have; None when there was none.
    exif: bytes | None = None


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale -> 'L' by scaling, not by clipping at 255."""
    arr = np.asarray(im)
    top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
    if im.mode == "F":
        top = max(float(arr.max()), 1.0)
    return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8))


def _frames_note(im: Image.Image, name: str) -> str | None:
    """What to tell the user when a file holds more than one picture."""
    frames = getattr(im, "n_frames", 1)
    if frames <= 1 or im.format == "MPO":
        # MPO: a camera JPEG with a preview or depth map as a second frame.
        return None
    if im.format == "TIFF":
        return f"{name}: {frames} pages; processed the first"
    return (f"{name}: animated ({frames} frames); processed the first frame "
            "(use `bgrm video` for all of them)")


@lru_cache(maxsize=1)
def _register_heif() -> None:
    """HEIC/HEIF (iPhone photos) through pillow-heif; Pillow reads AVIF itself.

    Imported on the first decode rather than with the module (7 ms), and
    registered once per process; pillow-heif turns the picture upright itself
    (irot/imir boxes) and leaves an EXIF orientation of 1.
    """
    try:
        from pillow_heif import register_heif_opener
    except ImportError:  # the decoder is a dependency; a broken install still reads the rest
        return
    register_heif_opener()


def decode(data: bytes | Path, name: str) -> Decoded:
    """Read an image file (or bytes) into upright 8-bit RGB plus its own alpha."""
    notes: list[str] = []
    _register_heif()
    if isinstance(data, Path):
        check_file(data, name, "image")
    elif not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    try:
        with _open(data, name) as opened:
            check_size(opened.size, name)
            note = _frames_note(opened, name)
            if note:
                notes.append(note)
            opened.load()
            icc = _rgb_profile(opened)
            im = ImageOps.exif_transpose(opened)
            if im is opened:
                im = opened.copy()
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        check_size(_header_size(data), name)
        raise InputError(f"{name}: {first_line(exc)}") from exc  # Pillow's limit, set lower
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, not an image") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except UnidentifiedImageError as exc:
        what = _what_it_is(data)
        raise InputError(f"{name}: {what}" if what.startswith("corrupt") else
                         f"{name}: not an image bgrm can read ({what})") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's parsers raise TypeError,
        # IndexError, struct.error... on malformed files: all mean the same thing.
        raise InputError(f"{name}: corrupt or truncated image ({first_line(exc)})") from exc
    return _to_decoded(im, name, notes, icc)


def _open(data: bytes | Path, name: str) -> Image.Image:
    """``Image.open``, but a picture between Pillow's bomb warning and bgrm's own
    limit (checked here) is opened by its format's reader directly: that warning
    is raised in Image.open itself. The warnings filters are never touched: they
    are the host's, and swapping them is not thread safe. Other warnings of
    Pillow's (a damaged block) are the host's to see; the command line's
    process silences them."""
    if Image.MAX_IMAGE_PIXELS is not None:
        size = _header_size(data)
        if size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
            check_size(size, name)
            opened = _by_reader(io.BytesIO(data if isinstance(data, bytes) else
                                           data.read_bytes()))
            if opened is not None:
                return opened
    return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)


def _by_reader(fp) -> Image.Image | None:
    """The picture in ``fp`` as the first format reader that takes it opens it
    (lazily, and without Image.open's bomb check), or None."""
    Image.init()  # every reader registered (once per process)
    prefix = fp.read(16)
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        said = accept(prefix) if accept else True
        if not said or isinstance(said, str):
            continue
        try:
            fp.seek(0)
            return factory(fp, "")
        except Exception:  # noqa: BLE001, S112 - not this format: try the next
            continue
    return None


def _header_size(data: bytes | Path) -> tuple[int, int]:
    """The size a file's header announces, read without Image.open's bomb check."""
    with io.BytesIO(data) if isinstance(data, bytes) else data.open("rb") as fp:
        opened = _by_reader(fp)
        return opened.size if opened is not None else (0, 0)


def from_picture(im: Image.Image, name: str = "<image>") -> Decoded:
    """A picture already in memory (the Python API), made what ``decode`` makes of a
    file: turned upright by its EXIF orientation, 8-bit RGB, its own alpha."""
    check_size(im.size, name)
    try:
        im.load()  # a lazily opened file is read here, not halfway through
    except Exception as exc:  # noqa: BLE001 - as in decode: Pillow's parsers' errors
        raise InputError(f"{name}: corrupt or truncated image ({first_line(exc)})") from exc
    return _to_decoded(ImageOps.exif_transpose(im), name, [], _rgb_profile(im))


def _rgb_profile(im: Image.Image) -> bytes | None:
    # Only an RGB profile fits the RGB output: a CMYK or grey one would not.
    return im.info.get("icc_profile") if im.mode in (
        "RGB", "RGBA", "RGBX", "RGBa", "P", "PA") else None


def _to_decoded(im: Image.Image, name: str, notes: list[str], icc: bytes | None) -> Decoded:
    if im.width < 1 or im.height < 1:
        raise InputError(f"{name}: image has no pixels")
    try:
        rgb, alpha = _to_rgb(im)
    except Exception as exc:  # noqa: BLE001 - as above, for a malformed file's pixels
        raise InputError(f"{name}: cannot convert its {im.mode} pixels to RGB ({exc})") from exc
    return Decoded(rgb, alpha, notes, icc or None, _exif_without_orientation(im))


def _exif_without_orientation(im: Image.Image) -> bytes | None:
    try:
        exif = im.getexif()
        exif.pop(_ORIENTATION, None)
        return exif.tobytes() if len(exif) else None
    except Exception:  # noqa: BLE001 - a damaged EXIF block is dropped, not the photo
        return None


def _what_it_is(data: bytes | Path) -> str:
    """A guess, from the first bytes, at what a file Pillow cannot open really is."""
    try:
        head = data[:64] if isinstance(data, bytes) else data.open("rb").read(64)
    except OSError:
        return "unknown or unsupported format"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
        if "HEIF" in Image.OPEN:  # pillow-heif registered: the file is what is wrong
            return "corrupt or truncated image (a HEIC/HEIF file its decoder cannot read)"
        return "HEIC/HEIF, but no decoder for it is installed (pip install pillow-heif)"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        if "AVIF" in Image.OPEN:
            return "corrupt or truncated image (an AVIF file its decoder cannot read)"
        return "AVIF, but this Pillow has no AVIF decoder (Pillow 11.3 or later has one)"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV-style media file, likely a video: use `bgrm video`"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<svg") or text.startswith(b"<?xml") and b"<svg" in text:
        return "an SVG drawing, not a raster image"
    if text.startswith((b"<!doctype html", b"<html")):
        return "an HTML page: a failed download?"
    if head.startswith(b"\x89PNG") or head.startswith(b"\xff\xd8"):
        return "a PNG or JPEG with a damaged header"
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "a text file"
    return "unknown or unsupported format"


def _to_rgb(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Any Pillow mode -> 8-bit RGB, and the alpha channel when it has a real one."""
    alpha = None
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        alpha = np.asarray(rgba.getchannel("A"))
        if alpha.min() == 255:
            alpha = None
        # The model sees transparent areas as white, not as whatever colour
        # happens to hide under alpha 0.
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB")), alpha


def load_background(path: Path) -> Image.Image:
    """The --bg-image picture, read once for the files of a run that share it (the
    last one is kept, until its file changes or ``release_backgrounds``)."""
    try:
        st = os.stat(path)
    except OSError:  # decode says what is wrong with it, naming the file
        return _background(Path(path))
    return _background(Path(path), st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=1)
def _background(path: Path, *stamp) -> Image.Image:
    decoded = decode(path, str(path))
    return Image.fromarray(decoded.rgb)


def release_backgrounds() -> None:
    """Let go of the background kept by ``load_background`` (a long-lived process,
    once the files that used it are done)."""
    _background.cache_clear()


def render(decoded: Decoded, opts: ImageOptions, segmenter) -> Image.Image:
    """Decoded image -> the output picture for these options."""
    rgb = decoded.rgb
    edges.import_early(opts.matting, opts.edges)
    mask = np.asarray(segmenter.mask(Image.fromarray(rgb)))
    alpha, fg = edges.refine(rgb, mask, opts.matting, opts.edges)
    if decoded.alpha is not None:
        # What was already transparent in the input stays transparent.
        alpha = (alpha.astype(np.uint16) * decoded.alpha // 255).astype(np.uint8)
    if opts.only_mask:
        picture = Image.fromarray(alpha)
    elif opts.bg_type == "color":
        picture = Image.fromarray(compose.over(fg, alpha, opts.bg_color))
    elif opts.bg_type == "image":
        back = compose.cover(load_background(opts.bg_image), (rgb.shape[1], rgb.shape[0]))
        picture = Image.fromarray(compose.over(fg, alpha, back))
    else:
        picture = Image.fromarray(compose.cutout(fg, alpha))
    if opts.edges.crop:
        box = edges.crop_box(edges.subject_box(alpha), opts.edges.crop_margin,
                             (rgb.shape[1], rgb.shape[0]))
        # Sliced, not Image.crop: Pillow's bomb warning would count the box's
        # pixels, already within bgrm's limit.
        picture = Image.fromarray(np.asarray(picture)[box[1]:box[3], box[0]:box[2]])
        # process_file reports it (--json); the PNG encoder ignores unknown info keys.
        picture.info[CROP_BOX] = box
    if decoded.icc_profile and not opts.only_mask:
        # encode_png writes it; an RGB profile does not fit a grey mask.
        picture.info["icc_profile"] = decoded.icc_profile
    return picture


def encode_png(picture: Image.Image, out) -> None:
    picture.save(out, format="PNG", compress_level=PNG_COMPRESS_LEVEL,
                 compress_type=PNG_STRATEGY, icc_profile=picture.info.get("icc_profile"),
                 **_exif(picture))


def encode_webp(picture: Image.Image, out) -> None:
    # Lossless keeps the alpha and every edge exactly as a PNG would. Method 1
    # at effort 0: near the smallest files libwebp makes, in a fraction of the
    # default's time (README, Speed).
    picture.save(out, format="WEBP", lossless=True, quality=0, method=1,
                 icc_profile=picture.info.get("icc_profile") or b"", **_exif(picture))


def encode_jpg(picture: Image.Image, out) -> None:
    if picture.mode not in ("RGB", "L"):
        # ImageOptions refuses jpg for transparent results; this is the last guard.
        raise ValueError(f"JPEG cannot hold a {picture.mode} picture")
    picture.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0,
                 icc_profile=picture.info.get("icc_profile"), **_exif(picture))


def _exif(picture: Image.Image) -> dict:
    exif = picture.info.get("exif")
    return {"exif": exif} if exif else {}


# The largest side each output format can hold (libwebp; libjpeg's JPEG_MAX_DIMENSION).
_MAX_SIDE = {"webp": ("WebP", 16383), "jpg": ("JPEG", 65500)}


def encode(picture: Image.Image, out, fmt: str = "png", exif: bytes | None = None,
           name: str = "<image>") -> None:
    """Write ``picture`` to ``out`` (a path or a binary file) as ``fmt``, with the
    input's EXIF (orientation already applied) and colour profile. A picture
    larger than ``fmt`` holds is an OutputError naming ``name``, before a byte."""
    if fmt in _MAX_SIDE and max(picture.size) > _MAX_SIDE[fmt][1]:
        title, side = _MAX_SIDE[fmt]
        raise OutputError(f"{name}: the result is {picture.width}x{picture.height}, and "
                          f"{title} holds at most {side} pixels a side; use format png (--format png)")
    if exif:
        picture.info["exif"] = exif  # beside the colour profile, as render leaves it
    # Looked up at each call, so a test can stand in for one encoder.
    encoder = {"png": encode_png, "webp": encode_webp, "jpg": encode_jpg}[fmt]
    encoder(picture, out)


def process_file(src: Path, dst: Path, opts: ImageOptions, segmenter, progress=None):
    """Read ``src``, write its result to ``dst`` atomically; return its notes (and crop box)."""
    from bgrm.outputs import atomic_path
    from bgrm.report import Processed

    decoded = decode(src, str(src))
    picture = render(decoded, opts, segmenter)
    with atomic_path(dst) as tmp:
        encode(picture, tmp, opts.format, decoded.exif, str(src))
    if progress:
        progress(1)
    return Processed(decoded.notes, picture.info.get(CROP_BOX))
