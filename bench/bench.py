"""bgrm against rembg and against bare inference, as ratios measured in one run.

    make bench            # or: .venv/bin/python bench/bench.py [--reps N] [--quick]

Every comparison alternates the two commands, repeats them, and takes medians,
so the machine's noise hits both sides alike. Peak memory is each command's
own maximum resident set (its process tree's largest member), from wait4 in a
small launcher process.
Nothing here is asserted by `make test`; this prints the table: each
ratio against rembg (or the floor) beside its target.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
BIN = Path(sys.executable).parent
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]


# Linux carries ru_maxrss across fork and exec: a command started straight from
# this process (which holds an onnxruntime session for the bare-inference rows)
# would report at least this process's size. The launcher is a fresh, small
# interpreter that forks the command from itself and reports its wait4 usage.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run(cmd: list[str], env: dict) -> tuple[float, float, float]:
    """Run ``cmd``; return (seconds, peak RSS in MB of its largest process, CPU seconds)."""
    with tempfile.NamedTemporaryFile("r", suffix=".usage") as usage_file:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, usage_file.name, *cmd], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
        maxrss_kb, cpu = usage_file.read().split()
    return seconds, int(maxrss_kb) / 1024.0, float(cpu)


class Measure:
    """Medians of one command's runs: wall seconds, CPU seconds; the largest peak RSS."""

    def __init__(self):
        self.times, self.cpus, self.mems = [], [], []

    def add(self, seconds: float, mb: float, cpu: float) -> None:
        self.times.append(seconds)
        self.mems.append(mb)
        self.cpus.append(cpu)

    @property
    def t(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)

    @property
    def mb(self) -> float:
        return max(self.mems)


def alternate(a: list[str], b: list[str], env: dict, reps: int, before=None):
    """Measures of ``a`` and of ``b``, run alternately ``reps`` times."""
    ma, mb = Measure(), Measure()
    for _ in range(reps):
        for cmd, measure in ((a, ma), (b, mb)):
            if before:
                before()
            measure.add(*run(cmd, env))
    return ma, mb


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
                                         pix_fmt_out="yuv420p")
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

    def add(self, what: str, ours: str, ref: str, ratio: str, target: str, ok: bool | None,
            cpu: str = ""):
        """A row; ``ok`` None for a row that explains another and has no target."""
        verdict = "" if ok is None else "ok" if ok else "MISSED"
        self.rows.append((what, ours, ref, ratio, target, verdict, cpu))
        print(f"  {what}: {ours} vs {ref} -> {ratio} ({target}) {verdict}"
              + (f" [cpu {cpu}]" if cpu else ""), file=sys.stderr, flush=True)

    def print(self):
        head = ("measure", "bgrm", "reference", "ratio", "target", "", "cpu-time ratio")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(len(head))]
        for row in [head, *self.rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@dataclass
class Bench:
    """What every row gets: inputs, commands, environment, repetitions."""

    work: Path
    inputs: dict
    env: dict
    bgrm: list
    rembg: list
    reps: int
    quick: bool
    table: Table

    @property
    def out(self) -> Path:
        return self.work / "out"

    def clean(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()

    def versus_rembg(self, what: str, ours: list, theirs: list, target: float,
                     ref_name: str) -> None:
        """A row: bgrm and rembg alternated; ratio of median wall times."""
        b, r = alternate(self.bgrm + ours, self.rembg + theirs, self.env, self.reps,
                         self.clean)
        self.table.add(what, f"{b.t:.2f}s", f"{r.t:.2f}s ({ref_name})",
                       f"{r.t / b.t:.2f}x faster", f">= {target:g}x", r.t / b.t >= target,
                       cpu=f"{r.cpu / b.cpu:.2f}x ({b.cpu:.1f} vs {r.cpu:.1f} s)")


def row_help(b: Bench) -> None:
    mb, mr = alternate(b.bgrm + ["--help"], b.rembg + ["--help"], b.env, max(b.reps, 3))
    b.table.add("--help", f"{mb.t:.2f}s", f"{mr.t:.2f}s", f"{mb.t / mr.t:.2f}x time",
                "<= 0.5 s and <= 0.25x", mb.t <= 0.5 and mb.t <= 0.25 * mr.t)


def row_one_small(b: Bench) -> None:
    one = str(b.inputs["one_small"])
    b.versus_rembg("one small photo per call", ["image", "--model", "u2netp", one, "-o",
                                                str(b.out)],
                   ["i", "-m", "u2netp", one, str(b.out / "r.png")], 2, "rembg i")


def row_small(b: Bench) -> None:
    small = str(b.inputs["small"])
    b.versus_rembg("5 small photos", ["image", "--model", "u2netp", small, "-o", str(b.out)],
                   ["p", "-m", "u2netp", small, str(b.out)], 1.3, "rembg p")


# The least any tool can do for that row: import, load u2netp, then for each
# photo decode, mask and matte, one after the other, writing nothing.
MATTING_FLOOR = """
import pathlib, sys
import numpy as np
from PIL import Image
from bgrm.image import decode
from bgrm.matte import matte
from bgrm.models import resolve
from bgrm.options import MattingOptions
from bgrm.segment import get_segmenter
seg = get_segmenter(resolve("u2netp"), "cpu", None, False)
for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):
    rgb = decode(p, str(p)).rgb
    matte(rgb, np.asarray(seg.mask(Image.fromarray(rgb))), MattingOptions(enabled=True))
"""


def row_small_matting(b: Bench) -> None:
    """bgrm vs rembg, and beside them the floor (MATTING_FLOOR) in the same
    alternation: rembg / floor is the best ratio work done one photo after
    another could reach; beating it needs the two cores both busy."""
    small = str(b.inputs["small"])
    cmds = (b.bgrm + ["image", "--model", "u2netp", "--alpha-matting", small, "-o", str(b.out)],
            b.rembg + ["p", "-m", "u2netp", "-a", small, str(b.out)],
            [sys.executable, "-c", MATTING_FLOOR, small])
    ours, ref, floor = Measure(), Measure(), Measure()
    for _ in range(b.reps):
        for cmd, measure in zip(cmds, (ours, ref, floor), strict=True):
            b.clean()
            measure.add(*run(cmd, b.env))
    b.table.add("alpha matting, 5 small photos", f"{ours.t:.2f}s", f"{ref.t:.2f}s (rembg p -a)",
                f"{ref.t / ours.t:.2f}x faster", ">= 2x", ref.t / ours.t >= 2,
                cpu=f"{ref.cpu / ours.cpu:.2f}x ({ours.cpu:.1f} vs {ref.cpu:.1f} s)")
    b.table.add("  floor: imports + mask + matte, serial", f"{floor.t:.2f}s",
                f"{ref.t:.2f}s (rembg p -a)", f"{ref.t / floor.t:.2f}x faster", "(bound)", None,
                cpu=f"{ref.cpu / floor.cpu:.2f}x ({floor.cpu:.1f} vs {ref.cpu:.1f} s)")
    # However well bgrm overlaps its files, it cannot finish before its CPU
    # seconds spread over every core with nothing else running.
    cores = os.cpu_count() or 1
    best = ours.cpu / cores
    b.table.add(f"  bound: bgrm's cpu-s / {cores} cores", f"{best:.2f}s",
                f"{ref.t:.2f}s (rembg p -a)", f"{ref.t / best:.2f}x faster", "(bound)", None)


def row_big(b: Bench) -> None:
    if b.quick:
        return
    big = str(b.inputs["big"])
    b.versus_rembg("12 MP photos", ["image", "--model", "u2netp", big, "-o", str(b.out)],
                   ["p", "-m", "u2netp", big, str(b.out)], 2.5, "rembg p")


def row_big_matting(b: Bench) -> None:
    if b.quick:
        return
    m = Measure()
    for _ in range(b.reps):
        b.clean()
        m.add(*run(b.bgrm + ["image", "--model", "u2netp", "--alpha-matting",
                             "--alpha-base-size", "1000", str(b.inputs["one_big"]), "-o",
                             str(b.out)], b.env))
    b.table.add("alpha matting one 12 MP photo", f"{m.t:.2f}s, {m.mb:.0f} MB",
                "(rembg: 87 s, 7.2 GB)", "-", "< 10 s and < 1.5 GB", m.t < 10 and m.mb < 1536)


# The table, in order. A new measurement is a function of the Bench appended here.
ROWS = [row_help, row_one_small, row_small, row_small_matting, row_big, row_big_matting]


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repetition, no 12 MP rows")
    parser.add_argument("--only", metavar="WORD",
                        help="run only the row functions whose name contains WORD (e.g. video)")
    args = parser.parse_args()
    reps = 1 if args.quick else args.reps
    work = Path(tempfile.mkdtemp(prefix="bgrm-bench-"))
    try:
        bench(work, reps, args.quick, args.only)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench(work: Path, reps: int, quick: bool, only: str | None = None) -> None:
    inputs = make_inputs(work)
    # rembg finds u2netp in $U2NET_HOME; bgrm gets an empty models dir and the
    # bundled copy of the same file, so both run the same weights, offline.
    rembg_home = work / "rembg-home"
    rembg_home.mkdir()
    bundled = ROOT / "bgrm" / "assets" / "u2netp.onnx"
    shutil.copy(bundled, rembg_home / "u2netp.onnx")
    env = dict(os.environ, U2NET_HOME=str(rembg_home), BGRM_MODELS=str(work / "empty"))
    b = Bench(work, inputs, env, [str(BIN / "bgrm")], [str(BIN / "rembg")], reps, quick, Table())
    before = load()
    print(f"bgrm bench: {os.cpu_count()} cores, {reps} repetitions, medians; {before}",
          file=sys.stderr)
    for row in ROWS:
        if only is None or only in row.__name__:
            row(b)
    print()
    print(f"{os.cpu_count()} cores, {reps} repetitions (medians), u2netp; "
          f"{before} at start, {load()} at end")
    b.table.print()


def row_video(b: Bench) -> None:
    try:
        # importlib, not `import bgrm.video...`: bgrm here is a package, and
        # b.bgrm the command line.
        importlib.import_module("bgrm.video.pipeline")
    except ImportError:
        print("  (video rows skipped: bgrm.video.pipeline is not available)", file=sys.stderr)
        return
    frames = 30
    short = make_clip(b.work / "clip.mp4", frames)
    long = make_clip(b.work / "clip4x.mp4", frames * 4)
    out = b.work / "vout"
    out.mkdir(exist_ok=True)
    # Bare inference and the video job alternate too, so both see the same load.
    bare_fps, m = [], Measure()
    for _ in range(b.reps):
        bare_fps.append(bare_inference_fps(ROOT / "bgrm" / "assets" / "u2netp.onnx"))
        m.add(*run(b.bgrm + ["video", "--model", "u2netp", str(short), "-o", str(out)], b.env))
    bare = statistics.median(bare_fps)
    fps = frames / m.t
    b.table.add("video to mov, 640x360, 30 frames", f"{fps:.2f} fps", f"{bare:.2f} fps (bare u2netp)",
                f"{fps / bare:.2f}x", "(incl. ~1.3 s start-up)", None)
    m_long = Measure()
    for _ in range(b.reps):
        m_long.add(*run(b.bgrm + ["video", "--model", "u2netp", str(long), "-o", str(out)],
                        b.env))
    # The pipeline's own rate: the 90 extra frames of the long clip over the
    # extra time they took, so start-up (imports, model load, ffmpeg) cancels.
    steady = frames * 3 / (m_long.t - m.t)
    b.table.add("video to mov, 640x360, steady rate", f"{steady:.2f} fps",
                f"{bare:.2f} fps (bare u2netp)", f"{steady / bare:.2f}x", ">= 0.8x",
                steady / bare >= 0.8)
    b.table.add("video peak memory, 4x frames", f"{m_long.mb:.0f} MB", f"{m.mb:.0f} MB",
                f"{m_long.mb / m.mb:.2f}x", "<= 1.2x", m_long.mb / m.mb <= 1.2)


ROWS.append(row_video)


def row_temporal(b: Bench) -> None:
    """Flicker with and without --temporal-smoothing, on pans over real photos.

    The clips are tests/test_temporal.py's (noise and a JPEG pass per frame, so
    the per-frame masks jitter as on camera footage); the figures are read
    back from the mov outputs' alpha with ffmpeg.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from videoclips import flicker, iou, pan_frames, probe, write_frames

    for photo in PHOTOS:
        clip = write_frames(b.work / f"pan-{Path(photo).stem}.mp4", pan_frames(FIXTURES / photo))
        alpha = {}
        for name, extra in (("smooth", []), ("raw", ["--temporal-smoothing", "0"])):
            out = b.work / f"temporal-{name}"
            run(b.bgrm + ["video", "--model", "u2netp", str(clip), "-o", str(out), *extra],
                b.env)
            alpha[name] = probe(out / f"{clip.stem}_processed.mov").frames[..., 3]
        ratio = flicker(alpha["smooth"]) / flicker(alpha["raw"])
        last = iou(alpha["smooth"][-1], alpha["raw"][-1])
        b.table.add(f"flicker ratio; IoU, {Path(photo).stem} pan (20 frames)",
                    f"{flicker(alpha['smooth']):.4f}; IoU {last:.3f}",
                    f"{flicker(alpha['raw']):.4f} (--temporal-smoothing 0)",
                    f"{ratio:.2f}x", "<= 0.7x; IoU > 0.95", ratio <= 0.7 and last > 0.95)


def row_video_matting(b: Bench) -> None:
    """`bgrm video --alpha-matting` on the 640x360 pan, wall seconds per
    frame for the whole command (start, model, pymatting import, decode,
    inference, matting, encode: nothing subtracted)."""
    frames = 30
    clip = b.work / "clip.mp4"
    if not clip.exists():
        make_clip(clip, frames)
    out = b.work / "vmatte"
    m = Measure()
    for _ in range(b.reps):
        m.add(*run(b.bgrm + ["video", "--model", "u2netp", "--alpha-matting", str(clip),
                             "-o", str(out)], b.env))
    per = m.t / frames
    cores = os.cpu_count() or 1
    # Wall time is what the target is about; on a shared machine the process
    # may get one core's worth, so its CPU seconds over the cores are shown too.
    b.table.add("video alpha matting, 640x360", f"{per:.2f} s/frame",
                f"whole command / frames; cpu / {cores} cores: "
                f"{m.cpu / frames / cores:.2f} s/frame", "-", "<= 1.5 s/frame", per <= 1.5,
                cpu=f"{m.cpu / frames:.2f} cpu-s/frame")


ROWS += [row_temporal, row_video_matting]


def _encode(fmt_name: str, frames: list, dst: Path, rate: int) -> tuple[float, float]:
    """Wall and ffmpeg CPU seconds to encode ``frames`` (RGBA) as ``fmt_name``."""
    import resource
    from fractions import Fraction

    from bgrm.video.formats import FORMATS
    from bgrm.video.writer import VideoWriter

    h, w = frames[0].shape[:2]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    writer = VideoWriter(dst, FORMATS[fmt_name], (w, h), Fraction(rate), "bench")
    for i, frame in enumerate(frames):
        writer.write(frame, i / rate)
    writer.finish()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu


def row_video_formats(b: Bench) -> None:
    """Encoding alone, webm (VP9 + alpha) against mov (ProRes 4444), on
    the same 60 real cut-out frames of 640x360 (bgrm's own png_sequence of the
    pan), alternated; what the model costs is the same for both and left out."""
    frames = 60
    clip = make_clip(b.work / "clip60.mp4", frames)
    seq = b.work / "seq"
    run(b.bgrm + ["video", "--model", "u2netp", str(clip), "--video-format", "png_sequence",
                  "-o", str(seq)], b.env)
    rgba = [np.asarray(Image.open(p)) for p in sorted((seq / "clip60_processed").glob("*.png"))]
    assert len(rgba) == frames and rgba[0].shape[2] == 4
    times: dict[str, list] = {"webm": [], "mov": []}
    for _ in range(b.reps):
        for name in times:
            times[name].append(_encode(name, rgba, b.work / f"enc.{name}", 25))
    wall = {n: statistics.median(t for t, _ in v) for n, v in times.items()}
    cpu = {n: statistics.median(c for _, c in v) for n, v in times.items()}
    b.table.add("encode 60 cut-out frames 640x360: webm vs mov",
                f"{frames / wall['webm']:.1f} fps (webm)", f"{frames / wall['mov']:.1f} fps (mov)",
                f"{wall['webm'] / wall['mov']:.2f}x time", "-", None,
                cpu=f"{cpu['webm'] / frames:.3f} vs {cpu['mov'] / frames:.3f} cpu-s/frame")


ROWS.append(row_video_formats)


def row_families(b: Bench) -> None:
    """A 1024-input model against rembg on the same file, and video
    seconds per frame for a stand-in of each input size.

    Only u2netp's real weights exist here, so the 1024 rows run a stand-in with
    BiRefNet's signature (tests/standins.py: pooling, two small convolutions,
    resize): what they measure is everything around a 1024 model (the
    1024x1024 resize, normalisation, min-max, the mask back to full size,
    decode and encode), not BiRefNet's own inference, which costs the same
    in both tools. rembg reads the same file as birefnet-general.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from standins import standin_onnx

    home = Path(b.env["U2NET_HOME"])
    big = standin_onnx(home / "birefnet-general.onnx", "birefnet", seed=1)
    small = standin_onnx(b.work / "u2net-standin.onnx", "u2net", seed=1)
    env = dict(b.env, MODEL_CHECKSUM_DISABLED="1")
    photos = str(b.inputs["small"])
    n = len(list(b.inputs["small"].iterdir()))
    ours, ref = alternate(
        b.bgrm + ["image", "--model", str(big), "--model-family", "birefnet", photos,
                  "-o", str(b.out)],
        b.rembg + ["p", "-m", "birefnet-general", photos, str(b.out)], env, b.reps, b.clean)
    b.table.add("1024 stand-in (BiRefNet signature), 5 small photos",
                f"{ours.t / n:.2f} s/image", f"{ref.t / n:.2f} s/image (rembg p)",
                f"{ref.t / ours.t:.2f}x faster", "(same file)", None,
                cpu=f"{ref.cpu / ours.cpu:.2f}x ({ours.cpu:.1f} vs {ref.cpu:.1f} s)")
    one = Measure()
    for _ in range(b.reps):
        b.clean()
        one.add(*run(b.bgrm + ["image", "--model", str(big), "--model-family", "birefnet",
                               str(b.inputs["one_small"]), "-o", str(b.out)], env))
    b.table.add("  peak memory, one photo, 1024 stand-in", f"{one.mb:.0f} MB",
                f"{one.t:.2f} s (whole command)", "-", "(weights ~0 MB: add the model's size)",
                None)
    clip = b.work / "clip.mp4"
    if not clip.exists():
        make_clip(clip, 30)
    for label, model, family in (("320 stand-in (u2net)", small, "u2net"),
                                 ("1024 stand-in (birefnet)", big, "birefnet")):
        m = Measure()
        for _ in range(b.reps):
            m.add(*run(b.bgrm + ["video", "--model", str(model), "--model-family", family,
                                 str(clip), "-o", str(b.work / "vfam")], env))
        b.table.add(f"video to mov, 640x360, {label}", f"{m.t / 30:.3f} s/frame",
                    "whole command / 30 frames", "-", f"peak {m.mb:.0f} MB", None,
                    cpu=f"{m.cpu / 30:.3f} cpu-s/frame")


ROWS.append(row_families)


def row_edges(b: Bench) -> None:
    """What --decontaminate costs on one 12 MP photo (time and peak
    memory against the same run without it), and what --decontaminate and
    --crop (two passes) add per frame of the 640x360 clip, in CPU seconds."""
    if not b.quick:
        photo = str(b.inputs["one_big"])
        plain = b.bgrm + ["image", "--model", "u2netp", photo, "-o", str(b.out)]
        ours, ref = alternate(plain + ["--decontaminate"], plain, b.env, b.reps, b.clean)
        ratio = ours.t / ref.t
        b.table.add("--decontaminate, one 12 MP photo", f"{ours.t:.2f}s, {ours.mb:.0f} MB",
                    f"{ref.t:.2f}s, {ref.mb:.0f} MB (without)", f"{ratio:.2f}x time",
                    "< 2x and < 1.5 GB", ratio < 2 and ours.mb < 1536,
                    cpu=f"{ours.cpu / ref.cpu:.2f}x")
    frames = 30
    clip = b.work / "clip.mp4"
    if not clip.exists():
        make_clip(clip, frames)
    video = b.bgrm + ["video", "--model", "u2netp", str(clip), "-o", str(b.work / "vedges")]
    for what, extra in (("--decontaminate", ["--decontaminate"]),
                        ("--crop (two passes)", ["--crop", "--crop-margin", "10"])):
        ours, ref = alternate(video + extra, video, b.env, b.reps)
        extra_cpu = (ours.cpu - ref.cpu) / frames
        b.table.add(f"video {what}, 640x360", f"+{extra_cpu:.3f} cpu-s/frame",
                    f"{ref.cpu / frames:.3f} cpu-s/frame without", f"{ours.t / ref.t:.2f}x time",
                    "(stated in README)", None, cpu=f"{ours.cpu / ref.cpu:.2f}x")


ROWS.append(row_edges)



# The least a 1080p video can cost: its stages' CPU seconds, each run bare,
# spread over every core. Inference is measured in this process (process
# time counts onnxruntime's threads); decode and encode are ffmpeg alone, the
# encoder fed the very frames bgrm composed (read back from its output).
def _inference_cpu_per_frame(clip: Path, frames: int = 8) -> float:
    from bgrm.models import REGISTRY, ResolvedModel
    from bgrm.segment import Segmenter
    from bgrm.video.reader import VideoReader

    seg = Segmenter(ResolvedModel(REGISTRY["u2netp"], ROOT / "bgrm" / "assets" / "u2netp.onnx"),
                    "cpu", threads=1, spinning=False)  # as `bgrm video` runs it, a frame a core
    with VideoReader(clip, str(clip), limit=1) as reader:
        tensor = seg.prepare(Image.fromarray(next(iter(reader)).rgb))
    seg.predict(tensor)
    start = time.process_time()
    for _ in range(frames):
        seg.predict(tensor)
    return (time.process_time() - start) / frames


def _ffmpeg_cpu(args: list[str], env: dict) -> float:
    from bgrm.video.reader import ffmpeg

    return run([*ffmpeg("error"), "-y", *args], env)[2]


def row_video_1080p(b: Bench) -> None:
    """A 1080p pan to mov and to mp4_with_color against the CPU floor.

    bgrm's steady rate is (frames - 1) over the time a whole clip takes beyond a
    one-frame run of the same command, so start-up (imports, model, ffmpeg)
    cancels; the floor is (inference + decode + encode CPU-s per frame) / cores,
    all measured in the same alternation as bgrm's runs.
    """
    from bgrm.video.formats import FORMATS

    frames = 30
    clip = make_clip(b.work / "clip1080.mp4", frames, size=(1920, 1080))
    cores = os.cpu_count() or 1
    for name, pix in (("mov", "rgba"), ("mp4_with_color", "rgb24")):
        fmt = FORMATS[name]
        out = b.work / f"v1080-{name}"
        result = out / f"{clip.stem}_processed.{fmt.ext}"
        raw = b.work / "composed.raw"
        cmd = b.bgrm + ["video", "--model", "u2netp", "--video-format", name, str(clip),
                        "-o", str(out)]
        whole, one, floor, parts = Measure(), Measure(), [], []
        for _ in range(b.reps):
            one.add(*run(cmd + ["--frame-limit", "1"], b.env))
            whole.add(*run(cmd, b.env))
            _ffmpeg_cpu(["-i", str(result), "-f", "rawvideo", "-pix_fmt", pix, str(raw)], b.env)
            dec = _ffmpeg_cpu(["-i", str(clip), "-pix_fmt", "rgb24", "-f", "null", "-"],
                              b.env) / frames
            enc = _ffmpeg_cpu(["-f", "rawvideo", "-pix_fmt", pix, "-s", "1920x1080", "-r", "25",
                               "-i", str(raw), "-vf", fmt.filter, *fmt.video_args,
                               "-f", fmt.muxer, str(b.work / f"bare.{fmt.ext}")], b.env) / frames
            inf = _inference_cpu_per_frame(clip)
            parts.append((inf, dec, enc))
            floor.append((inf + dec + enc) / cores)
        steady = (whole.t - one.t) / (frames - 1)
        own = (whole.cpu - one.cpu) / (frames - 1)
        bound = statistics.median(floor)
        inf, dec, enc = (statistics.median(p[i] for p in parts) for i in range(3))
        b.table.add(f"video 1080p to {name}, steady s/frame", f"{steady:.3f} s/frame",
                    f"{bound:.3f} s/frame (floor: cpu-s {inf:.2f} model + {dec:.2f} decode + "
                    f"{enc:.2f} encode, / {cores} cores)", f"{bound / steady:.2f} of floor",
                    ">= 0.9", bound / steady >= 0.9,
                    # What wall time can reach on idle cores: the floor's CPU
                    # seconds over bgrm's (a loaded machine slows the wall ratio).
                    cpu=f"{(inf + dec + enc) / own:.2f} of floor ({own:.2f} cpu-s/frame)")
        b.table.add(f"  whole command, {frames} frames", f"{whole.t:.1f} s",
                    f"{bound * frames:.1f} s (floor x frames)",
                    f"{bound * frames / whole.t:.2f} of floor", "(incl. start-up)", None)


ROWS.append(row_video_1080p)


# The compositing that bgrm.compose replaced (numpy over whole-frame uint16
# temporaries), kept as the reference compose.py must equal byte for byte and beat.
def _over_numpy(fg, alpha, bg):
    a = alpha.astype(np.uint16)[..., None]
    back = np.asarray(bg, dtype=np.uint16)
    return ((fg.astype(np.uint16) * a + back * (255 - a) + 127) // 255).astype(np.uint8)


def _cutout_numpy(fg, alpha):
    rgba = np.empty(alpha.shape + (4,), dtype=np.uint8)
    np.multiply(fg, (alpha != 0)[..., None], out=rgba[..., :3], casting="unsafe")
    rgba[..., 3] = alpha
    return rgba


def row_compose_1080p(b: Bench) -> None:
    """Cutout and over on a 1080p frame and a 12 MP photo, against the
    numpy formulas they replaced, alternated in this process; outputs equal."""
    from bgrm import compose

    rng = np.random.default_rng(0)
    for label, (w, h) in (("1080p", (1920, 1080)), ("12 MP", (4000, 3000))):
        photo = np.asarray(Image.open(FIXTURES / "astronaut.png").convert("RGB").resize((w, h)))
        yy, xx = np.ogrid[:h, :w]
        # A disc with a 13-pixel soft edge: mostly 0 and 255, as real masks are.
        alpha = np.clip((h * 0.4 - np.hypot(yy - h / 2, xx - w / 2)) * 20, 0, 255).astype(np.uint8)
        back = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for what, ours, ref, args in (
                ("cutout", compose.cutout, _cutout_numpy, (photo, alpha)),
                ("over a colour", compose.over, _over_numpy, (photo, alpha, (0, 177, 64))),
                ("over a picture", compose.over, _over_numpy, (photo, alpha, back))):
            equal = np.array_equal(ours(*args), ref(*args))
            times: dict = {ours: [], ref: []}
            for _ in range(max(b.reps, 3) * 3):
                for f in (ours, ref):
                    start = time.perf_counter()
                    f(*args)
                    times[f].append(time.perf_counter() - start)
            t_ours, t_ref = (statistics.median(times[f]) for f in (ours, ref))
            b.table.add(f"compose {what}, {label}", f"{t_ours * 1e3:.1f} ms",
                        f"{t_ref * 1e3:.1f} ms (numpy uint16)",
                        f"{t_ref / t_ours:.1f}x faster" + ("" if equal else ", OUTPUT DIFFERS"),
                        "> 1x, same bytes", equal and t_ours < t_ref)


ROWS.append(row_compose_1080p)


def row_int8(b: Bench) -> None:
    """Int8 u2netp against fp32 (not shipped: no variant keeps the masks).

    The variants of bench/int8_study.py (which also judges a folder of other
    photos and prints per-layer sensitivity): masks by IoU (cut at half) and
    mean absolute difference at full size, worst over the 12 fixture photos;
    speed: fp32 and int8 sessions alternated in this process."""
    import int8_study as study

    photos = study.photos_from([FIXTURES / name for name in PHOTOS])
    ref = study.segmenter(study.FP32)
    refs = [np.asarray(ref.mask(p), dtype=np.int16) for _, p in photos]
    tensors = study.calibration_tensors()
    for name, path in study.variants(b.work, tensors):
        result = study.judge(path, photos, refs)
        worst_iou = min(i for i, _ in result)
        worst_mad = max(m for _, m in result)
        t32, t8 = study.speed(path, tensors[0], reps=max(b.reps, 3))
        b.table.add(f"int8 u2netp: {name}", f"{t8 * 1000:.0f} ms; IoU {worst_iou:.3f}, "
                    f"MAD {worst_mad:.1f}", f"{t32 * 1000:.0f} ms (fp32)",
                    f"{t32 / t8:.2f}x faster", ">= 1.5x; IoU >= 0.98, MAD <= 4",
                    t32 / t8 >= 1.5 and worst_iou >= 0.98 and worst_mad <= 4)


ROWS.append(row_int8)


def row_segments(b: Bench) -> None:
    """One video split into segments on a loopback Dask cluster of 2
    workers against the same command run locally (the same cores: this shows
    what the split costs or gains here, not what more machines give)."""
    try:
        from distributed import LocalCluster
    except ImportError:
        print("  (segments row skipped: Dask distributed is not installed)", file=sys.stderr)
        return
    frames = 60 if b.quick else 150
    clip = make_clip(b.work / "long.mp4", frames, size=(320, 180))
    video = b.bgrm + ["video", "--model", "u2netp", str(clip), "-o", str(b.work / "vseg"),
                      "--segment-seconds", "2"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        split = video + ["--scheduler", cluster.scheduler_address]
        run(split, b.env)  # the workers load their model once, as a warm cluster has it
        ours, ref = alternate(split, video, b.env, b.reps)
    # (No CPU ratio: the workers are not children of the measured command.)
    b.table.add(f"video in {-(-frames // 50)} segments of 2 s, 2 workers, 320x180",
                f"{frames / ours.t:.2f} fps", f"{frames / ref.t:.2f} fps (local)",
                f"{ref.t / ours.t:.2f}x", "(stated in README)", None)


ROWS.append(row_segments)


def row_serve_batch(b: Bench) -> None:
    """30 photos in one request to a running `bgrm serve` (its model loaded by an
    earlier request, as a server has it) against `bgrm image` on the same 30,
    alternated; the request's time runs to its last download."""
    import serve_load

    photos = serve_load.make_photos(b.work / "serve30", 30)
    server = serve_load.Server(b.env, b.work / "serve-data")
    try:
        serve_load.batch_seconds(server, photos[:1])  # loads the model
        ours, ref = [], Measure()
        for _ in range(b.reps):
            b.clean()
            ref.add(*run(b.bgrm + ["image", str(b.work / "serve30"), "-o", str(b.out)], b.env))
            ours.append(serve_load.batch_seconds(server, photos))
    finally:
        server.stop()
    t = statistics.median(ours)
    b.table.add("serve: 30 photos in one request", f"{30 / t:.2f} photos/s",
                f"{30 / ref.t:.2f} photos/s (bgrm image)", f"{ref.t / t:.2f}x throughput",
                ">= 0.9x", ref.t / t >= 0.9)


def row_serve_load(b: Bench) -> None:
    """10 clients x 5 photos per request, in a loop, for 500 photos (100 with
    --quick): memory, /v1/results/ latency while the cores are busy, nothing lost."""
    import serve_load

    total = 100 if b.quick else 500
    photos = serve_load.make_photos(b.work / "serve-load", 50, 160)
    server = serve_load.Server(b.env, b.work / "serve-load-data")
    try:
        got = serve_load.load(server, photos, total=total)
    finally:
        server.stop()
    growth = got["rss_end"] / got["rss50"]
    b.table.add(f"serve: 10 clients x 5 photos, {got['done']} photos",
                f"RSS x{growth:.3f}; p99 {got['p99_ms']:.0f} ms; {got['failed']} failed, "
                f"{got['lost']} lost", f"{got['rss50']:.0f} MB after 50, "
                f"{got['rss_end']:.0f} MB at end", f"{got['done'] / got['seconds']:.2f} photos/s",
                "RSS <= 1.2x; p99 <= 100 ms; 0 lost, 0 failed",
                growth <= 1.2 and got["p99_ms"] <= 100 and got["failed"] == got["lost"] == 0)
    print("  memory curve: " + "; ".join(serve_load.curve_lines(got["curve"])),
          file=sys.stderr)


def row_serve_models(b: Bench) -> None:
    """A client cycling through four operator models (30-75 MB of weights, the
    test stand-ins), twice: the server's peak RSS with --max-models 1 against
    every model kept loaded (--max-models 5, as before there was a bound)."""
    import requests
    import serve_load

    sys.path.insert(0, str(ROOT / "tests"))
    from standins import standin_onnx

    sizes = (30, 45, 60, 75)
    specs = []
    for i, mb in enumerate(sizes):
        path = standin_onnx(b.work / f"ballast{i}.onnx", "u2net", seed=i, weight_mb=mb)
        specs += ["--custom-model", f"m{i}=u2net:{path}"]
    photo = serve_load.make_photos(b.work / "serve-models", 1, 160)
    peaks = {}
    for bound in (1, 5):
        server = serve_load.Server(b.env, b.work / f"serve-models-{bound}", "--max-models",
                                   str(bound), *specs)
        try:
            peak = 0.0
            with requests.Session() as http:
                for _ in range(2):
                    for i in range(len(sizes)):
                        files = [("files", (photo[0].name, photo[0].read_bytes()))]
                        r = http.post(server.url + "/v1/convert/", files=files, timeout=600,
                                      data={"convert_to": serve_load.IMAGE, "model": f"m{i}"})
                        key = r.json()["uuid"]
                        while not http.post(server.url + "/v1/results/", data={"uuid": key},
                                            timeout=600).json()["finished"]:
                            time.sleep(0.05)
                        peak = max(peak, server.rss_mb())
            peaks[bound] = peak
        finally:
            server.stop()
    # Held one at a time, the other three models' weights (135 MB) are spared, less
    # what the allocator keeps of them (a tenth, measured).
    spare = 0.75 * (sum(sizes) - max(sizes))
    b.table.add(f"serve: 4 models of {sizes[0]}-{sizes[-1]} MB in turn, twice",
                f"{peaks[1]:.0f} MB peak (--max-models 1)", f"{peaks[5]:.0f} MB (all kept)",
                f"{peaks[5] - peaks[1]:.0f} MB spared", f">= {spare:.0f} MB",
                peaks[5] - peaks[1] >= spare)


ROWS += [row_serve_batch, row_serve_load, row_serve_models]


def row_serve_rembg(b: Bench) -> None:
    """`bgrm serve` against `rembg s`, both warm, the five small photos sent twice
    by 1 and 2 clients, with and without alpha matting (bench/serve_rembg.py);
    rounds alternate between the servers, with a second bgrm server on onnxruntime
    beside (the engine before OpenVINO). The masks are checked against rembg's."""
    import serve_rembg

    env, photos = serve_rembg.setup(b.work / "serve-rembg")
    rows = serve_rembg.compare(env, b.work / "serve-rembg", photos, b.reps,
                               engines=("auto", "onnxruntime"))
    for row in rows:
        ratio = row["bgrm_rate"] / row["rembg_rate"]
        same = row["iou"] >= 0.99 and row["mad"] <= (2 if row["matting"] else 1)
        b.table.add(f"serve vs rembg s, {serve_rembg.describe(row)}",
                    f"{row['bgrm_rate']:.2f} photos/s", f"{row['rembg_rate']:.2f} (rembg s)",
                    f"{ratio:.2f}x", ">= 1.5x, alpha IoU >= 0.99", ratio >= 1.5 and same,
                    cpu=f"{row['rembg_cpu'] / row['bgrm_cpu']:.2f}x ({row['bgrm_cpu']:.1f} vs "
                        f"{row['rembg_cpu']:.1f} s); IoU {row['iou']:.4f}, "
                        f"{row['mad']:.2f}/255")
        before = row["bgrm-onnxruntime_rate"]
        b.table.add("  the same, --engine onnxruntime", f"{before:.2f} photos/s",
                    f"{row['rembg_rate']:.2f} (rembg s)", f"{before / row['rembg_rate']:.2f}x",
                    "(before)", None,
                    cpu=f"{row['rembg_cpu'] / row['bgrm-onnxruntime_cpu']:.2f}x")


def row_flops(b: Bench) -> None:
    """u2netp's inference on one thread against the core's peak float32 rate, for
    each engine installed (bench/flops.py says how both are counted)."""
    import flops

    peak, how = flops.core_peak()
    work = flops.u2netp_flops()
    for name, seconds in flops.engine_seconds(reps=max(b.reps, 3)).items():
        rate = work / seconds / 1e9
        b.table.add(f"u2netp inference, 1 thread, {name}", f"{seconds * 1e3:.0f} ms",
                    f"peak {peak:.0f} GFlop/s ({how})", f"{rate:.0f} GFlop/s = "
                    f"{rate / peak:.2f} of peak", f"{work / 1e9:.1f} GFlop a run", None)


ROWS += [row_serve_rembg, row_flops]


def row_truth(b: Bench) -> None:
    """Video mattes against the true alpha (bench/truth_clips.py, docs/temporal.md):
    each shot's dtSSD and MAD with smoothing as ratios to per-frame masks (new,
    and the old motion-gated smoothing beside it), the moving subject's worst
    frame, and the whole command's time per frame, new against old, alternated."""
    import truth_clips as tc

    frames = 12 if b.quick else 24
    for w, h in ((640, 360), (1280, 720)):
        m = tc.measure((w, h), frames, b.work / f"truth{h}", b.reps, b.env)
        for shot in tc.SHOTS:
            raw, old, new = (m.scores[k][shot] for k in tc.MODES)
            dt, mad = new.dtssd / raw.dtssd, new.mad / raw.mad
            # Never worse than per-frame masks on any shot; still and pan keep their gains.
            most = {"still": 0.4, "pan": 0.6}.get(shot, 1.0)
            b.table.add(f"{h}p {shot}: dtSSD, MAD vs per-frame", f"{dt:.2f}x, {mad:.3f}x",
                        f"old {old.dtssd / raw.dtssd:.2f}x, {old.mad / raw.mad:.3f}x", "-",
                        f"<= {most}x, <= 1.03x", dt <= most and mad <= 1.03)
        allowed = max(1, frames * 2 // 48)  # 2 frames in 48
        worse = {k: int((m.scores[k]["subject"].frame_mad > 1.1 * m.scores["per-frame"][
            "subject"].frame_mad).sum()) for k in ("old", "new")}
        b.table.add(f"{h}p subject: frames with MAD > 1.1x per-frame", f"{worse['new']}",
                    f"old {worse['old']}", "-", f"<= {allowed} of {frames}",
                    worse["new"] <= allowed)
        old, new = (statistics.median(m.seconds[k]) / m.frames for k in ("old", "new"))
        b.table.add(f"{h}p smoothing cost, whole command", f"{new * 1e3:.0f} ms/frame",
                    f"{old * 1e3:.0f} ms/frame (old smoothing)", f"{new / old:.3f}x",
                    "<= 1.10x", new / old <= 1.10,
                    cpu=f"filter alone {m.filter_ms['new']:.1f} vs {m.filter_ms['old']:.1f} ms")


ROWS.append(row_truth)


if __name__ == "__main__":
    main()
