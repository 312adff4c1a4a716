"""Alpha matting at alpha_base_size: trimap, closed-form matte, foreground colour.

rembg solves the matte at full resolution (87 s and 7.2 GB for a 12 MP photo).
The API's alpha_base_size says at what size to solve it instead: the image is
scaled so its longer side is at most that, the matte is solved only over the
bounding box of the unknown band, and the result is brought back to full size.
"""

from __future__ import annotations

import os
import sys
import threading

import numpy as np
from PIL import Image

from bgrm.options import MattingOptions

# cf_laplacian looks one pixel around each unknown pixel; a few more keep the
# crop's border well inside known pixels.
_CROP_MARGIN = 4
# Conjugate-gradient stopping point. pymatting's default, 1e-7, spends ~30%
# more iterations for alpha changes of at most 1.5/255 (mean under 0.1/255 on
# the fixture photos) in the 8-bit alpha that is saved.
_CG_RTOL = 1e-5


# estimate_foreground_ml calls numba-parallel code: under numba's workqueue
# layer (used where OpenMP and TBB are missing) two threads entering it at
# once abort the process. It takes ~0.04 s per small photo, so images matted
# on threads (batch._run_threads) take turns here and nowhere else.
_FOREGROUND_LOCK = threading.Lock()


def _pymatting():
    """pymatting's two estimators, with numba on one thread.

    Only pymatting's tiny nearest-neighbour resizes are numba-parallel; the
    OpenMP team they start costs ~0.3 s on first use and then spins against
    onnxruntime and the other worker for the two cores, making the
    foreground estimate ~10x slower (0.37 s instead of 0.04 s per small photo).
    The variable is read when numba is first imported; a user's own setting wins.
    """
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    # ichol print()s a "PERFORMANCE WARNING" when it needs a shift; on stdout it
    # would corrupt `bgrm image -` and --json. A module-level `print` silences
    # just that module, and unlike redirecting sys.stdout it is safe when
    # frames are matted on several threads at once.
    sys.modules["pymatting.preconditioner.ichol"].print = lambda *args, **kwargs: None
    return estimate_alpha_cf, estimate_foreground_ml


def trimap(mask: np.ndarray, opts: MattingOptions) -> np.ndarray:
    """Mask (uint8) -> trimap (uint8: 0 background, 128 unknown, 255 foreground)."""
    is_fg = _erode(mask > opts.fg, opts.erode, border=False)
    is_bg = _erode(mask < opts.bg, opts.erode, border=True)
    out = np.full(mask.shape, 128, dtype=np.uint8)
    out[is_fg] = 255
    out[is_bg] = 0
    return out


def _erode(b: np.ndarray, n: int, border: bool) -> np.ndarray:
    """Binary erosion by an n x n square, equal to scipy.ndimage.binary_erosion
    (centred origin, constant ``border``), from a summed-area table.

    Not scipy's: importing scipy.ndimage costs each matting run ~0.1-0.3 s,
    more than the erosion itself.
    """
    if n <= 1:
        return b.copy()
    before = n // 2  # scipy puts an even window's origin at n // 2
    padded = np.pad(b, ((before, n - 1 - before), (before, n - 1 - before)),
                    constant_values=border)
    dtype = np.int32 if padded.size < 2**31 else np.int64
    s = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=dtype)
    np.cumsum(np.cumsum(padded, axis=0, dtype=dtype), axis=1, out=s[1:, 1:])
    total = s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n]
    return total == n * n


def _resize(arr: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BILINEAR):
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr
    return np.asarray(Image.fromarray(arr).resize(size, resample))


def _resize_float(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float HxW array."""
    if arr.shape[1] == size[0] and arr.shape[0] == size[1]:
        return arr.astype(np.float32)
    return np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR))


def _unknown_box(tri: np.ndarray) -> tuple[slice, slice] | None:
    rows = np.flatnonzero((tri == 128).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((tri == 128).any(axis=0))
    h, w = tri.shape
    return (slice(max(rows[0] - _CROP_MARGIN, 0), min(rows[-1] + _CROP_MARGIN + 1, h)),
            slice(max(cols[0] - _CROP_MARGIN, 0), min(cols[-1] + _CROP_MARGIN + 1, w)))


class Memory:
    """What one video frame's matte leaves for a later one (bgrm.video).

    Consecutive frames give nearly the same system: an earlier frame's alpha
    (at solve size) is a conjugate-gradient start a few iterations nearer the
    answer, and the diagonal shift the incomplete Cholesky factor needed there
    is where to begin, instead of failing at shift 0 again first (a failed try
    costs about as much as the factor itself: ~1 s on a 640x360 frame with a
    wide band). One per frame, handed out by ``Chain``.
    """

    def __init__(self, alpha: np.ndarray | None = None, shift: float = 0.0):
        self.alpha = alpha
        self.shift = shift

    def preconditioner(self, matrix):
        from pymatting import ichol

        shifts = _ICHOL_SHIFTS[_ICHOL_SHIFTS.index(self.shift):] \
            if self.shift in _ICHOL_SHIFTS else _ICHOL_SHIFTS
        from scipy.sparse.csgraph import reverse_cuthill_mckee

        # The band's pixels in reverse Cuthill-McKee order: the factor fills
        # in less (7.4M instead of 8.0M entries on a wide 640x360 band), so it
        # is made and applied ~10% faster; CG itself still runs in raster order.
        order = reverse_cuthill_mckee(matrix.tocsr(), symmetric_mode=True)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        permuted = matrix[order][:, order].tocsc()
        for shift in shifts:
            try:
                factor = ichol(permuted, shifts=[shift])
            except ValueError:
                continue
            self.shift = shift
            return lambda r: factor(r[order])[inverse]
        raise ValueError("incomplete Cholesky failed at every shift")


class Chain:
    """The order of a video's mattes: frame n starts from frame n - ``lag``'s
    answer, waiting for it while it is still being solved.

    Frames are matted on ``lag`` threads at once. Starting from whichever
    frame happened to finish last made the start, and so the converged
    matte, depend on the threads' timing: two runs of one clip differed by
    up to 199 levels of alpha on a frame. A fixed predecessor gives the same
    bytes on every run; with ``lag`` threads it is the frame submitted
    ``lag`` before, already running when frame n starts, so little is waited.
    """

    def __init__(self, lag: int):
        self.lag = lag
        self._count = 0
        self._done: dict[int, Memory] = {}
        self._cond = threading.Condition()

    def ticket(self) -> int:
        """The next frame's number; asked in frame order (one thread)."""
        self._count += 1
        return self._count - 1

    def start(self, ticket: int) -> Memory:
        if ticket < self.lag:
            return Memory()
        with self._cond:
            self._cond.wait_for(lambda: ticket - self.lag in self._done)
            before = self._done.pop(ticket - self.lag)
        return Memory(before.alpha, before.shift)

    def end(self, ticket: int, memory: Memory | None) -> None:
        """Frame ``ticket`` is done (or failed: a later frame starts afresh)."""
        with self._cond:
            self._done[ticket] = memory or Memory()
            self._cond.notify_all()


# pymatting's own sequence of diagonal shifts for ichol.
_ICHOL_SHIFTS = [0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0, 100, 1e3, 1e4, 1e5]


def solve(rgb: np.ndarray, tri: np.ndarray, mask: np.ndarray,
          initial: np.ndarray | None = None, memory: Memory | None = None):
    """Closed-form matte over the unknown band of ``tri``.

    Returns (alpha float32 HxW in 0..1, foreground-minus-background float32
    HxWx3), both at the size of ``rgb``. ``initial`` (an alpha at that size) is
    the conjugate-gradient start, which video uses to begin from the previous
    frame's answer; ``memory`` also carries the preconditioner's shift.
    """
    estimate_alpha_cf, estimate_foreground_ml = _pymatting()
    alpha = (tri == 255).astype(np.float32)
    delta = np.zeros(rgb.shape, dtype=np.float32)
    box = _unknown_box(tri)
    if box is None:
        return alpha, delta
    img = rgb[box].astype(np.float64) / 255.0
    sub_tri = tri[box].astype(np.float64) / 255.0
    # The network's own soft mask over the band: the answer wherever the
    # closed-form matte cannot be had.
    network = np.where(tri[box] == 128, mask[box] / 255.0, sub_tri)
    if not ((sub_tri == 1).any() and (sub_tri == 0).any()):
        # Without both a sure foreground and a sure background the matte has
        # nothing to anchor it.
        sub_alpha = network
    else:
        cg_kwargs = {"rtol": _CG_RTOL}
        is_unknown = tri[box].ravel() == 128
        if initial is not None:
            # The solver's unknowns are the band's pixels in raster order.
            cg_kwargs["x0"] = initial[box].astype(np.float64).ravel()[is_unknown]
        try:
            # Always through Memory's preconditioner, a still photo too: in
            # reverse Cuthill-McKee order the factor is cheaper and, where the
            # plain order needs a diagonal shift (the mirrored astronaut), it
            # needs none, so CG stops near rembg's answer (mean 0.28/255 off in
            # the unsure band instead of 1.98, IoU at 0.5 0.9993 instead of 0.979).
            sub_alpha = estimate_alpha_cf(
                img, sub_tri, cg_kwargs=cg_kwargs,
                preconditioner=(memory or Memory()).preconditioner)
        except ValueError:
            # The preconditioner can fail outright on some trimaps (rembg falls back too).
            sub_alpha = network
    with _FOREGROUND_LOCK:
        fg, bg = estimate_foreground_ml(img, sub_alpha, return_background=True)
    alpha[box] = sub_alpha
    delta[box] = fg - bg
    return alpha, delta


def matte(rgb: np.ndarray, mask: np.ndarray, opts: MattingOptions,
          memory: Memory | None = None):
    """Full-size RGB and mask -> (alpha uint8 HxW, foreground uint8 HxWx3).

    ``memory``: successive frames of one video (see ``Memory``).

    The matte is solved at alpha_base_size and brought back to full size. The
    foreground colour uses I = aF + (1-a)B, so F = I + (1-a)(F-B): the image's
    own full-resolution pixels plus a smooth low-resolution correction, which
    takes the old background's colour out of soft edges without blurring them.
    """
    h, w = mask.shape
    scale = min(1.0, opts.base_size / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_rgb = _resize(rgb, small, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    small_mask = _resize(mask, small)
    initial = memory.alpha if memory is not None else None
    if initial is not None and initial.shape != small_mask.shape:
        initial = None
    alpha_s, delta_s = solve(small_rgb, trimap(small_mask, opts), small_mask, initial, memory)
    if memory is not None:
        memory.alpha = alpha_s
    alpha = np.clip(_resize_float(alpha_s, (w, h)), 0.0, 1.0)
    ys, xs = np.nonzero((alpha > 0.0) & (alpha < 1.0))
    fg = rgb.copy()
    if ys.size:
        # Only soft pixels need the correction: sample it there rather than
        # upscaling a full-size HxWx3 float image (hundreds of MB at 12 MP).
        delta = _sample_bilinear(delta_s, ys, xs, (w, h))
        corrected = rgb[ys, xs].astype(np.float32) / 255.0 + \
            (1.0 - alpha[ys, xs])[:, None] * delta
        fg[ys, xs] = np.clip(corrected * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return (alpha * 255.0 + 0.5).astype(np.uint8), fg


def _sample_bilinear(small: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                     size: tuple[int, int]) -> np.ndarray:
    """``small`` (h x w x C) upscaled bilinearly to ``size`` (W, H), read at (ys, xs) only.

    Pixel centres map as in Pillow's BILINEAR resize, so this equals
    ``_resize_float(small, size)[ys, xs]`` without building the full image.
    """
    h, w = small.shape[:2]
    big_w, big_h = size
    if (h, w) == (big_h, big_w):
        return small[ys, xs].astype(np.float32)
    sy = np.clip((ys + 0.5) * (h / big_h) - 0.5, 0, h - 1)
    sx = np.clip((xs + 0.5) * (w / big_w) - 0.5, 0, w - 1)
    y0, x0 = sy.astype(np.intp), sx.astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (sy - y0).astype(np.float32)[:, None], (sx - x0).astype(np.float32)[:, None]
    top = small[y0, x0] * (1 - fx) + small[y0, x1] * fx
    bottom = small[y1, x0] * (1 - fx) + small[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)
