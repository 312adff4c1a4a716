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
    rgba = np.empty(alpha.shape + (4,), dtype=np.uint8)
    # A multiply by 0/1, not rgba[alpha == 0] = 0: boolean indexing of a 12 MP
    # frame costs 0.2-0.4 s, this 0.1 s, for the same pixels.
    np.multiply(fg, (alpha != 0)[..., None], out=rgba[..., :3], casting="unsafe")
    rgba[..., 3] = alpha
    return rgba


def over(fg: np.ndarray, alpha: np.ndarray, bg) -> np.ndarray:
    """Blend ``fg`` over ``bg`` (an (r, g, b) colour or an HxWx3 array) -> opaque RGB."""
    a = alpha.astype(np.uint16)[..., None]
    back = np.asarray(bg, dtype=np.uint16)
    out = (fg.astype(np.uint16) * a + back * (255 - a) + 127) // 255
    return out.astype(np.uint8)


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
