"""Every model family gives rembg's own masks: bgrm against rembg 2.0.86's session
classes, on stand-in graphs with the real input/output signatures (tests/standins.py).

rembg reads a stand-in when MODEL_CHECKSUM_DISABLED is set and U2NET_HOME
holds it under rembg's file name; bgrm reads the same file from its models
directory, its official checksum swapped for the stand-in's in this process
only. Sockets are blocked: nothing is downloaded.

Figures: ``pytest tests/test_families.py -s`` prints one line per model and photo.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sys

import numpy as np
import pytest
from PIL import Image
from standins import standin_onnx

from bgrm import models
from bgrm.models import FAMILIES, REGISTRY, SEGMENTATION_MODELS

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
# Large enough for Pillow's reducing_gap (3) on the way to the model: 3200 wide
# is reduced by 10 to 320 and by 3.1 to 1024. The u2net family keeps bgrm's
# reduction shortcut there (bgrm's masks as they always were, rembg's within
# test_parity.py's tolerance); the 1024 families resize exactly as rembg does.
UPSCALED = "rocket_x5.png"
U2NET_UPSCALED_IOU, U2NET_UPSCALED_MAD = 0.98, 4.0
MAX_MAD = 1.0  # mean absolute difference, in 1/255
MIN_IOU = 0.999  # at 127
# rembg's session for a file of each family: the custom sessions where rembg has
# one, else the family's named class reading the file under that name.
REFERENCE = {"u2net": "u2net_custom", "isnet": "dis_custom", "birefnet": "birefnet-general",
             "bria": "bria-rmbg"}


@pytest.fixture(scope="module")
def photos(photo_folder):
    return photo_folder(5)  # PHOTOS and UPSCALED


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    for obj, name in ((socket.socket, "connect"), (socket.socket, "connect_ex"),
                      (socket, "create_connection"), (socket, "getaddrinfo")):
        monkeypatch.setattr(obj, name, refuse)


@pytest.fixture
def home(models_home, tmp_path, monkeypatch):
    """One folder that is rembg's U2NET_HOME and bgrm's models directory."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(folder))
    monkeypatch.setenv("BGRM_MODELS", str(folder))
    monkeypatch.setenv("MODEL_CHECKSUM_DISABLED", "1")
    monkeypatch.delenv("REMBG_HOME", raising=False)
    return folder


def rembg_masks(session_name: str, images: list[Image.Image], **kwargs) -> list[np.ndarray]:
    from rembg import new_session

    session = new_session(session_name, **kwargs)
    return [np.asarray(session.predict(im)[0].convert("L")) for im in images]


def compare(label: str, ours: np.ndarray, theirs: np.ndarray, min_iou: float = MIN_IOU,
            max_mad: float = MAX_MAD) -> None:
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    a, b = ours > 127, theirs > 127
    iou = float((a & b).sum() / max((a | b).sum(), 1))
    mad = float(np.abs(ours.astype(np.int16) - theirs).mean())
    print(f"\n{label}: IoU@127 {iou:.5f}, MAD {mad:.4f}/255, "
          f"max {int(np.abs(ours.astype(np.int16) - theirs).max())}, foreground {a.mean():.2f}")
    assert 0.05 < a.mean() < 0.95 or 0.05 < b.mean() < 0.95, "a trivial mask proves nothing"
    assert iou >= min_iou and mad <= max_mad, label


@pytest.mark.parametrize("name", SEGMENTATION_MODELS)
def test_named_model_matches_rembgs_session(name, photos, home, monkeypatch, no_network,
                                            tmp_path):
    """`bgrm image --model NAME --only-mask` == rembg's ``new_session(NAME).predict``."""
    spec = REGISTRY[name]
    path = standin_onnx(home / spec.filename, spec.family, seed=1)
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(
        spec, checksum=models.file_checksum(path, spec.algorithm)))
    from bgrm import cli

    names = PHOTOS if name in ("u2net", "isnet-anime", "birefnet-general", "bria-rmbg") \
        else PHOTOS[1:2]  # every photo for one model of each family (and the odd mean)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["bgrm", "image", *(str(photos / n) for n in names),
                                      "--model", name, "--only-mask", "-o", str(out)])
    with pytest.raises(SystemExit) as done:
        cli.main()
    assert done.value.code == 0
    theirs = rembg_masks(name, [Image.open(photos / n) for n in names])
    for n, mask in zip(names, theirs, strict=True):
        ours = np.asarray(Image.open(out / (n.rsplit(".", 1)[0] + "_processed.png")))
        compare(f"{name} {n}", ours, mask)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_own_onnx_with_model_family_matches_rembg(family, photos, home, cli, no_network,
                                                  tmp_path):
    """`--model PATH.onnx --model-family F` (the real CLI) == rembg's session of F."""
    reference = REFERENCE[family]
    custom = reference.endswith("_custom")
    mine = standin_onnx(home / ("mine.onnx" if custom else f"{reference}.onnx"), family,
                        seed=3)
    names = [*PHOTOS, UPSCALED]
    out = tmp_path / "out"
    proc = cli("image", *(photos / n for n in names), "--model", mine, "--model-family",
                family, "--only-mask", "-o", out)
    assert proc.returncode == 0, proc.stderr.decode()
    theirs = rembg_masks(reference, [Image.open(photos / n) for n in names],
                         **({"model_path": str(mine)} if custom else {}))
    for n, mask in zip(names, theirs, strict=True):
        ours = np.asarray(Image.open(out / (n.rsplit(".", 1)[0] + "_processed.png")))
        loose = family == "u2net" and n == UPSCALED
        compare(f"--model-family {family} {n}", ours, mask,
                *((U2NET_UPSCALED_IOU, U2NET_UPSCALED_MAD) if loose else ()))


def test_a_1024_model_in_video_streams_smooths_and_keeps_rembgs_masks(
        fixtures, home, cli, no_network, tmp_path):
    from videoclips import flicker, pan_frames, probe, write_frames

    clip = write_frames(tmp_path / "pan.mp4",
                        pan_frames(fixtures / "astronaut.png", frames=8, size=(160, 96)))
    model = standin_onnx(home / "birefnet-general.onnx", "birefnet", seed=1)
    alphas = {}
    for label, extra in (("smooth", []), ("raw", ["--temporal-smoothing", "0"])):
        proc = cli("video", clip, "--model", model, "--model-family", "birefnet",
                    "-o", tmp_path / label, *extra)
        assert proc.returncode == 0, proc.stderr.decode()
        alphas[label] = probe(tmp_path / label / "pan_processed.mov").frames[..., 3]
    smooth, raw = alphas["smooth"], alphas["raw"]
    assert len(smooth) == len(raw) == 8
    # Per-frame masks are rembg's, frame by frame, up to one level either way
    # (ProRes' 10-bit alpha, and this decode of the clip is not bgrm's own).
    frames = probe(clip).frames[..., :3]
    theirs = rembg_masks("birefnet-general", [Image.fromarray(f) for f in frames])
    for i, (ours, mask) in enumerate(zip(raw, theirs, strict=True)):
        diff = np.abs(ours.astype(np.int16) - mask)
        print(f"video frame {i}: MAD {diff.mean():.3f}/255, max {diff.max()}")
        assert diff.mean() <= MAX_MAD and diff.max() <= 2, i
    # The smoothing is at work on the 1024 model's masks too.
    assert np.abs(smooth[0].astype(int) - raw[0]).max() <= 2
    assert flicker(smooth) < flicker(raw)


def test_registry_family_rows_and_listing(cli, models_home):
    listing = json.loads(cli("models", "list", "--json").stdout)
    rows = {m["name"]: m for m in listing["models"]}
    assert set(rows) == set(REGISTRY)
    families = {m["family"] for m in rows.values() if m["kind"] == "segmentation"}
    assert families == set(FAMILIES)
