"""One video: decode -> segment -> (mask filter) -> edge steps -> compose -> encode, streaming.

Four threads around one onnxruntime session: decoding plus the model's input
tensor, inference (``run()`` releases the GIL, so it overlaps the rest; on
the CPU one frame per core at once, each on one thread), the full-size mask
and composition, and encoding in the caller's thread. Queues of two frames
between them bound memory for any length.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from bgrm import compose, edges
from bgrm.errors import InputError
from bgrm.inputs import check_file
from bgrm.options import VideoOptions
from bgrm.report import Processed
from bgrm.segment import upscale
from bgrm.video.formats import FORMATS, Format
from bgrm.video.reader import Frame, VideoReader
from bgrm.video.stages import run_stages
from bgrm.video.writer import VideoWriter, open_output


class MaskFilter:
    """The one place where successive masks meet, in frame order.

    Masks arrive at model size (uint8), one per frame, in order, with their
    frame. With ``strength`` s > 0 the mask is a running average that moves
    with the picture: the average so far is carried to the new frame, then
    blended with the new mask, keeping up to s of the carried one, but only
    where there is evidence that averaging helps; elsewhere the new mask is
    taken as it is, so the smoothing never makes a frame much worse than its
    own mask. Each pixel is carried along the optical flow between the two
    frames' thumbnails or not moved at all, whichever brings the last frame's
    colour closer to this one's (the flow is smooth across the edge between a
    still subject and a moving background, and would drag the one with the
    other). The memory steps aside, per pixel:

    - where the carried picture cannot be trusted: the flow back and the flow
      forth do not meet (occlusions, uncovered background), the carried colour
      differs much from the new, or the picture came from outside the last frame;
    - where the picture moves by more than a few mask pixels a frame (a pan's
      background, a zoom, a shaking camera, a walking subject): the model's
      errors there move with the picture, and an average along the motion
      only blurs and lags behind them (docs/temporal.md);
    - where the new mask is more decisive (nearer 0 or 1) than the average:
      the model sees again a part it had lost, or drops a false one;
    - where the average is further from the new mask than the last frame's own
      mask is: the model has changed its mind for two frames running (a part
      found or lost for good, a slow drift), and the average would lag behind;
    - where the new mask differs much from the last frame's own mask carried
      along: the flow missed the motion (fast, or over colours alike), or the
      model flipped, and the average cannot tell which frame is right.

    What is left is the jitter of masks on what stands still, which the
    average takes out. A frame the carried picture does not explain at all is
    a scene cut and starts afresh. ``strength`` 0 means per-frame masks,
    untouched.

    The flow is OpenCV's DIS (dense inverse search), its fastest preset, on
    thumbnails of FLOW pixels across: ~1-3 ms a pair on one core, against
    hundreds of ms for the model. docs/temporal.md has the measures.
    """

    # Thumbnail's long side: the model's 320 pixels span the frame; finer flow
    # (or DIS's finer levels, or its slower presets) measured no better.
    FLOW = 256
    # Forward-backward disagreement (thumbnail pixels) at which trust is gone.
    AGREE = 3.0
    # Colour error (0..1, largest channel) of the carried thumbnail at which trust is gone.
    # Resampling errs most across sharp edges, where the masks jitter most: at 0.1 the
    # memory was gone there, and pans were steadied far less (docs/temporal.md).
    MATCH = 0.3
    # Mean colour error over 16x16 blocks of the carried thumbnail: a moving
    # picture stays far below it, a cut to another picture is above it.
    CUT = 0.1
    # Flow below this (thumbnail pixels) is noise on a still picture: taken as 0.
    STILL = 0.3
    # Motion (mask pixels a frame) at which the memory is gone.
    GLIDE = 3.0
    # A new mask this much more decisive (|2m - 1|, 0..1) than the average replaces it.
    SURE = 0.2
    # How much further (0..1) the average may be from the new mask than the last
    # frame's own mask is before it is dropped.
    LAG = 0.1
    # A new mask this far (0..1) from the last frame's own mask, carried, and twice
    # that or more: a motion the flow did not follow (fast, or over like colours), or
    # the model's flip; which of the two is right, the average cannot tell.
    JUMP = 0.3

    def __init__(self, strength: float):
        self.strength = strength
        self._state: np.ndarray | None = None  # float32 0..1 at model size
        self._raw: np.ndarray | None = None  # the last frame's own mask, float32 0..1
        self._thumb: np.ndarray | None = None
        self.cuts: list[int] = []  # frame indices where the smoothing started afresh
        self._flow = None
        if strength > 0:
            import cv2  # only videos that are smoothed need it

            self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)

    @classmethod
    def thumbnail(cls, picture: Image.Image) -> np.ndarray:
        """The frame's flow thumbnail (RGB uint8, the frame's shape)."""
        w, h = picture.size
        scale = cls.FLOW / max(w, h)
        size = (max(16, round(w * scale)), max(16, round(h * scale)))
        return np.asarray(picture.resize(size, Image.Resampling.BOX))

    def __call__(self, mask: np.ndarray, frame: Frame,
                 thumb: np.ndarray | None = None) -> np.ndarray:
        """``thumb``: ``thumbnail`` of the frame, when the caller already made it."""
        if self.strength <= 0:
            return mask
        if thumb is None:
            thumb = self.thumbnail(Image.fromarray(frame.rgb))
        new = mask.astype(np.float32) / 255.0
        prev, self._thumb = self._thumb, thumb
        raw, self._raw = self._raw, new
        if prev is None or self._state is None or self._state.shape != new.shape:
            self._state = new
            return mask
        # A picture of another shape is another picture.
        carried = self._carry(prev, thumb, new.shape) if prev.shape == thumb.shape else None
        if carried is None:
            self.cuts.append(frame.index)
            self._state = new
            return mask
        flow, trust = carried
        # The average and the last frame's own mask, moved together (one remap).
        state, last = np.moveaxis(_move(np.dstack((self._state, raw)), flow), 2, 0)
        keep = self._helps(state, last, new, flow)
        keep *= trust
        keep *= self.strength
        self._state = new + keep * (state - new)
        return (self._state * 255.0 + 0.5).astype(np.uint8)

    def _helps(self, state: np.ndarray, last: np.ndarray, new: np.ndarray,
               flow: np.ndarray) -> np.ndarray:
        """0..1 per pixel: how far averaging the carried ``state`` into the ``new``
        mask can be expected to help, from the motion (``flow``, mask pixels), how
        decisive each is, and ``last``, the last frame's own mask carried along.
        Each test can only lower it (docs/temporal.md has what each one buys)."""
        import cv2

        def fall(x: np.ndarray, scale: float) -> np.ndarray:  # 1 - clip(x / scale, 0, 1)
            return np.clip(x, 0.0, scale, out=x) * np.float32(-1.0 / scale) + np.float32(1.0)

        # At half the mask's size: the tests' answers vary slowly, and this is most
        # of the smoothing's own cost.
        size = new.shape[1], new.shape[0]
        half = (max(1, size[0] // 2), max(1, size[1] // 2))
        flow, state, last, new = (cv2.resize(a, half, interpolation=cv2.INTER_AREA)
                                  for a in (flow, state, last, new))
        helps = fall(cv2.magnitude(flow[..., 0], flow[..., 1]), self.GLIDE)
        surer = np.abs(new - np.float32(0.5)) - np.abs(state - np.float32(0.5))
        helps *= fall(surer, self.SURE / 2)  # |2m - 1| = 2 |m - 0.5|
        off, jump = cv2.absdiff(new, state), cv2.absdiff(new, last)
        helps *= fall(off - jump, self.LAG)
        jump -= np.float32(self.JUMP)
        helps *= fall(jump, self.JUMP)
        return cv2.resize(helps, size, interpolation=cv2.INTER_LINEAR)

    def _carry(self, prev: np.ndarray, thumb: np.ndarray, shape: tuple[int, int]):
        """(the offset from each pixel of ``thumb``'s frame to where it was in ``prev``'s,
        in pixels of a mask of ``shape``; trust in it, 0..1, at that size); None at a
        scene cut."""
        import cv2

        motion = self._motion(prev, thumb)
        if motion is None:
            return None
        back, trust, moved = motion
        h, w = thumb.shape[:2]
        sh, sw = shape
        # Where the unmoved last frame matches this one better, the pixel did not move.
        still = _colour_error(prev, thumb)
        unmoved = still <= moved
        back[unmoved] = 0.0
        trust = np.where(unmoved, np.clip(1.0 - still / self.MATCH, 0.0, 1.0), trust)
        flow = cv2.resize(back, (sw, sh), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= sw / w
        flow[..., 1] *= sh / h
        return flow, cv2.resize(trust, (sw, sh), interpolation=cv2.INTER_LINEAR)

    def _motion(self, prev: np.ndarray, thumb: np.ndarray):
        """(where each thumbnail pixel was in ``prev``, as an offset; trust in
        that, 0..1; the colour error of ``prev`` moved so); None at a scene cut."""
        import cv2

        grey = [cv2.cvtColor(t, cv2.COLOR_RGB2GRAY) for t in (thumb, prev)]
        back = self._flow.calc(grey[0], grey[1], None)
        # Sensor noise moves nothing: a still picture is not resampled (which would blur).
        back[np.abs(back) < self.STILL] = 0.0
        error = _colour_error(_move(prev, back), thumb)
        if cv2.resize(error, (16, 16), interpolation=cv2.INTER_AREA).mean() > self.CUT:
            return None
        # Going back along ``back`` and forth again along ``forth`` should land home.
        forth = self._flow.calc(grey[1], grey[0], None)
        there = _move(forth, back)
        miss = np.hypot(back[..., 0] + there[..., 0], back[..., 1] + there[..., 1])
        trust = np.clip(1.0 - miss / self.AGREE, 0.0, 1.0) \
            * np.clip(1.0 - error / self.MATCH, 0.0, 1.0)
        h, w = grey[0].shape
        xs, ys = _grid(w, h)
        mx, my = xs + back[..., 0], ys + back[..., 1]
        trust[(mx < 0) | (my < 0) | (mx > w - 1) | (my > h - 1)] = 0.0
        return back, trust, error


def _move(picture: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``picture`` resampled at each pixel's place plus ``offset`` (bilinear, edges repeated)."""
    import cv2

    h, w = offset.shape[:2]
    xs, ys = _grid(w, h)
    return cv2.remap(picture, xs + offset[..., 0], ys + offset[..., 1], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _colour_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel difference of two RGB uint8 pictures, 0..1
    (so that edges between colours of equal brightness count)."""
    import cv2

    d = cv2.absdiff(a, b)
    return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2]).astype(np.float32) / 255


@functools.lru_cache(maxsize=4)
def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's own x and y (float32): cv2.remap's maps for no motion."""
    return np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))


def matting_threads() -> int:
    """Frames matted at once: one per core, two to four.

    The sparse factorisation (SuperLU) and numpy's array work release the GIL,
    so frames matted on threads overlap. Measured on 2 cores
    shared with other work, 30 frames of 640x360: 87-101 s with two threads,
    141 s with one. More than four would only wait: the queue after the
    finish step keeps a few frames in flight.
    """
    return max(2, min(4, os.cpu_count() or 1))


@dataclass
class _Work:
    frame: Frame
    tensor: np.ndarray | None = None
    thumb: np.ndarray | None = None  # MaskFilter's, made with the tensor
    small: np.ndarray | None = None


class _BackgroundVideo:
    """--bg-video frames at the output's size and rate, looped when it runs out."""

    def __init__(self, path: Path, size: tuple[int, int], rate: Fraction | None):
        self.path, self.size, self.rate = path, size, rate
        self._reader: VideoReader | None = None
        self._frames = iter(())

    def _open(self) -> None:
        self.close()
        self._reader = VideoReader(self.path, f"background {self.path}", cover=self.size,
                                   fps=self.rate)
        self._frames = iter(self._reader)

    def next(self) -> np.ndarray:
        frame = next(self._frames, None)
        if frame is None:  # first call, or a background shorter than the video: loop
            self._open()
            # A background that decodes to nothing raises InputError here, naming itself.
            frame = next(self._frames)
        return frame.rgb

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _background(opts: VideoOptions, fmt: Format, rate: Callable[[], Fraction | None]):
    """(function: frame size -> what to compose over, function to release it)."""
    if fmt.compose == "color":
        return (lambda size: opts.video_bg_color), None
    if fmt.compose == "image":
        from bgrm.image import load_background

        picture, cached = load_background(opts.bg_image), {}

        def image_for(size):
            if size not in cached:
                cached.clear()
                cached[size] = compose.cover(picture, size)
            return cached[size]

        return image_for, None
    if fmt.compose == "video":
        holder: list[_BackgroundVideo] = []

        def video_for(size):
            if not holder:
                # Created at the first frame, when the input's rate is known.
                holder.append(_BackgroundVideo(opts.bg_video, size, rate()))
            return holder[0].next()

        return video_for, lambda: holder and holder[0].close()
    return None, None


def _composer(opts: VideoOptions, fmt: Format, background) -> tuple[Callable, Callable]:
    """(rgb, mask -> alpha, fg: the edge steps; rgb, alpha, fg -> the output frame)."""

    def edge_frame(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return edges.refine(rgb, mask, opts.matting, opts.edges)

    def paint_frame(rgb: np.ndarray, alpha: np.ndarray, fg: np.ndarray) -> np.ndarray:
        if fmt.compose == "cutout":
            return compose.cutout(fg, alpha)
        if fmt.compose == "mattekey":
            return compose.matte_key(alpha)
        size = (rgb.shape[1], rgb.shape[0])
        return compose.over(fg, alpha, background(size))

    return edge_frame, paint_frame


class _Spool:
    """--crop on video: each frame's alpha and changed colours, kept on disk.

    The crop box is the union over the whole clip, known only after the last
    frame; the frame size must be fixed before the first is encoded. So the
    first pass (decode, model, edge steps) writes each frame's alpha
    (zlib, ~1-5% of its raw size for a typical mask) and the colours the edge
    steps changed (matting, decontaminate: only soft pixels) to an unlinked
    temporary file, and the second pass decodes the video again, reads them
    back, composes, crops and encodes. The model and the edge steps run once;
    the extra cost is a second decode plus (de)compression. Memory stays at a
    few frames for any length; the disk holds a few tens of KB per frame.
    """

    def __init__(self, folder: Path):
        import tempfile

        self._file = tempfile.TemporaryFile(dir=folder, prefix=".bgrm-crop-")
        self.count = 0
        self.box: tuple[int, int, int, int] | None = None

    def write(self, rgb: np.ndarray, alpha: np.ndarray, fg: np.ndarray) -> None:
        import zlib

        self.box = edges.union(self.box, edges.subject_box(alpha))
        changed = np.flatnonzero((fg != rgb).any(axis=2)).astype(np.uint32) \
            if fg is not rgb else np.zeros(0, np.uint32)
        colours = fg.reshape(-1, 3)[changed]
        blobs = [zlib.compress(a.tobytes(), 1) for a in (alpha, changed, colours)]
        self._file.write(struct.pack("<3Q", *map(len, blobs)) + b"".join(blobs))
        self.count += 1

    def rewind(self) -> None:
        self._file.seek(0)

    def read(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import zlib

        sizes = struct.unpack("<3Q", self._file.read(24))
        alpha, changed, colours = (zlib.decompress(self._file.read(n)) for n in sizes)
        alpha = np.frombuffer(alpha, np.uint8).reshape(rgb.shape[:2])
        changed = np.frombuffer(changed, np.uint32)
        fg = rgb
        if changed.size:
            fg = rgb.copy()
            fg.reshape(-1, 3)[changed] = np.frombuffer(colours, np.uint8).reshape(-1, 3)
        return alpha, fg

    def close(self) -> None:
        self._file.close()


def _shortfall(name: str, reader: VideoReader, end: float, limit: int | None) -> list[str]:
    """A note when far less picture came out than the container announces.

    Streams without an index (MPEG-TS, AVI cut before its index) decode a
    truncated file without any error, so this is the only sign. It stays a
    note: a file whose audio outlasts its picture looks the same.
    """
    duration = reader.info.duration
    if not duration or (limit is not None and reader.count >= limit) or end >= 0.9 * duration:
        return []
    return [f"{name}: decoded {end:.2f} s of picture, but the file announces {duration:.2f} s; "
            "it may be truncated"]


def process_file(src: Path, dst: Path, opts: VideoOptions, segmenter,
                 progress: Callable[[int], None] | None = None, cut=None) -> Processed:
    """Write ``src`` with its background removed to ``dst`` (atomically); return notes
    (and with --crop the clip's one box).

    ``cut`` (a ``bgrm.video.segments.Cut``): only a time range of ``src``, as
    one part of a longer video: its reader seeks, the frames before the range
    only warm the smoothing, the part starts at time 0 and has no audio.
    """
    check_file(src, str(src), "video")
    run = _FileRun(src, dst, opts, segmenter, progress, cut)
    try:
        return run.run()
    finally:
        run.close()


class _FileRun:
    """One file's run and its state: reader, writer, format, smoothing, spool.

    The stages ``prepare`` (decode thread), ``infer`` and ``finish`` (one
    thread each) and ``encode`` (the caller's thread) are what ``run_stages``
    chains; with --crop, ``encode`` only spools and ``crop_pass`` encodes.
    """

    def __init__(self, src: Path, dst: Path, opts: VideoOptions, segmenter,
                 progress: Callable[[int], None] | None, cut):
        self.src, self.dst, self.opts, self.segmenter = src, dst, opts, segmenter
        self.lanes = ThreadPoolExecutor(segmenter.lanes, thread_name_prefix="bgrm-infer") \
            if segmenter.lanes > 1 else None
        self.progress, self.cut = progress, cut
        self.fmt = FORMATS[opts.video_format]
        self.name = str(src)
        self.notes: list[str] = []
        self.out_rate = Fraction(opts.framerate) if opts.framerate else None
        # Before the decoder starts: a bad --bg-image fails here with nothing to clean up.
        # The rate is asked at the first frame, when the reader has read the header.
        self.background, self.release_background = _background(
            opts, self.fmt, lambda: self.out_rate or self.reader.info.rate)
        self.matting = None
        if opts.matting.enabled:
            self.matting = ThreadPoolExecutor(matting_threads(), thread_name_prefix="bgrm-matte")
        self.edge_frame, self.paint_frame = _composer(opts, self.fmt, self.background)
        self.mask_filter = MaskFilter(opts.temporal_smoothing)
        self.spool = _Spool(dst.parent) if opts.edges.crop else None
        self.reader = cut.reader(src, self.name, opts) if cut is not None else \
            VideoReader(src, self.name, fps=opts.framerate, limit=opts.frame_limit)
        self.picture = None  # the output's picture path, once open_output has made it
        self.writer: VideoWriter | None = None
        self.shape: tuple[int, int] | None = None  # (h, w) of the first frame
        self.box: tuple[int, int, int, int] | None = None  # --crop: the clip's box

    # -- the whole file ----------------------------------------------------------------

    def run(self) -> Processed:
        with open_output(self.dst, self.fmt, self.name) as out:
            self.picture = out.picture
            try:
                run_stages(self.reader, [self.prepare, self.infer, self.finish], self.encode)
                if self.shape is None:
                    if self.cut is not None:
                        raise self.cut.empty()  # a range with no frame in it: no part
                    raise InputError(f"{self.name}: no video frames could be decoded")
                if self.spool is not None:
                    self.crop_pass()
                self.complete(out)
            except BaseException:
                if self.writer is not None:
                    self.writer.abort()
                raise
        return Processed(self.notes, self.box)

    def complete(self, out) -> None:
        """Close the picture stream, note a short decode, add the audio, commit."""
        writer, cut = self.writer, self.cut
        writer.finish()
        if cut is None:
            self.notes += _shortfall(self.name, self.reader, writer.end, self.opts.frame_limit)
        else:
            cut.wrote(writer)
        # The input's header (has it audio?) was read with the first frame.
        # A part's audio is added once, to the joined whole.
        out.complete(self.src, self.reader.info.has_audio and cut is None, writer.end)

    def close(self) -> None:
        for pool in (self.lanes, self.matting):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self.reader.close()
        if self.spool is not None:
            self.spool.close()
        if self.release_background:
            self.release_background()

    # -- the per-frame stages ----------------------------------------------------------

    def prepare(self, frame: Frame) -> _Work:
        # One Pillow copy of the frame for the model's input and the smoothing's thumbnail.
        picture = Image.fromarray(frame.rgb)
        thumb = self.mask_filter.thumbnail(picture) if self.mask_filter.strength > 0 else None
        return _Work(frame, tensor=self.segmenter.prepare(picture), thumb=thumb)

    def infer(self, work: _Work) -> _Work | Future:
        if self.lanes is not None:
            # Frames are inferred side by side; finish() takes them back in order.
            return self.lanes.submit(self.predict, work)
        return self.predict(work)

    def predict(self, work: _Work) -> _Work:
        work.small, work.tensor = self.segmenter.predict(work.tensor), None
        return work

    def finish(self, work: _Work | Future) -> tuple[object, float] | None:
        if isinstance(work, Future):
            work = work.result()
        frame = work.frame
        small = self.mask_filter(work.small, frame, work.thumb)
        if self.cut is not None and self.cut.warming(frame):
            return None  # before the range: it only carried the smoothing this far
        h, w = frame.rgb.shape[:2]
        mask = upscale(small, (w, h))
        if self.matting is not None:
            # Frames are matted side by side; encode() takes them back in order.
            # The queue after this step (two items) bounds the frames in flight.
            return self.matting.submit(self.render, frame.rgb, mask), frame.pts
        return self.render(frame.rgb, mask), frame.pts

    def render(self, rgb: np.ndarray, mask: np.ndarray):
        alpha, fg = self.edge_frame(rgb, mask)
        if self.spool is not None:
            return rgb, alpha, fg  # composed in the second pass, once the box is known
        return self.paint_frame(rgb, alpha, fg)

    def encode(self, item: tuple[object, float] | None) -> None:
        if item is None:
            return  # a warm-up frame
        pixels, pts = item
        if isinstance(pixels, Future):
            pixels = pixels.result()
        if self.spool is not None:
            self.same_size(pixels[0])
            self.spool.write(*pixels)
        else:
            self.same_size(pixels)
            self.write(pixels, pts)
        if self.progress:
            self.progress(1)

    def same_size(self, pixels: np.ndarray) -> None:
        if self.shape is None:
            self.shape = pixels.shape[:2]
        elif pixels.shape[:2] != self.shape:
            # An encoder stream has one size; ffmpeg passes a mid-stream change through.
            raise InputError(f"{self.name}: the picture size changes mid-stream "
                             f"({self.shape[1]}x{self.shape[0]} -> {pixels.shape[1]}x"
                             f"{pixels.shape[0]}); bgrm needs one size per video")

    def write(self, pixels: np.ndarray, pts: float) -> None:
        if self.writer is None:
            self.open_writer(pixels, pts)
        self.writer.write(pixels, pts)

    def open_writer(self, pixels: np.ndarray, pts: float) -> None:
        """The encoder, sized by the first frame it gets (cropped or not)."""
        h, w = pixels.shape[:2]
        info, name = self.reader.info, self.name
        self.writer = VideoWriter(self.picture, self.fmt, (w, h), self.out_rate or info.rate,
                                  name, target=self.dst, sar=info.sar,
                                  origin=pts if self.cut is not None else 0.0)
        size = self.writer.size
        if self.writer.padded:
            self.notes.append(f"{name}: {w}x{h} has an odd side, which H.264 (4:2:0) cannot "
                              f"encode; the last column/row is repeated: {size[0]}x{size[1]}")

    # -- --crop's second pass ----------------------------------------------------------

    def crop_pass(self) -> None:
        """--crop: decode again, compose from the spool, cut to the clip's box, encode."""
        spool, name, opts = self.spool, self.name, self.opts
        spool.rewind()
        h, w = self.shape
        self.box = edges.crop_box(spool.box, opts.edges.crop_margin, (w, h))
        left, top, right, bottom = self.box
        again = VideoReader(self.src, name, fps=opts.framerate, limit=opts.frame_limit)
        seen = 0

        def paint(frame: Frame) -> tuple[np.ndarray, float]:
            nonlocal seen
            seen += 1
            if seen > spool.count or frame.rgb.shape[:2] != (h, w):
                raise InputError(f"{name}: decoded differently the second time (--crop "
                                 "reads the video twice)")
            alpha, fg = spool.read(frame.rgb)
            pixels = self.paint_frame(frame.rgb, alpha, fg)[top:bottom, left:right]
            return np.ascontiguousarray(pixels), frame.pts

        try:
            run_stages(again, [paint], lambda item: self.write(*item))
        finally:
            again.close()
        if seen != spool.count:
            raise InputError(f"{name}: decoded {seen} frames the second time, "
                             f"{spool.count} the first (--crop reads the video twice)")
