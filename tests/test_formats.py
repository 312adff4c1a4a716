"""The files people have and the files their tools take (issue 13).

Inputs: HEIC (pillow-heif) and AVIF (Pillow's own) photos made here from the
fixture photos with those libraries' encoders, rotated by EXIF and carrying a
colour profile, must give the PNG's mask. Outputs: --format webp / jpg, with
the input's EXIF kept; video as VP9-with-alpha WebM and as a PNG sequence,
each decoded again and checked frame by frame.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features
from videoclips import iou

from bgrm import image
from bgrm.models import REGISTRY, ResolvedModel, bundled_path
from bgrm.options import ImageOptions

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CAMERA = "bgrm test camera"


@pytest.fixture(scope="module")
def segmenter():
    from bgrm.segment import get_segmenter

    spec = REGISTRY["u2netp"]
    return get_segmenter(ResolvedModel(spec, bundled_path(spec)), "cpu", 2)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = CAMERA  # Make
    return exif.tobytes()


def _phone_photo(fmt: str, dst: Path) -> Path:
    """astronaut.png as a phone stores it: pixels turned sideways, EXIF orientation 6
    (turn right to view), an RGB colour profile; encoded by the library bgrm reads
    it with."""
    upright = Image.open(FIXTURES / "astronaut.png").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 undoes this
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    stored.save(dst, format=fmt, quality=92, exif=_exif(6), icc_profile=icc)
    return dst


def test_the_heic_and_avif_decoders_are_there_and_encode_here():
    # Pillow's own AVIF (libavif in its wheels) and pillow-heif's HEVC: if
    # either went missing, the tests below would not be testing anything.
    assert features.check("avif")
    import pillow_heif

    assert pillow_heif.libheif_info()["encoders"], "pillow-heif without an HEVC encoder"


@pytest.mark.parametrize("fmt, ext", [("HEIF", "heic"), ("AVIF", "avif")])
def test_a_phone_photo_gives_the_mask_of_the_same_picture_as_png(segmenter, tmp_path, fmt, ext):
    src = _phone_photo(fmt, tmp_path / f"astronaut.{ext}")
    assert src.read_bytes()[4:12] in (b"ftypheic", b"ftypmif1", b"ftypavif")
    decoded = image.decode(src, src.name)
    # astronaut: u2netp's mask of it is steady; on chelsea or rocket even a
    # JPEG at quality 92 moves the mask's IoU to 0.94-0.96 (the model, not the decoder).
    png = image.decode(FIXTURES / "astronaut.png", "astronaut.png")
    assert decoded.rgb.shape == png.rgb.shape  # upright, as the PNG
    assert decoded.icc_profile  # kept for the output, as for a JPEG
    mask = np.asarray(image.render(decoded, ImageOptions(only_mask=True), segmenter))
    ref = np.asarray(image.render(png, ImageOptions(only_mask=True), segmenter))
    assert iou(mask, ref) >= 0.99, iou(mask, ref)
    # The whole file path: found in a folder by its extension, written as a PNG
    # with the profile and the EXIF, less the orientation the pixels now have.
    dst = tmp_path / f"astronaut_{ext}_processed.png"
    image.process_file(src, dst, ImageOptions(), segmenter)
    out = Image.open(dst)
    assert out.size == (png.rgb.shape[1], png.rgb.shape[0])
    assert out.info.get("icc_profile") == decoded.icc_profile
    assert out.getexif().get(0x010F) == CAMERA and 0x0112 not in out.getexif()


def test_webp_is_lossless_rgba_and_jpg_opaque_with_the_exif_kept(segmenter, tmp_path):
    src = tmp_path / "cat.jpg"
    upright = Image.open(FIXTURES / "astronaut.png").convert("RGB")
    upright.transpose(Image.Transpose.ROTATE_90).save(src, quality=95, exif=_exif(6))
    png, webp, jpg = (tmp_path / f"cat_processed.{e}" for e in ("png", "webp", "jpg"))
    image.process_file(src, png, ImageOptions(), segmenter)
    image.process_file(src, webp, ImageOptions(format="webp"), segmenter)
    white = ImageOptions(format="jpg", bg_type="color", bg_color=(255, 255, 255))
    image.process_file(src, jpg, white, segmenter)
    cut = Image.open(png)
    assert Image.open(webp).format == "WEBP" and Image.open(webp).mode == "RGBA"
    got, want = np.asarray(Image.open(webp)), np.asarray(cut)
    # Lossless: every visible pixel and every alpha exactly; libwebp may store
    # any colour under alpha 0, where nothing shows.
    assert np.array_equal(got[..., 3], want[..., 3])
    assert np.array_equal(got[want[..., 3] > 0], want[want[..., 3] > 0])
    alpha = np.asarray(cut)[..., 3]
    assert (alpha < 16).mean() > 0.2 and (alpha > 240).mean() > 0.2  # a real cut-out
    out = Image.open(jpg)
    assert out.format == "JPEG" and out.mode == "RGB" and out.size == cut.size
    # Where the cut-out is clear the JPEG shows the white background.
    assert np.asarray(out)[alpha == 0].mean() > 240
    for path in (png, webp, jpg):
        exif = Image.open(path).getexif()
        assert exif.get(0x010F) == CAMERA, path
        assert exif.get(0x0112, 1) == 1, path  # applied to the pixels, not kept


def test_jpg_of_a_transparent_result_is_a_usage_error(bgrm, tmp_path):
    for extra in ([], ["--only-mask"]):
        proc = bgrm("image", FIXTURES / "chelsea.png", "--format", "jpg", *extra,
                    "-o", tmp_path / "out")
        assert proc.returncode == 2, proc.stderr.decode()
        assert b"jpg cannot hold" in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_format_from_params_and_on_stdout(bgrm, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"convert_to": "image-backgroundremover", "format": "webp"}))
    proc = bgrm("image", FIXTURES / "chelsea.png", "--params", params, "-o", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["files"][0]["filename"] == "chelsea_processed.webp"
    proc = bgrm("image", "-", "--format", "jpg", "--bg-type", "color",
                input=(FIXTURES / "chelsea.png").read_bytes())
    assert proc.returncode == 0, proc.stderr.decode()
    assert Image.open(io.BytesIO(proc.stdout)).format == "JPEG"
