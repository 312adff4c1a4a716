"""A real `bgrm serve` process for the service's tests: started on a free port
with its own data dir, talked to over real HTTP, stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import requests
from procs import TMP_MARK, bgrm_argv

IMAGE = "image-backgroundremover"
VIDEO = "video-backgroundremover"


class Server:
    def __init__(self, env: dict, data_dir: Path, *args, preexec_fn=None, ready_s: float = 60):
        self.data_dir = Path(data_dir)
        self.log = self.data_dir.parent / f"{self.data_dir.name}-{uuid.uuid4().hex[:6]}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                bgrm_argv("serve", "--port", "0", "--data-dir", self.data_dir, *args),
                env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                preexec_fn=preexec_fn)
        deadline = time.monotonic() + ready_s
        while not (m := re.search(r"serving on (http://\S+?)/ ", self.stderr())):
            assert self.proc.poll() is None, f"bgrm serve exited: {self.stderr()}"
            assert time.monotonic() < deadline, f"bgrm serve did not start: {self.stderr()}"
            time.sleep(0.05)
        self.url = m.group(1)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=60, **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def convert(self, files, data=None, key: str | None = None) -> requests.Response:
        """``files``: [(field, path or (name, bytes))]."""
        parts = []
        for field, item in files:
            if isinstance(item, tuple):
                parts.append((field, item))
            else:
                parts.append((field, (Path(item).name, Path(item).read_bytes())))
        headers = {"Authorization": key} if key else {}
        return self.post("/v1/convert/", files=parts, data=data or {}, headers=headers)

    def results(self, uuid_: str) -> dict:
        r = self.post("/v1/results/", data={"uuid": uuid_})
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, uuid_: str, timeout: float = 180, until=None) -> dict:
        """Poll /v1/results/ until the job is finished (or ``until(answer)``)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.results(uuid_)
            if (until or (lambda a: a["finished"]))(answer):
                return answer
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)

    def signal(self, signum: int, timeout: float = 60) -> int:
        os.killpg(self.proc.pid, signum)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)


def leftovers(folder: Path) -> list[Path]:
    """bgrm's temporary files anywhere under ``folder``."""
    return [p for p in Path(folder).rglob("*") if TMP_MARK in p.name]


def multipart(parts: list[tuple[bytes, bytes | None, bytes]]) -> tuple[bytes, str]:
    """A multipart body written byte by byte (names a client library would refuse)."""
    boundary = b"bgrm-test-" + uuid.uuid4().hex.encode()
    body = b""
    for name, filename, data in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += (b"--" + boundary + b"\r\nContent-Disposition: " + disposition
                 + b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    body += b"--" + boundary + b"--\r\n"
    return body, "multipart/form-data; boundary=" + boundary.decode()
