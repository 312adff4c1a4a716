"""Bad input never crashes a batch: each file gets a correct output or a one-line
reason naming it. The CLI runs for real in subprocesses (u2netp,
bundled); the fuzzers call the image and video entry points directly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nasty
import numpy as np
import pytest
from PIL import Image
from procs import (
    _ffmpeg,
    _live_children,
    _mutations,
    _names,
    _seeds,
    _time_limit,
    alpha_of,
    assert_no_orphans,
    finished_outputs,
    no_traceback,
    run,
    start,
)

# ------------------------------------------------- the corpus, in one run

@pytest.fixture(scope="module")
def corpus(tmp_path_factory, env):
    """All nasty images in one folder, run as one batch on two workers."""
    base = tmp_path_factory.mktemp("corpus")
    inputs = base / "in"
    valid = nasty.valid_corpus(inputs)
    broken = nasty.broken_corpus(inputs)
    out = base / "out"
    proc = run(env, "image", inputs, "-o", out, "--json", "--jobs", "2")
    report = json.loads(proc.stdout)
    return {"proc": proc, "report": report, "in": inputs, "out": out,
            "valid": valid, "broken": broken}


def test_corpus_batch_goes_on_and_reports_each_file(corpus):
    proc, report = corpus["proc"], corpus["report"]
    assert proc.returncode == 1  # some inputs failed; the others were written
    no_traceback(proc)
    assert {f["filename"] for f in report["failed"]} == set(corpus["broken"])
    written = {Path(f["url"]).name for f in report["files"]}
    assert written == {f"{Path(n).stem}_processed.png" for n in corpus["valid"]}
    assert report["finished"] is True
    finished_outputs(corpus["out"])


@pytest.mark.parametrize("name", sorted(nasty.BROKEN))
def test_broken_input_gets_one_line_reason_and_no_output(corpus, name):
    failed = {f["filename"]: f["error"] for f in corpus["report"]["failed"]}
    error = failed[name]
    assert str(corpus["in"] / name) in error and "\n" not in error
    assert nasty.BROKEN[name] in error
    # The same line on stderr, and nothing written for it.
    assert f"bgrm: {error}" in corpus["proc"].stderr.decode().splitlines()
    assert not list(corpus["out"].glob(f"{Path(name).stem}_processed*"))


@pytest.mark.parametrize("name", sorted(nasty.VALID))
def test_unusual_input_gives_correct_output(corpus, name):
    case = corpus["valid"][name]
    out = corpus["out"] / f"{Path(name).stem}_processed.png"
    with Image.open(out) as im:
        im.load()
        assert im.mode == "RGBA"
        assert im.size == case["size"]  # upright, full resolution
    alpha = alpha_of(out)
    if "ref" in case:
        # The same picture as a plain file gives the same cut-out: EXIF turns,
        # CMYK, 16-bit and misleading extensions change nothing.
        ref = alpha_of(corpus["out"] / f"{Path(case['ref']).stem}_processed.png")
        assert np.abs(alpha - ref).mean() <= case["tol"], np.abs(alpha - ref).mean()
    if "clear" in case:
        x0, y0, x1, y1 = case["clear"]
        assert alpha[y0:y1, x0:x1].max() == 0  # the input's own transparency stays
        assert alpha.max() > 200  # and the cat is still there
    if "note" in case:
        assert case["note"] in corpus["proc"].stderr.decode()


def test_exif_turn_is_applied_before_segmentation(corpus):
    """Guard against the comparison above being too lax: an un-turned picture
    would give a cut-out far from the upright one."""
    ref = alpha_of(corpus["out"] / "ref_jpeg_processed.png")
    assert np.abs(ref - ref[::-1]).mean() > 3 * nasty.VALID["exif_3.jpg"]["tol"]



# ------------------------------------------------------------- the bomb

def test_bomb_is_refused_before_decoding_with_low_memory(tmp_path, env):
    bomb = nasty.bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    probe = ("import sys, time\n"
             "from pathlib import Path\n"
             "from bgrm.image import decode\n"
             "from bgrm.errors import InputError\n"
             "t = time.monotonic()\n"
             "try:\n"
             "    decode(Path(sys.argv[1]), sys.argv[1])\n"
             "except InputError as exc:\n"
             "    print(exc)\n"
             "print(time.monotonic() - t)\n"
             # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
             # forked copy of the (large) pytest process into the exec'd child.
             "print([l.split()[1] for l in open('/proc/self/status')\n"
             "       if l.startswith('VmHWM')][0])\n")
    proc = subprocess.run([sys.executable, "-c", probe, str(bomb)], env=env,
                          capture_output=True, text=True, timeout=60)
    message, seconds, maxrss_kb = proc.stdout.splitlines()
    assert message == (f"{bomb}: 30000x30000 is 900 megapixels, more than the 150 MP bgrm "
                       "will decode (refused to protect memory)")
    assert float(seconds) < 2
    assert int(maxrss_kb) < 200_000  # decoded, it would be 2.7 GB as RGB

    # The same through stdin: a clear error, nothing on stdout.
    proc = run(env, "image", "-", input=bomb.read_bytes())
    assert proc.returncode == 1 and proc.stdout == b""
    assert "900 megapixels" in no_traceback(proc)


def test_pillows_bomb_guard_is_left_alone_and_bgrms_limit_holds_for_every_kind(tmp_path, env):
    """Importing bgrm changes nothing in Pillow; bgrm's own 150 MP limit applies to
    files, bytes, PIL images and arrays alike; pictures between Pillow's warning
    (89 MP) and that limit decode as before, without a warning."""
    import warnings

    import bgrm
    from bgrm import image
    from bgrm.errors import InputError

    probe = ("import PIL.Image as I\nbefore = I.MAX_IMAGE_PIXELS\n"
             "import bgrm, bgrm.image, bgrm.api, bgrm.cli, bgrm.command, bgrm.video.pipeline\n"
             "print(before, I.MAX_IMAGE_PIXELS)\n")
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60)
    before, after = proc.stdout.split()
    assert before == after != "None", proc.stderr
    session = bgrm.Session("u2netp")
    for big in (Image.new("1", (13000, 11700)), np.zeros((11700, 13000), np.uint8)):
        with pytest.raises(InputError, match="13000x11700 is 152 megapixels, more than the "
                                             "150 MP bgrm will decode"):
            session.remove(big)
    between = nasty.bomb_png(tmp_path / "between.png", 12700)  # 161 MP: Pillow only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="12700x12700 is 161 megapixels"):
            image.decode(between.read_bytes(), "between.png")
        fits = nasty.bomb_png(tmp_path / "fits.png", 9500)  # 90 MP: over Pillow's warning
        assert image.decode(fits, "fits.png").rgb.shape == (9500, 9500, 3)


def test_pipes_devices_and_dangling_links_never_hang(tmp_path, env, fixtures):
    os.mkfifo(tmp_path / "fifo.jpg")  # nobody will ever write to it
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "album.jpg").mkdir()  # a folder with an image's name is a folder
    shutil.copy(fixtures / "chelsea.png", tmp_path / "album.jpg" / "cat.png")
    proc = run(env, "image", "fifo.jpg", "/dev/zero", "gone.jpg", "album.jpg", "-o", "out",
               "--json", cwd=tmp_path, timeout=60)
    assert proc.returncode == 1
    no_traceback(proc)
    report = json.loads(proc.stdout)
    assert [f["error"] for f in report["failed"]] == [
        "fifo.jpg: not a regular file (a pipe or a device); give the bytes on standard "
        "input with - instead",
        "/dev/zero: not a regular file (a pipe or a device); give the bytes on standard "
        "input with - instead",
        "gone.jpg: no such file or folder"]
    assert [f["filename"] for f in report["files"]] == ["cat_processed.png"]



# ----------------------------------------------------------------- names

def test_awkward_file_names(tmp_path, env, fixtures):
    photo = (fixtures / "chelsea.png").read_bytes()
    for name in ("-x.png", "-y.png", "my photo.png", "café ñ 日本.png"):
        (tmp_path / name).write_bytes(photo)
    latin1 = b"caf\xe9.png"  # not UTF-8: a name from an old archive
    (tmp_path / os.fsdecode(latin1)).write_bytes(photo)

    proc = run(env, "image", "-o", "out", "--json", "--", "-x.png", "my photo.png",
               "café ñ 日本.png", cwd=tmp_path)
    assert proc.returncode == 0, no_traceback(proc)
    assert {f["filename"] for f in json.loads(proc.stdout)["files"]} == {
        "-x_processed.png", "my photo_processed.png", "café ñ 日本_processed.png"}

    proc = run(env, "image", "./-y.png", latin1, "--json", cwd=tmp_path)
    assert proc.returncode == 0, no_traceback(proc)
    json.loads(proc.stdout)
    for name in (b"-y_processed.png", b"caf\xe9_processed.png"):
        with Image.open(tmp_path / os.fsdecode(name)) as im:
            assert im.size == (451, 300)


def test_same_stems_into_one_folder_never_overwrite(tmp_path, env, fixtures):
    for folder, source in (("a", "chelsea.png"), ("b", "astronaut.png"), ("c", "rocket.jpg")):
        (tmp_path / folder).mkdir()
        suffix = Path(source).suffix
        shutil.copy(fixtures / source, tmp_path / folder / f"x{suffix}")
    inputs = ["a/x.png", "b/x.png", "c/x.jpg"]
    proc = run(env, "image", *inputs, "-o", "out", "--json", "--jobs", "1", cwd=tmp_path)
    assert proc.returncode == 0, no_traceback(proc)
    names = [Path(f["url"]).name for f in json.loads(proc.stdout)["files"]]
    # Disambiguated in input order, so that a rerun gives the same names.
    assert names == ["x_processed.png", "x_processed_2.png", "x_processed_3.png"]
    sizes = [Image.open(tmp_path / "out" / n).size for n in names]
    assert sizes == [Image.open(tmp_path / i).size for i in inputs]
    before = finished_outputs(tmp_path / "out")

    proc = run(env, "image", *inputs, "-o", "out", "--skip-existing", "--jobs", "1",
               cwd=tmp_path)
    assert proc.returncode == 0, no_traceback(proc)
    assert finished_outputs(tmp_path / "out") == before



def _fuzz(hypothesis, seeds: dict, src: Path, dst: Path, process, *, examples: int,
          seconds: int, errors: type, written=None, after=None) -> None:
    """Random bytes and mutations of ``seeds`` written to ``src``, then ``process()``:
    it either fails with one line naming ``src`` and leaves no ``dst``, or writes
    ``dst`` (``written()`` checks it); never anything else in dst's folder."""
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.one_of(st.binary(max_size=512), _mutations(st, seeds)))
    def check(data):
        src.write_bytes(data)
        dst.unlink(missing_ok=True)
        with _time_limit(seconds):
            try:
                process()
            except errors as exc:
                message = str(exc)
                assert message.startswith(f"{src}: ") and "\n" not in message, message
                assert not dst.exists()
            else:
                if written is not None:
                    written()
        assert [p.name for p in dst.parent.iterdir()] in ([], [dst.name])
        if after is not None:
            after()

    check()


class _StubSegmenter:
    """The model's place in the fuzz: a mask of the right size, instantly."""

    def mask(self, image):
        return Image.new("L", image.size, 128)


def test_fuzz_image_entry_point(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")

    from bgrm.errors import InputError
    from bgrm.image import process_file
    from bgrm.options import ImageOptions

    seeds = _seeds()
    src = tmp_path / "fuzz.png"
    dst = tmp_path / "out" / "fuzz_processed.png"
    dst.parent.mkdir()

    def written():
        with Image.open(dst) as im:
            im.load()

    _fuzz(hypothesis, seeds, src, dst, lambda: process_file(src, dst, ImageOptions(),
                                                            _StubSegmenter()),
          examples=400, seconds=20, errors=InputError, written=written)


# ------------------------------------------------------------------ video

@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-videos")
    ffmpeg = _ffmpeg()
    clip = folder / "good.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10",
                    "-t", "1", "-pix_fmt", "yuv420p", str(clip)], check=True)
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-t", "1", "-c:a", "aac", str(folder / "audio_only.mp4")], check=True)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "random.mp4").write_bytes(np.random.default_rng(3).bytes(50_000))
    data = clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[:len(data) // 2])
    clip.unlink()
    return folder


@pytest.mark.parametrize("name", ["zero.mp4", "random.mp4", "truncated.mp4", "audio_only.mp4"])
def test_broken_video_gets_one_line_reason(bad_videos, tmp_path, env, name):
    out = tmp_path / "out"
    proc = start(env, "video", bad_videos / name, "-o", out, "--json")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err.decode()
    assert "Traceback" not in err.decode(), err.decode()
    failed = json.loads(stdout)["failed"]
    assert len(failed) == 1 and str(bad_videos / name) in failed[0]["error"]
    assert "\n" not in failed[0]["error"]
    assert _names(out) == []
    assert_no_orphans(proc.pid)


class _StubVideoSegmenter:
    """The model's place in the video fuzz: a mid-grey saliency map, instantly."""

    def prepare(self, image):
        return image.size

    def predict(self, tensor):
        return np.full((32, 32), 128, np.uint8)

    lanes = 1


def test_fuzz_video_entry_point(tmp_path):
    hypothesis = pytest.importorskip("hypothesis")

    from bgrm.errors import BgrmError
    from bgrm.options import VideoOptions
    from bgrm.video.pipeline import process_file

    seeds = {}
    for ext, extra in ((".mp4", ["-pix_fmt", "yuv420p"]), (".gif", []), (".webm", [])):
        clip = tmp_path / f"seed{ext}"
        subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                        "testsrc=size=32x24:rate=10", "-t", "0.3", *extra, str(clip)],
                       check=True)
        seeds[ext] = clip.read_bytes()
    src = tmp_path / "fuzz.mp4"
    dst = tmp_path / "out" / "fuzz_processed.mov"
    dst.parent.mkdir()
    opts = VideoOptions(frame_limit=2)

    def nothing_running():
        assert not _live_children()  # no ffmpeg left running

    _fuzz(hypothesis, seeds, src, dst, lambda: process_file(src, dst, opts,
                                                            _StubVideoSegmenter()),
          examples=60, seconds=30, errors=BgrmError, after=nothing_running)


def test_video_pipes_devices_folders_and_missing_files_say_what_they_are(tmp_path, fixtures,
                                                                         run_main, models_home):
    """`bgrm video` and `bgrm.remove_video` refuse what is not a regular file with
    the reason `bgrm image` gives, never "empty file" or a raw exception."""
    import bgrm
    from bgrm.errors import InputError

    os.mkfifo(tmp_path / "fifo.mp4")  # nobody will ever write to it
    status, out, err = run_main("video", tmp_path / "fifo.mp4", "/dev/zero", "--json",
                                "-o", tmp_path / "out")
    assert status == 1
    assert [f["error"] for f in json.loads(out)["failed"]] == [
        f"{tmp_path / 'fifo.mp4'}: not a regular file (a pipe or a device)",
        "/dev/zero: not a regular file (a pipe or a device)"]
    (tmp_path / "album.mp4").mkdir()
    for src, says in [(tmp_path / "missing.mp4", "no such file"),
                      (tmp_path / "album.mp4", "is a folder, not a video"),
                      ("/dev/zero", "not a regular file")]:
        with pytest.raises(InputError, match=f"^{src}: {says}"):
            bgrm.remove_video(src, tmp_path / "out.mov")
    assert not (tmp_path / "out.mov").exists()
