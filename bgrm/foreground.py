"""Foreground and background colours behind a matte, in numpy.

The multi-level estimate of Germer et al. (pymatting's ``estimate_foreground_ml``,
with its defaults): F and B start as the mean colours of the opaque and the
clear pixels, then on images growing from 1x1 to full size each pixel's F and
B solve its 2x2 least-squares problem (I = aF + (1-a)B, with F and B close to
the neighbours' where alpha is smooth). pymatting sweeps the pixels in raster
order (Gauss-Seidel) in compiled code; here the sweep is red-black, a whole
colour of the checkerboard at a time, so it is a few array operations and needs
neither numba nor a lock against numba's threading layer.
"""

from __future__ import annotations

import math

import numpy as np

_REGULARIZATION = 1e-5
_SMALL_ITERATIONS = 10  # on levels no larger than _SMALL_SIZE in both sides
_BIG_ITERATIONS = 2
_SMALL_SIZE = 32
_GRADIENT_WEIGHT = 1.0


def estimate(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RGB (HxWx3, 0..1) and alpha (HxW, 0..1) -> (F, B), float32 HxWx3 in 0..1."""
    image = np.asarray(image, dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    h0, w0 = alpha.shape
    opaque, clear = alpha > 0.9, alpha < 0.1
    f = (image[opaque].sum(axis=0) / (opaque.sum() + 1e-5)).astype(np.float32)[None, None]
    b = (image[clear].sum(axis=0) / (clear.sum() + 1e-5)).astype(np.float32)[None, None]
    levels = max(1, math.ceil(math.log2(max(w0, h0))))
    for level in range(levels + 1):
        w, h = round(w0 ** (level / levels)), round(h0 ** (level / levels))
        ys, xs = _nearest(h0, h), _nearest(w0, w)
        img, a = image[ys][:, xs], alpha[ys][:, xs]
        f = f[_nearest(f.shape[0], h)][:, _nearest(f.shape[1], w)]
        b = b[_nearest(b.shape[0], h)][:, _nearest(b.shape[1], w)]
        sweeps = _SMALL_ITERATIONS if w <= _SMALL_SIZE and h <= _SMALL_SIZE else _BIG_ITERATIONS
        f, b = _relax(img, a, f, b, sweeps)
    return f, b


def _nearest(src: int, dst: int) -> np.ndarray:
    """pymatting's nearest-neighbour source index for each of ``dst`` pixels."""
    return np.minimum(np.arange(dst) * src // dst, src - 1)


def _relax(img: np.ndarray, a: np.ndarray, f: np.ndarray, b: np.ndarray,
           sweeps: int) -> tuple[np.ndarray, np.ndarray]:
    """``sweeps`` red-black sweeps of the per-pixel 2x2 solve at one level."""
    h, w = a.shape
    # F and B as six planes (channels first, so every operation runs along
    # rows), with a one-pixel border repeating the edge: pymatting clamps
    # neighbours at the edge.
    fb = np.empty((6, h + 2, w + 2), dtype=np.float32)
    fb[:3, 1:-1, 1:-1], fb[3:, 1:-1, 1:-1] = f.transpose(2, 0, 1), b.transpose(2, 0, 1)
    _repeat_edge(fb)
    padded = np.pad(a, 1, mode="edge")
    # Neighbour weights (left, right, up, down): regularisation plus alpha's
    # gradient keeps colours flat where alpha is flat and lets them change
    # across its edges.
    weights = [_REGULARIZATION + _GRADIENT_WEIGHT * np.abs(a - padded[s])
               for s in ((slice(1, -1), slice(0, -2)), (slice(1, -1), slice(2, None)),
                         (slice(0, -2), slice(1, -1)), (slice(2, None), slice(1, -1)))]
    a1 = 1.0 - a
    total = sum(weights)
    a00, a11, a01 = a * a + total, a1 * a1 + total, a * a1
    inv_det = 1.0 / (a00 * a11 - a01 * a01)
    planes = img.transpose(2, 0, 1)
    # Per pixel: [F, B] = inverse([[a00, a01], [a01, a11]]) [aI + nF, (1-a)I + nB],
    # nF and nB the weighted sums of the neighbours' F and B.
    per_pixel = [a11 * inv_det, -a01 * inv_det, a00 * inv_det, *weights]
    own = np.concatenate([a * planes, a1 * planes])
    # The four sub-grids of every other row and column: (0, 0) and (1, 1) are
    # the red squares, whose neighbours are all black, and the other way round.
    lattices = [_Lattice(py, px, h, w, per_pixel, own) for py, px in ((0, 0), (1, 1), (0, 1), (1, 0))]
    for _ in range(sweeps):
        for colour in (lattices[:2], lattices[2:]):
            for lattice in colour:
                lattice.update(fb)
            _repeat_edge(fb)
    inner = fb[:, 1:-1, 1:-1]
    return inner[:3].transpose(1, 2, 0).copy(), inner[3:].transpose(1, 2, 0).copy()


class _Lattice:
    """Every other pixel from (py, px): its coefficients, and where its own and
    its four neighbours' values sit in the bordered F and B planes."""

    def __init__(self, py: int, px: int, h: int, w: int, per_pixel: list, own: np.ndarray):
        sub = (slice(py, None, 2), slice(px, None, 2))
        self.c_ff, self.c_fb, self.c_bb, *self.weights = (x[sub] for x in per_pixel)
        self.own = own[(slice(None), *sub)]
        rows, cols = slice(1 + py, h + 1, 2), slice(1 + px, w + 1, 2)
        self.centre = (slice(None), rows, cols)
        self.around = [(slice(None), rows, slice(px, w, 2)), (slice(None), rows, slice(2 + px, w + 2, 2)),
                       (slice(None), slice(py, h, 2), cols), (slice(None), slice(2 + py, h + 2, 2), cols)]

    def update(self, fb: np.ndarray) -> None:
        n = self.own + self.weights[0] * fb[self.around[0]]
        for wgt, at in zip(self.weights[1:], self.around[1:], strict=True):
            n += wgt * fb[at]
        new = np.empty_like(n)
        np.multiply(self.c_ff, n[:3], out=new[:3])
        new[:3] += self.c_fb * n[3:]
        np.multiply(self.c_fb, n[:3], out=new[3:])
        new[3:] += self.c_bb * n[3:]
        np.clip(new, 0.0, 1.0, out=fb[self.centre])


def _repeat_edge(x: np.ndarray) -> None:
    x[:, 0], x[:, -1] = x[:, 1], x[:, -2]
    x[:, :, 0], x[:, :, -1] = x[:, :, 1], x[:, :, -2]
