"""`--scheduler`: a batch on a real Dask cluster gives the files a local run gives.

One LocalCluster with processes (2 workers, 1 thread each) serves the module;
the CLI runs in this process (Click's runner) and connects to it as a user's
would; in a subprocess where its own process is the subject (Dask missing, a
connect timeout read from the environment, a scheduler lost under it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from procs import HANG_HOOK

from bgrm.models import ASSETS
from bgrm.run.cluster import PLUGIN_NAME

PHOTOS = ["astronaut.png", "chelsea.png", "rocket.jpg"]


def _inputs(fixtures, tmp_path) -> list[Path]:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return [fixtures / p for p in PHOTOS] + [broken]


def _bar(stderr: bytes) -> str:
    """The progress bar's last count, e.g. ``3/4``."""
    counts = re.findall(r"(\d+/\d+) \[", stderr.decode(errors="replace"))
    return counts[-1] if counts else ""


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_batch_matches_local_run(cli, fixtures, tmp_path, cluster, quick_model):
    """On the stand-in model: the subject is the same files and report either way
    (the workers' own u2netp is tested below)."""
    address, _ = cluster
    inputs = _inputs(fixtures, tmp_path)
    common = ["--model", quick_model, "--json", "--progress"]
    local = cli("image", *inputs, "-o", tmp_path / "local", *common)
    remote = cli("image", *inputs, "-o", tmp_path / "remote", *common, "--scheduler", address)

    for proc in (local, remote):
        assert proc.returncode == 1, proc.stderr.decode()
        assert b"broken.png: not an image bgrm can read" in proc.stderr
    got, want = json.loads(remote.stdout), json.loads(local.stdout)
    assert got["failed"] == want["failed"] and len(got["failed"]) == 1
    assert got["failed"][0]["filename"] == "broken.png"
    assert [f["filename"] for f in got["files"]] == [f["filename"] for f in want["files"]]
    assert [f["url"] for f in got["files"]] == \
        [str(tmp_path / "remote" / f["filename"]) for f in got["files"]]
    assert got["finished"] is True
    # The same files, byte for byte, and nothing else (no temporaries).
    remote_files, local_files = _outputs(tmp_path / "remote"), _outputs(tmp_path / "local")
    assert sorted(remote_files) == [f"{Path(p).stem}_processed.png" for p in sorted(PHOTOS)]
    assert remote_files == local_files
    assert _bar(remote.stderr) == _bar(local.stderr) != ""


def test_a_run_in_this_process_leaves_its_dask_logging_as_it_was(fixtures, tmp_path, cluster,
                                                                  models_home):
    """A host process (the service, a notebook) keeps its own log levels."""
    import logging

    from bgrm.models import resolve
    from bgrm.options import ImageOptions
    from bgrm.run import Runtime, Task
    from bgrm.run.cluster import Cluster

    address, _ = cluster
    mine = logging.getLogger("distributed.client")
    mine.setLevel(logging.INFO)
    levels = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict
              if name.split(".")[0] == "distributed"}
    task = Task("image", fixtures / "chelsea.png", tmp_path / "chelsea_processed.png",
                "chelsea.png", ImageOptions(only_mask=True), Runtime(resolve("u2netp")))
    [result] = Cluster(address).run([task])
    assert result.ok and task.dst.is_file()
    assert mine.level == logging.INFO
    assert {name: logging.getLogger(name).level for name in levels} == levels


def test_workers_resolve_and_keep_their_model(cli, fixtures, tmp_path, cluster, models_home):
    """Registry models are found where each worker is; the session outlives a task and a run."""
    address, client = cluster
    # The client finds u2netp installed in its models folder; the workers have
    # none installed, and must use their own bundled copy, not the client's path.
    shutil.copy(ASSETS / "u2netp.onnx", models_home / "u2netp.onnx")

    def sessions():
        def probe(dask_worker):
            from bgrm import segment

            return PLUGIN_NAME in dask_worker.plugins, {k[0][0]: id(v) for k, v in
                                                        segment.SEGMENTERS.items()}
        return client.run(probe)

    photos = [fixtures / "astronaut.png", fixtures / "rocket.jpg"]
    first = cli("image", *photos, "-o", tmp_path / "a", "--model", "u2netp",
                 "--scheduler", address)
    assert first.returncode == 0, first.stderr.decode()
    after_first = sessions()
    second = cli("image", *photos, "-o", tmp_path / "b", "--model", "u2netp",
                  "--scheduler", address)
    assert second.returncode == 0, second.stderr.decode()
    after_second = sessions()

    bundled = str(ASSETS / "u2netp.onnx")
    loaded = [s for _, s in after_first.values() if s]
    assert loaded, "no worker loaded a model"
    for plugged, cached in after_first.values():
        assert plugged
        # u2netp from the worker's own package (earlier tests may have left
        # other models' sessions in the cache).
        assert [k for k in cached if k.endswith("u2netp.onnx")] in ([], [bundled]), cached
    assert any(bundled in cached for _, cached in after_first.values())
    for addr, (_, cached) in after_first.items():
        # Loaded once per worker: the second run reused every session.
        assert all(after_second[addr][1].get(k) == v for k, v in cached.items())
    assert _outputs(tmp_path / "a") == _outputs(tmp_path / "b")


def test_custom_model_path_is_used_as_given(cli, fixtures, tmp_path, cluster):
    address, client = cluster
    custom = tmp_path / "shared" / "mine.onnx"
    custom.parent.mkdir()
    shutil.copy(ASSETS / "u2netp.onnx", custom)
    photo = fixtures / "chelsea.png"
    local = cli("image", photo, "-o", tmp_path / "local", "--model", custom)
    remote = cli("image", photo, "-o", tmp_path / "remote", "--model", custom,
                  "--scheduler", address)
    assert local.returncode == remote.returncode == 0, remote.stderr.decode()
    assert _outputs(tmp_path / "remote") == _outputs(tmp_path / "local")

    def session(dask_worker):
        """The session a task on this worker would use for the custom model."""
        from bgrm import segment
        from bgrm.models import resolve
        from bgrm.run import Runtime

        runtime = dask_worker.plugins[PLUGIN_NAME].runtime(Runtime(resolve(str(custom))))
        found = segment.get_segmenter(runtime.model, runtime.device, runtime.threads)
        kept = dask_worker.__dict__.setdefault("_test_sessions", [])
        kept.append(found)  # alive, so that no later session can reuse its id
        return id(found)

    first = client.run(session)
    assert client.run(session) == first  # kept across tasks and runs
    # A model file replaced on disk is loaded again.
    shutil.copy(ASSETS / "u2netp.onnx", custom.with_suffix(".new"))
    os.replace(custom.with_suffix(".new"), custom)
    replaced = client.run(session)
    assert all(replaced[w] != first[w] for w in first)


@pytest.mark.skipif(importlib.util.find_spec("bgrm.video.pipeline") is None,
                    reason="bgrm video is not built yet (no bgrm.video.pipeline)")
def test_video_matches_local_run(cli, fixtures, tmp_path, cluster, quick_model):
    address, _ = cluster
    clip = fixtures / "no_time_for_that_tiny.gif"
    args = ["--model", quick_model, "--video-format", "gif", "--frame-limit", "4"]
    local = cli("video", clip, "-o", tmp_path / "local", *args)
    remote = cli("video", clip, "-o", tmp_path / "remote", *args, "--scheduler", address)
    assert local.returncode == 0, local.stderr.decode()
    assert remote.returncode == 0, remote.stderr.decode()
    assert _outputs(tmp_path / "remote") == _outputs(tmp_path / "local")


def test_without_dask_says_what_to_install(bgrm, fixtures, tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    # Imported at start-up from PYTHONPATH: makes `import distributed` fail as
    # it does where the extra is not installed.
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoDask:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'distributed'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, _NoDask())\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker),
                                                        os.environ.get("PYTHONPATH")]))}
    proc = bgrm("image", fixtures / "rocket.jpg", "-o", tmp_path, "--model", "u2netp",
                "--scheduler", "tcp://127.0.0.1:8786", env=env)
    assert proc.returncode == 2, proc.stderr.decode()
    assert b"pip install 'bgrm[dask]'" in proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*_processed.png"))


def test_bad_or_unreachable_scheduler(bgrm, fixtures, tmp_path):
    pytest.importorskip("distributed")
    photo = fixtures / "rocket.jpg"
    bad = bgrm("image", photo, "-o", tmp_path, "--model", "u2netp", "--scheduler", "tcp://host:")
    assert bad.returncode == 2 and b"not a Dask scheduler address" in bad.stderr, bad.stderr
    # Port 9 (discard) on this machine: nothing listens there.
    down = bgrm("image", photo, "-o", tmp_path, "--model", "u2netp",
                "--scheduler", "tcp://127.0.0.1:9",
                env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "1s"})
    assert down.returncode == 1, down.stderr.decode()
    assert b"cannot reach the Dask scheduler at tcp://127.0.0.1:9" in down.stderr
    assert b"Traceback" not in down.stderr


@pytest.mark.parametrize("port", ["99999", "0", "65536"])
def test_a_port_out_of_range_is_a_usage_error_at_once(port, run_main, fixtures, tmp_path):
    pytest.importorskip("distributed")
    started = time.monotonic()
    status, _, err = run_main("image", fixtures / "rocket.jpg", "-o", tmp_path, "--model",
                              "u2netp", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert status == 2, err
    assert f"not a Dask scheduler address (port {port} is outside 1-65535)" in err
    assert time.monotonic() - started < 15  # not the client's 30 s connect timeout


def test_hung_task_times_out_alone_and_its_worker_is_restarted(cli, fixtures, tmp_path,
                                                                cluster, quick_model):
    """On the stand-in model a file takes milliseconds: a short --timeout still
    leaves the files that do not hang far more than they need."""
    address, client = cluster

    def hang_on(source):
        exec(source, {"__name__": "hang_hook"})  # the same hook the local runs load
        return os.getpid()

    pids = set(client.run(hang_on, HANG_HOOK).values())
    try:
        for name in ("a.png", "hang.png", "c.png"):
            shutil.copy(fixtures / "chelsea.png", tmp_path / name)
        out = tmp_path / "out"
        proc = cli("image", tmp_path / "a.png", tmp_path / "hang.png", tmp_path / "c.png",
                    "-o", out, "--model", quick_model, "--json", "--timeout", "5",
                    "--scheduler", address)
        assert proc.returncode == 1, proc.stderr.decode()
        report = json.loads(proc.stdout)
        assert [f["filename"] for f in report["failed"]] == ["hang.png"]
        assert "stopped after --timeout 5 s" in report["failed"][0]["error"]
        assert sorted(p.name for p in out.iterdir()) == ["a_processed.png", "c_processed.png"]
        # The worker that hung was replaced by its nanny.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                now = set(client.run(os.getpid).values())
                if len(now) == 2 and now != pids:
                    break
            time.sleep(0.5)
        assert len(now) == 2 and now != pids
    finally:
        def unhook(dask_worker):
            import importlib

            import bgrm.image

            importlib.reload(bgrm.image)

        client.wait_for_workers(2, timeout=60)
        client.run(unhook)


def test_worker_killed_while_writing_retries_the_file(cli, tmp_path, cluster, fixtures):
    """SIGKILL the worker that is writing an output: Dask runs the file again
    elsewhere, the output is whole, and the dead attempt's temporary is gone.

    Runs last: the cluster's nanny restarts the killed worker.
    """
    import subprocess

    from PIL import Image

    address, client = cluster
    big = tmp_path / "big.png"
    # Large enough that writing the PNG takes a while: a window to kill in.
    with Image.open(fixtures / "astronaut.png") as im:
        im.convert("RGB").resize((2800, 2800), Image.Resampling.BICUBIC).save(big)
    pids = set(client.run(os.getpid).values())
    out = tmp_path / "remote"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bgrm", "image", big, "-o", out, "--model", "u2netp",
         "--scheduler", address], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    interrupted = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and interrupted is None and time.monotonic() < deadline:
        for tmp in out.glob(".big_processed.bgrm-tmp-*.png") if out.is_dir() else ():
            pid = tmp.name.split("bgrm-tmp-")[1].split(".")[0]
            if pid.isdigit() and int(pid) in pids:  # a worker of this test's cluster
                os.kill(int(pid), signal.SIGKILL)
                interrupted = tmp
                break
        time.sleep(0.005)
    if interrupted is not None:
        time.sleep(0.2)
        # Killed mid-write: its temporary is there, half written, for now.
        assert interrupted.exists()
    stdout, stderr = proc.communicate(timeout=180)
    assert interrupted is not None, "the output was written before it could be interrupted"
    assert proc.returncode == 0, stderr.decode()

    local = cli("image", big, "-o", tmp_path / "local", "--model", "u2netp")
    assert local.returncode == 0, local.stderr.decode()
    assert _outputs(out) == _outputs(tmp_path / "local")
    assert sorted(p.name for p in out.iterdir()) == ["big_processed.png"]


SLOW_HOOK = '''
"""Test hook: decoding an image named "slow..." takes 8 s, and says when it began
and ended (marker files named by BGRM_TEST_MARKS)."""
import os
import time
from pathlib import Path

import bgrm.image

_real = bgrm.image.decode


def _decode(data, name):
    if "slow" in str(name):
        marks = Path(os.environ["BGRM_TEST_MARKS"])
        (marks / "began").touch()
        time.sleep(8)
        (marks / "ended").touch()
    return _real(data, name)


bgrm.image.decode = _decode
'''


def test_files_running_when_the_scheduler_is_lost_are_never_written(tmp_path, fixtures):
    """The scheduler dies while a worker is on a file: the client reports the file
    failed, and the worker, finishing later, does not write it after all."""
    import subprocess

    pytest.importorskip("distributed")
    site, marks = tmp_path / "site", tmp_path / "marks"
    site.mkdir()
    marks.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_HOOK)
    env = dict(os.environ, BGRM_TEST_MARKS=str(marks), BGRM_MODELS=str(tmp_path / "models"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(site),
                                                        os.environ.get("PYTHONPATH")])),
               DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="2s")
    port = 20000 + os.getpid() % 20000
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                  "--port", str(port), "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                               "--nthreads", "1", "--no-dashboard"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        shutil.copy(fixtures / "chelsea.png", tmp_path / "slow.png")
        out = tmp_path / "out"
        client = subprocess.Popen([sys.executable, "-m", "bgrm", "image", tmp_path / "slow.png",
                                   "-o", out, "--model", "u2netp", "--json",
                                   "--scheduler", address],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 90
        while not (marks / "began").exists():
            assert client.poll() is None, client.communicate()[1].decode()
            assert time.monotonic() < deadline, "the file never started on the worker"
            time.sleep(0.05)
        scheduler.kill()
        stdout, stderr = client.communicate(timeout=120)
        assert client.returncode == 1, stderr.decode()
        [failed] = json.loads(stdout)["failed"]
        assert failed["filename"] == "slow.png"
        assert not (marks / "ended").exists()  # reported while the worker was still on it
        # The worker goes on, finishes the file, and must not write it now: it
        # leaves it under its held name (which only the client moves into place).
        deadline = time.monotonic() + 90
        while not [p for p in (out.iterdir() if out.is_dir() else ())
                   if "held" in p.name or p.name == "slow_processed.png"]:
            assert time.monotonic() < deadline, "the worker never finished the file"
            time.sleep(0.1)
        assert (marks / "ended").exists()
        assert not (out / "slow_processed.png").exists()
    finally:
        for proc in (worker, scheduler):
            if proc.poll() is None:
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
