"""The inference engines (bgrm/engine.py): OpenVINO's masks are onnxruntime's, `auto`
picks it on the CPU where it is installed, and `--engine` says clearly what it cannot do."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import FIXTURES, PHOTOS
from PIL import Image

from bgrm import engine
from bgrm.errors import ParameterError

pytest.importorskip("openvino")  # in the dev extra: CI runs these


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """A cache dir of the test's own, so a compiled model is found (or not) there only."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def u2netp(models_home):
    from bgrm.models import resolve

    return resolve("u2netp")


def test_openvino_masks_are_onnxruntimes(u2netp, cache_home):
    """Every fixture photo through both engines, bundled u2netp: the same mask within
    one level of 255 (float32 in both; OpenVINO's bfloat16 default would be ~IoU 0.95)."""
    from bgrm.segment import Segmenter

    ort = Segmenter(u2netp, "cpu", threads=1, engine="onnxruntime")
    ov = Segmenter(u2netp, "cpu", threads=1, engine="openvino")
    assert (ort.engine.name, ov.engine.name) == ("onnxruntime", "openvino")
    for name in PHOTOS:
        image = Image.open(FIXTURES / name).convert("RGB")
        theirs = np.asarray(ort.mask(image), dtype=np.int16)
        ours = np.asarray(ov.mask(image), dtype=np.int16)
        a, b = ours > 127, theirs > 127
        iou = (a & b).sum() / max((a | b).sum(), 1)
        assert 0.01 < a.mean() < 0.95, name  # a trivial mask proves nothing
        assert iou >= 0.999 and np.abs(ours - theirs).mean() <= 0.05, (name, iou)
        assert np.abs(ours - theirs).max() <= 2, name


def test_lanes_run_at_once_and_keep_each_frames_map(u2netp, cache_home):
    """A video's lanes call one compiled model from several threads at once: each
    gets its own infer request, so each frame's map is the one it gets alone."""
    from bgrm.segment import Segmenter

    seg = Segmenter(u2netp, "cpu", threads=1, lanes=2, engine="openvino")
    tensors = [seg.prepare(Image.open(FIXTURES / n)) for n in PHOTOS[:2]]
    alone = [seg.predict(t) for t in tensors]
    got: dict[int, list] = {0: [], 1: []}
    start = threading.Barrier(2, timeout=60)

    def lane(k: int) -> None:
        start.wait()
        for i in (k, 1 - k):  # the two lanes run the two frames in opposite order
            got[k].append((i, seg.predict(tensors[i])))

    threads = [threading.Thread(target=lane, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    pairs = got[0] + got[1]
    assert len(pairs) == 2 * len(tensors)
    for i, small in pairs:
        assert np.array_equal(small, alone[i]), i


def test_compiled_models_are_kept_under_the_cache_dir(u2netp, cache_home, tmp_path):
    from bgrm.segment import Segmenter

    beside = sorted(p.name for p in u2netp.path.parent.iterdir())
    Segmenter(u2netp, "cpu", threads=1, engine="openvino")
    kept = list((cache_home / "bgrm" / "openvino").iterdir())
    assert kept and all(p.stat().st_size > 0 for p in kept)
    assert sorted(p.name for p in u2netp.path.parent.iterdir()) == beside  # none beside it


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_auto_picks_openvino_on_the_cpu_where_installed(u2netp, cache_home, monkeypatch):
    import onnxruntime as ort

    from bgrm.segment import Segmenter

    assert Segmenter(u2netp, "cpu", threads=1).engine.name == "openvino"
    assert engine.choose("auto", "auto", gpu=False) == "openvino"
    assert engine.choose("auto", "auto", gpu=True) == "onnxruntime"  # CUDA runs the model
    assert engine.choose("auto", "cuda", gpu=True) == "onnxruntime"
    # onnxruntime-gpu's provider listed: auto stays on onnxruntime (which then falls
    # back to the CPU itself when CUDA will not load).
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert Segmenter(u2netp, "auto", threads=1).engine.name == "onnxruntime"
    monkeypatch.setattr(engine, "openvino_installed", lambda: False)
    assert Segmenter(u2netp, "cpu", threads=1).engine.name == "onnxruntime"
    assert Segmenter(u2netp, "cpu", threads=1, engine="onnxruntime").session is not None


def test_engine_openvino_without_it_is_a_usage_error(run_main, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "openvino_installed", lambda: False)
    for job in ("image", "video"):
        src = FIXTURES / ("coffee.png" if job == "image" else "no_time_for_that_tiny.gif")
        code, out, err = run_main(job, src, "--engine", "openvino", "-o", tmp_path / job)
        assert code == 2, err
        assert "pip install 'bgrm[openvino]'" in err and "Traceback" not in err
        assert not (tmp_path / job).exists()
    with pytest.raises(ParameterError, match=r"bgrm\[openvino\]"):
        import bgrm

        bgrm.Session("u2netp", engine="openvino")


def test_engine_errors(run_main, tmp_path):
    import bgrm

    code, _, err = run_main("image", FIXTURES / "coffee.png", "--engine", "openvino",
                            "--device", "cuda", "-o", tmp_path / "out")
    assert code == 2 and "--engine openvino runs on the CPU" in err, err
    code, _, err = run_main("image", FIXTURES / "coffee.png", "--engine", "tensorrt")
    assert code == 2 and "'tensorrt' is not one of" in err, err
    with pytest.raises(ParameterError, match="engine: 'tpu' is not one of auto, onnxruntime"):
        bgrm.Session("u2netp", engine="tpu")


def test_a_file_openvino_cannot_read(run_main, tmp_path, cache_home):
    """Asked for, OpenVINO's own one-line reason (and no other framework's reader
    complaining on stderr); with auto, onnxruntime's, as without OpenVINO."""
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    photo = FIXTURES / "coffee.png"
    code, _, err = run_main("image", photo, "--model", junk, "--engine", "openvino")
    assert code == 2 and "cannot be loaded by OpenVINO" in err, err
    assert "tensorflow" not in err.lower() and "Exception from" not in err, err
    code, _, err = run_main("image", photo, "--model", junk)
    assert code == 2 and "cannot be loaded by onnxruntime" in err, err


def test_serve_passes_its_engine_to_every_file(run_main, monkeypatch):
    """`bgrm serve --engine X`: checked at start, then in each request's Runtime."""
    pytest.importorskip("starlette")
    from bgrm.models import resolve
    from bgrm.options import ImageOptions, VideoOptions
    from bgrm.plan import plan
    from bgrm.settings import RunSettings

    for job, opts in (("image", ImageOptions()), ("video", VideoOptions())):
        runtime = plan(job, opts, resolve("u2netp"), [], RunSettings(engine="onnxruntime"),
                       long_lived=True).runtime
        assert runtime.engine == "onnxruntime" and not runtime.spinning
    monkeypatch.setattr(engine, "openvino_installed", lambda: False)
    code, _, err = run_main("serve", "--port", "0", "--engine", "openvino")
    assert code == 2 and "pip install 'bgrm[openvino]'" in err, err
