"""The image job end to end on real photos, with the bundled u2netp."""

import json

import numpy as np
from PIL import Image


def test_cutout_is_rgba_with_real_mask(bgrm, fixtures, tmp_path):
    proc = bgrm("image", fixtures / "astronaut.png", "-o", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["finished"] is True and report["failed"] == []
    out = Image.open(tmp_path / "astronaut_processed.png")
    assert out.mode == "RGBA" and out.size == (512, 512)
    alpha = np.asarray(out)[..., 3]
    # The astronaut fills the lower middle; the top corners are background.
    assert alpha[400, 250] > 200 and alpha[5, 500] < 30
    assert b"bundled u2netp" in proc.stderr
