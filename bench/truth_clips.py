"""Video clips whose alpha is known on every frame, and bgrm's mattes scored against it.

    .venv/bin/python bench/truth_clips.py [--size 640x360] [--frames 24]   # the table

As the video-matting literature builds its test sets (composites of a
foreground with a known alpha over other footage), a foreground cut out of a
fixture photo moves over a background photo; the alpha it is composited with
is, by definition, the truth. Each shot is a kind of camera or subject motion:

- still: nothing moves but the sensor noise;
- pan: the camera pans across the background, the subject stays in frame;
- zoom: the camera zooms in on the whole scene;
- handheld: the whole scene shakes (translation and rotation, every frame);
- subject: the subject walks across a still background, turning a little.

Every frame gets its own sensor noise and the clip is encoded as a camera
would (H.264, yuv420p), so the masks jitter as on real footage. bgrm runs
with PNG-sequence output and its alpha is read back. Measures, per clip, in
the units of the matting literature (alpha in 0..1): MAD x 1e3, MSE x 1e3,
and dtSSD x 1e2 (Erofeev et al. 2015: the root mean square difference
between the predicted and the true alpha's change from one frame to the
next, averaged over frames), the standard temporal-coherence measure.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
# Camera and subject motions; "handheld" and "shaky" are the two strengths of shake.
SHOTS = ("still", "pan", "zoom", "handheld", "shaky", "subject", "walk")
MOVING = SHOTS[1:]
# Cut-outs (fixture photo, its subject's height in the frame, where it stands: 1 on
# the bottom edge) and backgrounds (a fixture photo with its own subject painted out).
SUBJECTS = {"astronaut": ("astronaut.png", 0.68, 1.04), "cat": ("chelsea.png", 0.62, 1.03),
            "cup": ("coffee.png", 0.5, 0.85)}
PLATES = {"pad": "rocket.jpg", "table": "coffee.png", "studio": "astronaut.png"}
# The first scene is the one the smoothing was designed on; the others are
# there so that it cannot be tuned to one picture (fur, thin parts, other colours).
SCENES = (("astronaut", "pad"), ("cat", "table"), ("cup", "studio"))
# Mirrored backgrounds for some shots, so that shots of one scene differ.
MIRROR = {"still": True, "pan": False, "zoom": True, "handheld": False, "shaky": True,
          "subject": True, "walk": False}
ROCKET = (np.s_[110:427, 285:350], np.s_[380:427, 240:400])  # rocket.jpg's rocket and pad
SHUTTLE = (np.s_[0:300, 320:460],)  # astronaut.png's model shuttle
NOISE = 3.0  # sensor noise, grey levels (sd) before encoding
CRF = 20  # a phone's H.264 is about this good


@functools.lru_cache(maxsize=4)
def _model_mask(name: str) -> np.ndarray:
    """u2netp's mask of a fixture photo, float 0..1 at the photo's size."""
    from bgrm.models import resolve
    from bgrm.segment import Segmenter

    photo = Image.open(FIXTURES / name).convert("RGB")
    return np.asarray(Segmenter(resolve("u2netp"), threads=1).mask(photo), np.float32) / 255


@functools.lru_cache(maxsize=4)
def foreground(subject: str = "astronaut") -> tuple[np.ndarray, np.ndarray]:
    """A subject cut out of its photo (RGB uint8, alpha float 0..1), cropped to it.

    The alpha is u2netp's mask of the photo, its faint floor taken away; it is
    the truth of every clip by construction, whatever its own errors."""
    photo = np.asarray(Image.open(FIXTURES / SUBJECTS[subject][0]).convert("RGB"))
    alpha = np.clip((_model_mask(SUBJECTS[subject][0]) - 0.06) / 0.88, 0, 1)
    rows, cols = np.flatnonzero(alpha.max(1) > 0.02), np.flatnonzero(alpha.max(0) > 0.02)
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return photo[box], alpha[box]


@functools.lru_cache(maxsize=4)
def plate(name: str = "pad") -> Image.Image:
    """A background photo without a rival subject (the model would cut it out on some
    frames and not on others, and that error would drown the subject's): the launch
    pad without its rocket, the studio without the astronaut and the model shuttle
    (painted out), the table's bare wood right of the saucer (a narrow strip), mirrored to a width."""
    import cv2

    photo = np.asarray(Image.open(FIXTURES / PLATES[name]).convert("RGB"))
    if name == "table":
        wood = photo[:, 490:]
        return Image.fromarray(np.concatenate([wood, wood[:, ::-1], wood], 1))
    hole = np.zeros(photo.shape[:2], np.uint8)
    for box in ROCKET if name == "pad" else SHUTTLE:
        hole[box] = 255
    if name == "studio":
        found = (_model_mask(PLATES[name]) > 0.1).astype(np.uint8) * 255
        hole |= cv2.dilate(found, np.ones((25, 25), np.uint8))
    return Image.fromarray(cv2.inpaint(photo, hole, 5, cv2.INPAINT_TELEA))


def _affine(scale=1.0, angle=0.0, centre=(0.0, 0.0), shift=(0.0, 0.0)) -> np.ndarray:
    """3x3: scale and rotate (degrees) about ``centre``, then shift."""
    a = np.deg2rad(angle)
    c, s = scale * np.cos(a), scale * np.sin(a)
    cx, cy = centre
    return np.array([[c, -s, cx - c * cx + s * cy + shift[0]],
                     [s, c, cy - s * cx - c * cy + shift[1]], [0, 0, 1]])


def _shake(w: int, h: int, rng, strength: float, drift: np.ndarray) -> np.ndarray:
    """A handheld camera: a random walk (``drift``, updated) plus jitter every frame."""
    drift += rng.normal(0, 0.004 * w * strength, 3) * (1, 1, 0)
    dx, dy = rng.normal(0, 0.008 * w * strength, 2) + drift[:2]
    return _affine(angle=rng.normal(0, 0.6 * strength), centre=(w / 2, h / 2), shift=(dx, dy))


def _motion(shot: str, i: int, size: tuple[int, int], rng, frames: int = 24,
            drift: np.ndarray | None = None, width: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(camera, subject) at frame ``i`` of ``frames``: 3x3 maps of the scene into the
    frame, and of the subject within the scene. Speeds are per frame, in frame widths;
    ``width``: the subject's, as a share of the frame's (for "walk")."""
    w, h = size
    camera = subject = np.eye(3)
    if shot == "pan":
        camera = _affine(shift=(-0.012 * w * i, -0.002 * h * i))
    elif shot == "zoom":
        camera = _affine(scale=1 + 0.012 * i, centre=(w * 0.55, h * 0.5))
    elif shot == "handheld":
        dx, dy = rng.normal(0, 0.008 * w, 2)
        camera = _affine(angle=rng.normal(0, 0.6), centre=(w / 2, h / 2), shift=(dx, dy))
    elif shot == "shaky":
        camera = _shake(w, h, rng, 2.0, np.zeros(3) if drift is None else drift)
    elif shot == "subject":
        subject = _affine(scale=1 + 0.004 * i, angle=4 * np.sin(i / 4), centre=(w * 0.3, h),
                          shift=(0.012 * w * i, 0.01 * h * np.sin(i / 3)))
    elif shot == "walk":
        # In from beyond the left edge, out beyond the right: placed at 0.18 w, the
        # subject starts with a tenth of it in the frame and ends with a tenth.
        start, end = -0.18 * w - 0.9 * width * w, 0.82 * w - 0.1 * width * w
        x = start + (end - start) * i / max(1, frames - 1)
        subject = _affine(angle=3 * np.sin(i / 3), centre=(w * 0.3, h),
                          shift=(x, 0.015 * h * abs(np.sin(i / 2))))
    return camera, subject


@dataclass
class Clip:
    shot: str
    path: Path
    truth: np.ndarray  # N x H x W uint8, the alpha every frame was composited with
    scene: tuple[str, str] = SCENES[0]  # (subject, background)

    @property
    def name(self) -> str:
        return f"{self.scene[0]}-{self.scene[1]}-{self.shot}"


def _background(shot: str, size: tuple[int, int], name: str) -> np.ndarray:
    """The background photo, float RGB, covering the frame with room to pan and shake."""
    w, h = size
    bg = plate(name)
    if MIRROR[shot]:
        bg = bg.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    kb = max(1.45 * w / bg.width, 1.25 * h / bg.height)
    return np.asarray(bg.resize((round(bg.width * kb), round(bg.height * kb)),
                                Image.Resampling.LANCZOS), np.float32)


def render(shot: str, size: tuple[int, int], frames: int, seed: int = 0,
           scene: tuple[str, str] = SCENES[0]):
    """The shot's frames (RGB uint8) and their true alpha (uint8), before encoding."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    fg, alpha = foreground(scene[0])
    # The subject standing on (or above) the bottom edge (the astronaut's photo ends
    # at her waist), left of centre so that it can walk to the right.
    _, tall, foot = SUBJECTS[scene[0]]
    k = tall * h / fg.shape[0]
    place = _affine(scale=k, shift=(0.18 * w, foot * h - k * fg.shape[0]))
    bg = _background(shot, size, scene[1])
    bg_place = _affine(shift=(-0.1 * w, -0.12 * h))
    fg = fg.astype(np.float32)
    out, truth, drift = [], [], np.zeros(3)
    for i in range(frames):
        camera, subject = _motion(shot, i, size, rng, frames, drift, k * fg.shape[1] / w)
        # A pan follows the subject: only the background moves in the frame.
        m_fg = ((subject if shot == "pan" else camera @ subject) @ place)[:2]
        a = cv2.warpAffine(alpha, m_fg, size, flags=cv2.INTER_AREA if k < 0.7
                           else cv2.INTER_LINEAR)
        a = np.round(a * 255).astype(np.uint8)  # the truth is what 8 bits hold
        colour = cv2.warpAffine(fg, m_fg, size, flags=cv2.INTER_LINEAR)
        back = cv2.warpAffine(bg, (camera @ bg_place)[:2], size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)
        af = a[..., None].astype(np.float32) / 255
        frame = colour * af + back * (1 - af) + rng.normal(0, NOISE, back.shape)
        out.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
        truth.append(a)
    return out, np.stack(truth)


def encode(dst: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """H.264 yuv420p, as a camera writes it, with the bundled ffmpeg."""
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    proc = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin",
                           "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                           "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-c:v", "libx264",
                           "-crf", str(CRF), "-preset", "fast", "-pix_fmt", "yuv420p",
                           str(dst)],
                          input=b"".join(f.tobytes() for f in frames), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace"))
    return dst


def make_clips(folder: Path, size: tuple[int, int], frames: int, shots=SHOTS,
               scenes=SCENES[:1], keep: bool = False) -> list[Clip]:
    """Each scene's shots, encoded in ``folder``; a clip's file is named after its shot
    in the first scene, after its scene and shot ("cat-table-pan") in the others.
    ``keep``: a clip already in ``folder`` is not encoded again (nor its masks made)."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for scene in scenes:
        for shot in shots:
            # Each shot its own noise and shake, the same whichever shots are made.
            seed = SHOTS.index(shot) + 10 * SCENES.index(scene)
            pictures, truth = render(shot, size, frames, seed, scene)
            clip = Clip(shot, folder, truth, scene)
            name = shot if scene == SCENES[0] else clip.name
            clip.path = folder / f"{name}.mp4"
            if not (keep and clip.path.exists()):
                encode(clip.path, pictures)
            clips.append(clip)
    return clips


def read_alpha(folder: Path) -> np.ndarray:
    """A PNG sequence's alpha, N x H x W uint8."""
    return np.stack([np.asarray(Image.open(p))[..., 3] for p in sorted(folder.glob("*.png"))])


@dataclass
class Score:
    mad: float  # x 1e3
    mse: float  # x 1e3
    dtssd: float  # x 1e2
    frame_mad: np.ndarray  # each frame's MAD, x 1e3
    # Trailing: each frame's mean alpha (%) where the subject was a frame before
    # and is no more (NaN where that is under 50 pixels), and its mean.
    frame_trail: np.ndarray
    trail: float


def score(pred: np.ndarray, truth: np.ndarray) -> Score:
    """MAD, MSE, dtSSD and trail of an N x H x W alpha (uint8) against the truth."""
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ")
    frame_mad, frame_mse, dt, trail = [], [], [], []
    before = None
    for i, (p, t) in enumerate(zip(pred, truth, strict=True)):
        err = (p.astype(np.float32) - t.astype(np.float32)) / 255
        frame_mad.append(np.abs(err).mean())
        frame_mse.append(np.square(err).mean())
        if before is not None:
            # (p_t - p_t-1) - (t_t - t_t-1) is the change of the error.
            dt.append(np.sqrt(np.square(err - before).mean()))
            left = (truth[i - 1] >= 128) & (t < 128)
            trail.append(p[left].mean() / 2.55 if left.sum() >= 50 else np.nan)
        before = err
    trail = np.array(trail)
    return Score(1e3 * float(np.mean(frame_mad)), 1e3 * float(np.mean(frame_mse)),
                 1e2 * float(np.mean(dt)), 1e3 * np.array(frame_mad), trail,
                 float(np.nanmean(trail)) if np.isfinite(trail).any() else float("nan"))


# --- bgrm's runs: per-frame masks, the smoothing before this benchmark, today's --------

MODES = ("per-frame", "old", "new")

# The old smoothing runs in the real CLI with only its filter swapped in.
_OLD = ("import sys; sys.path.insert(0, {bench!r}); import truth_clips; "
        "truth_clips.use_old_filter(); from bgrm.cli import main; "
        "sys.argv = ['bgrm', *sys.argv[1:]]; main()")


def command(mode: str, clips: list[Path], out: Path) -> list[str]:
    """The command line that runs bgrm on ``clips`` in ``mode`` (PNG sequences in ``out``)."""
    args = ["video", "--model", "u2netp", "--video-format", "png_sequence", "-o", str(out),
            *map(str, clips)]
    if mode == "per-frame":
        args += ["--temporal-smoothing", "0"]
    if mode == "old":
        return [sys.executable, "-c", _OLD.format(bench=str(Path(__file__).parent)), *args]
    return [sys.executable, "-m", "bgrm", *args]


def run_mode(mode: str, clips: list[Clip], out: Path, env=None) -> dict[str, Score]:
    proc = subprocess.run(command(mode, [c.path for c in clips], out), env=env,
                          capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-3000:])
    return {c.path.stem: score(read_alpha(out / f"{c.path.stem}_processed"), c.truth)
            for c in clips}


def clip_masks(clip: Clip, segmenter=None) -> tuple[np.ndarray, np.ndarray]:
    """The clip's per-frame model masks (N x 320 x 320 uint8) and flow thumbnails
    (N x h x w x 3), as the video pipeline makes them from the decoded frames;
    cached beside the clip, as the model is the slow part (filters are replayed
    on them in a few ms a frame)."""
    from bgrm.models import resolve
    from bgrm.segment import get_segmenter
    from bgrm.video.pipeline import MaskFilter
    from bgrm.video.reader import VideoReader

    cache = clip.path.with_suffix(".masks.npz")
    if cache.exists():
        with np.load(cache) as saved:
            return saved["masks"], saved["thumbs"]
    segmenter = segmenter or get_segmenter(resolve("u2netp"), "cpu", spinning=False)
    masks, thumbs = [], []
    reader = VideoReader(clip.path, clip.path.name)
    try:
        for frame in reader:
            picture = Image.fromarray(frame.rgb)
            masks.append(segmenter.predict(segmenter.prepare(picture)))
            thumbs.append(MaskFilter.thumbnail(picture))
    finally:
        reader.close()
    masks, thumbs = np.stack(masks), np.stack(thumbs)
    np.savez(cache, masks=masks, thumbs=thumbs)
    return masks, thumbs


def replay(clip: Clip, make_filter, masks=None) -> tuple[Score, Score]:
    """(per-frame masks' score, the filter's) on the clip's cached masks; ``make_filter``:
    a MaskFilter-like class or factory, called with no argument."""
    from bgrm.segment import upscale
    from bgrm.video.reader import Frame

    masks, thumbs = clip_masks(clip) if masks is None else masks
    size = clip.truth.shape[2], clip.truth.shape[1]
    smoothing, raw, smooth = make_filter(), [], []
    for i, (mask, thumb) in enumerate(zip(masks, thumbs, strict=True)):
        raw.append(upscale(mask, size))
        smooth.append(upscale(smoothing(mask, Frame(i, i / 25, None), thumb), size))
    return score(np.stack(raw), clip.truth), score(np.stack(smooth), clip.truth)


def score_in_process(clips: list[Clip], strength: float = 0.8) -> dict[str, dict[str, Score]]:
    """Per-frame masks and the smoothing (``strength``) scored as ``run_mode`` does, with
    the model run once per frame for both: the video pipeline's own steps (the frame's
    model input and thumbnail, u2netp, MaskFilter, rembg's upscale) in this process.
    The command's alphas (up to onnxruntime's rounding on another thread count: the
    command infers a video's frames on one thread each); half the inference."""
    from bgrm.video.pipeline import MaskFilter

    out: dict[str, dict[str, Score]] = {"per-frame": {}, "new": {}}
    for clip in clips:
        scores = replay(clip, lambda: MaskFilter(strength))
        for mode, got in zip(out, scores, strict=True):
            out[mode][clip.path.stem] = got
    return out


class OldMaskFilter:
    """The smoothing bgrm had before this benchmark, verbatim, as the reference.

    A running average whose memory falls to 0 where the picture moves (the
    largest channel change of 48x48 thumbnails), reset at a scene cut.
    """

    THUMB, MOTION, CUT = 48, 0.1, 0.1

    def __init__(self, strength: float):
        self.strength = strength
        self._state = self._thumb = None
        self.cuts: list[int] = []

    @classmethod
    def thumbnail(cls, picture: Image.Image) -> np.ndarray:
        return np.asarray(picture.resize((cls.THUMB, cls.THUMB), Image.Resampling.BOX),
                          dtype=np.float32) / 255.0

    def __call__(self, mask, frame, thumb=None):
        if self.strength <= 0:
            return mask
        if thumb is None:
            thumb = self.thumbnail(Image.fromarray(frame.rgb))
        new = mask.astype(np.float32) / 255.0
        prev, self._thumb = self._thumb, thumb
        if prev is None or self._state is None or self._state.shape != new.shape:
            self._state = new
            return mask
        k = self.THUMB // 16
        coarse = (thumb - prev).reshape(16, k, 16, k, 3).mean(axis=(1, 3))
        if np.abs(coarse).mean() > self.CUT:
            self.cuts.append(frame.index)
            self._state = new
            return mask
        motion = Image.fromarray(np.abs(thumb - prev).max(axis=2), mode="F").resize(
            (new.shape[1], new.shape[0]), Image.Resampling.BILINEAR)
        keep = self.strength * (1.0 - np.clip(np.asarray(motion) / self.MOTION, 0.0, 1.0))
        self._state = new + keep * (self._state - new)
        return (self._state * 255.0 + 0.5).astype(np.uint8)


def use_old_filter() -> None:
    from bgrm.video import pipeline

    pipeline.MaskFilter = OldMaskFilter


@dataclass
class Measured:
    size: tuple[int, int]
    frames: int  # in all clips together
    scores: dict  # mode -> shot -> Score
    seconds: dict  # mode -> wall seconds of each run of the whole command
    filter_ms: dict  # "old"/"new" -> ms per frame of thumbnail + filter, in this process


def measure(size: tuple[int, int], frames: int, work: Path, reps: int = 1,
            env=None) -> Measured:
    """Every shot at ``size``; per-frame masks once, then the old and the new
    smoothing alternated ``reps`` times (so both see the same load) and timed."""
    import time

    clips = make_clips(work / "clips", size, frames)
    scores = {"per-frame": run_mode("per-frame", clips, work / "per-frame", env)}
    seconds: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(reps):
        for mode in seconds:
            start = time.perf_counter()
            scores[mode] = run_mode(mode, clips, work / mode, env)
            seconds[mode].append(time.perf_counter() - start)
    return Measured(size, frames * len(clips), scores, seconds, filter_cost(clips[3].path))


def filter_cost(clip: Path, reps: int = 3) -> dict[str, float]:
    """ms per frame of each smoothing's own work (thumbnail and filter), old and
    new alternated on the same decoded frames and masks."""
    import statistics
    import time

    from bgrm.video.pipeline import MaskFilter
    from bgrm.video.reader import VideoReader

    reader = VideoReader(clip, clip.name)
    frames = list(reader)
    reader.close()
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 256, (320, 320), dtype=np.uint8) for _ in frames]
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(reps):
        for name, cls in (("old", OldMaskFilter), ("new", MaskFilter)):
            f = cls(0.8)
            start = time.perf_counter()
            for frame, mask in zip(frames, masks, strict=True):
                f(mask, frame, f.thumbnail(Image.fromarray(frame.rgb)))
            times[name].append((time.perf_counter() - start) / len(frames) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def markdown(results: list[Measured]) -> str:
    """The docs' table: each shot's measures per mode (per-frame / old / new), at each size."""
    lines = ["| size | shot | MAD | MSE | dtSSD | trail % (worst frame) |",
             "|---|---|---|---|---|---|"]
    for m in results:
        for shot in SHOTS:
            s = {mode: m.scores[mode][shot] for mode in MODES}
            trail = " / ".join("-" if np.isnan(s[k].trail) else
                               f"{s[k].trail:.1f} ({np.nanmax(s[k].frame_trail):.0f})"
                               for k in MODES)
            lines.append(f"| {m.size[1]}p | {shot} | "
                         + " | ".join(" / ".join(f"{getattr(s[k], a):.{d}f}" for k in MODES)
                                      for a, d in (("mad", 2), ("mse", 2), ("dtssd", 2)))
                         + f" | {trail} |")
    return "\n".join(lines)


def ratios(results: list[Measured]) -> str:
    """Old and new against per-frame masks: dtSSD, MAD, worst frame's MAD, trail."""
    lines = ["| size | shot | dtSSD old / new | MAD old / new | worst frame MAD old / new "
             "| trail old / new (points) |", "|---|---|---|---|---|---|"]
    for m in results:
        for shot in SHOTS:
            raw, *smooth = (m.scores[mode][shot] for mode in MODES)
            cells = [" / ".join(f"{x:.2f}x" for x in pair) for pair in (
                [s.dtssd / raw.dtssd for s in smooth], [s.mad / raw.mad for s in smooth],
                [(s.frame_mad / raw.frame_mad).max() for s in smooth])]
            trail = "-" if np.isnan(raw.trail) else " / ".join(
                f"{s.trail - raw.trail:+.1f}" for s in smooth)
            lines.append(f"| {m.size[1]}p | {shot} | " + " | ".join(cells) + f" | {trail} |")
    return "\n".join(lines)


def cost_lines(results: list[Measured]) -> str:
    import statistics

    out = []
    for m in results:
        old, new = (statistics.median(m.seconds[k]) / m.frames for k in ("old", "new"))
        f = m.filter_ms
        out.append(f"- {m.size[1]}p: whole command {new * 1e3:.0f} ms/frame (new) vs "
                   f"{old * 1e3:.0f} ms/frame (old), {new / old:.3f}x; the smoothing's own "
                   f"work {f['new']:.1f} vs {f['old']:.1f} ms/frame")
    return "\n".join(out)


def picture(m: Measured, work: Path, dst: Path, shot: str = "subject", index: int = -4) -> None:
    """One frame of ``shot`` and each mode's alpha error on it (per-frame, old,
    new): red where the alpha is too high (background kept), blue where it is
    too low (subject lost), white where right."""
    frames, alphas = render(shot, m.size, m.frames // len(SHOTS))
    want = alphas[index].astype(np.int16)
    tiles = [frames[index]]
    for mode in MODES:
        err = read_alpha(work / mode / f"{shot}_processed")[index].astype(np.int16) - want
        over = np.clip(err, 0, 255).astype(np.uint8)
        under = np.clip(-err, 0, 255).astype(np.uint8)
        tile = np.full(frames[index].shape, 255, np.uint8)
        tile[..., 0] -= under
        tile[..., 1] -= np.maximum(over, under)
        tile[..., 2] -= over
        tiles.append(tile)
    grid = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    Image.fromarray(grid).save(dst, optimize=True)


def filter_at(rev: str):
    """MaskFilter as it was at git revision ``rev`` of this checkout, to compare with."""
    import importlib.util
    import tempfile

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:bgrm/video/pipeline.py"],
                            capture_output=True, check=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bgrm-ref-")) / "reference_pipeline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reference_pipeline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module.MaskFilter


def wide(size: tuple[int, int], frames: int, work: Path, reference: str | None = None) -> str:
    """Every scene's every shot at ``size``: the smoothing (MaskFilter(0.8), and the one
    at git revision ``reference`` after it) replayed on per-frame masks cached in
    ``work``, as a table of ratios to per-frame masks: dtSSD, MAD, the frames whose
    MAD is over 1.1x their own mask's, the worst frame's."""
    from bgrm.video.pipeline import MaskFilter

    filters = [MaskFilter] + ([filter_at(reference)] if reference else [])
    folder = work / f"{size[0]}x{size[1]}-{frames}"
    lines = [f"| {size[1]}p, {frames} frames | dtSSD | MAD | frames > 1.1x | worst frame |",
             "|---|---|---|---|---|"]
    clips = make_clips(folder, size, frames, SHOTS, SCENES, keep=True)
    for clip in clips:
        cells = []
        for make in filters:
            raw, smooth = replay(clip, lambda make=make: make(0.8))
            worse = smooth.frame_mad / raw.frame_mad
            cells.append((f"{smooth.dtssd / raw.dtssd:.2f}x", f"{smooth.mad / raw.mad:.3f}x",
                          f"{int((worse > 1.1).sum())}", f"{worse.max():.2f}x"))
        columns = zip(*cells, strict=True)
        lines.append(f"| {clip.name} | " + " | ".join(" / ".join(c) for c in columns) + " |")
    if reference:
        ms = replay_cost(clips[:len(SHOTS)], filters)
        lines.append(f"\nThe smoothing's own work on the first scene's masks: {ms[0]:.2f} ms/frame, "
                     f"{reference}'s {ms[1]:.2f} ms/frame ({ms[0] / ms[1]:.3f}x)")
    return "\n".join(lines)


def replay_cost(clips: list[Clip], filters: list, reps: int = 5) -> list[float]:
    """Each filter's median ms per frame on the clips' cached masks and thumbnails,
    the filters alternated ``reps`` times so that they see the same load."""
    import statistics
    import time

    from bgrm.video.reader import Frame

    cached = [clip_masks(clip) for clip in clips]
    frames = sum(len(masks) for masks, _ in cached)
    times: list[list[float]] = [[] for _ in filters]
    for _ in range(reps):
        for make, spent in zip(filters, times, strict=True):
            start = time.perf_counter()
            for masks, thumbs in cached:
                smoothing = make(0.8)
                for i, (mask, thumb) in enumerate(zip(masks, thumbs, strict=True)):
                    smoothing(mask, Frame(i, i / 25, None), thumb)
            spent.append((time.perf_counter() - start) / frames * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="640x360,1280x720")
    parser.add_argument("--frames", type=int, default=24, help="per clip")
    parser.add_argument("--reps", type=int, default=1, help="timed runs of old and new")
    parser.add_argument("--picture", type=Path, help="write the error-map picture here (PNG)")
    parser.add_argument("--wide", type=Path, metavar="FOLDER",
                        help="instead: every scene and shot, the smoothing replayed on "
                             "per-frame masks cached in FOLDER (made on the first run)")
    parser.add_argument("--reference", metavar="REV",
                        help="with --wide: the smoothing at this git revision beside it")
    args = parser.parse_args()
    if args.wide:
        for text in args.sizes.split(","):
            size = tuple(int(x) for x in text.split("x"))
            print(wide(size, args.frames, args.wide, args.reference), flush=True)
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="bgrm-truth-") as work:
        for n, text in enumerate(args.sizes.split(",")):
            size = tuple(int(x) for x in text.split("x"))
            folder = Path(work) / text
            results.append(measure(size, args.frames, folder, args.reps))
            print(markdown(results[-1:]), file=sys.stderr, flush=True)
            if args.picture and n == 0:
                picture(results[-1], folder, args.picture)
    print(markdown(results))
    print()
    print(ratios(results))
    print()
    print(cost_lines(results))


if __name__ == "__main__":
    main()
