"""Unwritable, read-only and full disks, and memory running out: a clean one-line
error, no partial file, the other files still written."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
from procs import (
    TMP_MARK,
    _ffmpeg,
    bgrm_argv,
    finished_outputs,
    needs_mount_namespace,
    no_traceback,
    run,
)


def test_output_folder_that_cannot_be_created(tmp_path, env, fixtures):
    (tmp_path / "a-file").write_text("not a folder")
    proc = run(env, "image", fixtures / "chelsea.png", "-o", tmp_path / "a-file" / "out")
    assert proc.returncode == 1
    err = no_traceback(proc).strip().splitlines()
    assert err[-1] == (f"bgrm: {tmp_path / 'a-file' / 'out'}: cannot create the output "
                       "folder: Not a directory")


@needs_mount_namespace
def test_read_only_output_folder(tmp_path, env, fixtures):
    out = tmp_path / "out"
    out.mkdir()
    script = 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, out,
                           *bgrm_argv("image", fixtures / "chelsea.png", "-o", out)],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    err = no_traceback(proc).strip().splitlines()
    assert err[-1] == f"bgrm: {out}: cannot write into the output folder: read-only file system"


@needs_mount_namespace
def test_read_only_folder_beside_inputs(tmp_path, env, fixtures):
    """Without -o, each file fails on its own with the reason."""
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(fixtures / "chelsea.png", src / "cat.png")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, src,
                           *bgrm_argv("image", src / "cat.png", "--json")],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    no_traceback(proc)
    error = json.loads(proc.stdout)["failed"][0]["error"]
    assert error == f"{src / 'cat_processed.png'}: cannot write: read-only file system"
    assert sorted(p.name for p in src.iterdir()) == ["cat.png"]


@needs_mount_namespace
def test_full_disk_leaves_no_partial_file(tmp_path, env, fixtures):
    """A real ENOSPC: a 64 KB tmpfs takes the 1x1 output but not the photo's."""
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (1, 1), "red").save(tmp_path / "dot.png")
    shutil.copy(fixtures / "chelsea.png", tmp_path / "cat.png")
    # The tmpfs lives only in the private namespace: list it from inside.
    script = ('mount -t tmpfs -o size=64k tmpfs "$0" || exit 99; "$@" > "$0.json"; rc=$?; '
              'ls -A "$0" > "$0.list"; exit $rc')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, out,
                           *bgrm_argv("image", tmp_path / "cat.png", tmp_path / "dot.png",
                                      "-o", out, "--json", "--jobs", "1")],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    no_traceback(proc)
    report = json.loads(Path(f"{out}.json").read_text())
    assert [f["error"] for f in report["failed"]] == [
        f"{out / 'cat_processed.png'}: cannot write: no space left on the device"]
    assert [f["filename"] for f in report["files"]] == ["dot_processed.png"]
    assert Path(f"{out}.list").read_text().split() == ["dot_processed.png"]


def _chelsea_fails_coffee_is_written(fixtures, out: Path) -> dict:
    """chelsea and coffee through the CLI in this process (where the test's
    patches hold): exit 1, only coffee's output; the --json report."""
    from click.testing import CliRunner

    from bgrm.cli import cli

    result = CliRunner().invoke(cli, ["image", str(fixtures / "chelsea.png"),
                                      str(fixtures / "coffee.png"), "-o", str(out),
                                      "--jobs", "1", "--json"])
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["coffee_processed.png"]
    return json.loads(result.stdout)


def test_full_disk_simulated(tmp_path, models_home, fixtures, monkeypatch):
    """ENOSPC in the middle of writing (in-process): a clean error, no file left,
    and the next file, which fits, is still written."""
    import bgrm.image

    real_encode = bgrm.image.encode_png
    calls = []

    def encode_on_a_full_disk(picture, out):
        calls.append(out)
        if len(calls) > 1:
            return real_encode(picture, out)
        with open(out, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out))

    monkeypatch.setattr(bgrm.image, "encode_png", encode_on_a_full_disk)
    out = tmp_path / "out"
    report = _chelsea_fails_coffee_is_written(fixtures, out)
    assert TMP_MARK in calls[0].name  # it was writing the temporary, not the output
    assert [f["error"] for f in report["failed"]] == [
        f"{out / 'chelsea_processed.png'}: cannot write: no space left on the device"]
    finished_outputs(out)


def test_out_of_memory_in_one_file(tmp_path, models_home, fixtures, monkeypatch):
    """MemoryError (a big image on a small machine) fails that file only."""
    import bgrm.image

    real_render = bgrm.image.render

    def render(decoded, opts, segmenter):
        if decoded.rgb.shape[:2] == (300, 451):  # chelsea
            np.empty(1 << 62, np.uint8)  # raises MemoryError
        return real_render(decoded, opts, segmenter)

    monkeypatch.setattr(bgrm.image, "render", render)
    out = tmp_path / "out"
    report = _chelsea_fails_coffee_is_written(fixtures, out)
    assert [f["error"] for f in report["failed"]] == [f"{fixtures / 'chelsea.png'}: out of memory"]


@needs_mount_namespace
def test_full_disk_during_video(tmp_path, env):
    clip = tmp_path / "clip.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10",
                    "-t", "1", "-pix_fmt", "yuv420p", str(clip)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    script = ('mount -t tmpfs -o size=16k tmpfs "$0" || exit 99; "$@" > "$0.json"; rc=$?; '
              'ls -A "$0" > "$0.list"; exit $rc')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, out,
                           *bgrm_argv("video", clip, "-o", out, "--frame-limit", "5", "--json")],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    no_traceback(proc)
    [failed] = json.loads(Path(f"{out}.json").read_text())["failed"]
    assert failed["error"].startswith(f"{clip}: ") and "No space left" in failed["error"]
    assert Path(f"{out}.list").read_text().split() == []
