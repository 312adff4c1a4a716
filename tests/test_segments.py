"""One long video in segments: ranges, seeks and joins give a whole run's frames.

The first tests need no model and no Dask: the ranges' boundaries, and that
the frames the segments' readers pick (by timestamp, after a seek) are exactly
a whole decode's, each once. Then a loopback Dask cluster (a scheduler and two
worker processes) runs ``bgrm video --scheduler --segment-seconds 1`` on
clips of a few seconds, compared frame by frame with a local run. All but the
Ctrl-C run use a stand-in model (conftest's ``quick_model``): their subject is
the cutting, the warm-up, the joining and the recovery, each is several whole
runs of the clip, and u2netp on a cluster is tested in test_distributed.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from videoclips import ffmpeg, iou, make_clip, probe

from bgrm.options import from_params
from bgrm.video import segments
from bgrm.video.reader import VideoReader


def _frames(reader) -> list[tuple[float, bytes]]:
    try:
        return [(f.pts, f.rgb.tobytes()) for f in reader]
    finally:
        reader.close()


def test_ranges_cover_the_video_once():
    spans = segments.ranges(10.0, 3.0, None, 25.0, 0.8)
    assert len(spans) == 4  # at most 3 s each, equal
    assert spans[0].start is None and spans[-1].end is None
    for a, b in zip(spans, spans[1:], strict=False):
        assert a.end == b.start  # half-open: each frame in one range
    assert spans[1].warm == segments.warm_frames(0.8) / 25.0
    assert segments.warm_frames(0.8) == 18 and segments.warm_frames(0.0) == 0
    assert 0.8 ** segments.warm_frames(0.8) <= segments.WARM_LEFT
    # A frame limit ends the last range, and sizes the others.
    limited = segments.ranges(10.0, 3.0, 4.5, 25.0, 0.8)
    assert len(limited) == 2 and limited[-1].end == 4.5 and limited[0].end == 2.25
    assert len(segments.ranges(2.9, 3.0, None, 25.0, 0.8)) == 1


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_segment_readers_pick_each_frame_once(fixtures, tmp_path, container):
    """A seek lands on a keyframe before the range (mp4), or after it (MPEG-TS has
    no index: the reader seeks again further back); either way the frames of
    all ranges are a whole decode's, in order, none twice, none missing."""
    clip = make_clip(tmp_path / "c.mp4", fixtures / "astronaut.png", size=(64, 48),
                     frames=40, fps=10, codec=("-c:v", "libx264", "-pix_fmt", "yuv420p",
                                               "-g", "7"))
    if container == "ts":
        ffmpeg("-i", clip, "-c", "copy", tmp_path / "c.ts")
        clip = tmp_path / "c.ts"
    opts = from_params("video", {"temporal_smoothing": 0.5})
    whole = _frames(VideoReader(clip, "c"))
    assert len(whole) == 40
    spans = segments.ranges(4.0, 0.7, None, 10.0, 0.5)
    assert len(spans) == 6
    joined = []
    for span in spans:
        cut = segments.Cut(span)
        got = _frames(cut.reader(clip, "c", opts))
        kept = [f for f in got if span.start is None or f[0] >= span.start]
        warm = [f for f in got if span.start is not None and f[0] < span.start]
        if span.start is not None:  # the warm-up frames run just before the range
            assert len(warm) == segments.warm_frames(0.5)
            assert warm == whole[whole.index(kept[0]) - len(warm):whole.index(kept[0])]
        joined += kept
    assert joined == whole


@pytest.mark.parametrize("fmt", ["webm", "mattekey", "png_sequence"])
def test_parts_join_in_other_formats(fixtures, tmp_path, fmt, quick_model):
    """Parts made here one after the other (no Dask) and joined: VP9 and H.264 by
    stream copy, a PNG sequence renamed and numbered on; the frames, times and
    audio of a whole run."""
    from PIL import Image

    from bgrm.models import resolve
    from bgrm.segment import get_segmenter
    from bgrm.video.pipeline import process_file

    clip = make_clip(tmp_path / "c.mp4", fixtures / "astronaut.png", size=(64, 48),
                     frames=10, fps=5, audio=True)
    opts = from_params("video", {"video_format": fmt, "temporal_smoothing": 0.5})
    segmenter = get_segmenter(resolve(str(quick_model)), "auto", 2, False)
    ext = segments.FORMATS[fmt].ext
    local, joined = (tmp_path / f"{n}{'.' + ext if ext else ''}" for n in ("local", "joined"))
    process_file(clip, local, opts, segmenter)
    plan = segments.plan(clip, opts, 1)
    assert len(plan.spans) == 2
    folder = tmp_path / "parts"
    folder.mkdir()
    parts = [segments.make_part(clip, folder, span, opts, segmenter) for span in plan.spans]
    assert segments.join(parts, clip, joined, opts, "c") == 10
    if fmt == "png_sequence":
        names = sorted(p.name.replace("joined", "local") for p in joined.iterdir())
        assert names == sorted(p.name for p in local.iterdir())
        assert len(names) == 11  # ten frames and the sound
        for name in (n for n in names if n.endswith(".png")):
            with Image.open(local / name) as a, Image.open(joined / name.replace(
                    "local", "joined")) as b:
                assert iou(np.asarray(a.getchannel("A")), np.asarray(b.getchannel("A"))) >= 0.99
        return
    decoder = "libvpx-vp9" if fmt == "webm" else None
    a, b = probe(local, decoder=decoder), probe(joined, decoder=decoder)
    assert (b.count, b.pts, b.audio_seconds) == (a.count, a.pts, a.audio_seconds)
    assert b.duration == pytest.approx(a.duration, abs=0.011)
    channel = 3 if fmt == "webm" else 0  # mattekey: white on black
    assert min(iou(x[..., channel], y[..., channel])
               for x, y in zip(a.frames, b.frames, strict=True)) >= 0.97


# -- on a loopback cluster ---------------------------------------------------------------


def _compare(local: Path, joined: Path, boundaries: int) -> None:
    """Same frames, times, duration and audio; alpha IoU >= 0.99 on every frame."""
    a, b = probe(local), probe(joined)
    assert b.count == a.count
    assert b.pts == a.pts
    assert b.duration == pytest.approx(a.duration, abs=0.011)
    assert b.audio_seconds == pytest.approx(a.audio_seconds, abs=0.01)
    ious = [iou(x[..., 3], y[..., 3]) for x, y in zip(a.frames, b.frames, strict=True)]
    assert min(ious) >= 0.99, ious
    assert boundaries >= 1


def _no_leftovers(folder: Path, keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [keep]


def test_long_video_matches_local_run(cli, fixtures, tmp_path, cluster, quick_model):
    """3 segments (1 s each, 8 fps, default smoothing: its warm-up reaches back
    over a whole segment): the joined ProRes is the local run's, frame by frame."""
    address, _ = cluster
    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", size=(128, 72),
                     frames=22, fps=8, audio=True)
    common = ["--model", quick_model, "--segment-seconds", "1"]
    local = cli("video", clip, "-o", tmp_path / "local", *common)
    remote = cli("video", clip, "-o", tmp_path / "remote", *common, "--scheduler", address,
                  "--json")
    assert local.returncode == 0, local.stderr.decode()
    assert remote.returncode == 0, remote.stderr.decode()
    _compare(tmp_path / "local" / "clip_processed.mov",
             tmp_path / "remote" / "clip_processed.mov", boundaries=2)
    _no_leftovers(tmp_path / "remote", "clip_processed.mov")
    # A GIF is not split (its parts could not be joined by copying), and says so.
    gif = cli("video", clip, "-o", tmp_path / "gif", *common, "--video-format", "gif",
               "--frame-limit", "12", "--scheduler", address)
    assert gif.returncode == 0, gif.stderr.decode()
    assert b"not split into segments, runs whole on one worker: a GIF" in gif.stderr
    assert probe(tmp_path / "gif" / "clip_processed.gif").count == 12


def test_vfr_frame_limit_and_framerate_across_boundaries(cli, fixtures, tmp_path, cluster,
                                                        quick_model):
    """A variable-rate clip (holds of 0.5 s and 0.4 s) whose picture starts 0.3 s
    after its sound, cut by --frame-limit 6 frames before its end; and the same
    with --framerate."""
    address, _ = cluster
    hold = ",setpts='(N+3+6*gte(N\\,6)+5*gte(N\\,20))/10/TB'"
    clip = make_clip(tmp_path / "vfr.mp4", fixtures / "astronaut.png", size=(96, 64),
                     frames=30, fps=10, audio=True, vf_extra=hold,
                     codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-fps_mode", "vfr",
                            "-g", "8"))
    for extra, want in ((["--frame-limit", "24"], 24), (["--framerate", "4"], None)):
        args = ["--model", quick_model, "--segment-seconds", "1", "--temporal-smoothing",
                "0.5", *extra]
        local = cli("video", clip, "-o", tmp_path / "local", *args)
        remote = cli("video", clip, "-o", tmp_path / "remote", *args, "--scheduler", address)
        assert local.returncode == 0, local.stderr.decode()
        assert remote.returncode == 0, remote.stderr.decode()
        joined = tmp_path / "remote" / "vfr_processed.mov"
        if want:
            assert probe(joined).count == want
            assert probe(joined).pts[-1] > 2.0  # the limit falls in the third second
        _compare(tmp_path / "local" / "vfr_processed.mov", joined, boundaries=2)
        _no_leftovers(tmp_path / "remote", "vfr_processed.mov")


def _run_killing(address: str, client, cmd: list, folder: Path, sig_client: bool):
    """Start ``cmd``; once a worker writes a part, SIGKILL that worker (or SIGINT
    the client). Returns (process, what was hit)."""
    pids = set(client.run(os.getpid).values())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    hit = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and hit is None and time.monotonic() < deadline:
        for tmp in folder.glob(".*bgrm-tmp-parts-*/.part-*.bgrm-tmp-*"):
            pid = int(tmp.name.split("bgrm-tmp-")[1].split(".")[0])
            if pid in pids:  # only ever a worker of this test's cluster
                if sig_client:
                    proc.send_signal(signal.SIGINT)
                else:
                    os.kill(pid, signal.SIGKILL)
                hit = tmp
                break
        time.sleep(0.01)
    return proc, hit


def test_worker_killed_mid_segment(cli, fixtures, tmp_path, cluster, quick_model):
    """SIGKILL a worker while it encodes a part: the segment is run again on the
    other worker, the output is whole and the same, no part is left behind.
    The nanny restarts the killed worker."""
    address, client = cluster
    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", size=(128, 72),
                     frames=24, fps=8, audio=True)
    args = ["--model", quick_model, "--segment-seconds", "1", "--temporal-smoothing", "0.5"]
    out = tmp_path / "remote"
    out.mkdir()
    proc, hit = _run_killing(address, client, [sys.executable, "-m", "bgrm", "video", clip,
                                               "-o", out, *args, "--scheduler", address],
                             out, sig_client=False)
    stdout, stderr = proc.communicate(timeout=240)
    assert hit is not None, "the parts were written before one could be interrupted"
    assert proc.returncode == 0, stderr.decode()
    local = cli("video", clip, "-o", tmp_path / "local", *args)
    assert local.returncode == 0, local.stderr.decode()
    _compare(tmp_path / "local" / "clip_processed.mov", out / "clip_processed.mov",
             boundaries=2)
    _no_leftovers(out, "clip_processed.mov")
    client.wait_for_workers(2, timeout=60)


def test_ctrl_c_leaves_no_parts(fixtures, tmp_path, cluster):
    """Ctrl-C on the client: exit 130, no output, and no part appears afterwards
    (segments still running stop: their folder is gone)."""
    address, client = cluster
    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", size=(128, 72),
                     frames=32, fps=8)
    out = tmp_path / "remote"
    out.mkdir()
    proc, hit = _run_killing(address, client, [
        sys.executable, "-m", "bgrm", "video", clip, "-o", out, "--model", "u2netp",
        "--segment-seconds", "1", "--temporal-smoothing", "0.5", "--scheduler", address],
        out, sig_client=True)
    proc.communicate(timeout=120)
    assert hit is not None
    assert proc.returncode == 130
    # A cancelled task's thread runs on until it stops by itself: wait until no
    # worker thread runs any task, then nothing can write any more.
    deadline = time.monotonic() + 60
    while any(client.run(lambda dask_worker: len(dask_worker.active_threads)).values()):
        assert time.monotonic() < deadline, "a segment never stopped"
        time.sleep(0.2)
    assert list(out.iterdir()) == []
