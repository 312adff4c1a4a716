"""bgrm against rembg and against bare inference, as ratios measured in one run.

    make bench            # or: .venv/bin/python bench/bench.py [--reps N] [--quick]

Every comparison alternates the two commands, repeats them, and takes medians,
so the machine's noise hits both sides alike. Peak memory is each command's
own maximum resident set (its process tree's largest member), from wait4.
Nothing here is asserted by `make test`; this prints the table of issue #6.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BIN = Path(sys.executable).parent
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]


def run(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd``; return (seconds, peak RSS in MB of its largest process)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    return seconds, usage.ru_maxrss / 1024.0


def alternate(a: list[str], b: list[str], env: dict, reps: int, before=None):
    """Median (seconds, MB) of ``a`` and of ``b``, run alternately ``reps`` times."""
    ta, tb, ma, mb = [], [], [], []
    for _ in range(reps):
        for cmd, times, mems in ((a, ta, ma), (b, tb, mb)):
            if before:
                before()
            t, m = run(cmd, env)
            times.append(t)
            mems.append(m)
    return (statistics.median(ta), max(ma)), (statistics.median(tb), max(mb))


def make_inputs(work: Path) -> dict[str, Path]:
    small = work / "small"
    small.mkdir()
    for name in PHOTOS:
        shutil.copy(FIXTURES / name, small / name)
    # A fifth photo: the astronaut mirrored, so five distinct files.
    Image.open(FIXTURES / "astronaut.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        small / "astronaut_mirror.png")
    big = work / "big"
    big.mkdir()
    for name in PHOTOS[:2]:
        Image.open(FIXTURES / name).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC) \
            .save(big / (Path(name).stem + ".jpg"), quality=92)
    one_big = work / "one_big"
    one_big.mkdir()
    shutil.copy(big / "astronaut.jpg", one_big / "astronaut.jpg")
    return {"small": small, "big": big, "one_big": one_big,
            "one_small": small / "chelsea.png"}


def make_clip(path: Path, frames: int, size=(640, 360), fps=25) -> Path:
    """A pan and zoom over a real photo, H.264, written with the bundled ffmpeg."""
    import imageio_ffmpeg

    photo = Image.open(FIXTURES / "astronaut.png").convert("RGB")
    w, h = size
    writer = imageio_ffmpeg.write_frames(str(path), size, fps=fps, codec="libx264",
                                         macro_block_size=1, quality=8,
                                         output_params=["-pix_fmt", "yuv420p"])
    writer.send(None)
    try:
        for i in range(frames):
            t = i / max(frames - 1, 1)
            crop_w = int(photo.width * (0.9 - 0.2 * t))
            crop_h = crop_w * h // w
            left = int((photo.width - crop_w) * t)
            top = (photo.height - crop_h) // 2
            frame = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size)
            writer.send(np.ascontiguousarray(np.asarray(frame)))
    finally:
        writer.close()
    return path


def bare_inference_fps(model: Path, frames: int = 20) -> float:
    """Frames per second of u2netp alone: prepared tensors through onnxruntime."""
    from bgrm.models import REGISTRY, ResolvedModel
    from bgrm.segment import Segmenter

    seg = Segmenter(ResolvedModel(REGISTRY["u2netp"], model))
    tensor = seg.prepare(Image.open(FIXTURES / "astronaut.png").convert("RGB").resize((640, 360)))
    seg.predict(tensor)
    start = time.perf_counter()
    for _ in range(frames):
        seg.predict(tensor)
    return frames / (time.perf_counter() - start)


class Table:
    def __init__(self):
        self.rows = []

    def add(self, what: str, ours: str, ref: str, ratio: str, target: str, ok: bool):
        self.rows.append((what, ours, ref, ratio, target, "ok" if ok else "MISSED"))
        print(f"  {what}: {ours} vs {ref} -> {ratio} ({target}) {'ok' if ok else 'MISSED'}",
              file=sys.stderr, flush=True)

    def print(self):
        head = ("measure", "bgrm", "reference", "ratio", "target", "")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(6)]
        for row in [head, *self.rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repetition, no 12 MP rows")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    work = Path(tempfile.mkdtemp(prefix="bgrm-bench-"))
    try:
        bench(work, reps, args.quick)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, reps: int, quick: bool) -> None:
    inputs = make_inputs(work)
    # rembg finds u2netp in $U2NET_HOME; bgrm gets an empty models dir and the
    # bundled copy of the same file, so both run the same weights, offline.
    rembg_home = work / "rembg-home"
    rembg_home.mkdir()
    bundled = ROOT / "bgrm" / "assets" / "u2netp.onnx"
    shutil.copy(bundled, rembg_home / "u2netp.onnx")
    env = dict(os.environ, U2NET_HOME=str(rembg_home), BGRM_MODELS=str(work / "empty"))
    bgrm = [str(BIN / "bgrm")]
    rembg = [str(BIN / "rembg")]
    out = work / "out"

    def clean():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    table = Table()
    print(f"bgrm bench: {os.cpu_count()} cores, {reps} repetitions, medians", file=sys.stderr)

    (tb, _), (tr, _) = alternate(bgrm + ["--help"], rembg + ["--help"], env, max(reps, 3))
    table.add("--help", f"{tb:.2f}s", f"{tr:.2f}s", f"{tb / tr:.2f}x time",
              "<= 0.5 s and <= 0.25x", tb <= 0.5 and tb <= 0.25 * tr)

    one = inputs["one_small"]
    (tb, _), (tr, _) = alternate(
        bgrm + ["image", "--model", "u2netp", str(one), "-o", str(out)],
        rembg + ["i", "-m", "u2netp", str(one), str(out / "r.png")], env, reps, clean)
    table.add("one small photo per call", f"{tb:.2f}s", f"{tr:.2f}s (rembg i)",
              f"{tr / tb:.2f}x faster", ">= 2x", tr / tb >= 2)

    (tb, _), (tr, _) = alternate(
        bgrm + ["image", "--model", "u2netp", str(inputs["small"]), "-o", str(out)],
        rembg + ["p", "-m", "u2netp", str(inputs["small"]), str(out)], env, reps, clean)
    table.add("5 small photos", f"{tb:.2f}s", f"{tr:.2f}s (rembg p)", f"{tr / tb:.2f}x faster",
              ">= 1.3x", tr / tb >= 1.3)

    (tb, _), (tr, _) = alternate(
        bgrm + ["image", "--model", "u2netp", "--alpha-matting", str(inputs["small"]), "-o",
                str(out)],
        rembg + ["p", "-m", "u2netp", "-a", str(inputs["small"]), str(out)], env, reps, clean)
    table.add("alpha matting, 5 small photos", f"{tb:.2f}s", f"{tr:.2f}s (rembg p -a)",
              f"{tr / tb:.2f}x faster", ">= 2x", tr / tb >= 2)

    if not quick:
        (tb, _), (tr, _) = alternate(
            bgrm + ["image", "--model", "u2netp", str(inputs["big"]), "-o", str(out)],
            rembg + ["p", "-m", "u2netp", str(inputs["big"]), str(out)], env, reps, clean)
        table.add("12 MP photos", f"{tb:.2f}s", f"{tr:.2f}s (rembg p)", f"{tr / tb:.2f}x faster",
                  ">= 2.5x", tr / tb >= 2.5)

        times, mems = [], []
        for _ in range(reps):
            clean()
            t, m = run(bgrm + ["image", "--model", "u2netp", "--alpha-matting",
                               "--alpha-base-size", "1000", str(inputs["one_big"]), "-o",
                               str(out)], env)
            times.append(t)
            mems.append(m)
        t, m = statistics.median(times), max(mems)
        table.add("alpha matting one 12 MP photo", f"{t:.2f}s, {m:.0f} MB", "(rembg: 87 s, 7.2 GB)",
                  "-", "< 10 s and < 1.5 GB", t < 10 and m < 1536)

    bench_video(work, env, bgrm, table, reps)
    print()
    table.print()


def bench_video(work: Path, env: dict, bgrm: list[str], table: Table, reps: int) -> None:
    try:
        import bgrm.video.pipeline  # noqa: F401
    except ImportError:
        print("  (video rows skipped: bgrm.video.pipeline is not available)", file=sys.stderr)
        return
    frames = 30
    short = make_clip(work / "clip.mp4", frames)
    long = make_clip(work / "clip4x.mp4", frames * 4)
    out = work / "vout"
    out.mkdir()
    bare = bare_inference_fps(ROOT / "bgrm" / "assets" / "u2netp.onnx")
    times, mems_short = [], []
    for _ in range(reps):
        t, m = run(bgrm + ["video", "--model", "u2netp", str(short), "-o", str(out)], env)
        times.append(t)
        mems_short.append(m)
    fps = frames / statistics.median(times)
    table.add("video to mov, 640x360", f"{fps:.2f} fps", f"{bare:.2f} fps (bare u2netp)",
              f"{fps / bare:.2f}x", ">= 0.8x", fps / bare >= 0.8)
    _, m_long = run(bgrm + ["video", "--model", "u2netp", str(long), "-o", str(out)], env)
    m_short = max(mems_short)
    table.add("video peak memory, 4x frames", f"{m_long:.0f} MB", f"{m_short:.0f} MB",
              f"{m_long / m_short:.2f}x", "<= 1.2x", m_long / m_short <= 1.2)


if __name__ == "__main__":
    main()
