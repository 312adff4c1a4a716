"""Helpers for the tests that run the real CLI in subprocesses: starting runs in
their own session, finding their processes, checking what is left in a folder,
interrupting at a chosen moment, and the fuzzers' mutations."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nasty
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TMP_MARK = ".bgrm-tmp-"

# A process that runs this (a sitecustomize.py, or exec on a Dask worker) never
# finishes decoding an image whose name holds "hang": --timeout's case.
HANG_HOOK = '''
"""Test hook: decoding an image whose name holds "hang" never ends."""
import time

import bgrm.image

_real = bgrm.image.decode


def _decode(data, name):
    if "hang" in str(name):
        time.sleep(3600)
    return _real(data, name)


bgrm.image.decode = _decode
'''


def bgrm_argv(*args) -> list:
    return [sys.executable, "-m", "bgrm", *(a if isinstance(a, bytes) else str(a) for a in args)]


def run(env, *args, cwd=None, input=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(bgrm_argv(*args), env=env, cwd=cwd, input=input,
                          capture_output=True, timeout=timeout)


def start(env, *args, cwd=None) -> subprocess.Popen:
    """A run in its own session, so that Ctrl-C can go to its whole process group
    (as a terminal sends it) and its processes can be found afterwards."""
    return subprocess.Popen(bgrm_argv(*args), env=env, cwd=cwd, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def no_traceback(proc) -> str:
    err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
    assert "Traceback" not in err, err
    return err


def _stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, session, state) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3]), fields[0]


def session_processes(sid: int) -> dict[int, int]:
    """Live processes (pid -> ppid) of session ``sid``; zombies are already dead."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(entry)
            if info and info[1] == sid and info[2] != "Z":
                found[int(entry)] = info[0]
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


def assert_no_orphans(sid: int, grace: float = 5.0) -> None:
    """Nothing of the run (workers, fork server, ffmpeg) outlives it."""
    deadline = time.monotonic() + grace
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, {pid: cmdline(pid) for pid in left}


def workers_of(pid: int) -> list[int]:
    """The pool's workers: children of the fork server that ``pid`` started."""
    procs = session_processes(pid)
    servers = [p for p, parent in procs.items()
               if parent == pid and "forkserver" in cmdline(p)]
    return [p for p, parent in procs.items() if parent in servers]


def finished_outputs(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file of an output folder must be a final, complete PNG: no
    temporaries, nothing half-written. Returns name -> (mtime_ns, bytes)."""
    found = {}
    for path in folder.iterdir():
        assert TMP_MARK not in path.name, f"temporary file left: {path.name}"
        assert "_processed" in path.stem, f"unexpected file: {path.name}"
        with Image.open(path) as im:
            im.load()  # raises on a truncated file
            assert im.mode == "RGBA"
        found[path.name] = (path.stat().st_mtime_ns, path.read_bytes())
    return found


def alpha_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.getchannel("A"), dtype=np.int16)


def _works(*argv: str) -> bool:
    return bool(shutil.which(argv[0])) and subprocess.run(argv, capture_output=True).returncode == 0


needs_mount_namespace = pytest.mark.skipif(
    not _works("unshare", "-m", "sh", "-c", "mount -t tmpfs tmpfs /mnt"),
    reason="needs unshare -m and mount (a private tmpfs)")


def _ffmpeg() -> str:
    import imageio_ffmpeg  # a dependency of bgrm: missing, the tests must fail, not skip

    return imageio_ffmpeg.get_ffmpeg_exe()


def _batch(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    return [nasty.noisy_jpeg(folder / f"big_{i}.jpg", size=(1200, 800), seed=i)
            for i in range(count)]


def _wait_for(proc, condition, what: str, timeout: float = 60.0):
    """Poll ``condition`` until it gives something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {what}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.002)
    return value


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def _after(seconds: float):
    t0 = time.monotonic()
    return lambda: time.monotonic() - t0 > seconds


MOMENTS = {
    # While Python imports, the model loads and the pool starts.
    "starting": lambda out: _after(0.6),
    # While an output is being encoded: its temporary file exists.
    "writing": lambda out: lambda: any(TMP_MARK in n for n in _names(out)),
    # Just after a file was finished, while the next ones are in flight.
    "between": lambda out: lambda: any(n.endswith("_processed.png") for n in _names(out)),
}


def _interrupt(env, out: Path, moment: str, send, *args) -> tuple[int, str]:
    """Start a run, wait for ``moment``, ``send(proc)`` a signal; check that it
    ended cleanly: no traceback, no process left, nothing half-written."""
    proc = start(env, *args, "-o", out)
    try:
        _wait_for(proc, MOMENTS[moment](out), f"the {moment} moment")
        send(proc)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode(errors="replace")
    assert "Traceback" not in err, err
    assert_no_orphans(proc.pid)
    for name in _names(out):
        assert TMP_MARK not in name, f"temporary file left: {name}"
    return proc.returncode, err


def ctrl_c(proc, times: int = 1) -> None:
    for _ in range(times):
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        time.sleep(0.05)


def _writing_worker(pid: int, out: Path) -> int | None:
    """A pool worker of run ``pid`` that is writing an output (its temporary
    file carries its pid): certainly in the middle of a file."""
    workers = workers_of(pid)
    for name in _names(out):
        if TMP_MARK in name:
            writer = int(name.split(TMP_MARK)[1].split(".")[0])
            if writer in workers:
                return writer
    return None


def _kill_a_writing_worker(env, out, *args):
    """Run a --jobs 2 batch and SIGKILL the worker writing, as the OOM killer
    does; return (proc, its --json report, stderr) after checking it exited 1
    without a traceback."""
    proc = start(env, *args, "-o", out, "--jobs", "2", "--json")
    try:
        victim = _wait_for(proc, lambda: _writing_worker(proc.pid, out), "a worker writing")
        os.kill(victim, signal.SIGKILL)
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err.decode()
    assert "Traceback" not in err.decode()
    return proc, json.loads(stdout), err


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    seeds = {}
    for fmt, image, kwargs in (
        ("PNG", base, {}), ("PNG", base.convert("RGBA"), {}), ("PNG", base.convert("P"), {}),
        ("JPEG", base, {"quality": 80}), ("GIF", base, {}), ("BMP", base, {}),
        ("TIFF", base, {}), ("WEBP", base, {}), ("JPEG", base.convert("CMYK"), {}),
        ("PNG", base.convert("I;16"), {}),
    ):
        buf = io.BytesIO()
        image.save(buf, fmt, **kwargs)
        seeds[f"{fmt}-{image.mode}"] = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    base.save(buf, "JPEG", exif=exif)
    seeds["JPEG-exif"] = buf.getvalue()
    return seeds


@contextlib.contextmanager
def _time_limit(seconds: int):
    def on_alarm(signum, frame):
        raise TimeoutError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _mutations(st, seeds: dict[str, bytes]):
    """Seeds mangled a few times: bits flipped, bytes set, cut, inserted, deleted."""

    @st.composite
    def mutated(draw):
        data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "set" and data:
                data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
            elif op == "cut":
                del data[at:]
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            elif op == "delete":
                del data[at:at + draw(st.integers(1, 64))]
        return bytes(data)

    return mutated()


def _live_children() -> list[str]:
    me = os.getpid()
    # multiprocessing's resource tracker may outlive an earlier test's pool: it
    # belongs to pytest, not to the job under test.
    return [cmd for p in os.listdir("/proc")
            if p.isdigit() and (info := _stat(p)) and info[0] == me and info[2] != "Z"
            and "resource_tracker" not in (cmd := cmdline(int(p)))]
