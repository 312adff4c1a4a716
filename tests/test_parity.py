"""bgrm's masks match rembg's for the same model (u2netp) on real photos.

`bgrm image --only-mask` (the real CLI) against rembg's
``remove(img, session=new_session("u2netp"), only_mask=True)``: IoU at 127 of at
least 0.98 and a mean absolute difference of at most 4/255. rembg is pointed at
a copy of the bundled model and sockets are blocked, so nothing is downloaded.

Figures: ``pytest tests/test_parity.py -s`` prints them, one line per photo.
"""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest
from PIL import Image

from bgrm.models import REGISTRY, bundled_path

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
UPSCALED = "rocket_x3.png"  # past Lanczos' reducing gap: the resize path of large photos
MIN_IOU = 0.98
MAX_MAD = 4 / 255


@pytest.fixture(scope="module")
def photos(photo_folder):
    return photo_folder(3)  # PHOTOS and UPSCALED


@pytest.fixture(scope="module")
def bgrm_masks(photos, tmp_path_factory):
    """All photos through one `bgrm image --only-mask` run, as the user would."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("parity-out")
    env = dict(os.environ, BGRM_MODELS=str(tmp_path_factory.mktemp("no-models")))
    env.pop("U2NET_HOME", None)
    names = [*PHOTOS, UPSCALED]
    proc = subprocess.run([sys.executable, "-m", "bgrm", "image", "--model", "u2netp",
                           "--only-mask", "--jobs", "1", "-o", str(out),
                           *(str(photos / n) for n in names)],
                          capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    return {n: out / (n.rsplit(".", 1)[0] + "_processed.png") for n in names}


@pytest.fixture(scope="module")
def rembg_session(tmp_path_factory):
    """rembg's u2netp session on a copy of the bundled file, with no way to download."""
    home = tmp_path_factory.mktemp("rembg-home")
    spec = REGISTRY["u2netp"]
    (home / "models" / "u2netp").mkdir(parents=True)
    shutil.copy(bundled_path(spec), home / "models" / "u2netp" / spec.filename)
    mp = pytest.MonkeyPatch()
    mp.setenv("REMBG_HOME", str(home))
    mp.delenv("U2NET_HOME", raising=False)
    mp.delenv("XDG_DATA_HOME", raising=False)
    from rembg import new_session

    try:
        with _no_network(mp):
            session = new_session("u2netp")
        yield session
    finally:
        mp.undo()


class _no_network:
    """Any connection attempt fails loudly (rembg would reach for GitHub)."""

    def __init__(self, mp: pytest.MonkeyPatch):
        self.mp = mp

    def __enter__(self):
        def refuse(*args, **kwargs):
            raise AssertionError(f"network access attempted: {args!r}")

        self.mp.setattr(socket.socket, "connect", refuse)
        self.mp.setattr(socket.socket, "connect_ex", refuse)
        self.mp.setattr(socket, "create_connection", refuse)
        self.mp.setattr(socket, "getaddrinfo", refuse)
        return self

    def __exit__(self, *exc):
        self.mp.undo()


@pytest.mark.parametrize("name", [*PHOTOS, UPSCALED])
def test_only_mask_matches_rembg(name, photos, bgrm_masks, rembg_session, tmp_path, monkeypatch):
    from rembg import remove

    ours_img = Image.open(bgrm_masks[name])
    assert ours_img.mode == "L"
    with _no_network(monkeypatch):
        theirs_img = remove(Image.open(photos / name), session=rembg_session, only_mask=True)
    ours = np.asarray(ours_img).astype(np.int16)
    theirs = np.asarray(theirs_img.convert("L")).astype(np.int16)
    assert ours.shape == theirs.shape
    a, b = ours > 127, theirs > 127
    iou = float((a & b).sum() / max((a | b).sum(), 1))
    mad = float(np.abs(ours - theirs).mean())
    print(f"\nparity {name} {ours.shape[1]}x{ours.shape[0]}: IoU@127 {iou:.5f}, "
          f"MAD {mad:.3f}/255, max diff {int(np.abs(ours - theirs).max())}")
    if iou < MIN_IOU or mad > MAX_MAD * 255:
        # Keep both masks for a look, as rembg's own tests do.
        ours_img.save(tmp_path / f"bgrm_{name}.png")
        theirs_img.save(tmp_path / f"rembg_{name}.png")
    assert iou >= MIN_IOU, f"IoU {iou:.4f}; masks saved in {tmp_path}"
    assert mad <= MAX_MAD * 255, f"MAD {mad:.2f}/255; masks saved in {tmp_path}"
