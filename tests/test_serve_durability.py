"""`bgrm serve` keeps every job it answered: `kill -9` and a restart on the same
data dir, SIGTERM, a full disk, a hung file, expiry. Each case starts its own
server processes."""

from __future__ import annotations

import io
import os
import resource
import signal
import sqlite3
import sys
import time

import pytest
from PIL import Image
from servers import IMAGE, Server, leftovers

pytest.importorskip("starlette")

# Decoding a picture whose file ends with this marker never ends (a hung file).
MARK = b"HANG-HANG-HANG!!"
HUNG_DECODE = f'''
import os
import time
import uuid
from pathlib import Path

import bgrm.image

_real = bgrm.image.decode


def _decode(data, name):
    if isinstance(data, Path) and data.read_bytes()[-16:] == {MARK!r}:
        if "BGRM_TEST_MARKS" in os.environ:  # says when each hung file begins
            (Path(os.environ["BGRM_TEST_MARKS"]) / uuid.uuid4().hex).touch()
        time.sleep(3600)
    return _real(data, name)


bgrm.image.decode = _decode
'''


def _photos(fixtures, count: int, size=(120, 90)) -> list[tuple[str, tuple[str, bytes]]]:
    """``count`` small photos (each is one model run), as upload parts."""
    names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    parts = []
    for i in range(count):
        out = io.BytesIO()
        Image.open(fixtures / names[i % 4]).convert("RGB").resize(size).save(out, "PNG")
        parts.append(("files", (f"p{i}.png", out.getvalue())))
    return parts


def _downloads(server, answer) -> dict[str, bytes]:
    return {f["filename"]: server.get(f["url"]).content for f in answer["files"]}


def test_kill_9_mid_job_then_restart_finishes_every_job(env, fixtures, tmp_path):
    data = tmp_path / "data"
    first = Server(env, data)
    try:
        done = first.convert(_photos(fixtures, 1), {"convert_to": IMAGE}).json()["uuid"]
        kept = _downloads(first, first.wait(done))
        busy = first.convert(_photos(fixtures, 8), {"convert_to": IMAGE}).json()["uuid"]
        at_kill = first.wait(busy, until=lambda a: len(a["files"]) >= 1)
        first.signal(signal.SIGKILL)
    finally:
        first.stop()
    assert not at_kill["finished"], "the job ended before the kill; nothing was tested"
    second = Server(env, data)
    try:
        assert _downloads(second, second.wait(done)) == kept  # still there, same bytes
        answer = second.wait(busy)
        assert answer["failed"] == [] and len(answer["files"]) == 8
        assert all(b[:4] == b"\x89PNG" for b in _downloads(second, answer).values())
        assert not leftovers(data)
    finally:
        second.stop()


def test_a_finished_output_waiting_to_be_moved_is_taken_after_a_crash(env, fixtures, tmp_path):
    """A file finished under its held name (the crash came before it was moved into
    place) is matched to its job at the next start, not run again."""
    from bgrm.run import held_path

    data = tmp_path / "data"
    first = Server(env, data)
    key = first.convert(_photos(fixtures, 6), {"convert_to": IMAGE}).json()["uuid"]
    first.wait(key, until=lambda a: len(a["files"]) >= 1)
    first.signal(signal.SIGKILL)
    out = data / "jobs" / key / "out"
    last = out / "5_processed.png"
    assert not last.exists()
    marker = Image.new("RGBA", (7, 5), (1, 2, 3, 4))
    marker.save(held_path(last, key, 5))
    second = Server(env, data)
    try:
        answer = second.wait(key)
        assert answer["failed"] == [] and len(answer["files"]) == 6
        got = Image.open(io.BytesIO(second.get(answer["files"][5]["url"]).content))
        assert got.size == (7, 5)  # the held file itself
        assert not leftovers(data)
    finally:
        second.stop()


def test_sigterm_stops_cleanly_and_the_job_finishes_after(env, fixtures, tmp_path):
    data = tmp_path / "data"
    first = Server(env, data)
    key = first.convert(_photos(fixtures, 8), {"convert_to": IMAGE}).json()["uuid"]
    first.wait(key, until=lambda a: len(a["files"]) >= 1)
    t0 = time.monotonic()
    code = first.signal(signal.SIGTERM)
    assert code in (0, 128 + signal.SIGTERM), first.stderr()
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in first.stderr()
    assert not leftovers(data)
    second = Server(env, data)
    try:
        answer = second.wait(key)
        assert answer["failed"] == [] and len(answer["files"]) == 8
    finally:
        second.stop()


def _small_file_limit():
    # The server may write no file over 3 MB: a disk that fills up mid-upload.
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))


def test_a_full_disk_fails_the_request_and_keeps_nothing(env, fixtures, tmp_path):
    data = tmp_path / "data"
    server = Server(env, data, preexec_fn=_small_file_limit)
    try:
        big = ("files", ("big.jpg", os.urandom(5 << 20)))
        r = server.convert([("files", fixtures / "chelsea.png"), big], {"convert_to": IMAGE})
        assert r.status_code == 507 and "no room" in r.json()["error"], r.text
        assert list((data / "jobs").iterdir()) == []  # the partial upload is gone
        ok = server.convert([("files", fixtures / "chelsea.png")], {"convert_to": IMAGE})
        assert server.wait(ok.json()["uuid"])["failed"] == []
    finally:
        server.stop()


def test_a_hung_file_times_out_alone(env, fixtures, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HUNG_DECODE)
    marks = tmp_path / "marks"
    marks.mkdir()
    hook_env = dict(env, PYTHONPATH=os.pathsep.join([str(site), env["PYTHONPATH"]]),
                    BGRM_TEST_MARKS=str(marks))
    server = Server(hook_env, tmp_path / "data", "--timeout", "8")
    try:
        hung = ("files", ("hung.png", (fixtures / "chelsea.png").read_bytes() + MARK))
        key = server.convert([hung, *_photos(fixtures, 1)], {"convert_to": IMAGE}).json()["uuid"]
        answer = server.wait(key, timeout=60)
        assert [f["filename"] for f in answer["failed"]] == ["hung.png"], answer
        assert "timeout" in answer["errors"][0]
        assert [f["filename"] for f in answer["files"]] == ["p0_processed.png"]
        after = server.convert(_photos(fixtures, 1), {"convert_to": IMAGE}).json()["uuid"]
        assert server.wait(after, timeout=60)["failed"] == []  # the queue goes on
        # SIGTERM while a file cannot finish: the server still stops, in its grace time.
        began = len(list(marks.iterdir()))
        server.convert([hung], {"convert_to": IMAGE})
        deadline = time.monotonic() + 60
        while len(list(marks.iterdir())) == began:  # until the hung file is under way
            assert time.monotonic() < deadline, "the hung file never began"
            time.sleep(0.05)
        t0 = time.monotonic()
        assert server.signal(signal.SIGTERM) == 128 + signal.SIGTERM
        assert time.monotonic() - t0 < 30
        assert "the files under way run again" in server.stderr()
        assert "terminate" not in server.stderr() and not leftovers(tmp_path / "data")
    finally:
        server.stop()


def test_expired_results_are_removed(env, fixtures, tmp_path):
    server = Server(env, tmp_path / "data", "--keep", "1m")
    try:
        key = server.convert(_photos(fixtures, 1), {"convert_to": IMAGE}).json()["uuid"]
        url = server.wait(key)["files"][0]["url"]
        # Finished two minutes ago, as far as the server's database says.
        with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
            db.execute("UPDATE jobs SET finished = finished - 120 WHERE uuid = ?", (key,))
        deadline = time.monotonic() + 30
        while server.post("/v1/results/", data={"uuid": key}).status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert server.get(url).status_code == 404
        assert not (tmp_path / "data" / "jobs" / key).exists()
    finally:
        server.stop()


def test_refused_at_start(bgrm, tmp_path):
    """Other than loopback without a key, or without the serve extra: one clear line."""
    r = bgrm("serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", tmp_path / "d",
             env={"BGRM_API_KEY": ""})
    assert r.returncode == 2 and b"--api-key" in r.stderr and b"Traceback" not in r.stderr
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['python_multipart'] = None\n")
    r = bgrm("serve", "--port", "0", "--data-dir", tmp_path / "d",
             env={"PYTHONPATH": os.pathsep.join([str(blocker), *sys.path])})
    assert r.returncode == 2 and b"pip install 'bgrm[serve]'" in r.stderr, r.stderr
    assert b"python-multipart" in r.stderr and b"Traceback" not in r.stderr
