"""The files people have and the files their tools take.

Inputs: HEIC (pillow-heif) and AVIF (Pillow's own) photos made here from the
fixture photos with those libraries' encoders, rotated by EXIF and carrying a
colour profile, must give the PNG's mask. Outputs: --format webp / jpg, with
the input's EXIF kept; video as VP9-with-alpha WebM and as a PNG sequence,
each decoded again and checked frame by frame.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features
from videoclips import iou, make_clip, probe

from bgrm import batch, image
from bgrm.models import REGISTRY, ResolvedModel, bundled_path
from bgrm.options import ImageOptions
from bgrm.outputs import TMP_MARK

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
    assert batch.expand([str(tmp_path)], "image", False) == [src]  # found in a folder
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


def test_jpg_of_a_transparent_cutout_is_a_usage_error_and_a_mask_a_grey_jpeg(
        run_main, tmp_path, models_home):
    status, _, err = run_main("image", FIXTURES / "chelsea.png", "--format", "jpg",
                              "-o", tmp_path / "out")
    assert status == 2, err
    assert "jpg cannot hold a transparent cut-out" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # A mask is grey and opaque: JPEG holds it.
    for fmt in ("jpg", "png"):
        status, _, err = run_main("image", FIXTURES / "chelsea.png", "--format", fmt,
                                  "--only-mask", "-o", tmp_path / "out")
        assert status == 0, err
    jpg = Image.open(tmp_path / "out" / "chelsea_processed.jpg")
    png = np.asarray(Image.open(tmp_path / "out" / "chelsea_processed.png"))
    assert jpg.format == "JPEG" and jpg.mode == "L"
    assert np.abs(np.asarray(jpg).astype(int) - png).mean() < 2


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


# -- video -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    """12 frames of 160x96 at 12 fps with a 440 Hz tone."""
    return make_clip(tmp_path_factory.mktemp("clips") / "talk.mp4", FIXTURES / "astronaut.png",
                     audio=True)


def _alpha(frames: np.ndarray) -> np.ndarray:
    return frames[..., 3]


def test_webm_decodes_with_alpha_to_the_cut_out_with_exact_frames(cli, talk, tmp_path,
                                                                 quick_model):
    out = tmp_path / "out"
    proc = cli("video", talk, "--video-format", "webm", "--frame-limit", 8, "-o", out,
                "--json", "--model", quick_model)
    assert proc.returncode == 0, proc.stderr.decode()
    webm = out / "talk_processed.webm"
    assert json.loads(proc.stdout)["files"][0]["filename"] == webm.name
    assert "vp9" in probe(webm).header and "opus" in probe(webm).header
    seen = probe(webm, decoder="libvpx-vp9")
    assert seen.count == 8 and seen.size == (160, 96)
    alpha = _alpha(seen.frames)
    # A real cut-out: clear background and a solid subject in every frame.
    assert ((alpha < 16).mean(axis=(1, 2)) > 0.3).all()
    assert ((alpha > 240).mean(axis=(1, 2)) > 0.05).all()
    assert seen.audio_seconds == pytest.approx(8 / 12, abs=0.03)
    # The same frames as a PNG sequence: the WebM's alpha is that cut-out, within
    # what VP9's lossy alpha plane moves.
    seq = tmp_path / "seq"
    proc = cli("video", talk, "--video-format", "png_sequence", "--frame-limit", 8, "-o", seq,
                "--model", quick_model)
    assert proc.returncode == 0, proc.stderr.decode()
    pngs = np.stack([np.asarray(Image.open(p)) for p in
                     sorted((seq / "talk_processed").glob("*.png"))])
    assert np.abs(alpha.astype(int) - _alpha(pngs)).mean() < 4


def test_png_sequence_is_one_rgba_png_per_frame_with_the_audio_as_wav(cli, talk, tmp_path,
                                                                      quick_model):
    out = tmp_path / "out"
    proc = cli("video", talk, "--video-format", "png_sequence", "-o", out, "--json",
                "--model", quick_model)
    assert proc.returncode == 0, proc.stderr.decode()
    folder = out / "talk_processed"
    assert json.loads(proc.stdout)["files"][0]["url"] == str(folder)
    frames = sorted(folder.glob("*.png"))
    assert [p.name for p in frames] == [f"talk_processed_{i:06d}.png" for i in range(1, 13)]
    for path in frames:
        im = Image.open(path)
        assert im.mode == "RGBA" and im.size == (160, 96)
        alpha = np.asarray(im)[..., 3]
        assert (alpha < 16).mean() > 0.3 and (alpha > 240).mean() > 0.05
    wav = folder / "talk_processed.wav"
    import wave

    with wave.open(str(wav)) as w:
        assert w.getnframes() / w.getframerate() == pytest.approx(1.0, abs=0.03)
    assert sorted(p.name for p in out.iterdir()) == ["talk_processed"]  # nothing else
    # A rerun replaces the folder whole; a silent input has no WAV.
    silent = make_clip(tmp_path / "talk.mp4", FIXTURES / "astronaut.png", frames=5)
    proc = cli("video", silent, "--video-format", "png_sequence", "-o", out,
                "--model", quick_model)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in folder.iterdir()) == [
        f"talk_processed_{i:06d}.png" for i in range(1, 6)]
    assert sorted(p.name for p in out.iterdir()) == ["talk_processed"]
    # Its frames are bgrm's own outputs: a folder rerun does not take them as inputs.
    again = cli("image", out, "-r", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["files"] == []


def test_png_sequence_is_whole_or_absent_after_ctrl_c(tmp_path, models_home):
    clip = make_clip(tmp_path / "long.mp4", FIXTURES / "astronaut.png", frames=60, audio=True)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "bgrm", "video", clip, "--video-format",
                             "png_sequence", "-o", out], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # Wait until frames are being written into the hidden folder.
        while not any(len(list(d.glob("*.png"))) >= 3 for d in out.glob(f".*{TMP_MARK}*")
                      if d.is_dir()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no frames written"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    assert list(out.iterdir()) == []  # no folder, whole or half, and no temporary


def test_a_video_batch_on_a_terminal_shows_its_frame_total_and_time_left(talk, tmp_path,
                                                                          quick_model):
    import fcntl
    import pty
    import struct
    import termios

    short = make_clip(tmp_path / "short.mp4", FIXTURES / "astronaut.png", frames=5)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "bgrm", "video", talk, short,
                             "--video-format", "mattekey", "-o", tmp_path / "out",
                             "--model", quick_model],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    screen = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the terminal's last writer has gone
            break
        if not data:
            break
        screen += data
    os.close(master)
    assert proc.wait(timeout=120) == 0, screen.decode()
    lines = screen.decode().replace("\r", "\n").splitlines()
    # The whole batch's frames (12 + 5) from the headers, marked as an estimate,
    # with a time left; at the end the real count, no longer marked.
    assert any("0/~17 frames" in ln for ln in lines), lines
    timed = [m for ln in lines
             if (m := re.search(r"(\d+)/~17 frames \[\d\d:\d\d elapsed, ~\d\d:\d\d left", ln))]
    assert any(int(m.group(1)) > 0 for m in timed), lines
    assert any("17/17 frames" in ln for ln in lines), lines


@pytest.mark.parametrize("where", ["beside", "-o"])
def test_png_sequence_never_replaces_a_folder_holding_other_files(where, tmp_path, run_main,
                                                                  models_home):
    """Only an earlier sequence (bgrm's numbered frames and WAV) is replaced; a
    folder with anything else in the output's place is refused, kept as it was."""
    (tmp_path / "in").mkdir()
    clip = make_clip(tmp_path / "in" / "clip.mp4", FIXTURES / "astronaut.png", frames=3)
    out = clip.parent if where == "beside" else tmp_path / "out"
    theirs = out / "clip_processed"
    (theirs / "sub").mkdir(parents=True)
    (theirs / "sub" / "notes.txt").write_text("keep")
    (theirs / "clip_processed_000001.png").write_bytes(b"mine, not bgrm's")
    args = ["-o", out] if where == "-o" else []
    status, _, err = run_main("video", clip, "--video-format", "png_sequence", *args)
    assert status == 1
    assert f"{theirs}: a folder that holds other files (sub)" in err
    assert "Traceback" not in err
    assert (theirs / "sub" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in theirs.iterdir()) == ["clip_processed_000001.png", "sub"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["clip_processed"] + (["clip.mp4"] if where == "beside" else []))  # no temporary
    # Emptied of the user's files, the folder is bgrm's to replace.
    shutil.rmtree(theirs / "sub")
    status, _, err = run_main("video", clip, "--video-format", "png_sequence", *args)
    assert status == 0, err
    assert sorted(p.name for p in theirs.iterdir()) == [
        f"clip_processed_{i:06d}.png" for i in range(1, 4)]


def test_a_held_sequence_is_not_committed_over_a_folder_filled_meanwhile(tmp_path):
    """The executors' commit step checks the folder again when it moves a finished
    sequence into place: a file put there during the run is kept."""
    from bgrm.errors import OutputError
    from bgrm.outputs import commit, held_name

    dst = tmp_path / "clip_processed"
    held = held_name(dst, "run-0")
    held.mkdir()
    (held / "clip_processed_000001.png").write_bytes(b"new frame")
    dst.mkdir()
    (dst / "clip_processed_000001.png").write_bytes(b"old frame")
    (dst / "clip_processed.wav").write_bytes(b"old sound")
    (dst / "edit.txt").write_text("keep")
    with pytest.raises(OutputError, match="holds other files"):
        commit(held, dst)
    assert (dst / "edit.txt").read_text() == "keep" and not held.exists()
    (dst / "edit.txt").unlink()
    held.mkdir()
    (held / "clip_processed_000001.png").write_bytes(b"new frame")
    commit(held, dst)
    assert [p.read_bytes() for p in dst.iterdir()] == [b"new frame"]


@pytest.mark.parametrize("fmt, ext", [("HEIF", "heic"), ("AVIF", "avif")])
def test_a_truncated_heic_or_avif_is_corrupt_not_undecodable(tmp_path, fmt, ext):
    """Where the decoder is installed, a cut-short file is "corrupt or truncated",
    never "no decoder for it is installed"."""
    from bgrm.errors import InputError

    whole = _phone_photo(fmt, tmp_path / f"astronaut.{ext}").read_bytes()
    for cut in (40, 100, 400, len(whole) // 2):
        with pytest.raises(InputError) as info:
            image.decode(whole[:cut], f"cut.{ext}")
        message = str(info.value)
        assert message.startswith(f"cut.{ext}: corrupt or truncated image"), message
        assert "no decoder" not in message and "has no AVIF" not in message


@pytest.mark.parametrize("fmt, size, says", [
    ("webp", (16400, 12), "16400x12, and WebP holds at most 16383 pixels a side"),
    ("jpg", (65501, 4), "65501x4, and JPEG holds at most 65500 pixels a side"),
])
def test_a_result_too_wide_for_its_format_says_the_formats_limit(fmt, size, says, tmp_path,
                                                                 run_main, models_home):
    src = tmp_path / "wide.png"
    Image.new("RGB", size, (200, 30, 30)).save(src)
    status, _, err = run_main("image", src, "--format", fmt, "--only-mask", "-o",
                              tmp_path / "out")
    assert status == 1
    assert err.splitlines()[-1] == (f"bgrm: {src}: the result is {says}; use format png "
                                    "(--format png)")
    assert not any((tmp_path / "out").iterdir())  # no temporary left either
