"""The image job in-process on real photos with the bundled u2netp.

Decoding of every input mode, each image parameter's effect, alpha matting at
alpha_base_size, backgrounds, atomic writes. One model session serves the
whole module; the CLI itself is exercised in test_cli.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bgrm import compose, image, matte
from bgrm.errors import InputError, OutputError
from bgrm.models import REGISTRY, ResolvedModel, bundled_path
from bgrm.options import ImageOptions, MattingOptions
from bgrm.outputs import TMP_MARK

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GREEN = (0, 255, 0)


@pytest.fixture(scope="module")
def segmenter():
    from bgrm.segment import get_segmenter

    spec = REGISTRY["u2netp"]
    return get_segmenter(ResolvedModel(spec, bundled_path(spec)), "cpu", 2)


def photo(name: str, mode: str = "RGB") -> Image.Image:
    return Image.open(FIXTURES / name).convert(mode)


def png_bytes(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def alpha_of(out: Image.Image) -> np.ndarray:
    return np.asarray(out)[..., 3] if out.mode == "RGBA" else np.asarray(out)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 127, b > 127
    return float((a & b).sum() / max((a | b).sum(), 1))


_cache: dict = {}


def render(data, opts: ImageOptions, segmenter, name="photo") -> Image.Image:
    decoded = image.decode(data, name) if not isinstance(data, image.Decoded) else data
    return image.render(decoded, opts, segmenter)


def reference_alpha(name: str, segmenter) -> np.ndarray:
    """The plain RGB photo's mask, which every re-encoding of it should reproduce."""
    if name not in _cache:
        _cache[name] = alpha_of(render(FIXTURES / name, ImageOptions(only_mask=True),
                                       segmenter))
    return _cache[name]


# ---------------------------------------------------------------- decoding


def test_rgb_photo_gives_rgba_cutout_with_the_subject(segmenter):
    out = render(FIXTURES / "astronaut.png", ImageOptions(), segmenter)
    assert out.mode == "RGBA" and out.size == (512, 512)
    rgba = np.asarray(out)
    assert rgba[400, 250, 3] > 200 and rgba[5, 500, 3] < 30  # astronaut vs. top corner
    # Where the background is gone, its colour is gone too.
    assert (rgba[rgba[..., 3] == 0][:, :3] == 0).all()
    opaque = rgba[..., 3] == 255
    assert (rgba[opaque][:, :3] == np.asarray(photo("astronaut.png"))[opaque]).all()


@pytest.mark.parametrize("orientation, stored", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_90),   # camera held upright: pixels stored on their side
    (8, Image.Transpose.ROTATE_270),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_exif_orientation_is_applied(orientation, stored, segmenter):
    upright = photo("chelsea.png")  # 451x300: a wrong turn changes the shape
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png_bytes(upright.transpose(stored), "JPEG", quality=95, exif=exif)
    decoded = image.decode(data, "rotated.jpg")
    assert decoded.rgb.shape == (300, 451, 3)
    assert np.abs(decoded.rgb.astype(int) - np.asarray(upright)).mean() < 3
    out = image.render(decoded, ImageOptions(only_mask=True), segmenter)
    assert out.size == (451, 300)
    assert iou(alpha_of(out), reference_alpha("chelsea.png", segmenter)) > 0.94  # JPEG q95


def _grey16(im: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257)


def _palette_with_transparency(im: Image.Image) -> Image.Image:
    p = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=254)
    palette = p.getpalette()[: 254 * 3] + [255, 0, 255]  # index 254: magenta, transparent
    arr = np.asarray(p).copy()
    arr[:40] = 254
    out = Image.fromarray(arr, "P")
    out.putpalette(palette)
    out.info["transparency"] = 254
    return out


def _with_transparent_top(im: Image.Image, mode: str) -> Image.Image:
    arr = np.asarray(im.convert(mode)).copy()
    arr[:40, :, -1] = 0
    # Garbage under alpha 0 must not reach the model or the output.
    arr[:40, :, 0] = 77
    return Image.fromarray(arr, mode)


MODES = {
    "L": (lambda im: im.convert("L"), "PNG", "L"),
    "I;16": (_grey16, "PNG", "L"),
    "I;16 tiff": (_grey16, "TIFF", "L"),
    "LA": (lambda im: _with_transparent_top(im, "LA"), "PNG", "L"),
    "P+transparency": (_palette_with_transparency, "PNG", "RGB"),
    "RGBA": (lambda im: _with_transparent_top(im, "RGBA"), "PNG", "RGB"),
    "CMYK jpeg": (lambda im: im.convert("CMYK"), "JPEG", "RGB"),
    "CMYK tiff": (lambda im: im.convert("CMYK"), "TIFF", "RGB"),
    "1-bit": (lambda im: im.convert("1"), "PNG", None),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_input_mode_decodes_to_the_same_picture(mode, segmenter):
    make, fmt, like = MODES[mode]
    src = photo("astronaut.png")
    data = png_bytes(make(src), fmt)
    decoded = image.decode(data, f"astronaut {mode}")
    assert decoded.rgb.dtype == np.uint8 and decoded.rgb.shape == (512, 512, 3)
    if like == "L":
        # Greyscale, 8- or 16-bit: grey RGB at full contrast (16-bit scaled, not clipped).
        grey = np.asarray(src.convert("L")).astype(int)
        rows = slice(40, None) if mode == "LA" else slice(None)
        assert np.abs(decoded.rgb[rows, :, 0].astype(int) - grey[rows]).max() <= 1
        assert (decoded.rgb[..., 0] == decoded.rgb[..., 2]).all()
    elif like == "RGB":
        tolerance = 3 if "jpeg" in mode else 12 if mode.startswith("P") else 1
        diff = np.abs(decoded.rgb[40:].astype(int) - np.asarray(src)[40:])
        assert diff.mean() < tolerance
    out = image.render(decoded, ImageOptions(), segmenter)
    assert out.mode == "RGBA" and out.size == (512, 512)
    alpha = alpha_of(out)
    if mode in ("LA", "P+transparency", "RGBA"):
        # What was transparent in the input stays transparent.
        assert decoded.alpha is not None
        assert (alpha[:40] == 0).all()
        assert (np.asarray(out)[:40, :, :3] == 0).all()
    else:
        assert decoded.alpha is None
    if mode != "1-bit":
        assert iou(alpha[40:], reference_alpha("astronaut.png", segmenter)[40:]) > 0.95


def test_opaque_alpha_channel_is_not_treated_as_transparency():
    decoded = image.decode(png_bytes(photo("coffee.png", "RGBA")), "coffee-rgba.png")
    assert decoded.alpha is None
    assert (decoded.rgb == np.asarray(photo("coffee.png"))).all()


def test_animated_gif_gives_its_first_frame_and_says_so(segmenter):
    gif = FIXTURES / "no_time_for_that_tiny.gif"
    decoded = image.decode(gif, str(gif))
    assert len(decoded.notes) == 1
    note = decoded.notes[0]
    assert "animated" in note and "first frame" in note and str(gif) in note
    with Image.open(gif) as im:
        first = np.asarray(im.convert("RGB"))
    assert (decoded.rgb == first).all()
    out = image.render(decoded, ImageOptions(), segmenter)
    assert out.size == (first.shape[1], first.shape[0])


def test_animated_webp_says_so_but_camera_mpo_and_single_frames_do_not():
    frames = [photo("chelsea.png"), photo("chelsea.png").rotate(180)]
    webp = png_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    assert "animated (2 frames)" in image.decode(webp, "a.webp").notes[0]
    mpo = png_bytes(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert image.decode(mpo, "camera.jpg").notes == []
    assert image.decode(FIXTURES / "rocket.jpg", "rocket.jpg").notes == []


@pytest.mark.parametrize("data, words", [
    (b"", "empty file"),
    (b"this is not a picture\n", "not an image bgrm can read (a text file)"),
    (png_bytes(photo("chelsea.png"))[:20000], "truncated"),
    (png_bytes(photo("chelsea.png"), "JPEG")[:3000], "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "not an image bgrm can read (a PNG or JPEG with a "
                                      "damaged header)"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "(a PDF document)"),
    (b"<!DOCTYPE html>\n<html><body>Not found</body></html>", "(an HTML page"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "(an SVG drawing"),
    (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 40, "HEIC/HEIF"),
    (b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\0" * 40, "bgrm video"),
    (bytes(range(256)) * 4, "unknown or unsupported format"),
], ids=["empty", "text", "png-cut", "jpeg-cut", "png-header", "pdf", "html", "svg", "heic",
        "mp4", "binary"])
def test_broken_files_are_one_clear_input_error(data, words):
    with pytest.raises(InputError) as info:
        image.decode(data, "shots/bad.jpg")
    message = str(info.value)
    assert message.startswith("shots/bad.jpg: ") and words in message
    assert "\n" not in message


def test_a_decompression_bomb_is_refused_before_decoding(monkeypatch):
    from bgrm import inputs

    monkeypatch.setattr(inputs, "MAX_PIXELS", 100_000)
    with pytest.raises(InputError, match="megapixels"):
        image.decode(FIXTURES / "astronaut.png", "astronaut.png")


def test_an_rgb_colour_profile_is_kept_but_not_a_cmyk_one(segmenter, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = png_bytes(photo("chelsea.png"), "JPEG", quality=95, icc_profile=icc)
    dst = tmp_path / "p3_processed.png"
    src = tmp_path / "p3.jpg"
    src.write_bytes(rgb)
    image.process_file(src, dst, ImageOptions(), segmenter)
    assert Image.open(dst).info.get("icc_profile") == icc
    mask = render(rgb, ImageOptions(only_mask=True), segmenter)
    assert "icc_profile" not in mask.info  # a mask has no colours to manage
    cmyk = png_bytes(photo("chelsea.png", "CMYK"), "JPEG", icc_profile=icc)
    assert image.decode(cmyk, "cmyk.jpg").icc_profile is None


# ---------------------------------------------------------------- the parameters


def test_only_mask_is_the_greyscale_alpha(segmenter):
    cutout = render(FIXTURES / "chelsea.png", ImageOptions(), segmenter)
    mask = render(FIXTURES / "chelsea.png", ImageOptions(only_mask=True), segmenter)
    assert mask.mode == "L" and mask.size == cutout.size
    assert (np.asarray(mask) == alpha_of(cutout)).all()


def test_colour_background_is_opaque_and_exactly_the_colour(segmenter):
    cutout = np.asarray(render(FIXTURES / "astronaut.png", ImageOptions(), segmenter))
    out = render(FIXTURES / "astronaut.png",
                 ImageOptions(bg_type="color", bg_color=(12, 34, 56)), segmenter)
    assert out.mode == "RGB" and out.size == (512, 512)
    rgb = np.asarray(out)
    alpha = cutout[..., 3]
    assert (rgb[alpha == 0] == (12, 34, 56)).all()
    assert (rgb[alpha == 255] == np.asarray(photo("astronaut.png"))[alpha == 255]).all()
    half = (alpha > 100) & (alpha < 150)  # a blend of subject and colour in between
    expected = (cutout[half][:, :3].astype(int) * alpha[half, None]
                + np.array((12, 34, 56)) * (255 - alpha[half, None].astype(int))) / 255
    assert np.abs(rgb[half] - expected).max() <= 1


def test_image_background_covers_the_frame_centred(segmenter, tmp_path):
    # A wide ramp: x=0..199 in red, y=0..99 in green. Covering a 512x512 frame
    # scales it by 5.12 and crops the middle: red runs ~50..150, green 0..99.
    ramp = np.zeros((100, 200, 3), dtype=np.uint8)
    ramp[..., 0] = np.arange(200)[None, :]
    ramp[..., 1] = np.arange(100)[:, None]
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    image.release_backgrounds()
    out = render(FIXTURES / "astronaut.png", ImageOptions(bg_type="image", bg_image=path),
                 segmenter)
    assert out.mode == "RGB" and out.size == (512, 512)
    alpha = reference_alpha("astronaut.png", segmenter)
    rgb = np.asarray(out).astype(int)
    back = alpha == 0
    cols = np.nonzero(back.any(axis=0))[0]
    assert abs(rgb[:, cols[0]][back[:, cols[0]], 0].mean() - 50) <= 2
    assert abs(rgb[:, cols[-1]][back[:, cols[-1]], 0].mean() - 150) <= 2
    top_row = rgb[0][back[0]]
    assert top_row[:, 1].max() <= 2  # the whole height kept: top of the ramp at the top
    # Tall background, tall photo, same picture: cover is symmetric in x and y.
    tall = compose.cover(Image.fromarray(ramp.transpose(1, 0, 2)), (300, 451))
    assert tall.shape == (451, 300, 3)
    # x3 to 300x600, 74 rows cropped off the top: red (now along y) starts at ~25.
    assert abs(tall[0, :, 0].mean() - 74 / 3) <= 2 and abs(tall[-1, :, 0].mean() - 175) <= 2
    assert tall[:, 0, 1].max() <= 2 and tall[:, -1, 1].min() >= 97


def test_background_picture_smaller_or_odd_sized_still_fills_every_pixel():
    tiny = Image.new("RGB", (3, 7), (200, 10, 10))
    for size in [(1, 1), (451, 300), (300, 451), (1001, 3)]:
        arr = compose.cover(tiny, size)
        assert arr.shape == (size[1], size[0], 3)
        assert (arr == (200, 10, 10)).all()


def test_over_and_cutout_are_the_exact_integer_formulas():
    # Every (foreground, alpha) pair, against colours and a picture whose
    # channels run through all 256 values: compose.over's shifts and wrapping
    # uint16 arithmetic must give round((fg*a + bg*(255-a)) / 255) everywhere.
    fg_v, a_v = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    fg = np.repeat(fg_v.astype(np.uint8)[..., None], 3, axis=2)
    alpha = a_v.astype(np.uint8)
    picture = np.stack([np.roll(np.arange(256, dtype=np.uint8), k)[:, None].repeat(256, 1)
                        for k in (0, 85, 170)], axis=2)
    for bg in [(0, 0, 0), (255, 255, 255), (13, 200, 128), picture]:
        back = np.broadcast_to(np.asarray(bg, dtype=np.int32), fg.shape)
        want = (fg.astype(np.int32) * alpha[..., None] + back * (255 - alpha[..., None]) + 127) \
            // 255
        assert np.array_equal(compose.over(fg, alpha, bg), want)
    # Odd sizes and strided inputs (a crop of a wider frame) take the same path.
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (37, 1001, 3), dtype=np.uint8)
    soft = rng.integers(0, 256, (37, 999), dtype=np.uint8)
    soft[:10] = 0
    crop, back = wide[:, 1:1000], wide[:, ::-1][:, :999]
    want = (crop.astype(np.int32) * soft[..., None] + back * (255 - soft[..., None].astype(
        np.int32)) + 127) // 255
    assert np.array_equal(compose.over(crop, soft, back), want)
    rgba = compose.cutout(crop, soft)
    assert rgba.shape == (37, 999, 4) and np.array_equal(rgba[..., 3], soft)
    assert np.array_equal(rgba[..., :3], np.where(soft[..., None] > 0, crop, 0))


# ---------------------------------------------------------------- alpha matting


@pytest.fixture(scope="module")
def chelsea_mask(segmenter):
    return reference_alpha("chelsea.png", segmenter)


def run_matte(name, mask, **kw):
    rgb = np.asarray(photo(name))
    return matte.matte(rgb, mask, MattingOptions(enabled=True, **kw))


def counts(alpha):
    return {"soft": int(((alpha > 0) & (alpha < 255)).sum()),
            "opaque": int((alpha == 255).sum()), "clear": int((alpha == 0).sum())}


def test_matting_makes_soft_edges_from_a_hard_mask(chelsea_mask):
    # The network's own mask is soft almost everywhere (values like 2 or 253);
    # the test of matting is that from a hard mask it makes a soft edge, and
    # that it is sure where the trimap is sure.
    hard = np.where(chelsea_mask > 127, 255, 0).astype(np.uint8)
    alpha, _ = run_matte("chelsea.png", hard)
    edge = int((np.abs(np.diff(hard.astype(int), axis=0)) > 0).sum()
               + (np.abs(np.diff(hard.astype(int), axis=1)) > 0).sum())
    c = counts(alpha)
    assert c["soft"] > 3 * edge, (c, edge)
    mid = int(((alpha > 25) & (alpha < 230)).sum())
    assert mid > edge
    tri = matte.trimap(hard, MattingOptions())
    assert (alpha[tri == 255] == 255).all() and (alpha[tri == 0] == 0).all()


def test_matting_cutout_is_sure_inside_and_soft_only_at_the_edge(segmenter, chelsea_mask):
    plain = alpha_of(render(FIXTURES / "chelsea.png", ImageOptions(), segmenter))
    matted = alpha_of(render(FIXTURES / "chelsea.png",
                             ImageOptions(matting=MattingOptions(enabled=True)), segmenter))
    p, m = counts(plain), counts(matted)
    assert m["opaque"] > 100 * max(p["opaque"], 1)  # u2netp's mask is never quite 255
    assert 0 < m["soft"] < p["soft"]
    assert iou(matted, plain) > 0.9
    tri = matte.trimap(chelsea_mask, MattingOptions())
    soft = (matted > 0) & (matted < 255)
    assert soft[tri == 128].sum() / soft.sum() > 0.95  # soft where unsure, nowhere else


def test_matting_takes_the_old_background_out_of_soft_edges(segmenter):
    # The cat put on pure green with a soft mask: the soft edge pixels are
    # green-tinged in the input; the estimated foreground there must not be.
    cat = np.asarray(photo("chelsea.png")).astype(np.float32)
    a = reference_alpha("chelsea.png", segmenter).astype(np.float32)[..., None] / 255
    on_green = (cat * a + np.array(GREEN, np.float32) * (1 - a) + 0.5).astype(np.uint8)
    decoded = image.Decoded(on_green, None)
    out = np.asarray(image.render(decoded, ImageOptions(matting=MattingOptions(enabled=True)),
                                  segmenter)).astype(int)
    alpha = out[..., 3]
    edge = (alpha > 25) & (alpha < 230)
    assert edge.sum() > 1000

    def greenness(rgb):
        return float((rgb[..., 1] - (rgb[..., 0] + rgb[..., 2]) / 2).mean())

    before, after = greenness(on_green[edge].astype(int)), greenness(out[edge][:, :3])
    cat_itself = greenness(cat[edge])
    assert before > cat_itself + 40
    assert after < cat_itself + 0.5 * (before - cat_itself), (before, after, cat_itself)


@pytest.mark.parametrize("name", ["astronaut_mirror", "camera"])
def test_matte_is_rembgs_in_the_unsure_band(segmenter, name):
    """Within 2/255 mean and IoU 0.99 at 0.5 of rembg's own matting (pymatting
    at full size, converged to 1e-7) over the unsure band. The mirrored
    astronaut: a wide band where a solve that needed a diagonal shift in its
    preconditioner stopped far from rembg's answer (IoU 0.979). scikit-image's
    grey cameraman: in grey windows the Laplacian is mostly rounding, and one
    not built with pymatting's arithmetic was 8.7/255 off (IoU 0.92)."""
    from rembg.bg import alpha_matting_cutout

    if name == "camera":
        from skimage import data

        rgb = np.ascontiguousarray(np.stack([data.camera()] * 3, axis=-1))
    else:
        rgb = np.ascontiguousarray(np.asarray(photo("astronaut.png"))[:, ::-1])
    mask = alpha_of(image.render(image.Decoded(rgb, None), ImageOptions(only_mask=True),
                                 segmenter))
    ours, _ = matte.matte(rgb, mask, MattingOptions(enabled=True))
    theirs = np.asarray(alpha_matting_cutout(Image.fromarray(rgb), Image.fromarray(mask),
                                             240, 10, 10))[..., 3]
    band = matte.trimap(mask, MattingOptions()) == 128
    assert band.sum() > 40000
    mad = np.abs(ours[band].astype(int) - theirs[band]).mean()
    a, b = ours[band] > 127, theirs[band] > 127
    assert mad <= 2 and (a & b).sum() / (a | b).sum() >= 0.99, mad


@pytest.fixture(scope="module")
def astronaut_mask(segmenter):
    return reference_alpha("astronaut.png", segmenter)


def test_alpha_fg_higher_is_stricter_foreground(astronaut_mask):
    strict = counts(run_matte("astronaut.png", astronaut_mask, fg=250)[0])
    loose = counts(run_matte("astronaut.png", astronaut_mask, fg=100)[0])
    assert strict["opaque"] < loose["opaque"]
    assert strict["soft"] > loose["soft"]


def test_alpha_bg_lower_is_stricter_background(astronaut_mask):
    strict = counts(run_matte("astronaut.png", astronaut_mask, bg=1)[0])
    loose = counts(run_matte("astronaut.png", astronaut_mask, bg=100)[0])
    assert strict["clear"] < loose["clear"]


def test_alpha_erode_widens_the_unsure_band(astronaut_mask):
    bands = [int((matte.trimap(astronaut_mask, MattingOptions(erode=e)) == 128).sum())
             for e in (1, 10, 25)]
    assert bands[0] < bands[1] < bands[2]
    narrow = counts(run_matte("astronaut.png", astronaut_mask, erode=1)[0])
    wide = counts(run_matte("astronaut.png", astronaut_mask, erode=25)[0])
    assert narrow["soft"] < wide["soft"]


def test_alpha_base_size_is_the_size_the_matte_is_solved_at(astronaut_mask, monkeypatch):
    seen = []
    solve = matte.solve

    def spy(rgb, tri, mask, *rest):
        seen.append(rgb.shape[:2])
        return solve(rgb, tri, mask, *rest)

    monkeypatch.setattr(matte, "solve", spy)
    big = np.asarray(photo("astronaut.png").resize((1536, 1024)))
    mask = np.asarray(Image.fromarray(astronaut_mask).resize((1536, 1024)))
    for base, expected in [(256, (171, 256)), (600, (400, 600))]:
        alpha, fg = matte.matte(big, mask, MattingOptions(enabled=True, base_size=base))
        assert seen[-1] == expected
        assert alpha.shape == (1024, 1536) and fg.shape == (1024, 1536, 3)
    # Never upscaled: a base size above the photo's solves at the photo's size.
    matte.matte(big[:300, :200], mask[:300, :200], MattingOptions(enabled=True, base_size=4000))
    assert seen[-1] == (300, 200)
    coarse = counts(run_matte("astronaut.png", astronaut_mask, base_size=64)[0])
    fine = counts(run_matte("astronaut.png", astronaut_mask, base_size=1000)[0])
    assert coarse["soft"] > fine["soft"]  # a coarse matte blurs the edge when scaled up


def test_matting_survives_thresholds_that_leave_no_sure_region(astronaut_mask):
    # fg 255 (nothing above it) / bg 0 (nothing below it): all unsure.
    alpha, fg = run_matte("astronaut.png", astronaut_mask, fg=255, bg=0)
    assert alpha.shape == astronaut_mask.shape
    assert np.abs(alpha.astype(int) - astronaut_mask).max() <= 1


# The matting step prints mid-run, as a solver or a C library may: in Python and on fd 1.
CHATTY_MATTE = """
import os, sys
import bgrm.matte

real = bgrm.matte.matte


def chatty(*args, **kwargs):
    print("PERFORMANCE WARNING (print)")
    sys.stdout.flush()
    os.write(1, b"BANNER (fd 1)\\n")
    return real(*args, **kwargs)


bgrm.matte.matte = chatty
from bgrm.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("stdout_is", ["json", "png"])
def test_what_a_library_prints_mid_run_never_reaches_stdout(stdout_is, tmp_path, models_home):
    # bgrm's stdout is the --json report or the PNG of `bgrm image -`: a library's
    # words there would corrupt it. They go to stderr instead. (A real process: fd 1
    # is the subject.)
    args = ["image", "--alpha-matting", "--model", "u2netp"]
    if stdout_is == "json":
        args += [str(FIXTURES / "chelsea.png"), "-o", str(tmp_path), "--json"]
    else:
        args += ["-"]
    proc = subprocess.run([sys.executable, "-c", CHATTY_MATTE, *args], capture_output=True,
                          input=(FIXTURES / "chelsea.png").read_bytes(), timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    if stdout_is == "json":
        assert json.loads(proc.stdout)["files"]
    else:
        assert Image.open(io.BytesIO(proc.stdout)).mode == "RGBA"
    assert b"PERFORMANCE WARNING (print)" in proc.stderr
    assert b"BANNER (fd 1)" in proc.stderr


# ---------------------------------------------------------------- writing


def test_process_file_writes_atomically_and_leaves_nothing_behind(segmenter, tmp_path):
    dst = tmp_path / "chelsea_processed.png"
    done = image.process_file(FIXTURES / "chelsea.png", dst, ImageOptions(), segmenter)
    assert done.notes == [] and done.crop_box is None
    assert Image.open(dst).mode == "RGBA"
    assert [p.name for p in tmp_path.iterdir()] == [dst.name]


def test_a_failed_write_leaves_the_old_output_and_no_temporary(segmenter, tmp_path,
                                                              monkeypatch):
    dst = tmp_path / "chelsea_processed.png"
    dst.write_bytes(b"previous run")

    def full_disk(picture, out):
        Path(out).write_bytes(b"half a png")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image, "encode_png", full_disk)
    with pytest.raises(OutputError, match="no space left"):
        image.process_file(FIXTURES / "chelsea.png", dst, ImageOptions(), segmenter)
    assert dst.read_bytes() == b"previous run"
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_a_broken_input_writes_nothing(segmenter, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes(photo("chelsea.png"))[:5000])
    with pytest.raises(InputError):
        image.process_file(bad, tmp_path / "bad_processed.png", ImageOptions(), segmenter)
    assert [p.name for p in tmp_path.iterdir()] == ["bad.png"]


# ---------------------------------------------------------------- 12 MP


TWELVE_MP = """
import json, resource, subprocess, sys, time
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
Image.open(src).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(
    out + "/big.jpg", quality=92)
t = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "bgrm", "image", out + "/big.jpg",
                       "--alpha-matting", "--model", "u2netp", "-o", out],
                      capture_output=True, text=True)
seconds = time.perf_counter() - t
peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr, "seconds": seconds,
                  "peak_mb": peak_mb}))
"""


def test_alpha_matting_of_a_12_megapixel_photo(tmp_path, models_home, record_property):
    """rembg needs 87 s and 7.2 GB here; bgrm solves at alpha_base_size.

    Figures: ``pytest tests/test_image.py -k 12_megapixel -s``.
    """
    proc = subprocess.run([sys.executable, "-c", TWELVE_MP, str(FIXTURES / "astronaut.png"),
                           str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, BGRM_MODELS=str(models_home)))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["stderr"]
    print(f"\n12 MP alpha matting: {result['seconds']:.1f} s, "
          f"peak RSS {result['peak_mb']:.0f} MB")
    record_property("seconds", round(result["seconds"], 2))
    record_property("peak_mb", round(result["peak_mb"]))
    out = Image.open(tmp_path / "big_processed.png")
    assert out.size == (4000, 3000) and out.mode == "RGBA"
    alpha = np.asarray(out)[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any() and (alpha == 255).any() and (alpha == 0).any()
