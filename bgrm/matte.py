"""Alpha matting at alpha_base_size: trimap, closed-form matte, foreground colour.

rembg solves the matte at full resolution (87 s and 7.2 GB for a 12 MP photo).
The API's alpha_base_size says at what size to solve it instead: the image is
scaled so its longer side is at most that, the matte is solved only over the
bounding box of the unknown band, and the result is brought back to full size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from bgrm.options import MattingOptions

# The Laplacian's windows reach one pixel around each unknown pixel; a few
# more keep the crop's border well inside known pixels.
_CROP_MARGIN = 4
# The closed-form Laplacian's regularisation: rembg's (pymatting's default).
_EPSILON = 1e-7


def trimap(mask: np.ndarray, opts: MattingOptions) -> np.ndarray:
    """Mask (uint8) -> trimap (uint8: 0 background, 128 unknown, 255 foreground)."""
    is_fg = erode(mask > opts.fg, opts.erode, border=False)
    is_bg = erode(mask < opts.bg, opts.erode, border=True)
    out = np.full(mask.shape, 128, dtype=np.uint8)
    out[is_fg] = 255
    out[is_bg] = 0
    return out


def erode(b: np.ndarray, n: int, border: bool) -> np.ndarray:
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


def resize(arr: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BILINEAR):
    """``arr`` (uint8 or bool, HxW or HxWxC) at ``size`` (width, height); as is when it fits."""
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


def solve(rgb: np.ndarray, tri: np.ndarray, mask: np.ndarray):
    """Closed-form matte over the unknown band of ``tri``.

    Returns (alpha float32 HxW in 0..1, foreground-minus-background float32
    HxWx3), both at the size of ``rgb``. The matte is rembg's: pymatting's
    ``estimate_alpha_cf`` (Levin et al., windows of 3x3, epsilon 1e-7), here
    solved exactly by a sparse LU factorisation instead of conjugate gradients.
    """
    from bgrm.foreground import estimate

    alpha = (tri == 255).astype(np.float32)
    delta = np.zeros(rgb.shape, dtype=np.float32)
    box = _unknown_box(tri)
    if box is None:
        return alpha, delta
    img = rgb[box].astype(np.float64) / 255.0
    sub_tri = tri[box]
    # The network's own soft mask over the band: the answer wherever the
    # closed-form matte cannot be had.
    sub_alpha = np.where(sub_tri == 128, mask[box] / 255.0, sub_tri / 255.0)
    # Without both a sure foreground and a sure background the matte has
    # nothing to anchor it (rembg gives up there too).
    if (sub_tri == 255).any() and (sub_tri == 0).any() and min(sub_tri.shape) >= 3:
        unknown = _solve_band(img, sub_tri)
        if unknown is not None:
            sub_alpha[sub_tri == 128] = unknown
    fg, bg = estimate(img, sub_alpha)
    alpha[box] = sub_alpha
    delta[box] = fg - bg
    return alpha, delta


def _solve_band(img: np.ndarray, tri: np.ndarray) -> np.ndarray | None:
    """The unknown pixels' alpha (raster order), or None where the system is singular."""
    from scipy.sparse.linalg import splu

    matrix, rhs = _laplacian_system(img, tri)
    try:
        # The matrix is symmetric, and definite but badly conditioned (epsilon
        # 1e-7 in flat colour): a fill-reducing symmetric ordering and no
        # pivoting for size keep the factor small and the order symmetric.
        # (Cholesky proper fails on rounding; LU without row swaps does not.)
        # SuperLU releases the GIL, so video frames matted on threads overlap.
        factor = splu(matrix, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                      options={"SymmetricMode": True})
        x = factor.solve(rhs)
    except RuntimeError:  # "Factor is exactly singular"
        return None
    if not np.isfinite(x).all():
        return None
    return np.clip(x, 0.0, 1.0)


# Each pixel pair (k, l) of a 3x3 window as a step in the 5x5 neighbourhood of
# k: the column of a row's 25 possible entries that the pair adds to.
_KY, _KX = np.divmod(np.arange(9), 3)
_PAIR = (_KY[None, :] - _KY[:, None] + 2) * 5 + (_KX[None, :] - _KX[:, None] + 2)


def _laplacian_system(img: np.ndarray, tri: np.ndarray):
    """The matting Laplacian's unknown rows, as pymatting's ``cf_laplacian``
    and ``estimate_alpha_cf`` make them: (L_UU as a CSC matrix, -L_UK m) with
    m 1 on sure foreground, 0 on sure background.

    Built only from the 3x3 windows that hold an unknown pixel: those are the
    only ones that add to an unknown row, so the rest of the box costs nothing.
    """
    import scipy.sparse

    h, w = tri.shape
    unknown = tri == 128
    n_u = int(unknown.sum())
    # Each pixel's place among the unknowns; known pixels share one spare row
    # whose sums are dropped.
    number = np.full(h * w, n_u, dtype=np.int64)
    number[unknown.ravel()] = np.arange(n_u)
    touched = np.zeros((h - 2, w - 2), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            touched |= unknown[dy:dy + h - 2, dx:dx + w - 2]
    cy, cx = np.nonzero(touched)
    steps = np.array([dy * w + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    pixels = ((cy + 1) * w + (cx + 1))[:, None] + steps[None, :]  # windows x 9
    values = _window_values(img.reshape(-1, 3)[pixels])
    rows = number[pixels]
    keys = rows[:, :, None] * 25 + _PAIR[None]
    # Summed window by window in raster order, as pymatting sums them.
    entries = np.bincount(keys.ravel(), weights=values.ravel(),
                          minlength=(n_u + 1) * 25)[:n_u * 25].reshape(n_u, 25)
    sy, sx = np.divmod(np.arange(25), 5)
    where = np.flatnonzero(unknown.ravel())[:, None] + ((sy - 2) * w + (sx - 2))[None, :]
    np.clip(where, 0, h * w - 1, out=where)  # steps off the box carry no entry
    cols = number[where]
    known = cols == n_u
    to_fg = np.where(known & (tri.ravel() == 255)[where], entries, 0.0)
    rhs = to_fg[:, 0].copy()
    for k in range(1, 25):  # in column order, as the sparse product adds them
        rhs += to_fg[:, k]
    rhs = -rhs
    keep = ~known & (entries != 0)
    indptr = np.zeros(n_u + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    # Rows in raster order with their columns ascending: a valid CSR matrix,
    # and as the matrix is symmetric, its transpose is the CSC one.
    matrix = scipy.sparse.csc_matrix((entries[keep], cols[keep], indptr), shape=(n_u, n_u))
    return matrix, rhs


def _window_values(colors: np.ndarray) -> np.ndarray:
    """Each window's 9x9 block of the Laplacian, [k == l] - (1 + (I_k - mu)
    inverse(S) (I_l - mu)) / 9, S being the window's colour covariance plus
    epsilon / 9.

    S and its inverse are pymatting's sum for sum and expression for
    expression: in a grey window S is singular but for epsilon, its
    determinant and cofactors are mostly rounding, and rembg's matte follows
    that rounding. Summed or inverted otherwise (even exactly) the matte of a
    grey photo moved up to 50/255 from rembg's.
    """
    total = colors[:, 0]
    for k in range(1, 9):
        total = total + colors[:, k]
    c = colors - (total / 9.0)[:, None, :]

    def moment(p: int, q: int, start: float) -> np.ndarray:
        acc = start + c[:, 0, p] * c[:, 0, q]
        for k in range(1, 9):
            acc = acc + c[:, k, p] * c[:, k, q]
        return acc / 9.0

    a00, a01, a02 = moment(0, 0, _EPSILON), moment(0, 1, 0.0), moment(0, 2, 0.0)
    a11, a12, a22 = moment(1, 1, _EPSILON), moment(1, 2, 0.0), moment(2, 2, _EPSILON)
    det = (a00 * a12 * a12 + a01 * a01 * a22 + a02 * a02 * a11
           - a00 * a11 * a22 - 2 * a01 * a02 * a12)
    inv_det = 1.0 / det
    inverse = np.empty((len(c), 3, 3))
    inverse[:, 0, 0] = (a12 * a12 - a11 * a22) * inv_det
    inverse[:, 0, 1] = inverse[:, 1, 0] = (a01 * a22 - a02 * a12) * inv_det
    inverse[:, 0, 2] = inverse[:, 2, 0] = (a02 * a11 - a01 * a12) * inv_det
    inverse[:, 1, 1] = (a02 * a02 - a00 * a22) * inv_det
    inverse[:, 1, 2] = inverse[:, 2, 1] = (a00 * a12 - a01 * a02) * inv_det
    inverse[:, 2, 2] = (a01 * a01 - a00 * a11) * inv_det
    values = np.matmul(np.matmul(c, inverse), c.transpose(0, 2, 1))
    values += 1.0
    values /= -9.0
    values[:, np.arange(9), np.arange(9)] += 1.0
    return values


def matte(rgb: np.ndarray, mask: np.ndarray, opts: MattingOptions):
    """Full-size RGB and mask -> (alpha uint8 HxW, foreground uint8 HxWx3).

    The matte is solved at alpha_base_size and brought back to full size. The
    foreground colour uses I = aF + (1-a)B, so F = I + (1-a)(F-B): the image's
    own full-resolution pixels plus a smooth low-resolution correction, which
    takes the old background's colour out of soft edges without blurring them.
    """
    h, w = mask.shape
    scale = min(1.0, opts.base_size / max(h, w))
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_rgb = resize(rgb, small, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    small_mask = resize(mask, small)
    alpha_s, delta_s = solve(small_rgb, trimap(small_mask, opts), small_mask)
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
