"""A real `bgrm serve` process for the browser and client tests, and the rule
for a tool those tests drive that is missing: skip here, fail under CI."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KEY = "page-and-clients-key"


def need(present: bool, what: str) -> None:
    """Skip without ``what``; under CI (env ``CI`` set) fail, so that a CI that
    lost a tool does not pass by skipping the tests that use it."""
    if present:
        return
    message = f"{what} is missing (make system-deps installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(data_dir: Path, env: dict | None = None, key: str | None = KEY):
    """``python -m bgrm serve`` on a free loopback port (``key``: its API key,
    None for none); yields its base URL once /health answers, and stops it
    (SIGTERM) afterwards."""
    port = free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    argv = [sys.executable, "-m", "bgrm", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir)] + (["--api-key", key] if key else [])
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"bgrm serve exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"bgrm serve did not answer:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_cutout(data: bytes) -> Image.Image:
    """``data`` is a PNG whose alpha keeps some pixels and drops others."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:40]
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGBA", im.mode
    lo, hi = im.getchannel("A").getextrema()
    assert lo < 16 and hi > 240, (lo, hi)
    return im
