"""What the browser and client tests share: the key their server runs with,
the rule for a tool they drive that is missing (skip here, fail under CI), and
the check of a downloaded cut-out."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image
from servers import Server

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


@contextlib.contextmanager
def served(data_dir: Path, env: dict | None = None, key: str | None = KEY):
    """A real ``bgrm serve`` (``key``: its API key, None for none); yields its base URL."""
    server = Server(env if env is not None else dict(os.environ), data_dir,
                    *(["--api-key", key] if key else []))
    try:
        yield server.url
    finally:
        server.stop()


def assert_cutout(data: bytes) -> Image.Image:
    """``data`` is a PNG whose alpha keeps some pixels and drops others."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:40]
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGBA", im.mode
    lo, hi = im.getchannel("A").getextrema()
    assert lo < 16 and hi > 240, (lo, hi)
    return im
