"""ViTMatte edge refinement, as rembg's ``matting.py`` does it.

The network takes the photo and a trimap (0 background, 128 unknown, 255
foreground, made from the mask with alpha_fg / alpha_bg / alpha_erode)
stacked as four channels scaled to 0..1, at a fixed 1024x1024: the VitDet
backbone's position tables are built for that size, so an export with
dynamic sides gives wrong alphas at any other. The alpha comes back at
1024x1024 and is resized to the photo's size. It predicts coverage only;
``bgrm.edges.refine`` unmixes the colour afterwards.

This module takes the ONNX file's path; which file a checkpoint name means
(and whether its checksum is right) is bgrm.models' business.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from bgrm.options import MattingOptions

INPUT_SIZE = 1024
_SESSION_LOCK = threading.Lock()


def model_path(variant: str | None) -> Path:
    """The verified checkpoint file for ``variant`` (None: rembg's default)."""
    from bgrm.models import verified_path
    from bgrm.options import VITMATTE_DEFAULT

    return verified_path(f"vitmatte-{variant or VITMATTE_DEFAULT}")


@lru_cache(maxsize=2)
def _session(path: Path, mtime_ns: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Other work (decoding, the segmenter, encoding) shares the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session(path: Path):
    """One onnxruntime session per file, reloaded if the file is replaced."""
    with _SESSION_LOCK:
        return _session(Path(path), Path(path).stat().st_mtime_ns)


def refine(rgb: np.ndarray, mask: np.ndarray, path: Path, opts: MattingOptions) -> np.ndarray:
    """Full-size RGB and mask -> ViTMatte's alpha (uint8 HxW) at full size."""
    from bgrm.matte import trimap

    h, w = mask.shape
    tri = trimap(mask, opts)
    # Bilinear for the photo, nearest for the trimap: interpolating the
    # trimap would invent values between its three levels.
    image = np.asarray(Image.fromarray(rgb).resize((INPUT_SIZE, INPUT_SIZE),
                                                   Image.Resampling.BILINEAR), dtype=np.float32)
    tri_in = np.asarray(Image.fromarray(tri).resize((INPUT_SIZE, INPUT_SIZE),
                                                    Image.Resampling.NEAREST), dtype=np.float32)
    pixels = np.concatenate([(image / 255.0).transpose(2, 0, 1), (tri_in / 255.0)[None]],
                            axis=0)[None].astype(np.float32)
    out = session(path).run(None, {"pixel_values": pixels})[0]
    # rembg truncates (astype, not rounding) before its resize; so do we, to match it.
    alpha = (np.clip(out[0, 0], 0.0, 1.0) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(alpha).resize((w, h), Image.Resampling.BILINEAR))
