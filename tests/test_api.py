"""The Python API (bgrm.api): the kinds in and out, the same bytes as the CLI, the
same parameter checks as --params, and its docstring examples run as written."""

from __future__ import annotations

import doctest
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from videoclips import make_clip

import bgrm
from bgrm import api
from bgrm.errors import ParameterError
from bgrm.options import from_params


def test_docstring_examples_run(fixtures, tmp_path, models_home):
    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", frames=4)
    found = doctest.testmod(api, extraglobs={"photo": fixtures / "chelsea.png", "clip": clip,
                                             "tmp": tmp_path, "bgrm": bgrm},
                            optionflags=doctest.ELLIPSIS, report=True)
    assert found.attempted >= 10  # every public call has its example
    assert found.failed == 0


def test_same_bytes_as_the_cli(bgrm_cli, fixtures, tmp_path):
    photo = fixtures / "rocket.jpg"
    proc = bgrm_cli("image", photo, "-o", tmp_path, "--model", "u2netp", "--bg-type", "color",
                    "--bg-color-value", "#102030")
    assert proc.returncode == 0, proc.stderr.decode()
    made = bgrm.remove(photo.read_bytes(), model="u2netp", bg_type="color",
                       bg_color_value="#102030")
    assert made == (tmp_path / "rocket_processed.png").read_bytes()


def test_same_bytes_as_the_cli_with_format_crop_and_exif(bgrm_cli, fixtures, tmp_path):
    """--format and --crop, and a phone photo's EXIF (orientation applied, camera kept),
    reach bytes from the API as they reach the CLI's file."""
    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "bgrm-test-camera"  # Orientation, Make
    Image.open(fixtures / "chelsea.png").convert("RGB").save(photo, quality=95,
                                                             exif=exif.tobytes())
    proc = bgrm_cli("image", photo, "-o", tmp_path / "out", "--model", "u2netp",
                    "--format", "webp", "--crop")
    assert proc.returncode == 0, proc.stderr.decode()
    made = bgrm.remove(photo.read_bytes(), model="u2netp", format="webp", crop=True)
    assert made == (tmp_path / "out" / "phone_processed.webp").read_bytes()
    with Image.open(io.BytesIO(made)) as im:
        assert im.format == "WEBP" and im.mode == "RGBA" and im.height > im.width  # upright
        assert im.getexif().get(0x010F) == "bgrm-test-camera" and 0x0112 not in im.getexif()


@pytest.fixture
def bgrm_cli(bgrm):
    return bgrm


def test_each_kind_comes_back_as_it_went_in(fixtures, models_home):
    photo = fixtures / "chelsea.png"
    as_png = bgrm.remove(photo.read_bytes(), model="u2netp")
    with Image.open(io.BytesIO(as_png)) as im:
        from_bytes = np.asarray(im.convert("RGBA"))
    from_pil = bgrm.remove(Image.open(photo), model="u2netp")
    from_array = bgrm.remove(np.asarray(Image.open(photo).convert("RGB")), model="u2netp")
    assert isinstance(from_pil, Image.Image) and from_pil.mode == "RGBA"
    assert isinstance(from_array, np.ndarray) and from_array.shape == (300, 451, 4)
    assert np.array_equal(np.asarray(from_pil), from_bytes)
    assert np.array_equal(from_array, from_bytes)
    # A real cut-out: the cat is kept, the corners are gone.
    alpha = from_array[..., 3]
    assert alpha[150, 200] > 200 and alpha[:10, :10].max() < 30


def test_api_strings_and_typed_values_alike(fixtures, models_home):
    photo = Image.open(fixtures / "chelsea.png")
    typed = bgrm.remove(photo, model="u2netp", alpha_matting=True, alpha_erode=5)
    strings = bgrm.remove(photo, model="u2netp", alpha_matting="true", alpha_erode="5")
    assert np.array_equal(np.asarray(typed), np.asarray(strings))


@pytest.mark.parametrize("params, says", [
    ({"alpha_fg": 999}, "alpha_fg (--alpha-fg): 999 is out of range"),
    ({"bg_type": "plaid"}, "bg_type (--bg-type): 'plaid' is not one of"),
    ({"video_format": "gif"}, "unknown parameter 'video_format' for image"),
    ({"only_mask": True, "bg_type": "color"}, "cannot be combined"),
])
def test_parameters_are_checked_like_params_files(params, says):
    with pytest.raises(ParameterError, match=says.replace("(", r"\(").replace(")", r"\)")):
        bgrm.remove(Image.new("RGB", (8, 8)), **params)


def test_a_session_keeps_its_model(fixtures, models_home):
    session = bgrm.Session("u2netp", device="cpu", threads=1)
    first = session.segmenter
    session.remove(Image.open(fixtures / "chelsea.png"), only_mask=True)
    session.remove(Image.open(fixtures / "coffee.png"), only_mask=True)
    assert session.segmenter is first
    with pytest.raises(ParameterError, match="this session runs u2netp"):
        session.remove(Image.new("RGB", (8, 8)), model="u2net")
    with pytest.raises(ParameterError, match="a PIL image, bytes or a numpy array"):
        session.remove("photo.jpg")


def test_remove_video_never_writes_over_its_input(fixtures, tmp_path, models_home):
    """The command line's rule holds for the API's own paths too: an output is never
    its input's file, by its name, a link or a hard link; images and videos alike."""
    clip = make_clip(tmp_path / "x.mp4", fixtures / "astronaut.png", frames=2)
    (tmp_path / "hard.mov").hardlink_to(clip)
    (tmp_path / "link.mov").symlink_to(clip)
    (tmp_path / "link.mp4").symlink_to(clip)
    original = clip.read_bytes()
    for src, dst in [(clip, clip), (clip, tmp_path / "." / "x.mp4"), (str(clip), str(clip)),
                     (clip, tmp_path / "hard.mov"), (clip, tmp_path / "link.mov"),
                     (tmp_path / "link.mp4", clip)]:
        kw = {"video_format": "mattekey"} if Path(dst).suffix == ".mp4" else {}
        with pytest.raises(ParameterError, match="is the input .* itself"):
            bgrm.remove_video(src, dst, frame_limit=2, **kw)
    assert clip.read_bytes() == original and (tmp_path / "hard.mov").read_bytes() == original
    photo = tmp_path / "cat.png"
    photo.write_bytes((fixtures / "chelsea.png").read_bytes())
    session = bgrm.Session("u2netp")
    with pytest.raises(ParameterError, match="is the input .* itself"):
        session.write("image", photo, photo, from_params("image", {}))
    assert photo.read_bytes() == (fixtures / "chelsea.png").read_bytes()


@pytest.mark.parametrize("dst, params, says", [
    ("out.webm", {}, "video_format mov writes a .mov file, not .webm"),
    ("out", {}, "video_format mov writes a .mov file, not a name without an extension"),
    ("out.mov", {"video_format": "gif"}, "video_format gif writes a .gif file, not .mov"),
    ("out.mov", {"video_format": "png_sequence"}, "writes a folder of PNG frames, not a .mov"),
    ("", {}, "dst: a file name, not ''"),
])
def test_remove_video_refuses_a_destination_that_does_not_fit(dst, params, says, fixtures,
                                                              tmp_path, models_home):
    clip = make_clip(tmp_path / "x.mp4", fixtures / "astronaut.png", frames=2)
    with pytest.raises(ParameterError, match=re.escape(says)):
        bgrm.remove_video(clip, tmp_path / dst if dst else dst, frame_limit=2, **params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models-home", "x.mp4"]


def test_arrays_with_a_plain_meaning_are_taken_and_others_named(fixtures, quick_model):
    """float 0..1, uint16, small integers, bool and H x W x 1 arrays are the picture
    they plainly are; anything else is a ParameterError saying what it got. (The
    subject is the picture each array gives, so the stand-in model serves.)"""
    session = bgrm.Session(str(quick_model))
    rgb = np.asarray(Image.open(fixtures / "chelsea.png").convert("RGB"))
    cut = session.remove(rgb)
    for same in (rgb / 255.0, rgb.astype(np.float32) / 255, rgb.astype(np.uint16) * 257,
                 rgb.astype(np.int64)):
        assert np.array_equal(session.remove(same), cut)
    grey = rgb[..., 1]
    assert np.array_equal(session.remove(grey[..., None]), session.remove(grey))
    black_white = (grey > 128).astype(np.uint8) * 255
    assert np.array_equal(session.remove(grey > 128), session.remove(black_white))
    for arr, says in [
        (rgb.astype(np.float64), "image: an array of float64, shape (300, 451, 3): float "
                                 "values must be 0..1"),
        (np.full((8, 8), np.nan), "float values must be 0..1"),
        (rgb.transpose(2, 0, 1), "shape (3, 300, 451); give H x W (grey), H x W x 3 (RGB) "
                                 "or H x W x 4 (RGBA) (channels first? use arr.transpose"),
        (rgb[None], "shape (1, 300, 451, 3); give H x W"),
        (rgb.astype(np.int16) - 100, "integer values must be 0..255"),
        (np.zeros((0, 4, 3), np.uint8), "no pixels"),
        (np.array([["a"]]), "give uint8, uint16, bool or float 0..1 values"),
    ]:
        with pytest.raises(ParameterError, match=re.escape(says)):
            session.remove(arr)


def test_a_truncated_lazy_image_and_an_array_colour(fixtures, tmp_path, models_home):
    from bgrm.errors import InputError

    cut = tmp_path / "cut.jpg"
    cut.write_bytes((fixtures / "rocket.jpg").read_bytes()[:20000])
    with pytest.raises(InputError, match=r"^<image>: corrupt or truncated image \(image file "
                                         "is truncated"):
        bgrm.remove(Image.open(cut), model="u2netp")
    photo = Image.open(fixtures / "chelsea.png")
    as_hex = bgrm.remove(photo, model="u2netp", bg_type="color", bg_color_value="#ff0000")
    as_array = bgrm.remove(photo, model="u2netp", bg_type="color",
                           bg_color_value=np.array([255, 0, 0]))
    assert np.array_equal(np.asarray(as_hex), np.asarray(as_array))
    with pytest.raises(ParameterError, match=r"\[300, 0, 0\] is not three integers 0-255"):
        bgrm.remove(photo, model="u2netp", bg_type="color", bg_color_value=[300, 0, 0])


def test_a_session_on_an_unknown_device_is_refused():
    with pytest.raises(ParameterError, match="device: 'tpu' is not one of auto, cpu, cuda"):
        bgrm.Session("u2netp", device="tpu")
