"""bgrm never touches the network while it works: any socket is refused and logged,
in the main process and in the pool's workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from procs import (
    _ffmpeg,
    _works,
    bgrm_argv,
    finished_outputs,
    no_traceback,
    run,
)

SITECUSTOMIZE = '''
"""Test guard: any network socket or name lookup is refused, and logged."""
import os
import socket

_LOG = os.environ["BGRM_NET_LOG"]
with open(_LOG + ".loaded", "a") as _f:
    _f.write(f"{os.getpid()}\\n")


def _refuse(what):
    with open(_LOG, "a") as f:
        f.write(f"{os.getpid()}: {what}\\n")
    raise OSError(f"network blocked by the offline test: {what}")


class _NoNetwork(socket.socket):
    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        if fileno is None and family != socket.AF_UNIX:  # AF_UNIX: local IPC
            _refuse(f"socket(family={family})")
        super().__init__(family, type, proto, fileno)


socket.socket = _NoNetwork
socket.create_connection = lambda *a, **k: _refuse(f"create_connection{a}")
socket.getaddrinfo = lambda *a, **k: _refuse(f"getaddrinfo{a}")
socket.gethostbyname = lambda *a, **k: _refuse(f"gethostbyname{a}")
'''


@pytest.fixture
def offline_env(tmp_path, env) -> tuple[dict, Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "network.log"
    return dict(env, PYTHONPATH=os.pathsep.join([str(site), env["PYTHONPATH"]]),
                BGRM_NET_LOG=str(log)), log


def test_offline_image_jobs(tmp_path, offline_env, fixtures):
    env, log = offline_env
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection("
                            "('192.0.2.1', 80), timeout=1)"], env=env, capture_output=True)
    assert probe.returncode != 0 and log.exists()  # the guard works
    log.unlink()

    photos = [fixtures / n for n in ("chelsea.png", "coffee.png", "rocket.jpg")]
    proc = run(env, "image", *photos, "-o", tmp_path / "pool", "--jobs", "2")
    assert proc.returncode == 0, no_traceback(proc)
    proc = run(env, "image", photos[0], "-o", tmp_path / "inline", "--bg-type", "color")
    assert proc.returncode == 0, no_traceback(proc)
    proc = run(env, "image", "-", input=photos[0].read_bytes())
    assert proc.returncode == 0 and proc.stdout.startswith(b"\x89PNG"), no_traceback(proc)
    assert len(finished_outputs(tmp_path / "pool")) == 3
    assert not log.exists(), log.read_text()
    # The guard was loaded in the main processes and in the pool's workers.
    assert len(set(Path(f"{log}.loaded").read_text().split())) >= 5


@pytest.mark.skipif(not _works("unshare", "-n", "true"),
                    reason="needs unshare -n (a network namespace)")
def test_no_network_at_all(tmp_path, env, fixtures):
    """In a namespace with no network (not even loopback up), below Python too."""
    proc = subprocess.run(["unshare", "-n", *bgrm_argv("image", fixtures / "chelsea.png",
                                                       fixtures / "coffee.png",
                                                       fixtures / "rocket.jpg", "-o", tmp_path)],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, no_traceback(proc)
    assert len(finished_outputs(tmp_path)) == 3



def test_offline_video_job(tmp_path, offline_env):
    env, log = offline_env
    clip = tmp_path / "clip.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10", "-t", "0.5", "-pix_fmt", "yuv420p",
                    str(clip)], check=True)
    proc = run(env, "video", clip, "-o", tmp_path / "out", "--video-format", "gif",
               "--frame-limit", "3")
    assert proc.returncode == 0, no_traceback(proc)
    assert (tmp_path / "out" / "clip_processed.gif").exists()
    assert not log.exists(), log.read_text()
