"""The mask's way from the network to the picture, in one fixed order.

    model -> post-process -> grow/shrink -> matting or ViTMatte -> feather
          -> decontaminate -> compose -> crop

Everything here works on the full-size mask (uint8 HxW, 0..255) and the
full-size RGB frame (uint8 HxWx3), so images and every video format share it.
``refine`` runs the mask steps; compose is bgrm.compose; ``crop_box`` says
what the crop keeps. The order is fixed because each step is defined on what
the one before it gives: grow/shrink moves the edge the matte then refines,
feather softens the refined edge, and decontaminate unmixes the colour under
the final alpha, feathered pixels included.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageFilter

from bgrm.options import EdgeOptions, MattingOptions

# Longer side of the soft band's box at which decontaminate estimates the
# foreground-minus-background colour (see ``decontaminate``).
DECONTAMINATE_SIZE = 1024
# Known pixels kept around the soft band's box (at the estimate's size), so the
# foreground and background colours have something to spread from.
_DECONTAMINATE_MARGIN = 16
# Alpha from which a pixel's colour is taken as the subject's own (95%) when
# decontaminate bounds the hue: a feathered mask may have no pixel at 255.
_SUBJECT = 242
_SUBJECT_INSET = 5  # pixels at the estimate's scale (an n x n erosion)
# What counts as subject for --crop: alpha above 8/255 (3%). Lower would keep
# the faint haze a network leaves far from the subject; higher would cut the
# tips of hair.
CROP_THRESHOLD = 8


def refine(rgb: np.ndarray, mask: np.ndarray, matting: MattingOptions,
           edges: EdgeOptions) -> tuple[np.ndarray, np.ndarray]:
    """Full-size RGB and network mask -> (alpha uint8 HxW, foreground colour uint8 HxWx3)."""
    alpha, fg = mask, rgb
    if edges.post_process_mask:
        alpha = post_process(alpha)
    if edges.mask_grow:
        alpha = grow(alpha, edges.mask_grow)
    if edges.vitmatte:
        from bgrm import vitmatte

        alpha = vitmatte.refine(rgb, alpha, vitmatte.model_path(edges.vitmatte_model), matting)
    elif matting.enabled:
        from bgrm.matte import matte

        alpha, fg = matte(rgb, alpha, matting)
    if edges.mask_feather:
        alpha = feather(alpha, edges.mask_feather)
    # ViTMatte predicts coverage only: its soft pixels still hold the old
    # background's colour, so (as in rembg) it is always followed by the unmixing.
    if edges.decontaminate or edges.vitmatte:
        fg = decontaminate(rgb, alpha)
    return alpha, fg


def import_early(matting: MattingOptions, edges: EdgeOptions) -> None:
    """Start importing scipy's sparse solver (~0.4 s) on a thread when the matte
    will need it, so it overlaps the decode and the model instead of following them."""
    if matting.enabled and not edges.vitmatte:
        import importlib
        import threading

        threading.Thread(target=importlib.import_module, args=("scipy.sparse.linalg",),
                         name="bgrm-import", daemon=True).start()


def post_process(mask: np.ndarray) -> np.ndarray:
    """rembg's ``post_process``: opening by a radius-1 disk, Gaussian blur (sigma 2),
    threshold at 127 -> a hard 0/255 mask without specks or jagged edges.

    skimage's ``opening(mask, disk(1))`` is scipy's grey opening with the same
    3x3 cross and reflected borders; scipy is a dependency, skimage is not.
    """
    from scipy.ndimage import gaussian_filter, grey_opening

    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
    opened = grey_opening(mask, footprint=cross)
    blurred = gaussian_filter(opened.astype(np.float64), sigma=2)
    return np.where(blurred < 127, 0, 255).astype(np.uint8)


def grow(mask: np.ndarray, px: int) -> np.ndarray:
    """Move the mask's edge ``px`` pixels outward (negative: inward), soft edge kept.

    A grey dilation (erosion) by a near-disk: ``|px|`` steps of 3x3 maximum,
    about 41% of them by the square and the rest by the cross, give an
    octagon whose reach is ``|px|`` along the axes and along the diagonals
    alike. Each step is a few whole-array maxima, so the cost is linear in the
    pixels and in ``px``, unlike a disk footprint (quadratic in ``px``).
    Outside the image counts as background when growing and as subject when
    shrinking, so a subject cut by the frame's edge is not eaten from there.
    """
    if px == 0:
        return mask
    out = mask if px > 0 else 255 - mask
    r = abs(px)
    squares = round(r * (math.sqrt(2) - 1))
    for step in range(r):
        # Spread the squares evenly among the crosses.
        square = (step + 1) * squares // r > step * squares // r
        out = _max3(out, square)
    return out if px > 0 else 255 - out


def _max3(a: np.ndarray, square: bool) -> np.ndarray:
    """3x3 maximum filter (square or cross footprint), zero beyond the border."""
    rows = a.copy()
    np.maximum(rows[1:], a[:-1], out=rows[1:])
    np.maximum(rows[:-1], a[1:], out=rows[:-1])
    if square:
        out = rows.copy()
        np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
        np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
        return out
    np.maximum(rows[:, 1:], a[:, :-1], out=rows[:, 1:])
    np.maximum(rows[:, :-1], a[:, 1:], out=rows[:, :-1])
    return rows


def feather(mask: np.ndarray, px: int) -> np.ndarray:
    """Soften the edge over about ``px`` pixels each side: a Gaussian blur with
    standard deviation ``px / 2``. Pixels farther than ~2 ``px`` from an edge
    keep their value (the weight beyond 4 sigma rounds away)."""
    if px <= 0:
        return mask
    blurred = Image.fromarray(mask).filter(ImageFilter.GaussianBlur(px / 2))
    return np.asarray(blurred)


def _soft_box(soft: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the True pixels, bottom/right exclusive."""
    rows = np.flatnonzero(soft.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(soft.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def decontaminate(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The foreground colour of soft pixels without the old background's colour.

    F and B are estimated on the soft pixels' box (``DECONTAMINATE_SIZE``); a soft
    pixel becomes I + (1-a)(F-B), its hue bounded (``_bound_hue``) and background
    left in it removed (``_Spill``); other pixels are unchanged. See docs/edges.md."""
    from bgrm.foreground import estimate
    from bgrm.matte import erode, resize

    soft = (alpha > 0) & (alpha < 255)
    box = _soft_box(soft)
    fg = rgb.copy()
    if box is None:
        return fg
    top, bottom, left, right = box
    h, w = alpha.shape
    scale = min(1.0, DECONTAMINATE_SIZE / max(bottom - top, right - left))
    margin = math.ceil(_DECONTAMINATE_MARGIN / scale)
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(h, bottom + margin), min(w, right + margin)
    sub_rgb, sub_alpha = rgb[top:bottom, left:right], alpha[top:bottom, left:right]
    bw, bh = right - left, bottom - top
    small = (max(1, round(bw * scale)), max(1, round(bh * scale)))
    small_rgb = resize(sub_rgb, small, Image.Resampling.BOX if scale < 1
                        else Image.Resampling.BILINEAR)
    small_alpha = resize(sub_alpha, small)
    # The subject's own colour comes from its opaque pixels a few pixels in
    # from the edge: the mask's outer rim of "opaque" pixels still holds spill.
    opaque = erode(small_alpha >= _SUBJECT, _SUBJECT_INSET, border=False)
    f, b = estimate(small_rgb / 255.0, small_alpha / 255.0)
    # No (nearly) opaque pixel in the box: no subject colour to bound by but F's own.
    ref = estimate(small_rgb / 255.0, opaque.astype(np.float64))[0] if opaque.any() else f
    delta = ((f - b) * 255).astype(np.float32)
    delta = _bound_hue(delta, small_rgb, small_alpha, ref * 255)
    spill = _Spill(ref * 255, b * 255)
    # Bilinear upscaling, separable: across first (small rows x box width),
    # then each strip of full-size rows, so no full-size float image is held.
    # In-place arithmetic: this loop is most of the step's time at 12 MP.
    x0, x1, fx = _bilinear_taps(bw, delta.shape[1])
    across = delta[:, x0] * (1 - fx)[None, :, None]
    across += delta[:, x1] * fx[None, :, None]
    y0, y1, fy = _bilinear_taps(bh, delta.shape[0])
    # The estimate's pixel nearest each full-size row and column.
    near_y = np.round(y0 + fy).astype(np.intp)
    runs = np.bincount(np.round(x0 + fx).astype(np.intp), minlength=delta.shape[1])
    out = fg[top:bottom, left:right]

    def strip(r0: int) -> None:
        r1 = min(bh, r0 + _STRIP)
        colour = across[y0[r0:r1]]
        step = across[y1[r0:r1]]
        step -= colour
        step *= fy[r0:r1, None, None]
        colour += step  # (F - B) * 255 at full size
        colour *= (255 - sub_alpha[r0:r1, :, None]).astype(np.float32) * (1 / 255)
        colour += sub_rgb[r0:r1]
        spill.remove(colour, near_y[r0:r1], runs)
        colour += 0.5
        np.clip(colour, 0, 255, out=colour)
        np.copyto(out[r0:r1], colour.astype(np.uint8),
                  where=soft[top + r0:top + r1, left:right, None])

    for r0 in range(0, bh, _STRIP):
        strip(r0)
    return fg


def _chroma(colour: np.ndarray) -> np.ndarray:
    """A colour less its grey (the mean of its channels): its hue and saturation."""
    return colour - colour.mean(axis=2, keepdims=True)


# Below this distance (levels) between the background's chroma and the
# subject's there is no direction to call the background's.
_SPILL_MIN = 8.0
# A colour this far past the subject's chroma (levels, towards the old
# background's) is still taken as the subject's own.
_SPILL_KEEP = 5.0


class _Spill:
    """The old background's colour left in soft pixels where the network's alpha
    is above the true coverage, and its removal.

    There (valleys between strands that the mask fills) unmixing removes only
    (1-a) of a background that holds more of the pixel, and green stays where
    the colour should be the fur's. The part of a pixel's chroma that lies
    more than ``_SPILL_KEEP`` past the subject's own (the reference) towards
    the old background's (B of the estimate) is taken out; its brightness
    stays (the direction sums to 0 over the channels). Both are smooth: they
    are read at the estimate's pixel nearest each full-size pixel.
    """

    def __init__(self, subject: np.ndarray, background: np.ndarray):
        # Channel by channel (numpy's reductions over an axis of 3 are slow).
        away = [background[..., c] - subject[..., c] for c in range(3)]
        grey = (away[0] + away[1] + away[2]) / 3
        away = [a - grey for a in away]  # the chroma of B less the subject's
        length = np.sqrt(away[0] ** 2 + away[1] ** 2 + away[2] ** 2)
        scale = np.divide(1.0, length, out=np.zeros_like(length), where=length > _SPILL_MIN)
        unit = [a * scale for a in away]
        # Per estimate pixel, as four planes: the unit direction, and how far
        # along it a colour may go (the subject's own place plus the tolerance;
        # the unit sums to 0, so a colour's own place is its chroma's).
        limit = sum(subject[..., c] * unit[c] for c in range(3)) + _SPILL_KEEP
        self.planes = [np.ascontiguousarray(p, dtype=np.float32) for p in (*unit, limit)]

    def remove(self, colour: np.ndarray, near_y: np.ndarray, runs: np.ndarray) -> None:
        """In place, on a strip of full-size rows: ``near_y`` their estimate rows,
        ``runs`` how many full-size columns each estimate column is nearest to."""
        # Whole rows repeated: contiguous copies, no per-pixel gathers.
        *unit, limit = (np.repeat(p[near_y], runs, axis=1) for p in self.planes)
        past = colour[..., 0] * unit[0]
        past += colour[..., 1] * unit[1]
        past += colour[..., 2] * unit[2]
        past -= limit
        np.maximum(past, 0, out=past)
        for c in range(3):
            unit[c] *= past
            colour[..., c] -= unit[c]


def _bound_hue(delta: np.ndarray, rgb: np.ndarray, alpha: np.ndarray,
               reference: np.ndarray) -> np.ndarray:
    """F-B (x255) with its chroma scaled down per channel wherever adding
    (1-a)(F-B) would move the pixel's chroma past the reference's.

    At the estimate's scale; the same factors then apply to every full-size
    pixel the upscaling brings them to, whatever its own alpha. The grey part
    of F-B (brightness) is kept whole.
    """
    grey = delta.mean(axis=2, keepdims=True)
    chroma = delta - grey
    move = chroma * (1 - alpha[..., None] / 255.0)
    room = _chroma(reference) - _chroma(rgb.astype(np.float64))
    bounded = np.clip(move, np.minimum(room, 0), np.maximum(room, 0))
    factor = np.divide(bounded, move, out=np.ones_like(move), where=np.abs(move) > 1e-3)
    return (grey + chroma * factor).astype(np.float32)


# Full-size rows upscaled at a time in ``decontaminate``: ~12 MB of floats at 4000 px wide.
_STRIP = 256


def _bilinear_taps(big: int, small: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``big`` output pixels: the two ``small`` source pixels and the
    weight of the second, with pixel centres mapped as Pillow's BILINEAR resize."""
    s = np.clip((np.arange(big) + 0.5) * (small / big) - 0.5, 0, small - 1)
    i0 = s.astype(np.intp)
    return i0, np.minimum(i0 + 1, small - 1), (s - i0).astype(np.float32)


def subject_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of alpha above ``CROP_THRESHOLD``; None if nothing is."""
    box = _soft_box(alpha > CROP_THRESHOLD)
    if box is None:
        return None
    top, bottom, left, right = box
    return left, top, right, bottom


def union(a: tuple[int, int, int, int] | None,
          b: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
    """The smallest box holding both (video: one box for the whole clip)."""
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def crop_box(box: tuple[int, int, int, int] | None, margin: int,
             size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``box`` plus ``margin`` each side, clamped to ``size`` (w, h), as
    (left, top, right, bottom); the whole picture when there is no subject."""
    w, h = size
    if box is None:
        return 0, 0, w, h
    left, top, right, bottom = box
    return (max(0, left - margin), max(0, top - margin),
            min(w, right + margin), min(h, bottom + margin))
