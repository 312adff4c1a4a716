"""Compile pymatting's numba code once, at install, so no user run pays ~50 s.

Run by ``make install`` (``python -m bgrm.warm``); numba keeps the result in
its on-disk cache beside pymatting.
"""

import numpy as np


def warm() -> None:
    from bgrm.matte import matte
    from bgrm.options import MattingOptions

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[16:48, 16:48] = 255
    mask[14:50, 14:50] = np.maximum(mask[14:50, 14:50], 128)
    matte(rgb, mask, MattingOptions(enabled=True, erode=3))


if __name__ == "__main__":
    warm()
