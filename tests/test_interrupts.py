"""Ctrl-C, SIGTERM and killed workers end a run cleanly: exit status, no traceback,
no process left, nothing half-written, and a --skip-existing rerun finishes the
job. Real processes, since signals and process groups are the point."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from procs import (
    MOMENTS,
    _batch,
    _ffmpeg,
    _interrupt,
    _kill_a_writing_worker,
    _names,
    assert_no_orphans,
    ctrl_c,
    finished_outputs,
    no_traceback,
    run,
)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("moment", sorted(MOMENTS))
def test_ctrl_c_then_skip_existing_rerun(tmp_path, env, jobs, moment):
    inputs = _batch(tmp_path / "in", 3)
    out = tmp_path / "out"
    status, err = _interrupt(env, out, moment, ctrl_c, "image", tmp_path / "in", "--jobs", jobs)
    assert status == 130, err
    assert err.strip().splitlines()[-1] == "bgrm: interrupted"
    done = finished_outputs(out) if out.exists() else {}
    assert len(done) < len(inputs)
    if moment == "between":
        assert done

    # The rerun does the rest and leaves what was finished (if anything) untouched.
    rerun = run(env, "image", tmp_path / "in", "-o", out, "--jobs", jobs, "--skip-existing",
                "--json")
    assert rerun.returncode == 0, no_traceback(rerun)
    after = finished_outputs(out)
    assert sorted(after) == sorted(f"{p.stem}_processed.png" for p in inputs)
    for name, (mtime, data) in done.items():
        assert after[name] == (mtime, data), f"{name} was rewritten"


def test_ctrl_c_twice_while_stopping(tmp_path, env):
    _batch(tmp_path / "in", 3)
    out = tmp_path / "out"
    status, err = _interrupt(env, out, "writing", lambda p: ctrl_c(p, times=3),
                             "image", tmp_path / "in", "--jobs", "2")
    assert status == 130, err
    finished_outputs(out)


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_unwinds_like_ctrl_c(tmp_path, env, jobs):
    """`kill` or `timeout` reach only bgrm itself: its workers are stopped too."""
    _batch(tmp_path / "in", 3)
    out = tmp_path / "out"
    status, err = _interrupt(env, out, "writing", lambda p: os.kill(p.pid, signal.SIGTERM),
                             "image", tmp_path / "in", "--jobs", jobs)
    assert status == 128 + signal.SIGTERM, err
    finished_outputs(out)


def test_killed_worker_fails_only_its_file(tmp_path, env):
    inputs = _batch(tmp_path / "in", 4)
    out = tmp_path / "out"
    proc, report, err = _kill_a_writing_worker(env, out, "image", tmp_path / "in")
    assert len(report["failed"]) == 1, report
    error = report["failed"][0]["error"]
    assert "the worker processing it died (killed by signal 9)" in error
    assert len(report["files"]) == len(inputs) - 1
    assert len(finished_outputs(out)) == len(inputs) - 1
    assert_no_orphans(proc.pid)




@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_during_video_leaves_no_ffmpeg(tmp_path, env, jobs):
    (tmp_path / "in").mkdir()
    for i in range(jobs):
        subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                        "testsrc=size=160x120:rate=10", "-f", "lavfi", "-i",
                        "sine=frequency=440", "-t", "3", "-pix_fmt", "yuv420p", "-shortest",
                        str(tmp_path / "in" / f"clip{i}.mp4")], check=True)
    out = tmp_path / "out"
    status, err = _interrupt(env, out, "writing", ctrl_c, "video", tmp_path / "in",
                             "--jobs", jobs)
    assert status == 130, err
    assert _names(out) == []


def test_killed_video_worker_leaves_no_ffmpeg_and_no_temporary(tmp_path, env):
    (tmp_path / "in").mkdir()
    for i in range(2):
        subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                        f"testsrc=size=96x64:rate=10:decimals={i}", "-f", "lavfi", "-i",
                        "sine", "-t", "2", "-pix_fmt", "yuv420p", "-shortest",
                        str(tmp_path / "in" / f"clip{i}.mp4")], check=True)
    out = tmp_path / "out"
    proc, report, err = _kill_a_writing_worker(env, out, "video", tmp_path / "in",
                                               "--frame-limit", "4")
    assert len(report["failed"]) == 1 and "died" in report["failed"][0]["error"], report
    assert len(report["files"]) == 1
    # The dead worker's ffmpeg processes too: with none left, nothing writes any more.
    assert_no_orphans(proc.pid)
    assert sorted(_names(out)) == sorted(Path(f["url"]).name for f in report["files"])
