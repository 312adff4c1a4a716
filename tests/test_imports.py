"""`bgrm --help` must start fast: nothing heavy imported (after Click's tests/test_imports.py).

Each case runs the real entry point in a fresh interpreter and lists what it loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("onnxruntime", "pymatting", "numba", "scipy", "imageio", "imageio_ffmpeg", "cv2",
         "llvmlite", "torch", "rembg", "dask", "distributed", "openvino",
         # bgrm serve's stack: only `bgrm serve` itself loads it.
         "starlette", "uvicorn", "python_multipart", "anyio", "h11")

PROBE = """
import json, sys
sys.argv = ["bgrm", *json.loads(sys.argv[1])]
from bgrm.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
loaded = sorted({name.split(".")[0] for name in sys.modules})
sys.stdout.flush()
print("\\n" + json.dumps({"code": code, "loaded": loaded}))
"""


def loaded_by(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True,
                          text=True, timeout=60)
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("args", [
    ["--help"],
    ["image", "--help"],
    ["video", "--help"],
    ["serve", "--help"],
    ["--version"],
    # A usage error is found before anything heavy is needed.
    ["image", "photo.jpg", "--alpha-fg", "999"],
    ["image", "photo.jpg", "--bg-type", "image"],
], ids=" ".join)
def test_no_heavy_imports(args):
    result = loaded_by(args)
    assert result["code"] in (0, 2)
    heavy = sorted(set(HEAVY) & set(result["loaded"]))
    assert heavy == [], f"bgrm {' '.join(args)} imported {heavy}"


def test_importing_the_cli_and_the_python_api_is_light():
    code = ("import sys, bgrm, bgrm.cli, bgrm.options, bgrm.errors, bgrm.models, bgrm.api, "
            "bgrm.run, bgrm.command; "
            "print(sorted({n.split('.')[0] for n in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert not set(HEAVY) & set(eval(out))


def test_the_probe_does_see_heavy_imports(fixtures, tmp_path, models_home):
    # Control: a real run loads onnxruntime, so an empty list above means something.
    result = loaded_by(["image", str(fixtures / "chelsea.png"), "--only-mask", "-o",
                        str(tmp_path)])
    assert result["code"] == 0
    assert "onnxruntime" in result["loaded"]
    assert not {"starlette", "uvicorn", "python_multipart"} & set(result["loaded"])




def test_only_a_smoothed_video_loads_the_optical_flow(fixtures, tmp_path, models_home,
                                                      quick_model):
    """OpenCV (the smoothing's optical flow) is loaded by a video run that smooths,
    and by nothing else: not by images, not by per-frame masks. (The videos run the
    stand-in model: what they load does not depend on it.)"""
    from videoclips import make_clip

    clip = make_clip(tmp_path / "c.mp4", fixtures / "astronaut.png", frames=3)
    image = loaded_by(["image", str(fixtures / "chelsea.png"), "-o", str(tmp_path / "i")])
    quick = ["--model", str(quick_model)]
    raw = loaded_by(["video", str(clip), "--temporal-smoothing", "0", "-o", str(tmp_path / "r"),
                     *quick])
    smooth = loaded_by(["video", str(clip), "-o", str(tmp_path / "s"), *quick])
    assert image["code"] == raw["code"] == smooth["code"] == 0
    assert "cv2" not in image["loaded"] and "cv2" not in raw["loaded"]
    assert "cv2" in smooth["loaded"]
