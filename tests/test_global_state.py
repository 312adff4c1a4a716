"""The library changes nothing global in its host: warnings filters, logging,
sys.stdout, onnxruntime's default logger. The command line, which owns its
process, sets what it needs for itself (bgrm.stdio)."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

from PIL import Image
from videoclips import make_clip

import bgrm


def test_a_picture_and_a_video_leave_the_host_as_it_was(fixtures, tmp_path, models_home,
                                                         quick_model, monkeypatch):
    entered = []
    real = warnings.catch_warnings

    class Spy(real):
        """Notes each ``with warnings.catch_warnings()`` of bgrm's own code: it swaps
        the process's filters, which on threads loses the host's."""

        def __enter__(self):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.split(".")[0] == "bgrm":
                entered.append(caller)
            return super().__enter__()

    monkeypatch.setattr(warnings, "catch_warnings", Spy)
    filters = list(warnings.filters)
    root = logging.getLogger()
    root_state = (root.level, list(root.handlers))
    ours = logging.getLogger("bgrm")
    ours_state = (ours.level, list(ours.handlers), ours.propagate)
    stdout, stderr = sys.stdout, sys.stderr

    cutout = bgrm.remove(Image.open(fixtures / "chelsea.png"), model="u2netp", crop=True)
    assert cutout.mode == "RGBA"
    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", frames=4)
    bgrm.remove_video(clip, tmp_path / "out.webm", model=str(quick_model),
                      video_format="webm")
    assert (tmp_path / "out.webm").stat().st_size > 0

    assert entered == []
    assert warnings.filters == filters
    assert (root.level, list(root.handlers)) == root_state
    assert (ours.level, list(ours.handlers), ours.propagate) == ours_state
    assert sys.stdout is stdout and sys.stderr is stderr


ORT_PROBE = """
import sys
import onnxruntime as ort
from PIL import Image
import bgrm

ort.set_default_logger_severity(1)  # the host's choice: info and up
bgrm.remove(Image.open(sys.argv[1]), model="u2netp")
print("MARK", file=sys.stderr, flush=True)
ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
"""


def test_onnxruntime_default_logger_keeps_the_hosts_severity(fixtures, models_home):
    # A session of the host's own, made after bgrm's, still logs at the host's level.
    model = fixtures.parent / "bgrm" / "assets" / "u2netp.onnx"
    proc = subprocess.run([sys.executable, "-c", ORT_PROBE, str(fixtures / "chelsea.png"),
                           str(model)], capture_output=True, text=True, timeout=120,
                          check=True)
    after = proc.stderr.split("MARK\n", 1)[1]
    assert "[I:onnxruntime:" in after, proc.stderr[-2000:]
