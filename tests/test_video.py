"""`bgrm video` end to end on short clips made from the real photos.

Every output is decoded again with ffmpeg: frame count, size, timestamps,
alpha and audio are checked on what a player would see, never on what bgrm
says it wrote. Clips are a dozen frames at 160x96 to keep the suite fast.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from videoclips import make_clip, make_vfr_clip, probe, rotate

from bgrm.errors import OutputError

AUDIO_FORMATS = {"mov", "video_over_image", "video_over_video", "mp4_with_color"}
ALPHA_FORMATS = {"mov", "gif"}
FORMAT_ARGS = {
    "video_over_image": ("--bg-image", "chelsea.png"),
    "gif_with_bg": ("--bg-image", "chelsea.png"),
    "video_over_video": ("--bg-video", "<bg>"),
    "mp4_with_color": ("--video-bg-color", "#00ff00"),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory, fixtures) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    astro = fixtures / "astronaut.png"
    h264 = ("-c:v", "libx264", "-pix_fmt", "yuv420p")
    silent = make_clip(d / "silent.mp4", astro)
    return {
        "talk": make_clip(d / "talk.mp4", astro, audio=True),
        "silent": silent,
        "rotated": rotate(silent, d / "rotated.mp4", 90),
        "odd": make_clip(d / "odd.mp4", astro, size=(161, 97),
                         codec=("-c:v", "libx264", "-pix_fmt", "yuv444p")),
        "vfr": make_vfr_clip(d / "vfr.mp4", astro),
        "webm": make_clip(d / "cat.webm", fixtures / "chelsea.png", audio=True,
                          codec=("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"),
                          audio_codec=("-c:a", "libopus")),
        # A short background (5 frames) so video_over_video has to loop it.
        "bg": make_clip(d / "waves.mp4", fixtures / "coffee.png", frames=5, codec=h264),
    }


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"  # tmp_path itself also holds the models folder


def _ok(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return proc


def _alpha_split(p) -> tuple[float, float]:
    """Fractions of (clear, solid) pixels over all frames."""
    a = p.frames[..., 3]
    return float((a < 16).mean()), float((a > 240).mean())


@pytest.mark.parametrize("fmt", ["mov", "mattekey", "gif", "video_over_image",
                                 "video_over_video", "gif_with_bg", "mp4_with_color"])
def test_each_format_is_frame_exact_with_the_right_alpha_and_audio(cli, clips, fixtures,
                                                                   out, fmt):
    extra = [fixtures / a if a.endswith(".png") else clips["bg"] if a == "<bg>" else a
             for a in FORMAT_ARGS.get(fmt, ())]
    # mov gets every frame; the others half, to keep the suite fast.
    frames = 12 if fmt == "mov" else 6
    proc = _ok(cli("video", clips["talk"], "--video-format", fmt, *extra, "-o", out,
                    "--frame-limit", frames, "--json"))
    ext = {"mov": "mov", "gif": "gif", "gif_with_bg": "gif"}.get(fmt, "mp4")
    result = out / f"talk_processed.{ext}"
    assert json.loads(proc.stdout)["files"][0]["filename"] == result.name
    assert sorted(p.name for p in out.iterdir()) == [result.name]  # no temporaries left
    p = probe(result)
    assert p.count == frames and p.size == (160, 96)
    assert p.pts == pytest.approx([i / 12 for i in range(frames)], abs=0.011)
    clear, solid = _alpha_split(p)
    if fmt in ALPHA_FORMATS:
        # A real matte: the background cleared, the astronaut kept.
        assert clear > 0.3 and solid > 0.15, (clear, solid)
    else:
        assert clear == 0 and solid == 1
    if fmt in AUDIO_FORMATS:
        assert p.audio_seconds == pytest.approx(frames / 12, abs=0.03)
    else:
        assert p.audio_seconds is None
    if fmt == "mattekey":
        rgb = p.frames[..., :3].astype(int)
        assert np.abs(rgb[..., 0] - rgb[..., 1]).max() < 24  # grey levels only
        assert (rgb[..., 0] < 20).mean() > 0.3 and (rgb[..., 0] > 235).mean() > 0.15
    if fmt == "mp4_with_color":
        green = (p.frames[..., 1] > 200) & (p.frames[..., 0] < 60) & (p.frames[..., 2] < 60)
        assert green.mean() > 0.3
    if fmt == "mov":
        assert "prores (4444)" in p.header and "yuva444p" in p.header


def test_frame_limit_cuts_picture_and_audio(cli, clips, out, quick_model):
    _ok(cli("video", clips["talk"], "--video-format", "mp4_with_color", "--frame-limit", "5",
             "-o", out, "--model", quick_model))
    p = probe(out / "talk_processed.mp4")
    assert p.count == 5
    assert p.audio_seconds == pytest.approx(5 / 12, abs=0.03)
    # More than there is: every frame, no error. API-style params work here too.
    params = out.parent / "params.json"
    params.write_text(json.dumps({"convert_to": "video-backgroundremover",
                                  "video_format": "mattekey", "frame_limit": "500"}))
    _ok(cli("video", clips["bg"], "--params", params, "-o", out, "--model", quick_model))
    assert probe(out / "waves_processed.mp4").count == 5


def test_framerate_picks_frames_by_time_and_keeps_duration(cli, clips, out):
    _ok(cli("video", clips["talk"], "--framerate", "4", "-o", out))
    p = probe(out / "talk_processed.mov")
    assert p.count == 4
    assert p.pts == pytest.approx([0, 0.25, 0.5, 0.75], abs=0.01)
    assert p.duration == pytest.approx(1.0, abs=0.05)
    assert p.audio_seconds == pytest.approx(1.0, abs=0.03)


def test_many_inputs_rotated_odd_vfr_silent_webm(cli, clips, out, quick_model):
    names = ["rotated", "odd", "vfr", "silent", "webm"]
    # Seven frames: enough to cross the variable-rate clip's hold after its sixth. What
    # is tested is the containers' handling, so a stand-in model makes the masks.
    proc = _ok(cli("video", *(clips[n] for n in names), "--frame-limit", "7", "-o", out,
                    "--json", "--model", quick_model))
    assert len(json.loads(proc.stdout)["files"]) == 5
    rotated = probe(out / "rotated_processed.mov", autorotate=False)
    # Upright in the pixels themselves, with no rotation left for a player to apply.
    assert rotated.size == (96, 160) and "rotation" not in rotated.header.lower()
    odd = probe(out / "odd_processed.mov")
    assert odd.size == (161, 97) and odd.count == 7  # ProRes keeps odd sizes
    assert "prores (4444)" in odd.header and "yuva444p" in odd.header  # (prores_ks)
    vfr = probe(out / "vfr_processed.mov")
    assert vfr.count == 7
    # The half-second hold after the sixth frame survives: timing, not just count.
    assert vfr.pts == pytest.approx(probe(clips["vfr"]).pts[:7], abs=0.002)
    assert vfr.duration == pytest.approx(1 + 1 / 12, abs=0.02)
    assert probe(out / "silent_processed.mov").audio_seconds is None
    webm = probe(out / "cat_processed.mov")
    assert webm.count == 7 and webm.audio_seconds == pytest.approx(7 / 12, abs=0.03)


def test_odd_size_h264_is_padded_by_one_and_said(cli, clips, out):
    proc = _ok(cli("video", clips["odd"], "--video-format", "mp4_with_color",
                    "--frame-limit", "3", "-o", out))
    assert b"161x97 has an odd side" in proc.stderr
    p = probe(out / "odd_processed.mp4")
    assert p.size == (162, 98) and p.count == 3


def test_alpha_matting_applies_to_every_frame(cli, clips, out, tmp_path):
    _ok(cli("video", clips["silent"], "--alpha-matting", "--alpha-base-size", "160",
             "--frame-limit", "3", "--video-format", "gif", "-o", out))
    plain = tmp_path / "plain"
    _ok(cli("video", clips["silent"], "--frame-limit", "3", "--video-format", "gif",
             "-o", plain))
    matted, unmatted = probe(out / "silent_processed.gif"), probe(plain /
                                                                     "silent_processed.gif")
    assert matted.count == 3
    for i in range(3):
        assert (matted.frames[i, ..., 3] != unmatted.frames[i, ..., 3]).any()


def test_video_alpha_matting_gives_the_same_bytes_on_every_run(cli, clips, tmp_path,
                                                                quick_model):
    # Frames are matted on several threads at once: no frame's matte may
    # depend on which of the others finished first (when each frame's solve
    # started from whichever had, two runs differed by up to 199 levels).
    # The stand-in's masks leave a wide unsure band: the matte changes half of
    # each frame's pixels (u2netp's a third), at a third of the time.
    runs = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        _ok(cli("video", clips["talk"], "--alpha-matting", "--frame-limit", "10",
                 "--video-format", "png_sequence", "-o", out, "--model", quick_model))
        runs.append(sorted((out / "talk_processed").glob("*.png")))
    assert len(runs[0]) == 10
    assert [p.read_bytes() for p in runs[0]] == [p.read_bytes() for p in runs[1]]


def _broken(d: Path, clips) -> list[Path]:
    d.mkdir()
    (d / "empty.mp4").write_bytes(b"")
    (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(40_000))
    whole = clips["webm"].read_bytes()
    (d / "cut.webm").write_bytes(whole[: len(whole) // 2])
    from videoclips import ffmpeg

    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", d / "song.m4a")
    return [d / "empty.mp4", d / "noise.mp4", d / "cut.webm", d / "song.m4a"]


def test_bad_videos_fail_alone_with_one_clear_line_and_no_output(cli, clips, tmp_path):
    bad = _broken(tmp_path / "in", clips)
    out = tmp_path / "out"
    proc = cli("video", *bad, clips["silent"], "--framerate", "2", "-o", out, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [f["filename"] for f in report["files"]] == ["silent_processed.mov"]
    assert len(report["failed"]) == 4
    err = proc.stderr.decode()
    expected = {"empty.mp4": "empty file", "noise.mp4": "not a video",
                "cut.webm": "truncated", "song.m4a": "audio only"}
    for path in bad:
        line = next(ln for ln in err.splitlines() if ln.startswith(f"bgrm: {path}:"))
        assert expected[path.name] in line, line
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["silent_processed.mov"]


def test_ffmpeg_failure_is_an_error_naming_the_file(tmp_path):
    from bgrm.video.formats import FORMATS
    from bgrm.video.writer import VideoWriter

    broken = dataclasses.replace(FORMATS["mov"], video_args=("-c:v", "no_such_encoder"))
    writer = VideoWriter(tmp_path / "x.mov", broken, (16, 16), None, "clip.mp4")
    with pytest.raises(OutputError, match=r"^clip\.mp4: .*no_such_encoder"):
        for i in range(3):
            writer.write(np.zeros((16, 16, 4), np.uint8), i / 10)
        writer.finish()


@pytest.mark.parametrize("width", [64, 65])
def test_mov_keeps_alpha_and_colour_with_either_prores_encoder(tmp_path, fixtures, width):
    """Even widths go to prores_aw, odd ones to prores_ks: both must give ProRes 4444
    whose alpha comes back within one level and whose colour stays near the source."""
    from PIL import Image

    from bgrm.video.formats import FORMATS
    from bgrm.video.writer import VideoWriter

    rgb = np.asarray(Image.open(fixtures / "astronaut.png").convert("RGB").resize((width, 48)))
    alpha = np.tile(np.linspace(0, 255, width).astype(np.uint8), (48, 1))
    rgba = np.dstack([rgb, alpha])
    writer = VideoWriter(tmp_path / "x.mov", FORMATS["mov"], (width, 48), None, "clip.mp4")
    for i in range(3):
        writer.write(rgba, i / 10)
    writer.finish()
    p = probe(tmp_path / "x.mov")
    encoder = "prores_aw" if width % 2 == 0 else "prores_ks"
    assert "prores (4444)" in p.header and "yuva444p" in p.header, encoder
    assert p.count == 3 and p.size == (width, 48)
    assert np.abs(p.frames[..., 3].astype(int) - alpha).max() <= 1, encoder
    seen = alpha > 0
    error = np.abs(p.frames[..., :3].astype(int) - rgb)[:, seen]
    assert error.mean() < 1.5 and np.percentile(error, 99) <= 6, (encoder, error.mean())


def test_frame_head_plus_pixels_is_the_whole_matroska_cluster():
    """The writer sends a frame's head and its pixels apart (no 8 MB joins); together
    they must be the Cluster that nesting the elements whole gives."""
    import struct

    from bgrm.video.writer import _element, _uint, mkv_frame

    for ticks, pixels in ((0, b"\x00\x01\x02"), (123456, bytes(range(256)) * 7)):
        block = _element(0xA3, b"\x81" + struct.pack(">hB", 0, 0x80) + pixels)
        assert mkv_frame(ticks, len(pixels)) + pixels == \
            _element(0x1F43B675, _uint(0xE7, ticks) + block)


def test_stages_bound_frames_in_flight_and_surface_the_first_error():
    from bgrm.video.stages import run_stages

    lock, live, peak = threading.Lock(), [0], [0]

    def source():
        for i in range(50):
            with lock:
                live[0] += 1
                peak[0] = max(peak[0], live[0])
            yield i

    def sink(item):
        with lock:
            live[0] -= 1

    run_stages(source(), [lambda x: x, lambda x: x], sink, depth=2)
    # Three queues of two, one item in each of three threads, one being made.
    assert peak[0] <= 3 * 2 + 3 + 1

    def explode(x):
        if x == 7:
            raise ValueError("frame 7")
        return x

    done = []
    with pytest.raises(ValueError, match="frame 7"):
        run_stages(iter(range(1000)), [explode], done.append)
    assert len(done) <= 7


def test_zero_smoothing_means_per_frame_masks():
    from bgrm.video.pipeline import MaskFilter
    from bgrm.video.reader import Frame

    masks = [np.full((4, 4), v, np.uint8) for v in (0, 255, 0)]
    f = MaskFilter(0.0)
    out = [f(m, Frame(i, i / 10, np.zeros((4, 4, 3), np.uint8))) for i, m in enumerate(masks)]
    assert all((a == b).all() for a, b in zip(out, masks, strict=True))


def test_frames_are_inferred_side_by_side_one_thread_each_and_kept_in_order(clips, tmp_path,
                                                                            monkeypatch):
    import bgrm
    from bgrm.segment import Segmenter

    def frames(lanes: int, name: str) -> list[bytes]:
        bgrm.Session("u2netp", threads=1, lanes=lanes).remove_video(
            clips["silent"], tmp_path / name, video_format="png_sequence", frame_limit=4)
        return [p.read_bytes() for p in sorted((tmp_path / name).glob("*.png"))]

    one_at_a_time = frames(1, "one")
    lock, live, peak, seen = threading.Lock(), [0], [0], set()
    predict = Segmenter.predict

    def watched(self, tensor):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            seen.add(self.threads)
        try:
            return predict(self, tensor)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(Segmenter, "predict", watched)
    side_by_side = frames(2, "two")
    # Two frames at once, each on a one-thread session, and the smoothing (which
    # needs the frames in order) gives the same bytes as one frame at a time.
    assert peak[0] == 2 and seen == {1}
    assert len(one_at_a_time) == 4 and side_by_side == one_at_a_time
