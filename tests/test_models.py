"""Models: bundled, installed, verified, custom; install from a file or a loopback URL.

The 176 MB u2net and u2net_human_seg are stood in for by tiny U^2-Net-shaped
graphs built here with the onnx helper API; their official md5s are swapped for
the tiny files' in this process only (monkeypatch), so the registry code paths
run end to end without a user-facing bypass. u2netp is the real bundled model.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from standins import standin_onnx

from bgrm import models
from bgrm.models import FAMILIES, REGISTRY

U2NETP_MD5 = "8e83ca70e441ab06c318d82300c84806"
U2NET_MD5 = "60024c5c889badc19c04ad937298a77b"


# -- tiny U^2-Net-shaped graphs ---------------------------------------------------------

def tiny_onnx(path: Path, *, sign: float = 1.0, size: int = 320, in_channels: int = 3,
              out_channels: int = 1) -> Path:
    """input.1 float [1,C,size,size] -> sigmoid(sign * red channel) as [1,1,size,size].

    Named and shaped like rembg's U^2-Net exports (input "input.1", seven-ish
    outputs of which the first is the saliency map); two outputs are enough.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((out_channels, in_channels, 1, 1), dtype=np.float32)
    weight[:, 0] = sign * 4.0
    nodes = [
        helper.make_node("Conv", ["input.1", "w"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["1959"]),
        helper.make_node("Identity", ["1959"], ["1960"]),
    ]
    shape_out = [1, out_channels, size, size]
    graph = helper.make_graph(
        nodes, "tiny_u2net",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, in_channels, size, size])],
        [helper.make_tensor_value_info("1959", TensorProto.FLOAT, shape_out),
         helper.make_tensor_value_info("1960", TensorProto.FLOAT, shape_out)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime >= 1.16 (our floor) reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def md5sum(path: Path) -> str:
    return models.file_checksum(path, "md5")


def red_correlation(cutout: Path, source: Path) -> float:
    """Correlation of a cutout's alpha with its source's red channel."""
    alpha = np.asarray(Image.open(cutout))[..., 3].astype(float).ravel()
    red = np.asarray(Image.open(source).convert("RGB"))[..., 0].astype(float).ravel()
    return float(np.corrcoef(alpha, red)[0, 1])


@pytest.fixture
def tiny(tmp_path) -> dict[str, Path]:
    """Stand-ins: u2net follows the red channel, u2net_human_seg its inverse."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    return {"u2net": tiny_onnx(folder / "u2net.onnx", sign=1.0),
            "u2net_human_seg": tiny_onnx(folder / "u2net_human_seg.onnx", sign=-1.0)}


@pytest.fixture
def patched(tiny, monkeypatch, models_home) -> dict[str, Path]:
    """The registry, in this process only, expects the tiny files' md5s."""
    for name, path in tiny.items():
        monkeypatch.setitem(models.REGISTRY, name, dataclasses.replace(
            models.REGISTRY[name], checksum=md5sum(path)))
    return tiny


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _CutShort(_Quiet):
    """Promises more bytes than it sends, as a dropped connection does."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """A loopback HTTP server over a folder, in a thread; yields the folder and base URL."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    servers = []

    def start(handler=_Quiet):
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return root, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def leftovers(folder: Path) -> list[str]:
    """Files in the models dir other than the verified-checks stamp."""
    return sorted(p.name for p in folder.iterdir() if p.name != models.STAMP_NAME)


# -- list / verify ------------------------------------------------------------------------

def test_list_fresh_install(cli, models_home):
    proc = cli("models", "list", "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    listing = json.loads(proc.stdout)
    assert listing["models_dir"] == str(models_home)
    rows = {m["name"]: m for m in listing["models"]}
    assert rows["u2netp"]["status"] == "bundled" and rows["u2netp"]["size"] == 4574861
    assert rows["u2netp"]["checksum"] == "md5:" + U2NETP_MD5
    for name in ("u2net", "u2net_human_seg"):
        assert rows[name]["status"] == "missing" and rows[name]["size"] is None
        assert rows[name]["path"] == str(models_home / f"{name}.onnx")
    text = cli("models", "list").stdout.decode()
    assert "u2netp" in text and "bundled" in text and "missing" in text


def test_verify_statuses_and_exit(cli, models_home, tiny):
    ok = cli("models", "verify")
    assert ok.returncode == 0, ok.stderr.decode()  # missing but not asked for: fine
    lines = [line.split()[:3] for line in ok.stdout.decode().splitlines()]
    assert ["u2netp", "ok", "bundled"] in lines
    named = cli("models", "verify", "u2net")
    assert named.returncode == 1 and b"missing" in named.stdout

    (models_home / "u2net.onnx").write_bytes(tiny["u2net"].read_bytes())  # not the real one
    actual = md5sum(tiny["u2net"]).split(":")[1]
    bad = cli("models", "verify")
    assert bad.returncode == 1
    out = bad.stdout.decode()
    assert "CORRUPT" in out and actual in out and U2NET_MD5 in out
    listing = json.loads(cli("models", "list", "--json").stdout)
    rows = {m["name"]: m for m in listing["models"]}
    assert rows["u2net"]["status"] == "corrupt"
    assert rows["u2net"]["actual_checksum"] == "md5:" + actual
    report = json.loads(cli("models", "verify", "u2netp", "--json").stdout)
    assert report["ok"] is True and [m["status"] for m in report["models"]] == ["bundled"]


def test_corrupt_model_is_never_used(cli, models_home, fixtures, tmp_path):
    (models_home / "u2net.onnx").write_bytes(b"not a model at all")
    out = tmp_path / "out"
    for args in (["--model", "u2net"], []):  # named, and as the default
        proc = cli("image", fixtures / "chelsea.png", "-o", out, *args)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        assert "corrupt" in err and U2NET_MD5 in err and "bgrm models install" in err
        assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_corrupt_installed_u2netp_is_refused(models_home):
    (models_home / "u2netp.onnx").write_bytes(b"\0" * 100)
    with pytest.raises(models.ModelError, match="corrupt.*expected " + U2NETP_MD5):
        models.resolve("u2netp")
    assert models.status(models.REGISTRY["u2netp"]).status == "corrupt"


def test_verified_stamp_skips_rehash_until_file_changes(models_home, monkeypatch):
    src = models.bundled_path(models.REGISTRY["u2netp"])
    dest = models_home / "u2netp.onnx"
    dest.write_bytes(src.read_bytes())
    assert models.resolve("u2netp").path == dest  # hashed once, stamp written
    assert (models_home / models.STAMP_NAME).is_file()

    from bgrm.models import store

    real = store.file_checksum
    calls = []
    monkeypatch.setattr(store, "file_checksum", lambda p, a: calls.append(p) or real(p, a))
    assert models.resolve("u2netp").path == dest
    assert calls == []  # trusted: same path, size, mtime, inode

    data = bytearray(dest.read_bytes())
    data[-1] ^= 0xFF  # same size, new content (and mtime)
    dest.write_bytes(bytes(data))
    with pytest.raises(models.ModelError, match="corrupt"):
        models.resolve("u2netp")
    assert calls == [dest]
    # verify never trusts the stamp
    assert models.status(models.REGISTRY["u2netp"], full=True).status == "corrupt"


# -- install ------------------------------------------------------------------------------

def test_install_wrong_checksum_is_refused(cli, models_home, tiny):
    target = models_home / "new"  # not there yet: install creates it
    proc = cli("models", "install", "u2net", "--from", tiny["u2net"],
                env={"BGRM_MODELS": str(target)})
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert md5sum(tiny["u2net"]).split(":")[1] in err and U2NET_MD5 in err
    assert "nothing was installed" in err and "Traceback" not in err
    assert leftovers(target) == []


def test_install_from_file_real_u2netp(cli, models_home):
    src = models.bundled_path(models.REGISTRY["u2netp"])
    proc = cli("models", "install", "u2netp", "--from", src)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"installed u2netp" in proc.stderr
    dest = models_home / "u2netp.onnx"
    assert md5sum(dest) == "md5:" + U2NETP_MD5 and leftovers(models_home) == ["u2netp.onnx"]
    rows = {m["name"]: m for m in json.loads(cli("models", "list", "--json").stdout)["models"]}
    assert rows["u2netp"]["status"] == "installed" and rows["u2netp"]["path"] == str(dest)
    again = cli("models", "install", "u2netp", "--from", "/nonexistent/u2netp.onnx")
    assert again.returncode == 0 and b"already installed" in again.stderr  # source not read
    missing = cli("models", "install", "u2netp", "--from", "/nonexistent/u2netp.onnx",
                   "--force")
    assert missing.returncode == 2 and b"no such file" in missing.stderr


def test_install_from_loopback_url(cli, models_home, serve):
    root, base = serve()
    (root / "u2netp.onnx").write_bytes(
        models.bundled_path(models.REGISTRY["u2netp"]).read_bytes())
    proc = cli("models", "install", "u2netp", "--from", f"{base}/u2netp.onnx", "--progress",
                env={"no_proxy": "127.0.0.1"})
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "downloading u2netp" in err and "B/s" in err  # the tqdm bar on stderr
    assert md5sum(models_home / "u2netp.onnx") == "md5:" + U2NETP_MD5

    (root / "u2net.onnx").write_bytes(b"an error page, not a model")
    wrong = cli("models", "install", "u2net", "--from", f"{base}/u2net.onnx",
                 env={"no_proxy": "127.0.0.1"})
    assert wrong.returncode == 2 and U2NET_MD5.encode() in wrong.stderr
    gone = cli("models", "install", "u2net", "--from", f"{base}/nope.onnx",
                env={"no_proxy": "127.0.0.1"})
    assert gone.returncode == 1 and b"HTTP 404" in gone.stderr
    assert leftovers(models_home) == ["u2netp.onnx"]


def test_install_cut_short_and_bad_scheme(models_home, serve):
    _, base = serve(_CutShort)
    with pytest.raises(models.DownloadError, match="1000 of 1000000 bytes|transfer failed"):
        models.install("u2net", f"{base}/u2net.onnx")
    with pytest.raises(models.ModelError, match="only http"):
        models.install("u2net", "ftp://example.invalid/u2net.onnx")
    assert leftovers(models_home) == []


# -- the 176 MB models' code paths, with tiny stand-ins --------------------------------------

def test_u2net_and_human_seg_end_to_end(patched, models_home, serve, run_main, fixtures,
                                        tmp_path):
    # u2net from a file, u2net_human_seg from a URL: both verified, then used.
    status, _, err = run_main("models", "install", "u2net", "--from", patched["u2net"])
    assert status == 0, err
    root, base = serve()
    (root / "hs.onnx").write_bytes(patched["u2net_human_seg"].read_bytes())
    status, _, err = run_main("models", "install", "u2net_human_seg", "--from", f"{base}/hs.onnx")
    assert status == 0, err
    assert leftovers(models_home) == ["u2net.onnx", "u2net_human_seg.onnx"]
    status, out, _ = run_main("models", "verify", "u2net", "u2net_human_seg", "--json")
    assert status == 0 and json.loads(out)["ok"] is True

    src = fixtures / "chelsea.png"
    results = {}
    for name in ("u2net", "u2net_human_seg"):
        out_dir = tmp_path / name
        status, out, err = run_main("image", src, "--model", name, "-o", out_dir, "--json")
        assert status == 0, err
        assert json.loads(out)["failed"] == []
        results[name] = red_correlation(out_dir / "chelsea_processed.png", src)
    # Each run really used its own file: the stand-ins are mirror images.
    assert results["u2net"] > 0.8 and results["u2net_human_seg"] < -0.8

    # With no --model, the installed u2net is the default, without a notice.
    status, _, err = run_main("image", src, "-o", tmp_path / "default")
    assert status == 0, err
    assert "bundled" not in err
    assert red_correlation(tmp_path / "default" / "chelsea_processed.png", src) > 0.8


def test_runs_never_open_a_connection(patched, models_home, run_main, fixtures, tmp_path,
                                      monkeypatch):
    status, _, err = run_main("models", "install", "u2net", "--from", patched["u2net"])
    assert status == 0, err

    def refuse(*args, **kwargs):
        raise AssertionError("bgrm opened a network connection during a run")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    status, _, err = run_main("image", fixtures / "coffee.png", "-o", tmp_path)
    assert status == 0, err


# -- custom models --------------------------------------------------------------------------

def test_custom_onnx_runs(cli, fixtures, tmp_path):
    custom = tiny_onnx(tmp_path / "mine.onnx", sign=-1.0)
    src = fixtures / "chelsea.png"
    proc = cli("image", src, "--model", custom, "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"bundled" not in proc.stderr
    assert red_correlation(tmp_path / "out" / "chelsea_processed.png", src) < -0.8


def test_custom_model_runs_at_its_familys_size(tmp_path):
    from bgrm.segment import Segmenter

    custom = standin_onnx(tmp_path / "mine.onnx", "bria")
    seg = Segmenter(models.resolve(str(custom), "bria"), device="cpu", threads=1)
    assert seg.size == (1024, 1024) and seg.input_name == "pixel_values"
    mask = seg.mask(Image.new("RGB", (300, 200), (200, 10, 10)))
    assert mask.mode == "L" and mask.size == (300, 200)


@pytest.mark.parametrize("graph, family, hint", [
    ("birefnet", None, "--model-family isnet|birefnet|bria"),  # a 1024 graph, as u2net
    ("u2net", "birefnet", "--model-family u2net"),  # a 320 graph, as birefnet
    ("small", "u2net", ""),  # 160: no family fits
])
def test_graph_that_does_not_fit_its_family_is_refused_before_any_file(
        cli, fixtures, tmp_path, graph, family, hint):
    size = 160 if graph == "small" else None
    bad = standin_onnx(tmp_path / "mine.onnx", "u2net" if graph == "small" else graph,
                       size=size)
    out = tmp_path / "out"
    extra = ["--model-family", family] if family else []
    for job, src in (("image", fixtures / "chelsea.png"),
                     ("video", fixtures / "no_time_for_that_tiny.gif")):
        proc = cli(job, src, fixtures / "coffee.png", "--model", bad, *extra, "-o", out)
        err = proc.stderr.decode()
        assert proc.returncode == 2, err
        want = FAMILIES[family or "u2net"]
        assert f"{want.size} x {want.size}" in err and want.title in err and str(bad) in err
        assert hint in err and err.count("bgrm:") == 1 and "Traceback" not in err
        assert not out.exists() or not any(out.iterdir())


def test_model_family_only_for_a_path_and_vitmatte_is_not_a_segmenter(cli, fixtures,
                                                                      tmp_path):
    src = fixtures / "chelsea.png"
    for args, says in ((["--model", "birefnet-general", "--model-family", "u2net"],
                        "birefnet-general is a birefnet model"),
                       (["--model-family", "isnet"], "no --model was given"),
                       (["--model", "vitmatte-small-composition-1k"], "ViTMatte"),
                       (["--model-family", "sam"], "--model-family")):
        proc = cli("image", src, *args, "-o", tmp_path)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and says in err, err
    # The family of a registry model may be named when it is the right one.
    proc = cli("image", src, "--model", "u2netp", "--model-family", "u2net", "-o", tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"model": "u2netp", "model_family": "bria"}))
    proc = cli("image", src, "--params", params, "-o", tmp_path)
    assert proc.returncode == 2 and b"u2netp is a u2net model" in proc.stderr


@pytest.mark.parametrize("shape", [{"out_channels": 3}, {"in_channels": 1}])
def test_wrong_shaped_custom_onnx_fails_before_any_file(cli, fixtures, tmp_path, shape):
    bad = tiny_onnx(tmp_path / "bad.onnx", **shape)
    out = tmp_path / "out"
    proc = cli("image", fixtures / "chelsea.png", fixtures / "coffee.png", fixtures / "rocket.jpg",
                "--model", bad, "-o", out)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert str(bad) in err and "U^2-Net" in err
    assert err.count("bgrm:") == 1 and "Traceback" not in err  # once, not per file
    assert not out.exists() or not any(out.iterdir())


def test_wrong_shaped_custom_onnx_fails_for_video_too(cli, fixtures, tmp_path):
    bad = tiny_onnx(tmp_path / "bad.onnx", out_channels=3)
    proc = cli("video", fixtures / "no_time_for_that_tiny.gif", "--model", bad, "-o", tmp_path)
    assert proc.returncode == 2 and b"1-channel saliency map" in proc.stderr


def test_a_fixed_batch_of_two_is_refused_before_any_file(run_main, fixtures, tmp_path,
                                                        models_home):
    bad = standin_onnx(tmp_path / "batch2.onnx", "u2net", batch=2)
    out = tmp_path / "out"
    status, _, err = run_main("image", fixtures / "chelsea.png", fixtures / "coffee.png",
                              "--model", bad, "-o", out)
    assert status == 2, err
    assert f"model {bad}: input 'input.1' is [2, 3, 320, 320], a fixed batch of 2" in err
    assert err.count("bgrm:") == 1 and "internal error" not in err
    assert not out.exists() or not any(out.iterdir())
    # A named batch dimension (as BiRefNet's and BRIA's exports have) runs.
    fine = standin_onnx(tmp_path / "named.onnx", "u2net", batch="N")
    status, _, err = run_main("image", fixtures / "chelsea.png", "--model", fine, "-o", out)
    assert status == 0, err


def test_a_model_whose_map_is_nan_or_empty_fails_clearly(run_main, fixtures, tmp_path,
                                                        models_home):
    """A graph that passes the shape check but gives NaN when run (which would make
    a fully transparent cut-out) fails each file, naming it and the model, with no
    output; one whose map has no rows is refused before any file."""
    import warnings

    from standins import broken_onnx

    nan = broken_onnx(tmp_path / "nan.onnx", "nan")
    out = tmp_path / "out"
    photos = [fixtures / "chelsea.png", fixtures / "coffee.png"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        status, stdout, err = run_main("image", *photos, "--model", nan, "-o", out, "--json")
    assert status == 1, err
    assert json.loads(stdout)["errors"] == [
        f"{p}: model {nan}: gave a map with NaN or infinite values for this picture (a "
        "broken export, or float16 overflow?)" for p in photos]
    assert "internal error" not in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
    empty = broken_onnx(tmp_path / "empty.onnx", "empty")
    status, _, err = run_main("image", *photos, "--model", empty, "-o", out)
    assert status == 2 and err.count("bgrm:") == 1, err
    assert f"model {empty}: output 0 is [1, 1, 0, 320]" in err
    assert not out.exists() or not any(out.iterdir())


def test_folders_given_as_model_files_and_the_familys_article(run_main, fixtures, tmp_path,
                                                              models_home):
    folder = tmp_path / "models.onnx"
    folder.mkdir()
    status, _, err = run_main("image", fixtures / "chelsea.png", "--model", folder)
    assert status == 2 and f"bgrm: model file {folder}: is a folder, not an .onnx file" in err
    status, _, err = run_main("models", "install", "u2net", "--from", tmp_path)
    assert status == 2 and f"bgrm: --from {tmp_path}: is a folder; give the model's .onnx " \
        "file" in err
    small = standin_onnx(tmp_path / "small.onnx", "u2net")
    status, _, err = run_main("image", fixtures / "chelsea.png", "--model", small,
                              "--model-family", "isnet", "-o", tmp_path / "out")
    assert status == 2 and "an isnet-family (IS-Net) model takes" in err, err
    status, _, err = run_main("image", fixtures / "chelsea.png", "--model", "isnet-anime",
                              "--model-family", "u2net")
    assert status == 2 and "isnet-anime is an isnet model" in err, err


def test_custom_not_onnx_and_missing(cli, fixtures, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"definitely not protobuf")
    proc = cli("image", fixtures / "chelsea.png", "--model", junk, "-o", tmp_path)
    assert proc.returncode == 2 and b"cannot be loaded by onnxruntime" in proc.stderr
    with pytest.raises(models.ModelError, match="no such file"):
        models.resolve(str(tmp_path / "absent.onnx"))
    with pytest.raises(models.ModelError, match="unknown model 'u2nett'"):
        models.resolve("u2nett")


# -- default model, device, threads --------------------------------------------------------------

def test_default_notice_device_cpu_threads_1(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "coffee.png", "-o", tmp_path, "--device", "cpu",
                "--threads", "1")
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    notice = [line for line in err.splitlines() if "bundled u2netp" in line]
    assert len(notice) == 1 and "u2net is not installed" in notice[0]
    assert Image.open(tmp_path / "coffee_processed.png").mode == "RGBA"


def test_cpu_session_settings(models_home):
    from bgrm.segment import Segmenter

    seg = Segmenter(models.resolve("u2netp"), device="cpu", threads=1, spinning=False,
                    engine="onnxruntime")
    assert seg.session.get_providers() == ["CPUExecutionProvider"]
    opts = seg.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def _has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_has_cuda(), reason="onnxruntime here has CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(cli, fixtures, tmp_path):
    # Three files so that the check happens before a pool would start.
    proc = cli("image", fixtures / "chelsea.png", fixtures / "coffee.png",
                fixtures / "rocket.jpg", "--device", "cuda", "-o", tmp_path / "out")
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("bgrm:") == 2 and "bgrm[gpu]" in err  # the model notice, then the error
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(_has_cuda(), reason="onnxruntime here has CUDA")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_auto_falls_back_to_cpu_when_cuda_will_not_load(models_home, monkeypatch, caplog):
    # onnxruntime-gpu on a machine without a usable GPU: the provider is listed
    # but the session comes up on the CPU only.
    import onnxruntime as ort

    from bgrm.errors import ModelError
    from bgrm.segment import Segmenter

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = models.resolve("u2netp")
    seg = Segmenter(model, device="auto", threads=1)
    assert seg.session.get_providers() == ["CPUExecutionProvider"]
    # Logged (the command line prints bgrm's log lines on stderr): once, in bgrm's words.
    notices = [r.getMessage() for r in caplog.records if r.name.startswith("bgrm")]
    assert len(notices) == 1 and notices[0].startswith("bgrm: CUDA is not usable here")
    assert "running on the CPU" in notices[0]
    with pytest.raises(ModelError, match="--device cuda: the CUDA provider failed"):
        Segmenter(model, device="cuda", threads=1)


def test_models_dir_follows_rembg_u2net_home(tmp_path, monkeypatch):
    monkeypatch.delenv("BGRM_MODELS", raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "rembg-models"))
    assert models.models_dir() == tmp_path / "rembg-models"
    monkeypatch.setenv("BGRM_MODELS", str(tmp_path / "mine"))
    assert models.models_dir() == tmp_path / "mine"


# -- the registry is rembg's -------------------------------------------------------------

def _rembg_published() -> dict[str, dict]:
    """What rembg 2.0.86's installed source says for each model it names: URL,
    checksum, local file name, and for segmentation models the normalisation,
    input size and whether a sigmoid comes before the min-max."""
    import inspect
    import re

    from rembg import matting
    from rembg.sessions import sessions_class

    published = {}
    for cls in sessions_class:
        fetch, predict = inspect.getsource(cls.download_models), inspect.getsource(cls.predict)
        url = re.search(r'"(https://github\.com/danielgatis/rembg/releases/[^"]+)"', fetch)
        checksum = re.search(r'"((?:md5|sha256):[0-9a-f]+)"', fetch)
        norm = re.search(r"normalize\(\s*img,\s*\(([^)]*)\),\s*\(([^)]*)\),\s*\((\d+),\s*(\d+)\)",
                         predict)
        if not (url and checksum and norm):
            continue  # custom sessions, SAM, cloud APIs
        mean, std = (tuple(float(x) for x in g.split(",")) for g in norm.group(1, 2))
        published[cls.name()] = {
            "url": url.group(1), "checksum": checksum.group(1), "file": f"{cls.name()}.onnx",
            "mean": mean, "std": std, "size": int(norm.group(3)),
            "sigmoid": "sigmoid" in predict}
    for variant, spec in matting.VARIANTS.items():
        published[f"vitmatte-{variant}"] = {
            "url": f"{matting.BASE_URL}/{spec['fname']}", "file": spec["fname"],
            "checksum": f"sha256:{spec['sha256']}"}
    return published


def test_every_row_is_what_rembg_publishes():
    published = _rembg_published()
    assert len(published) >= 19  # the parse found them: 15 session classes, 4 ViTMattes
    for name, spec in REGISTRY.items():
        theirs = published.get(name)
        assert theirs is not None, f"rembg 2.0.86 has no {name}"
        assert (spec.url, spec.checksum, spec.filename) == \
            (theirs["url"], theirs["checksum"], theirs["file"]), name
        if spec.family is not None:
            family = FAMILIES[spec.family]
            mean, std = spec.normalisation()
            assert (tuple(mean), tuple(std), family.size) == \
                (theirs["mean"], theirs["std"], theirs["size"]), name
            assert (family.activation == "sigmoid") == theirs["sigmoid"], name
    # And the other way: every segmentation model rembg downloads is a row here,
    # but u2net_cloth_seg (three garment masks, not a cutout) and the fp16 copy
    # of birefnet-general (made locally, not downloaded).
    assert set(published) - set(REGISTRY) <= {"u2net_cloth_seg"}


def test_listing_names_licence_and_source_of_every_model(cli, models_home):
    listing = json.loads(cli("models", "list", "--json").stdout)
    rows = {m["name"]: m for m in listing["models"]}
    assert set(rows) == set(REGISTRY)
    for name, row in rows.items():
        assert row["licence"] and row["source"].startswith("https://"), name
        assert row["checksum"] == REGISTRY[name].checksum and row["url"] == REGISTRY[name].url
        assert row["approx_mb"] > 0
    assert rows["bria-rmbg"]["licence"].startswith("CC BY-NC 4.0")
    assert rows["vitmatte-small-distinctions-646"]["kind"] == "matting"
    assert rows["vitmatte-small-distinctions-646"]["family"] is None
    text = cli("models", "list").stdout.decode()
    assert "CC BY-NC 4.0" in text and "~973 MB" in text


# -- install from the official URL, sha256 rows, disk failures ---------------------------------

def _official_at(monkeypatch, serve, name: str, data: bytes) -> str:
    """``name``'s official URL and checksum, in this process only, pointing at a
    loopback server that holds ``data``; returns the URL."""
    root, base = serve()
    spec = REGISTRY[name]
    (root / spec.filename).write_bytes(data)
    digest = __import__("hashlib").new(spec.algorithm, data).hexdigest()
    url = f"{base}/{spec.filename}"
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(
        spec, url=url, checksum=f"{spec.algorithm}:{digest}"))
    return url


def test_install_without_from_downloads_the_official_url(models_home, serve, run_main,
                                                         monkeypatch, tmp_path, fixtures):
    model = standin_onnx(tmp_path / "lite.onnx", "birefnet").read_bytes()
    url = _official_at(monkeypatch, serve, "birefnet-general-lite", model)
    status, _, err = run_main("models", "install", "birefnet-general-lite", "--progress")
    assert status == 0, err
    assert f"downloading birefnet-general-lite (~224 MB) from {url}" in err and "B/s" in err
    dest = models_home / "birefnet-general-lite.onnx"
    assert dest.read_bytes() == model and leftovers(models_home) == [dest.name]
    status, out, err = run_main("image", fixtures / "chelsea.png", "--model",
                                "birefnet-general-lite", "-o", tmp_path / "out", "--json")
    assert status == 0 and json.loads(out)["failed"] == [], err


def test_vitmatte_rows_install_by_sha256_and_give_a_verified_path(models_home, serve,
                                                                  run_main, monkeypatch):
    name = "vitmatte-small-composition-1k"
    data = b"a ViTMatte stand-in: only its bytes matter here" * 1000
    _official_at(monkeypatch, serve, name, data)
    with pytest.raises(models.ModelError, match=f"bgrm models install {name}"):
        models.verified_path(name)
    status, _, err = run_main("models", "install", name)
    assert status == 0, err
    assert "sha256:" in err
    path = models.verified_path(name)
    assert path == models_home / f"{name}.onnx" and path.read_bytes() == data
    path.write_bytes(data[:-1] + b"!")
    with pytest.raises(models.ModelError, match="corrupt: sha256 [0-9a-f]{64}, expected"):
        models.verified_path(name)


def test_a_full_disk_during_install_is_an_output_error(models_home, serve, run_main,
                                                       monkeypatch):
    import errno

    from bgrm.models import installer

    _official_at(monkeypatch, serve, "silueta", b"x" * 100_000)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(installer.os, "fsync", full)
    status, _, err = run_main("models", "install", "silueta")
    assert status == 1, err  # the disk, not a usage error
    assert "cannot write: No space left on device" in err and "Traceback" not in err
    assert leftovers(models_home) == []


def test_models_rembg_downloaded_are_found_in_its_folders(tmp_path, monkeypatch, fixtures):
    """rembg 2.0.86 keeps models in <home>/models/<name>/: bgrm reads them there
    (checked like its own), unless $BGRM_MODELS names its one folder."""
    rembg_home = tmp_path / "rembg"
    monkeypatch.delenv("BGRM_MODELS", raising=False)
    monkeypatch.delenv("U2NET_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.u2net
    monkeypatch.setenv("REMBG_HOME", str(rembg_home))
    spec = REGISTRY["isnet-anime"]
    folder = rembg_home / "models" / "isnet-anime"
    folder.mkdir(parents=True)
    path = standin_onnx(folder / spec.filename, "isnet")
    with pytest.raises(models.ModelError, match="corrupt"):  # not the official bytes
        models.resolve("isnet-anime")
    monkeypatch.setitem(REGISTRY, "isnet-anime", dataclasses.replace(
        spec, checksum=md5sum(path)))
    assert models.resolve("isnet-anime").path == path
    assert models.status(REGISTRY["isnet-anime"]).status == "installed"
    vitmatte = REGISTRY["vitmatte-base-composition-1k"]
    assert models.store.rembg_path(vitmatte) == rembg_home / "models" / "vitmatte" / \
        vitmatte.filename
    monkeypatch.setenv("BGRM_MODELS", str(tmp_path / "mine"))
    with pytest.raises(models.ModelError, match="not installed"):
        models.resolve("isnet-anime")


def test_a_1024_model_is_loaded_once_and_runs_one_file_at_a_time(tmp_path, fixtures,
                                                                 models_home, monkeypatch,
                                                                 capfd):
    """Threads share the process's one session; a 1024 model is not run on two files
    at once (its working memory would double), and --jobs N says it makes N copies."""
    import os

    from bgrm import command, segment
    from bgrm.command import run_command
    from bgrm.options import ImageOptions, MattingOptions
    from bgrm.report import Result
    from bgrm.settings import RunSettings

    seen = []

    class FakeExecutor:
        def run(self, tasks, listener=None):
            return [Result(t.name, t.dst) for t in tasks]

    def fake_executor(settings, count, file_threads=1, *, long_lived=False, say):
        seen.append((settings.processes or 1, file_threads))
        return FakeExecutor()

    monkeypatch.setattr(command, "executor", fake_executor)
    monkeypatch.setattr(segment, "SEGMENTERS", segment.SegmenterCache())
    photos = [str(fixtures / "chelsea.png"), str(fixtures / "coffee.png")]
    big = standin_onnx(tmp_path / "big.onnx", "birefnet")
    small = standin_onnx(tmp_path / "small.onnx", "u2net")
    matting = MattingOptions(enabled=True)  # what puts two u2net files on threads

    def go(model, family, jobs=None):
        return run_command("image", ImageOptions(model=str(model), model_family=family,
                                                 matting=matting),
                           inputs=photos, output_dir=tmp_path / "out", recursive=False,
                           settings=RunSettings(processes=jobs, device="cpu", traceback=True),
                           progress=False)

    assert go(big, "birefnet") == 0 and seen[-1] == (1, 1)
    assert [k[0][0] for k in segment.SEGMENTERS.keys()] == [str(big)]  # loaded once, before any file
    if (os.cpu_count() or 1) >= 2:  # the control: a u2net model does take two at once
        assert go(small, "u2net") == 0 and seen[-1] == (1, 2)
    capfd.readouterr()
    monkeypatch.setattr(segment, "SEGMENTERS", segment.SegmenterCache())
    assert go(big, "birefnet", jobs=2) == 0 and seen[-1] == (2, 1)
    assert segment.SEGMENTERS.keys() == []  # checked, then let go: the workers load their own
    assert "2 worker processes each load their own copy" in capfd.readouterr().err
