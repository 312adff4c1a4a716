"""One long video as time ranges: plan them, make each range's part, join the parts.

Whoever runs the parts (a Dask cluster: ``bgrm.video.segments_dask``) calls
three things here, none of which knows where it runs:

- ``plan``: the ranges, from the container's header (duration, rate) and, for
  ``--frame-limit``, the packets' timestamps; nothing is decoded but the first
  frame. Ranges are half-open in time, ``start <= pts < end``, compared on the
  very timestamps every decode of the file gives, so a frame lands in exactly
  one range whatever the frame rate (variable too).
- ``make_part``: one range through the same per-frame pipeline as a whole
  file (``pipeline.process_file`` with a ``Cut``). Its reader seeks to a
  keyframe before the range and picks frames by timestamp; the frames of a
  short warm-up before the range run the model and the temporal smoothing
  but are not written, so the smoothing arrives at the range's first frame as
  a whole run would. The part starts at time 0, shifted by its first frame's
  time in whole ticks, and has no audio. (A whole run's output starts at 0
  too: ffmpeg starts its input, the encoder's frames, at the first.)
- ``join``: the parts, in order, into ``dst`` (atomically): ffmpeg's concat
  demuxer copies the encoded frames (ProRes, H.264, VP9: every part is
  encoded with the same settings and starts with a keyframe) and places each
  part at its first frame's time, so the joined timestamps are the whole
  run's to the tick; a PNG sequence's frames are renamed into one folder,
  numbered on. The audio is added once, to the whole, in the same pass.
  GIF is not split (``why_whole``): its parts cannot be joined by copying.
"""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from bgrm.errors import InputError
from bgrm.options import VideoOptions
from bgrm.video.formats import FORMATS, Format
from bgrm.video.reader import VideoReader, ffmpeg, header
from bgrm.video.writer import (
    TICKS_PER_S,
    audio_input,
    container,
    open_output,
    run_ffmpeg,
)

# The smoothing's memory left over from before the warm-up: its state after
# n frames differs from a whole run's by at most strength**n of what it was.
WARM_LEFT = 0.02
WARM_MAX_FRAMES = 30
# Seconds a seek backs off at first when it landed after where it had to
# start (streams without an index seek to the keyframe after, not before).
SEEK_BACK_S = 2.0
RATE_GUESS = 30.0  # frames per second when the header says none


class NoFrames(Exception):
    """A range with no frame in it (a long still in a variable-rate video, or
    a header that announces more than the picture holds): it has no part."""


@dataclass(frozen=True)
class Span:
    """One range of a video: frames with ``start <= pts < end``."""

    index: int
    start: float | None  # None: from the first frame
    end: float | None  # None: to the last frame
    warm: float = 0.0  # seconds before ``start`` that warm the smoothing


@dataclass(frozen=True)
class Plan:
    spans: tuple[Span, ...]
    duration: float | None  # the header's, in seconds

    @property
    def split(self) -> bool:
        return len(self.spans) > 1


def warm_frames(strength: float) -> int:
    """Frames of warm-up that bring the smoothing to within WARM_LEFT of a whole run."""
    if strength <= 0:
        return 0
    return min(WARM_MAX_FRAMES, math.ceil(math.log(WARM_LEFT) / math.log(strength)))


def why_whole(opts: VideoOptions) -> str | None:
    """Why a video with these options cannot be split, or None."""
    if opts.edges.crop:
        return "--crop needs the subject's box over the whole clip"
    if opts.video_format == "video_over_video":
        return "video_over_video pairs the background's frames with the video's from the start"
    if FORMATS[opts.video_format].muxer == "gif":
        # Stream copy would repeat the GIF header inside the file, and each
        # frame's delay (centiseconds) at a join would have to be patched.
        return "a GIF is written whole (its parts cannot be joined without re-encoding)"
    return None


def ranges(duration: float, seconds: float, end: float | None, rate: float,
           strength: float) -> tuple[Span, ...]:
    """Equal ranges of at most ``seconds`` over ``duration`` (or up to ``end``)."""
    length = min(duration, end) if end is not None else duration
    count = max(1, math.ceil(length / seconds - 1e-9))
    if count == 1:
        return (Span(0, None, end),)
    warm = warm_frames(strength) / rate
    bounds = [length * i / count for i in range(1, count)]
    starts = [None, *bounds]
    ends = [*bounds, end]
    return tuple(Span(i, s, e, 0.0 if s is None else warm)
                 for i, (s, e) in enumerate(zip(starts, ends, strict=True)))


def plan(src: Path, opts: VideoOptions, seconds: float) -> Plan:
    """The ranges ``src`` is cut into with ``opts``; one range when it is short, or
    cannot be split (``why_whole``)."""
    duration, rate = header(src)
    rate = float(opts.framerate or rate or RATE_GUESS)
    if not duration or duration <= seconds or why_whole(opts):
        return Plan((Span(0, None, None),), duration)
    end = None
    if opts.frame_limit is not None:
        end = limit_end(src, opts.frame_limit, opts.framerate)
        if end is not None and end <= seconds:
            return Plan((Span(0, None, None),), duration)
    return Plan(ranges(duration, seconds, end, rate, opts.temporal_smoothing), duration)


_TB = re.compile(r"^#tb 0: (\d+)/(\d+)")


def limit_end(src: Path, limit: int, framerate: int | None) -> float | None:
    """A time between the ``limit``-th frame a whole run writes and the next, or
    None when the video has no more than ``limit`` frames.

    With ``framerate`` the frames are the rate's ticks from the first frame's.
    Otherwise the packets' timestamps say it, read without decoding: ffmpeg
    copies the first ``limit`` packets (and a few more, for frames shown in
    another order than stored) to a checksum list.
    """
    first = _first_pts(src)
    if framerate:
        return (round(first * framerate) + limit - 0.5) / framerate
    proc = subprocess.run([*ffmpeg("error"), "-i", str(src), "-map", "0:V:0", "-c", "copy",
                           "-frames:v", str(limit + 64), "-f", "framecrc", "-"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    tb, times = None, []
    for line in proc.stdout.splitlines():
        if m := _TB.match(line):
            tb = Fraction(int(m.group(1)), int(m.group(2)))
        elif not line.startswith("#") and tb is not None:
            fields = [f.strip() for f in line.split(",")]
            if len(fields) >= 3 and fields[2].lstrip("-").isdigit():
                times.append(int(fields[2]) * tb)
    if len(times) <= limit:
        return None
    times.sort()
    shift = Fraction(first).limit_denominator(10**6) - times[0]  # the decoder's start at 0
    return float((times[limit - 1] + times[limit]) / 2 + shift)


def _first_pts(src: Path) -> float:
    reader = VideoReader(src, str(src), limit=1)
    try:
        return next(iter(reader)).pts
    finally:
        reader.close()


class _SpanFrames:
    """The frames of a span and its warm-up, by timestamp, from a seek.

    A seek lands on a keyframe at or before the time asked for, or for a
    stream without an index, sometimes after it: then frames could be
    missing, so it seeks again further back, down to the start of the file.
    """

    def __init__(self, src: Path, name: str, opts: VideoOptions, span: Span):
        self.src, self.name, self.opts, self.span = src, name, opts, span
        self.since = None if span.start is None else max(0.0, span.start - span.warm)
        self._seek = self.since
        self._reader = self._open()

    def _open(self) -> VideoReader:
        return VideoReader(self.src, self.name, fps=self.opts.framerate, seek=self._seek)

    @property
    def info(self):
        return self._reader.info

    @property
    def count(self) -> int:
        return self._reader.count

    def __iter__(self) -> Iterator:
        end, back = self.span.end, SEEK_BACK_S
        while True:
            landed = None  # the first frame's time after this seek
            try:
                for frame in self._reader:
                    if landed is None:
                        landed = frame.pts
                        if self._seek and landed > self.since:
                            break  # frames before it could be missing
                    if end is not None and frame.pts >= end:
                        return
                    if self.since is None or frame.pts >= self.since:
                        yield frame
                else:
                    return
            except InputError:
                if landed is not None or not self._seek:
                    raise
                # Nothing at all after the seek: past the last keyframe it found.
            self._reader.close()
            self._seek = max(0.0, self.since - back) or None
            back *= 2
            self._reader = self._open()

    def close(self) -> None:
        self._reader.close()


class Cut:
    """What ``pipeline.process_file`` asks of a range (see its ``cut``)."""

    def __init__(self, span: Span):
        self.span = span
        self.count = 0
        self.origin = 0  # ticks of the part's first frame in the whole video
        self.end = 0.0  # seconds (whole video) where its last frame stops showing
        self.has_audio = False
        self._frames: _SpanFrames | None = None

    def reader(self, src: Path, name: str, opts: VideoOptions) -> _SpanFrames:
        self._frames = _SpanFrames(src, name, opts, self.span)
        return self._frames

    def warming(self, frame) -> bool:
        return self.span.start is not None and frame.pts < self.span.start

    def empty(self) -> NoFrames:
        return NoFrames(f"no frame in {self.span}")

    def wrote(self, writer) -> None:
        self.count, self.origin = writer.count, writer.origin
        self.end = writer.origin / TICKS_PER_S + writer.end
        self.has_audio = self._frames is not None and self._frames.info.has_audio


@dataclass
class Part:
    """A range's encoded part (``path`` None: the range held no frame)."""

    index: int
    path: Path | None
    count: int = 0
    origin: int = 0  # ticks
    end: float = 0.0  # seconds, in the whole video
    has_audio: bool = False
    notes: list[str] = field(default_factory=list)


def part_path(folder: Path, index: int, fmt: Format) -> Path:
    return folder / (f"part-{index:05d}" + (f".{fmt.ext}" if fmt.ext else ""))


def make_part(src: Path, folder: Path, span: Span, opts: VideoOptions, segmenter,
              progress=None) -> Part:
    """Encode ``span`` of ``src`` into ``folder`` (atomically) as its part."""
    from bgrm.video.pipeline import process_file

    dst = part_path(folder, span.index, FORMATS[opts.video_format])
    cut = Cut(span)
    try:
        done = process_file(src, dst, opts, segmenter, progress, cut=cut)
    except NoFrames:
        return Part(span.index, None)
    return Part(span.index, dst, cut.count, cut.origin, cut.end, cut.has_audio,
                list(done.notes))


def join(parts: list[Part], src: Path, dst: Path, opts: VideoOptions, name: str) -> int:
    """The parts (in order) as one output at ``dst`` with ``src``'s audio; returns
    the frame count. Atomic: ``dst`` is whole, or as it was."""
    fmt = FORMATS[opts.video_format]
    parts = [p for p in sorted(parts, key=lambda p: p.index) if p.path is not None]
    if not parts:
        raise InputError(f"{name}: no video frames could be decoded")
    end = parts[-1].end
    has_audio = any(p.has_audio for p in parts)
    with open_output(dst, fmt, name) as out:
        if fmt.sequence:
            number = 0
            for part in parts:
                for frame in sorted(part.path.glob(f"{part.path.name}_*.png")):
                    number += 1
                    frame.rename(out.tmp / f"{dst.name}_{number:06d}.png")
            out.complete(src, has_audio, end)
        else:
            # The audio joins in the same pass: a long output is copied once, not twice.
            audio = src if has_audio and fmt.audio_args is not None else None
            _concat(parts, out.picture, fmt, name, dst, audio, end)
            out.complete(src, False, end)
    return sum(p.count for p in parts)


def _concat(parts: list[Part], picture: Path, fmt: Format, name: str, dst: Path,
            audio: Path | None, seconds: float) -> None:
    """ffmpeg's concat demuxer, stream copy: each part placed at its first frame's
    time (the ``duration`` of the one before it);
    with ``audio``, its first ``seconds`` of sound as ``writer.add_audio`` adds it."""
    listing = picture.with_name(picture.name + ".concat.txt")
    lines = ["ffconcat version 1.0"]
    for part, after in zip(parts, [*parts[1:], None], strict=True):
        path = str(part.path.resolve()).replace("'", "'\\''")
        lines.append(f"file '{path}'")
        if after is not None:
            lines.append(f"duration {(after.origin - part.origin) / TICKS_PER_S:.6f}")
    listing.write_text("\n".join(lines) + "\n")
    sound_in, sound_out = [], []
    if audio is not None:
        sound_in = audio_input(audio, seconds)
        sound_out = ["-map", "1:a:0?", *fmt.audio_args]
    cmd = [*ffmpeg("level+error"), "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
           *sound_in, "-map", "0:v:0", "-c:v", "copy", *sound_out,
           "-map_metadata", "-1", *container(fmt, picture)]
    try:
        run_ffmpeg(cmd, name, f"joining the parts of {dst}")
    finally:
        listing.unlink(missing_ok=True)
