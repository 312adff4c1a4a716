"""Shared test helpers: real fixtures, the real CLI in a subprocess, a clean models dir."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]

# A suite started with Ctrl-C ignored (nohup, `&` in a script) would hand that on
# to every bgrm it starts, and the Ctrl-C tests would see runs that cannot be
# interrupted. A handler (unlike SIG_IGN) is reset to the default on exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory):
    """``make(scale)``: a new folder with the four fixture photos and rocket.jpg
    upscaled ``scale`` times as rocket_x{scale}.png (a large photo's resize path)."""
    def make(scale: int) -> Path:
        folder = tmp_path_factory.mktemp(f"photos-x{scale}")
        for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"):
            shutil.copy(FIXTURES / name, folder / name)
        rocket = Image.open(FIXTURES / "rocket.jpg").convert("RGB")
        rocket.resize((rocket.width * scale, rocket.height * scale),
                      Image.Resampling.BICUBIC).save(folder / f"rocket_x{scale}.png")
        return folder

    return make


@pytest.fixture(scope="session")
def quick_model(tmp_path_factory) -> Path:
    """A U^2-Net stand-in (``standins.standin_onnx``: an image-dependent map in
    milliseconds a frame), given as ``--model PATH``, for tests whose subject is not
    the mask (a video's segments and their recovery, containers, executors and
    --timeout, progress, a scene cut, the matte's determinism and frame order):
    there u2netp's second a frame would be nearly all of the time, and a short
    --timeout still leaves a file far more than it needs. Everywhere else the masks
    are u2netp's."""
    from standins import standin_onnx

    return standin_onnx(tmp_path_factory.mktemp("quick-model") / "quick.onnx", "u2net",
                        gain=8.0)


@pytest.fixture
def models_home(tmp_path, monkeypatch) -> Path:
    """An empty models directory, so runs use the bundled u2netp, whatever ~/.u2net holds."""
    home = tmp_path / "models-home"
    home.mkdir()
    monkeypatch.setenv("BGRM_MODELS", str(home))
    monkeypatch.delenv("U2NET_HOME", raising=False)
    return home


@pytest.fixture
def bgrm(models_home):
    """Run the real `bgrm` CLI in a subprocess; returns the CompletedProcess."""

    def run(*args, input: bytes | None = None, cwd=None, env=None, timeout=300):
        full_env = dict(os.environ)
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "bgrm", *map(str, args)], input=input,
                              capture_output=True, cwd=cwd, env=full_env, timeout=timeout)

    return run


@pytest.fixture
def cli(models_home):
    """The real `bgrm` command line (``bgrm.cli.main``) in this process, its streams
    captured by Click's runner: a CompletedProcess like ``bgrm``'s, at a fraction
    of the cost (no interpreter to start, the model stays loaded between runs).
    For tests whose subject is not stdin, signals, file descriptors or a process
    of its own: those use ``bgrm``."""
    import contextlib

    from click.testing import CliRunner

    from bgrm.cli import main

    def run(*args, input: bytes | None = None, cwd=None, env=None, timeout=None):
        argv = [str(a) for a in args]
        code = 0
        with CliRunner().isolation(input=input, env=env) as (out, err, _), \
                contextlib.chdir(cwd or os.getcwd()):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code
        return subprocess.CompletedProcess(["bgrm", *argv], code, out.getvalue(),
                                           err.getvalue())

    return run


@pytest.fixture
def run_main(monkeypatch, capfd):
    """The real ``bgrm.cli.main`` in this process: ``(exit status, stdout, stderr)``."""
    from bgrm import cli

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["bgrm", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        out, err = capfd.readouterr()
        return exit_.value.code, out, err

    return run


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    """The environment of a real run in a subprocess (tests/procs.py): an empty
    models folder (bundled u2netp), this checkout on the path."""
    home = tmp_path_factory.mktemp("models-home")
    out = {k: v for k, v in os.environ.items() if k != "U2NET_HOME"}
    out["BGRM_MODELS"] = str(home)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``(address, client)`` of a loopback Dask cluster, two worker processes of one
    thread each, with no models installed (a module's tests share it)."""
    pytest.importorskip("distributed")
    from distributed import Client, LocalCluster

    worker_models = tmp_path_factory.mktemp("worker-models")
    local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None, env={"BGRM_MODELS": str(worker_models)})
    client = Client(local, set_as_default=False)
    try:
        yield local.scheduler_address, client
    finally:
        client.close()
        local.close()
