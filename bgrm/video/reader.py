"""Decoding: a video file -> upright RGB frames, each with its own timestamp.

imageio-ffmpeg's ``read_frames`` gives bytes without timestamps and, because
its raw output is constant-rate, duplicates or drops frames of a
variable-frame-rate input. So its bundled ffmpeg is run here directly:
``-fps_mode passthrough`` gives every decoded frame exactly once, and the
``showinfo`` filter logs each frame's timestamp and size on stderr just before
the frame's bytes reach stdout. A thread reads stderr and hands those records
over one by one; the frame count is ours, never the container's.
"""

from __future__ import annotations

import collections
import queue
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from bgrm.errors import InputError
from bgrm.inputs import check_size

_FRAME = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(\S+)\s+pts_time:(\S+).*?\bsar:(\d+)/(\d+)"
                    r"\s+s:(\d+)x(\d+)")
_RATE = re.compile(r"config in time_base: \S+, frame_rate: (\d+)/(\d+)")
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM_FPS = re.compile(r"Stream #0:\d+.*: Video: .*?, (\d+(?:\.\d+)?)(k?) fps,")
# With -loglevel level+info each line reads "[source @ 0x..] [level] text".
_LINE = re.compile(r"^(?:\[([^\]]*) @ 0x[0-9a-f]+\] )?\[(\w+)\] ?(.*)$")
_END = object()


def ffmpeg(loglevel: str) -> list[str]:
    """The bundled ffmpeg, quiet but for ``loglevel`` lines, never reading the terminal."""
    import imageio_ffmpeg

    return [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats",
            "-loglevel", loglevel]


def split_line(line: str) -> tuple[str, str, str]:
    """An ffmpeg log line -> (source, level, text); source is '' for the CLI itself."""
    m = _LINE.match(line)
    if not m:
        return "", "info", line
    return m.group(1) or "", m.group(2), m.group(3)


def first_error(errors) -> str:
    """ffmpeg's first error is the telling one ('moov atom not found'); the rest
    repeat it in general terms ('Error opening input files')."""
    for text in errors:
        if text.strip():
            return text.strip()
    return "no message"


def header(path: Path) -> tuple[float | None, float | None]:
    """(duration in seconds, nominal frame rate) from the container's header alone:
    ffmpeg opens the file and stops, nothing is decoded (~50 ms). Either may be
    None. Only an estimate (progress totals): the frames are always counted."""
    try:
        proc = subprocess.run([*ffmpeg("level+info"), "-i", str(path)], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    duration = rate = None
    for raw in proc.stderr.decode("utf-8", "replace").splitlines():
        line = split_line(raw)[2]
        if (m := _DURATION.match(line)) and duration is None:
            h, mi, sec = m.groups()
            duration = int(h) * 3600 + int(mi) * 60 + float(sec)
        elif (m := _STREAM_FPS.search(line)) and rate is None and "(attached pic)" not in line:
            rate = float(m.group(1)) * (1000 if m.group(2) else 1)
    return duration, rate


def estimate_frames(path: Path, opts) -> int | None:
    """Frames ``path`` will give with these video options (``framerate``,
    ``frame_limit``), from its header: a progress total or a time budget."""
    duration, rate = header(path)
    rate = opts.framerate or rate
    frames = round(duration * rate) if duration and rate else None
    if opts.frame_limit is not None:
        frames = min(frames, opts.frame_limit) if frames is not None else opts.frame_limit
    return frames


@dataclass
class Frame:
    index: int
    pts: float  # seconds from the start of the file
    rgb: np.ndarray  # HxWx3 uint8, upright


@dataclass
class Info:
    """What the header says; known once the first frame (or the end) has arrived."""

    duration: float | None = None
    rate: Fraction | None = None  # nominal frame rate, None when ffmpeg has none
    has_audio: bool = False
    has_video: bool = False
    sar: Fraction = Fraction(1)  # pixel shape: DV and broadcast video are not square
    errors: collections.deque = field(default_factory=lambda: collections.deque(maxlen=20))
    damage: str = ""  # the demuxer's first error: data ended early, or is corrupt


class VideoReader:
    """Frames of ``path`` as an iterator; ``close()`` always stops ffmpeg.

    fps: pick frames by timestamp at this rate (ffmpeg's fps filter), so a
    lower rate means fewer frames to segment. limit: at most this many frames.
    cover: (w, h) to scale and centre-crop every frame to (backgrounds).
    seek: start decoding at the keyframe at or before this many seconds
    (bgrm.video.segments); frames keep the timestamps a decode from the
    start gives them (-copyts -start_at_zero), and those before ``seek``
    still come, so the caller picks its frames by timestamp.
    """

    def __init__(self, path: Path, name: str, *, fps: float | None = None,
                 limit: int | None = None, cover: tuple[int, int] | None = None,
                 seek: float | None = None):
        self.path, self.name, self.limit = Path(path), name, limit
        self.info = Info()
        filters = []
        if fps:
            filters.append(f"fps={Fraction(fps).limit_denominator(1001)}")
        if cover:
            w, h = cover
            filters += [f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=lanczos",
                        f"crop={w}:{h}", "setsar=1"]
        filters.append("showinfo=checksum=0")
        # -noaccurate_seek: the frames between the keyframe and ``seek`` come
        # too (a segment warms its smoothing on them, and checks it started early enough).
        where = ["-noaccurate_seek", "-ss", f"{seek:.6f}", "-copyts", "-start_at_zero"] \
            if seek else []
        cmd = [*ffmpeg("level+info"), *where, "-i", str(self.path), "-map", "0:V:0", "-an", "-sn", "-dn",
               "-fps_mode", "passthrough", "-vf", ",".join(filters)]
        if limit is not None:
            cmd += ["-frames:v", str(limit)]
        cmd += ["-pix_fmt", "rgb24", "-f", "rawvideo", "pipe:1"]
        self._records: queue.Queue = queue.Queue()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._stderr = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr.start()
        self.count = 0

    def _read_stderr(self) -> None:
        info, in_output = self.info, False
        try:
            for raw in self._proc.stderr:
                source, level, line = split_line(raw.decode("utf-8", "replace").rstrip())
                m = _FRAME.search(line)
                if m:
                    self._records.put(m.groups())
                    continue
                if level in ("error", "fatal", "panic"):
                    info.errors.append(line)
                    # Decoders conceal a broken frame and go on; a demuxer error
                    # ("partial file", "File ended prematurely") means lost data.
                    if source.startswith("in#") and not info.damage:
                        info.damage = line
                if line.startswith("Output #"):
                    in_output = True
                elif (m := _RATE.search(line)) and info.rate is None and int(m.group(2)):
                    info.rate = Fraction(int(m.group(1)), int(m.group(2)))
                elif (m := _DURATION.match(line)) and info.duration is None:
                    h, mi, s = m.groups()
                    info.duration = int(h) * 3600 + int(mi) * 60 + float(s)
                elif not in_output and line.lstrip().startswith("Stream #"):
                    if ": Audio:" in line:
                        info.has_audio = True
                    elif ": Video:" in line and "(attached pic)" not in line:
                        info.has_video = True
        finally:
            self._records.put(_END)

    def _fail(self, reason: str) -> InputError:
        return InputError(f"{self.name}: {reason}")

    def _read_exactly(self, size: int) -> bytes:
        chunks, got = [], 0
        while got < size:
            chunk = self._proc.stdout.read(size - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def __iter__(self) -> Iterator[Frame]:
        last_pts = None
        while self.limit is None or self.count < self.limit:
            record = self._records.get()
            if record is _END:
                break
            _n, _pts, pts_time, sar_w, sar_h, w, h = record
            w, h = int(w), int(h)
            check_size((w, h), self.name)  # before its bytes are read
            if self.count == 0 and int(sar_w) and int(sar_h):
                self.info.sar = Fraction(int(sar_w), int(sar_h))
            data = self._read_exactly(w * h * 3)
            if len(data) < w * h * 3:
                break  # ffmpeg died mid-frame; its status says why, below
            try:
                pts = float(pts_time)
            except ValueError:  # NOPTS: one nominal frame after the previous one
                step = 1 / float(self.info.rate) if self.info.rate else 1 / 25
                pts = 0.0 if last_pts is None else last_pts + step
            last_pts = pts
            yield Frame(self.count, pts, np.frombuffer(data, np.uint8).reshape(h, w, 3))
            self.count += 1
        if self.limit is not None and self.count >= self.limit:
            return  # ffmpeg may still be flushing; close() stops it
        status = self._proc.wait()
        self._stderr.join()
        if status != 0 or self.count == 0 or self.info.damage:
            raise self._fail(self._explain(status))

    def _explain(self, status: int) -> str:
        errors = self.info.errors
        if self.count == 0 and not self.info.has_video and (
                self.info.has_audio or any("matches no streams" in line for line in errors)):
            what = "audio only" if self.info.has_audio else "no video stream"
            return f"not a video ({what})"
        if self.count == 0 and status != 0:
            return f"not a video bgrm can read ({first_error(errors)})"
        if self.count == 0:
            return "no video frames could be decoded"
        if status == 0:
            return (f"truncated or damaged: {self.info.damage} (after {self.count} frames; "
                    "no output written)")
        return f"ffmpeg failed after {self.count} frames: {first_error(errors)}"

    def close(self) -> None:
        proc = self._proc
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._stderr.join()  # it ends at ffmpeg's end of stderr
        proc.stdout.close()
        proc.stderr.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
