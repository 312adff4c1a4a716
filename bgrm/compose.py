"""Putting the subject on its new background: cutout, mask, colour or picture.

All functions take and give uint8 numpy arrays (HxWx3 colour, HxW alpha), so
the image job and every video format share them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def cutout(fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA with straight (not premultiplied) alpha.

    Fully transparent pixels are zeroed: the removed background must not be
    recoverable from the file, and zeros compress better.
    """
    # Pillow interleaves the four channels in one C pass (and without the GIL);
    # numpy's strided writes into rgba[..., :3] and rgba[..., 3] cost 3x more.
    picture = Image.fromarray(fg)
    picture.putalpha(Image.fromarray(alpha))
    rgba = np.empty(alpha.shape + (4,), dtype=np.uint8)
    # The zeroing as one multiply of whole 32-bit pixels by 0/1 while copying
    # out of Pillow, not rgba[alpha == 0] = 0: boolean indexing of a 12 MP
    # frame costs 0.2-0.4 s.
    np.multiply(np.asarray(picture).view(np.uint32).reshape(alpha.shape), alpha != 0,
                out=rgba.view(np.uint32).reshape(alpha.shape), casting="unsafe")
    return rgba


def over(fg: np.ndarray, alpha: np.ndarray, bg) -> np.ndarray:
    """Blend ``fg`` over ``bg`` (an (r, g, b) colour or an HxWx3 array) -> opaque RGB.

    Each channel is round((fg * a + bg * (255 - a)) / 255), computed exactly
    in uint16 as bg * 255 + 128 + (fg - bg) * a (the difference wraps, the sum
    does not) and then divided by 255 with shifts, t + (t >> 8) >> 8, which is
    exact for t up to 65153. Row bands of ~2**18 values keep the temporaries in
    cache, and each row is one long run of r, g, b values (the alpha repeated
    three times), not pixels of 3: numpy's inner loops over 3 values cost 4x.
    """
    h, w = alpha.shape
    out = np.empty((h, w, 3), dtype=np.uint8)
    back = np.asarray(bg, dtype=np.uint8)
    colour = back.ndim == 1
    fg_rows, out_rows = fg.reshape(h, w * 3), out.reshape(h, w * 3)
    if colour:
        back_row = np.tile(back.astype(np.uint16), w)
        base_row = back_row * 255 + 128
    else:
        back_rows = back.reshape(h, w * 3)
    band = max(1, 2**18 // (w * 3))
    for y in range(0, h, band):
        rows = slice(y, y + band)
        a = np.repeat(alpha[rows], 3, axis=1)
        if colour:
            t = np.subtract(fg_rows[rows], back_row, dtype=np.uint16)
            t *= a
            t += base_row
        else:
            b = back_rows[rows]
            t = np.subtract(fg_rows[rows], b, dtype=np.uint16)
            t *= a
            t += np.multiply(b, 255, dtype=np.uint16)
            t += 128
        t += t >> 8
        t >>= 8
        np.copyto(out_rows[rows], t, casting="unsafe")
    return out


def matte_key(alpha: np.ndarray) -> np.ndarray:
    """White subject on black, as RGB."""
    return np.repeat(alpha[..., None], 3, axis=2)


def cover(picture: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Scale ``picture`` to cover ``size`` (w, h), centred and cropped, as RGB."""
    w, h = size
    pw, ph = picture.size
    scale = max(w / pw, h / ph)
    sw, sh = max(w, round(pw * scale)), max(h, round(ph * scale))
    left, top = (sw - w) // 2, (sh - h) // 2
    scaled = picture.convert("RGB").resize((sw, sh), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(scaled.crop((left, top, left + w, top + h)))
