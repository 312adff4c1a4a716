"""Encoding: composed frames with their timestamps -> the output file, via ffmpeg.

Frames reach ffmpeg as a minimal Matroska stream on its stdin rather than as
bare raw video: raw video has no timestamps, so a variable-frame-rate input
would come out evenly spaced. Matroska carries each frame's time, and
``-fps_mode passthrough`` keeps every frame once, so the output is
frame-exact and keeps the input's timing.

Audio is added afterwards by ``add_audio``, a copy of the finished picture
beside the input's audio read for exactly the picture's duration. Doing it
in the encoding pass needs ``-shortest``, which cuts the *video* when the
audio is shorter, and drops the last frame even when it is not.
"""

from __future__ import annotations

import collections
import contextlib
import struct
import subprocess
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from bgrm.errors import OutputError
from bgrm.outputs import atomic_folder, atomic_path
from bgrm.video.formats import Format
from bgrm.video.reader import ffmpeg, first_error, split_line

# Matroska ticks of 0.1 ms: fine enough for any real frame rate, and the
# resulting 1/10000 time base suits mp4, mov and gif alike.
_TICK_NS = 100_000
TICKS_PER_S = 1_000_000_000 // _TICK_NS


def _id(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _element(eid: int, payload: bytes) -> bytes:
    # An 8-byte size (0x01 marker + 7 bytes) fits every payload; no need to be tight.
    return _id(eid) + b"\x01" + len(payload).to_bytes(7, "big") + payload


def _uint(eid: int, value: int) -> bytes:
    return _element(eid, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def mkv_header(width: int, height: int, fourcc: bytes, rate: Fraction | None) -> bytes:
    """EBML header, a Segment of unknown size, Info and one raw video track."""
    ebml = _element(0x1A45DFA3, b"".join([
        _uint(0x4286, 1), _uint(0x42F7, 1), _uint(0x42F2, 4), _uint(0x42F3, 8),
        _element(0x4282, b"matroska"), _uint(0x4287, 4), _uint(0x4285, 2)]))
    segment = _id(0x18538067) + b"\x01\xff\xff\xff\xff\xff\xff\xff"  # size unknown: streaming
    info = _element(0x1549A966, _uint(0x2AD7B1, _TICK_NS) + _element(0x4D80, b"bgrm")
                    + _element(0x5741, b"bgrm"))
    video = _element(0xE0, _uint(0xB0, width) + _uint(0xBA, height)
                     + _element(0x2EB524, fourcc))
    track = [_uint(0xD7, 1), _uint(0x73C5, 1), _uint(0x83, 1), _uint(0x9C, 0),
             _element(0x86, b"V_UNCOMPRESSED"), video]
    if rate:
        # The last frame's duration; every other one ends where the next begins.
        track.append(_uint(0x23E383, round(1_000_000_000 / rate)))
    tracks = _element(0x1654AE6B, _element(0xAE, b"".join(track)))
    return ebml + segment + info + tracks


def to_ticks(seconds: float) -> int:
    """``seconds`` in the writer's ticks, as it places a frame."""
    return round(max(seconds, 0.0) * TICKS_PER_S)


def mkv_frame(ticks: int, size: int) -> bytes:
    """The head of one Cluster holding one keyframe SimpleBlock at ``ticks``; the
    frame's ``size`` pixel bytes follow it as they are. (Joining them into one
    bytes object would copy a 1080p RGBA frame, 8 MB, several times over.)"""
    block = _id(0xA3) + b"\x01" + (4 + size).to_bytes(7, "big") + b"\x81" \
        + struct.pack(">hB", 0, 0x80)
    time = _uint(0xE7, ticks)
    return _id(0x1F43B675) + b"\x01" + (len(time) + len(block) + size).to_bytes(7, "big") \
        + time + block


class VideoWriter:
    """Encode frames to ``path`` in ``fmt``; ``finish()`` checks ffmpeg's verdict.

    Sizes that 4:2:0 chroma cannot take (odd width or height) are padded by
    repeating the last column/row, so no picture is lost and nothing is
    stretched; ``padded`` says when that happened.
    """

    def __init__(self, path: Path, fmt: Format, size: tuple[int, int], rate: Fraction | None,
                 name: str, target: Path | None = None, sar: Fraction = Fraction(1),
                 origin: float = 0.0):
        self.fmt, self.name, self.path = fmt, name, path
        self.target = target or path  # the name to show: path may be a temporary
        w, h = size
        self.pad = (h % 2, w % 2) if fmt.even_size else (0, 0)
        self.padded = any(self.pad)
        self.size = (w + self.pad[1], h + self.pad[0])
        self.count = 0
        self.rate = rate
        # A part of a longer video (bgrm.video.segments) starts at 0: its
        # frames are placed ``origin`` seconds earlier, in whole ticks, so
        # the joined file's timestamps are a whole run's to the tick.
        self.origin = to_ticks(origin)
        self._last_ticks = -1
        self._last_step = 1 / float(rate) if rate else None
        self.end = 0.0  # seconds: where the last frame stops showing
        video_args = fmt.odd_width_args if fmt.odd_width_args and self.size[0] % 2 \
            else fmt.video_args
        cmd = [*ffmpeg("level+error"), "-y", "-f", "matroska", "-i", "pipe:0", "-map", "0:v:0",
               "-vf", f"{fmt.filter},setsar={sar.numerator}/{sar.denominator}",
               "-fps_mode", "passthrough", *video_args, "-map_metadata", "-1",
               "-f", fmt.muxer, str(path)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        self._errors: collections.deque = collections.deque(maxlen=20)
        self._stderr = threading.Thread(target=self._drain, daemon=True)
        self._stderr.start()
        fourcc = b"RGBA" if fmt.alpha else b"RGB\x18"
        self._send(mkv_header(*self.size, fourcc, rate))

    def _drain(self) -> None:
        for raw in self._proc.stderr:
            self._errors.append(split_line(raw.decode("utf-8", "replace").rstrip())[2])

    def _failure(self, what: str) -> OutputError:
        return OutputError(f"{self.name}: {what} {self.target}: {first_error(self._errors)}")

    def _send(self, data: bytes | memoryview) -> None:
        try:
            self._proc.stdin.write(data)
        except (BrokenPipeError, OSError):
            self._proc.wait()
            self._stderr.join()
            raise self._failure("ffmpeg stopped while encoding") from None

    def write(self, pixels: np.ndarray, pts: float) -> None:
        """One composed frame (HxWx3 or HxWx4 uint8) shown from ``pts`` seconds."""
        if self.padded:
            pixels = np.pad(pixels, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        # Strictly increasing, or the muxer refuses the frame: two source frames
        # closer than a tick (broken timestamps) are kept one tick apart.
        ticks = max(to_ticks(pts) - self.origin, self._last_ticks + 1)
        if self.rate is None and self._last_ticks >= 0:
            self._last_step = (ticks - self._last_ticks) / TICKS_PER_S
        self._last_ticks = ticks
        self.end = (ticks / TICKS_PER_S) + (self._last_step or 0.04)
        pixels = np.ascontiguousarray(pixels)
        self._send(mkv_frame(ticks, pixels.nbytes))
        self._send(memoryview(pixels).cast("B"))
        self.count += 1

    def finish(self) -> None:
        try:
            self._proc.stdin.close()
        except OSError:
            pass  # a dead ffmpeg is reported by its status just below
        status = self._proc.wait()
        self._stderr.join()
        if status != 0:
            raise self._failure(f"ffmpeg failed ({status}) writing")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.wait()
        self._stderr.join()


def add_audio(video: Path | None, src: Path, dst: Path, fmt: Format, seconds: float,
              name: str, target: Path) -> None:
    """``video`` plus the first ``seconds`` of ``src``'s audio -> ``dst``; the picture
    is copied untouched, so its frames and timing stay exactly as encoded.
    With ``video`` None, the audio alone, as a WAV (a PNG sequence's sound)."""
    if video is None:
        cmd = [*ffmpeg("level+error"), "-y", *audio_input(src, seconds), "-map", "0:a:0",
               *fmt.audio_args, "-f", "wav", str(dst)]
    else:
        cmd = [*ffmpeg("level+error"), "-y", "-i", str(video), *audio_input(src, seconds),
               "-map", "0:v:0", "-map", "1:a:0?", "-c:v", "copy", *fmt.audio_args,
               *container(fmt, dst)]
    run_ffmpeg(cmd, name, f"adding the audio to {target}")


def audio_input(src: Path, seconds: float) -> list[str]:
    """``src``'s sound alone as an input, cut to the first ``seconds`` (the picture's length)."""
    return ["-t", f"{seconds:.6f}", "-vn", "-sn", "-dn", "-i", str(src)]


def container(fmt: Format, dst: Path) -> list[str]:
    """The output arguments of ``fmt``'s file at ``dst`` (an mp4 playable while it loads)."""
    return [*(("-movflags", "+faststart") if fmt.muxer == "mp4" else ()),
            "-f", fmt.muxer, str(dst)]


def run_ffmpeg(cmd: list[str], name: str, doing: str) -> None:
    """Run a one-shot ffmpeg; if it fails, an OutputError naming the input, what
    ffmpeg was ``doing``, its exit status and its first error line."""
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0:
        lines = [split_line(ln)[2] for ln in proc.stderr.decode("utf-8", "replace").splitlines()]
        raise OutputError(f"{name}: ffmpeg failed ({proc.returncode}) {doing}: "
                          f"{first_error(lines)}")


class Output:
    """Where ``fmt``'s encoder writes for ``dst``, and how audio joins the picture.

    ``picture`` is a temporary file beside ``dst`` (a second one when audio is
    added afterwards), or for a PNG sequence a numbered pattern inside the
    temporary folder. ``open_output`` renames the whole onto ``dst`` at the end.
    """

    def __init__(self, tmp: Path, dst: Path, fmt: Format, name: str):
        self.tmp, self.dst, self.fmt, self.name = tmp, dst, fmt, name
        if fmt.sequence:
            # x_processed/x_processed_000001.png: the frames' names say whose they are.
            self.picture = tmp / f"{dst.name}_%06d.png"
        elif fmt.audio_args is not None:
            self.picture = tmp.with_name(f"{tmp.stem}.picture{tmp.suffix}")
        else:
            self.picture = tmp

    def complete(self, src: Path, has_audio: bool, seconds: float) -> None:
        """The encoded picture is finished: add ``src``'s first ``seconds`` of audio."""
        fmt = self.fmt
        if fmt.audio_args is None:
            return
        if fmt.sequence:
            if has_audio:
                add_audio(None, src, self.tmp / f"{self.dst.name}.wav", fmt, seconds,
                          self.name, self.dst)
        elif has_audio:
            add_audio(self.picture, src, self.tmp, fmt, seconds, self.name, self.dst)
        else:
            self.picture.replace(self.tmp)


@contextlib.contextmanager
def open_output(dst: Path, fmt: Format, name: str) -> Iterator[Output]:
    """An ``Output`` for ``dst``: complete at ``dst`` when the block ends well, and
    on any failure (Ctrl-C included) nothing at all, temporaries removed."""
    place = atomic_folder if fmt.sequence else atomic_path
    with place(dst) as tmp:
        out = Output(tmp, dst, fmt, name)
        try:
            yield out
        finally:
            if not fmt.sequence and out.picture != tmp:
                out.picture.unlink(missing_ok=True)
