"""Short test clips made from the real photos with the bundled ffmpeg, and a probe
that decodes any output again (frames, size, alpha, timestamps, audio)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
_SHOWINFO = re.compile(r"\bn:\s*\d+\s+pts:\s*\S+\s+pts_time:(\S+).*?\bs:(\d+)x(\d+)")


def ffmpeg(*args) -> None:
    proc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                           *map(str, args)], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def make_clip(dst: Path, photo: Path, *, size=(160, 96), frames=12, fps=12, audio=False,
              codec=("-c:v", "libx264", "-pix_fmt", "yuv420p"), audio_codec=("-c:a", "aac"),
              vf_extra="", crop="crop=iw:ih*0.62:0:0") -> Path:
    """A slow zoom into ``photo``: ``frames`` frames of ``size`` at ``fps``.

    The default ``crop`` frames the astronaut's head and shoulders, so the
    subject is clear to the small model. With ``audio`` a 440 Hz tone.
    """
    w, h = size
    zoom = (f"{crop + ',' if crop else ''}scale={w * 2}:{h * 2}:force_original_aspect_ratio=increase,crop={w * 2}:{h * 2},"
            f"zoompan=z='1+0.02*on':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d=1:"
            f"s={w}x{h}:fps={fps}{vf_extra}")
    args = ["-loop", "1", "-framerate", fps, "-i", photo]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={frames / fps}"]
    args += ["-vf", zoom, "-frames:v", frames, *codec]
    if audio:
        args += ["-map", "0:v", "-map", "1:a", *audio_codec]
    ffmpeg(*args, dst)
    return dst


def make_vfr_clip(dst: Path, photo: Path) -> Path:
    """12 frames at 12 fps, except a half-second hold after the sixth: 1.5 s, not 1 s."""
    return make_clip(dst, photo, vf_extra=",setpts='(N+6*gte(N\\,6))/12/TB'",
                     codec=("-c:v", "libx264", "-pix_fmt", "yuv420p", "-fps_mode", "vfr"))


def rotate(src: Path, dst: Path, degrees: int) -> Path:
    """The same stream with display-rotation metadata, as phones write it."""
    ffmpeg("-display_rotation:v:0", degrees, "-i", src, "-c", "copy", dst)
    return dst


@dataclass
class Probed:
    frames: np.ndarray  # N x H x W x 4 uint8, RGBA as ffmpeg decodes it
    pts: list[float]
    audio_seconds: float | None  # None: no audio stream
    header: str

    @property
    def count(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        return self.frames.shape[2], self.frames.shape[1]

    @property
    def duration(self) -> float:
        m = re.search(r"Duration: (\d+):(\d+):(\d+\.\d+)", self.header)
        h, mi, s = m.groups()
        return int(h) * 3600 + int(mi) * 60 + float(s)


def probe(path: Path, autorotate: bool = True, decoder: str | None = None) -> Probed:
    """Decode ``path`` again with ffmpeg: every frame with its timestamp, and the audio.

    ``autorotate=False`` shows the pixels as stored, ignoring rotation metadata.
    ``decoder`` picks the video decoder: ffmpeg's own VP9 decoder drops the
    alpha of a WebM, libvpx-vp9 honours it (as browsers do).
    """
    turn = [] if autorotate else ["-noautorotate"]
    turn += ["-c:v", decoder] if decoder else []
    proc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *turn, "-i", str(path),
                           "-map", "0:v:0",
                           "-fps_mode", "passthrough", "-vf", "showinfo=checksum=0",
                           "-pix_fmt", "rgba", "-f", "rawvideo", "-"], capture_output=True)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err
    infos = _SHOWINFO.findall(err)
    w, h = int(infos[0][1]), int(infos[0][2])
    frames = np.frombuffer(proc.stdout, np.uint8).reshape(-1, h, w, 4)
    assert len(frames) == len(infos)
    audio = None
    if re.search(r"Stream #0:\d.*: Audio:", err):
        pcm = subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-i", str(path),
                              "-map", "0:a:0", "-ac", "1", "-ar", "8000", "-f", "s16le", "-"],
                             capture_output=True)
        assert pcm.returncode == 0, pcm.stderr.decode()
        audio = len(pcm.stdout) / 2 / 8000
    return Probed(frames, [float(p) for p, _, _ in infos], audio, err)


def pan_frames(photo: Path, *, frames=20, size=(192, 108), noise=6.0, seed=0,
               start=0.2, travel=0.4) -> list[np.ndarray]:
    """A pan and zoom over a real photo, each frame with its own sensor noise and
    JPEG pass, as a camera gives: the per-frame masks then jitter the way
    U^2-Net's do on real footage (a perfectly clean pan barely flickers)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    im = Image.open(photo).convert("RGB")
    w, h = size
    out = []
    for i in range(frames):
        t = i / max(frames - 1, 1)
        cw = int(im.width * (0.95 - 0.25 * t))
        ch = min(cw * h // w, im.height)
        left = int((im.width - cw) * (start + travel * t))
        top = max(0, (im.height - ch) // 2 - int(20 * t))
        f = np.asarray(im.crop((left, top, left + cw, top + ch)).resize(
            size, Image.Resampling.BILINEAR), dtype=np.float32)
        f = np.clip(f + rng.normal(0, noise, f.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, "JPEG", quality=70)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return out


def write_frames(dst: Path, frames: list[np.ndarray], fps=12) -> Path:
    """Frames (H x W x 3 uint8) -> a nearly lossless H.264 file (yuv444p, crf 10)."""
    h, w = frames[0].shape[:2]
    proc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
                           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
                           "-r", str(fps), "-i", "-", "-c:v", "libx264", "-crf", "10",
                           "-pix_fmt", "yuv444p", str(dst)],
                          input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames),
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return dst


def flicker(alpha: np.ndarray) -> float:
    """Mean frame-to-frame change of an N x H x W alpha (uint8), 0..1."""
    return float(np.abs(np.diff(alpha.astype(np.float32) / 255.0, axis=0)).mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two alphas cut at half."""
    x, y = a > 127, b > 127
    return float((x & y).sum() / max((x | y).sum(), 1))
