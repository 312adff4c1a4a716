"""The one executor contract (bgrm.run): each task one result, in input order; a
worker that dies or hangs fails only its file; a file reported failed is never
written afterwards. Library-level where it can be; the CLI where it must."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from procs import (
    HANG_HOOK,
    TESTS,
    TMP_MARK,
    _names,
    assert_no_orphans,
    finished_outputs,
    start,
)

from bgrm.api import Session
from bgrm.options import ImageOptions
from bgrm.report import Result
from bgrm.run import Listener, Runtime, Task


def _pool_scenario(env, *tasks, timeout=None) -> list:
    """``nasty.pool_scenario`` on a real pool of two worker processes."""
    code = ("import json, sys, nasty\n"
            "tasks, timeout = json.loads(sys.argv[1])\n"
            "print(json.dumps(nasty.pool_scenario(tasks, timeout)))\n")
    pool_env = dict(env, PYTHONPATH=os.pathsep.join([str(TESTS), env["PYTHONPATH"]]))
    proc = subprocess.run([sys.executable, "-c", code, json.dumps([tasks, timeout])],
                          env=pool_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_worker_deaths_fail_only_their_task(env):
    results = _pool_scenario(env, ["ok", 1], ["sigkill", 2], ["ok", 3], ["exit", 4],
                             ["ok", 5], ["ok", 6])
    assert results == ["done 1", "died 2 signal 9", "done 3", "died 4 exit 3",
                       "done 5", "done 6"]


def test_worker_dying_between_files_blames_no_file(env):
    # The worker answers, then dies before it takes its next file: that next
    # file is given to a fresh worker, not reported as failed.
    results = _pool_scenario(env, ["done-then-die", 1], ["ok", 2], ["ok", 3], ["ok", 4])
    assert results == ["done 1", "done 2", "done 3", "done 4"]


def test_hung_worker_fails_its_task_alone_and_is_replaced(env):
    t0 = time.monotonic()
    results = _pool_scenario(env, ["ok", 1], ["hang", 2], ["ok", 3], ["hang", 4], ["ok", 5],
                             timeout=1.5)
    assert results == [
        "done 1", "task 2: stopped after --timeout 1.5 s (hung or too slow); its worker "
        "was replaced", "done 3",
        "task 4: stopped after --timeout 1.5 s (hung or too slow); its worker was replaced",
        "done 5"]
    assert time.monotonic() - t0 < 60  # not the hour the hung tasks would take


# -- in this process: the Executor.run contract ------------------------------------------


@pytest.fixture
def hanging_decode(monkeypatch):
    """Images whose name holds "hang" block in decode until ``release`` is set."""
    import bgrm.image

    release = threading.Event()
    real = bgrm.image.decode

    def decode(data, name):
        if "hang" in str(name):
            release.wait(120)
        return real(data, name)

    monkeypatch.setattr(bgrm.image, "decode", decode)
    yield release
    release.set()


class _Heard(Listener):
    def __init__(self):
        self.order, self.finished_order, self.units = [], [], 0

    def progress(self, index, n):
        self.units += n

    def finished(self, index, result):
        self.finished_order.append(index)

    def result(self, index, result):
        self.order.append(index)


def _tasks(tmp_path, fixtures, names, model, **runtime) -> list[Task]:
    """Masks of chelsea by ``model`` (the stand-in: these tests are about the
    executors, so a file takes milliseconds)."""
    from bgrm.models import resolve

    rt = Runtime(resolve(str(model)), "cpu", 1, **runtime)
    Session(rt.model, device=rt.device, threads=rt.threads)  # loaded before any clock runs
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    tasks = []
    for name in names:
        src = tmp_path / name
        shutil.copy(fixtures / "chelsea.png", src)
        tasks.append(Task("image", src, out / f"{src.stem}_processed.png", str(src),
                          ImageOptions(only_mask=True), rt))
    return tasks


@pytest.mark.parametrize("kind", ["inline", "threads"])
def test_hung_file_times_out_alone_and_is_never_written(tmp_path, fixtures, quick_model,
                                                        hanging_decode, kind):
    from bgrm.run.local import Inline, Threads

    tasks = _tasks(tmp_path, fixtures, ["a.png", "hang.png", "c.png", "d.png"], quick_model)
    # A file takes milliseconds here; 3 s leaves room for a loaded machine.
    executor = Inline(timeout=3) if kind == "inline" else Threads(2, timeout=3)
    heard = _Heard()
    results = executor.run(tasks, heard)
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].error == (f"{tasks[1].src}: stopped after --timeout 3 s "
                                "(hung or too slow)")
    assert heard.order == [0, 1, 2, 3]  # told in input order, whatever finished first
    assert heard.units == 3  # one per image written
    # The hung file, let go now (a thread cannot be stopped), is never written.
    hanging_decode.set()
    # Its thread (Threads) finishes the file now and drops it as it ends.
    deadline = time.monotonic() + 60
    while any(t.name.startswith("bgrm-file-") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the hung file's thread never ended"
        time.sleep(0.05)
    assert sorted(_names(tasks[0].dst.parent)) == ["a_processed.png", "c_processed.png",
                                                   "d_processed.png"]


def test_results_in_input_order_and_skip_existing(tmp_path, fixtures, quick_model):
    from bgrm.run.local import Threads

    tasks = _tasks(tmp_path, fixtures, ["a.png", "b.png", "c.png"], quick_model,
                   skip_existing=True)
    tasks[1].dst.write_bytes(b"already there")
    heard = _Heard()
    results = Threads(2).run(tasks, heard)
    assert [r.skipped for r in results] == [False, True, False]
    assert all(isinstance(r, Result) and r.ok for r in results)
    assert heard.order == [0, 1, 2]
    assert heard.finished_order[0] == 1  # the skipped one was known first
    assert tasks[1].dst.read_bytes() == b"already there"
    assert [p.name for p in tasks[0].dst.parent.iterdir() if TMP_MARK in p.name] == []


# -- the CLI: --timeout ------------------------------------------------------------------



@pytest.mark.parametrize("jobs", [[], ["--jobs", "2"]], ids=["inline", "processes"])
def test_cli_timeout_fails_the_hung_file_alone(tmp_path, env, fixtures, jobs, quick_model):
    """With the stand-in model a file takes milliseconds, so a short --timeout is
    still far above the time of the files that do not hang."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG_HOOK)
    hook_env = dict(env, PYTHONPATH=os.pathsep.join([str(site), env["PYTHONPATH"]]))
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "hang.png", "c.png"):
        shutil.copy(fixtures / "chelsea.png", folder / name)
    out = tmp_path / "out"
    proc = start(hook_env, "image", folder / "a.png", folder / "hang.png", folder / "c.png",
                 "-o", out, "--timeout", "5", "--json", "--model", quick_model, *jobs)
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert b"Traceback" not in err
    report = json.loads(stdout)
    assert [f["filename"] for f in report["failed"]] == ["hang.png"]
    assert report["failed"][0]["error"].startswith(
        f"{folder / 'hang.png'}: stopped after --timeout 5 s (hung or too slow)")
    assert sorted(finished_outputs(out)) == ["a_processed.png", "c_processed.png"]
    assert_no_orphans(proc.pid)  # the hung worker was stopped, not left behind
    assert (out / "a_processed.png").read_bytes() == (out / "c_processed.png").read_bytes()


def test_timeout_must_be_positive(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "chelsea.png", "-o", tmp_path, "--timeout", "0")
    assert proc.returncode == 2 and b"--timeout" in proc.stderr


@pytest.mark.parametrize("seconds", ["nan", "inf", "-inf", "1e300", "0", "-1"])
def test_timeout_must_be_a_finite_positive_number(seconds, run_main, fixtures, tmp_path):
    status, _, err = run_main("image", fixtures / "chelsea.png", "-o", tmp_path,
                              "--timeout", seconds)
    assert status == 2 and "Invalid value for '--timeout'" in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_tiny_timeout_fails_each_file_with_its_line(run_main, fixtures, tmp_path,
                                                      models_home):
    """A timer that fires at once (even before the file's work starts) is each
    file's own timeout, not a traceback that drops the files after it."""
    photos = [fixtures / "chelsea.png", fixtures / "coffee.png"]
    status, out, err = run_main("image", *photos, "-o", tmp_path / "out", "--json",
                                "--timeout", "1e-6")
    assert status == 1, err
    assert "Traceback" not in err
    assert json.loads(out)["errors"] == [
        f"{p}: stopped after --timeout 1e-06 s (hung or too slow)" for p in photos]
    assert [line for line in err.splitlines() if "--timeout" in line] == [
        f"bgrm: {p}: stopped after --timeout 1e-06 s (hung or too slow)" for p in photos]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_executor_module_holds_no_cli():
    """Nothing below the CLI knows about Click (the house rule), executors included."""
    code = ("import sys, bgrm.run, bgrm.run.local, bgrm.run.processes, bgrm.api; "
            "print('click' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"



def test_held_outputs_are_moved_into_place_files_and_folders(tmp_path):
    from bgrm.outputs import atomic_path, commit, held_name, holding

    dst = tmp_path / "x_processed.png"
    held = held_name(dst, "run-0")
    with holding(dst, held), atomic_path(dst) as tmp:
        tmp.write_bytes(b"picture")
    assert not dst.exists() and held.read_bytes() == b"picture"  # waiting for its result
    commit(held, dst)
    assert dst.read_bytes() == b"picture" and not held.exists()
    # A folder output replaces an earlier run's folder (its frames and audio) whole.
    folder = tmp_path / "clip_processed"
    (folder).mkdir()
    for name in ("clip_processed_000001.png", "clip_processed_000002.png",
                 "clip_processed.wav"):
        (folder / name).write_bytes(b"old")
    held = held_name(folder, "run-1")
    held.mkdir()
    (held / "clip_processed_000001.png").write_bytes(b"new")
    commit(held, folder)
    assert [p.read_bytes() for p in folder.iterdir()] == [b"new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_processed", "x_processed.png"]


# -- one long-lived Runner: jobs as they come ---------------------------------------------


def test_runner_takes_jobs_as_they_come_and_ties_results_to_them(tmp_path, fixtures,
                                                                  quick_model):
    from bgrm.run import Runner
    from bgrm.run.local import Threads

    a, b, c = (_tasks(tmp_path, fixtures, names, quick_model) for names in
               (["a0.png", "a1.png"], ["b0.png"], ["c0.png"]))
    runner = Runner(Threads(1))
    heard = {key: _Heard() for key in "abc"}
    runner.submit(a, heard["a"], key="job-a")
    # Numbered files (a job resumed with its first files done) keep their numbers.
    runner.submit({7: b[0]}, heard["b"], key="job-b")
    runner.submit(c, heard["c"], key="job-c")
    runner.cancel("job-c")
    steps = 0
    while runner.step(block=False):
        steps += 1
    assert steps == 1  # what was queued ran as one batch
    assert heard["a"].order == [0, 1] and heard["b"].order == [7] and heard["c"].order == []
    assert [r.ok for r in runner.results("job-a")] == [True, True]
    assert [r.ok for r in runner.results("job-b")] == [True]
    assert all(t.dst.is_file() for t in a + b) and not c[0].dst.exists()
    assert not [p for p in (tmp_path / "out").iterdir() if TMP_MARK in p.name]
    # A later job on the same runner: the executor is reused.
    late = _tasks(tmp_path, fixtures, ["late.png"], quick_model)
    runner.submit(late, key="job-late")
    assert runner.step(block=False) and late[0].dst.is_file()
    runner.close()
    assert not runner.step(block=True)  # closed: returns at once
    with pytest.raises(RuntimeError):
        runner.submit(late)
