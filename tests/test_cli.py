"""`bgrm image` as a user runs it: the real CLI on real photos, in this process
(``cli``: Click's runner) or, where stdin or signals are the subject, in a
subprocess (``bgrm``).

Exit statuses (0 done, 1 some file failed, 2 usage), one-line errors, --json,
stdin/stdout, folders, a batch with broken files, the pool. The bundled u2netp
is used (``models_home`` is empty).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]


def err(proc) -> str:
    return proc.stderr.decode()


def lines(proc) -> list[str]:
    return [line for line in err(proc).splitlines()
            if line and "using the bundled u2netp" not in line]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if "bgrm-tmp" in p.name]


@pytest.fixture
def shots(fixtures, tmp_path) -> Path:
    folder = tmp_path / "shots"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(fixtures / name, folder / name)
    return folder


@pytest.fixture
def broken(tmp_path, fixtures) -> dict[str, Path]:
    folder = tmp_path / "broken"
    folder.mkdir()
    files = {"zero": folder / "zero.jpg", "text": folder / "notes.jpg",
             "truncated": folder / "cut.png"}
    files["zero"].write_bytes(b"")
    files["text"].write_text("this is not a photo\n")
    data = (fixtures / "chelsea.png").read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    return files


# ---------------------------------------------------------------- usage errors: exit 2


@pytest.mark.parametrize("args, names", [
    (["--alpha-fg", "256"], ["--alpha-fg", "0<=x<=255"]),
    (["--alpha-fg", "-1"], ["--alpha-fg", "0<=x<=255"]),
    (["--alpha-bg", "300"], ["--alpha-bg", "0<=x<=255"]),
    (["--alpha-erode", "0"], ["--alpha-erode", "1<=x<=25"]),
    (["--alpha-erode", "26"], ["--alpha-erode", "1<=x<=25"]),
    (["--alpha-base-size", "10"], ["--alpha-base-size", "64<=x<=8000"]),
    (["--alpha-fg", "high"], ["--alpha-fg", "high"]),
    (["--bg-type", "blur"], ["--bg-type", "transparent", "color", "image"]),
    (["--bg-color-value", "green"], ["--bg-color-value", "hex"]),
    (["--bg-image", "no/such.jpg", "--bg-type", "image"], ["--bg-image", "no/such.jpg"]),
], ids=lambda v: " ".join(v) if v and v[0].startswith("--") else "")
def test_out_of_range_values_are_usage_errors_naming_the_option(cli, fixtures, args, names):
    proc = cli("image", fixtures / "chelsea.png", *args)
    assert proc.returncode == 2
    for name in names:
        assert name in err(proc)
    assert "Traceback" not in err(proc)
    assert proc.stdout == b""
    assert not (fixtures / "chelsea_processed.png").exists()


def test_bg_type_image_without_a_picture(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "chelsea.png", "--bg-type", "image", "-o", tmp_path / "o")
    assert proc.returncode == 2
    assert lines(proc) == ["bgrm: bg_type (--bg-type) image needs a picture: --bg-image PATH"]
    assert not (tmp_path / "o").exists()


def test_a_bg_image_that_is_not_a_picture_is_one_usage_error(cli, shots, broken, tmp_path):
    proc = cli("image", shots, "--bg-type", "image", "--bg-image", broken["text"],
                "-o", tmp_path / "out")
    assert proc.returncode == 2
    [line] = lines(proc)
    assert line.startswith("bgrm: --bg-image ") and str(broken["text"]) in line
    assert "not an image" in line


def test_unknown_and_uninstalled_models_are_usage_errors(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "chelsea.png", "--model", "u2netx", "-o", tmp_path)
    assert proc.returncode == 2 and "u2net, u2net_human_seg, u2netp" in err(proc)
    proc = cli("image", fixtures / "chelsea.png", "--model", "u2net", "-o", tmp_path)
    assert proc.returncode == 2
    [line] = lines(proc)
    assert "u2net is not installed" in line and "bgrm models install u2net" in line


@pytest.mark.parametrize("params, names", [
    ({"alpha_fg": "300"}, ["alpha_fg", "--alpha-fg", "0-255"]),
    ({"alpha_erode": 0}, ["alpha_erode", "1-25"]),
    ({"alpha_matting": "maybe"}, ["alpha_matting", "true or false"]),
    ({"bg_type": "blur"}, ["bg_type", "transparent, color, image"]),
    ({"bg_color_value": "#gg0000"}, ["bg_color_value", "hex"]),
    ({"model": "u2netx"}, ["u2netx"]),
    ({"convert_to": "video-backgroundremover"}, ["convert_to"]),
    ({"colour": "red"}, ["unknown parameter 'colour'"]),
    (["not", "a", "dict"], ["not a JSON object"]),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else "")
def test_bad_params_files_are_refused_like_flags(cli, fixtures, tmp_path, params, names):
    path = tmp_path / "api-params.json"
    path.write_text(json.dumps(params))
    proc = cli("image", fixtures / "chelsea.png", "--params", path, "-o", tmp_path)
    assert proc.returncode == 2
    [line] = lines(proc)
    for name in names:
        assert name in line
    assert not (tmp_path / "chelsea_processed.png").exists()


def test_a_params_file_that_is_not_json(cli, fixtures, tmp_path):
    path = tmp_path / "api-params.json"
    path.write_text("{'model': 'u2net'}")
    proc = cli("image", fixtures / "chelsea.png", "--params", path)
    assert proc.returncode == 2 and "not a JSON object" in err(proc)
    assert len(lines(proc)) == 1


def test_stdin_mix_and_nothing_on_stdin(bgrm, fixtures, tmp_path):
    proc = bgrm("image", "-", fixtures / "chelsea.png", input=b"")
    assert proc.returncode == 2 and "single input" in err(proc)
    proc = bgrm("image", "-", input=b"")
    assert proc.returncode == 2 and "nothing on standard input" in err(proc)
    proc = bgrm("image", "-", "-o", tmp_path, input=b"x")
    assert proc.returncode == 2 and "stdout" in err(proc)


# ---------------------------------------------------------------- a real run


def test_params_file_with_api_strings_and_flags_that_win(cli, fixtures, tmp_path):
    # The hosted API's own dict, string values, convert_to and lang included.
    params = {"convert_to": "image-backgroundremover", "lang": "ms", "model": "u2netp",
              "alpha_matting": "true", "alpha_fg": "240", "alpha_bg": 10,
              "bg_type": "color", "bg_color_value": "#ff0000", "only_mask": "false"}
    path = tmp_path / "api-params.json"
    path.write_text(json.dumps(params))
    proc = cli("image", fixtures / "chelsea.png", "--params", path, "-o", tmp_path / "a")
    assert proc.returncode == 0, err(proc)
    assert "bundled" not in err(proc)  # the params' model was used, no default notice
    red = np.asarray(Image.open(tmp_path / "a" / "chelsea_processed.png"))
    # Flags win: the colour is replaced, matting switched off.
    proc = cli("image", fixtures / "chelsea.png", "--params", path, "-o", tmp_path / "b",
                "--bg-color-value", "#0000ff", "--no-alpha-matting")
    assert proc.returncode == 0, err(proc)
    blue = np.asarray(Image.open(tmp_path / "b" / "chelsea_processed.png"))
    assert red.shape == blue.shape == (300, 451, 3)
    corner = (slice(0, 5), slice(440, 451))  # background at the top right
    assert (red[corner] == (255, 0, 0)).all()
    assert (blue[corner] == (0, 0, 255)).all()
    # Matting makes the cat's body exactly opaque, so its pixels are the photo's
    # own; u2netp's plain mask stops at ~254 there and lets a little blue in.
    cat = np.asarray(Image.open(fixtures / "chelsea.png").convert("RGB"))
    body = (slice(40, 180), slice(80, 320))
    assert (red[body] == cat[body]).all()
    assert (blue[body] != cat[body]).any(axis=-1).mean() > 0.5


def test_json_report_has_the_api_shape_exactly(cli, fixtures, tmp_path):
    missing = tmp_path / "gone.jpg"
    proc = cli("image", fixtures / "chelsea.png", missing, "", "-o", tmp_path / "out",
                "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert list(report) == ["files", "failed", "errors", "finished", "queue_count"]
    out = tmp_path / "out" / "chelsea_processed.png"
    assert report["files"] == [{"url": str(out), "filename": "chelsea_processed.png"}]
    # An empty argument (an unset shell variable) is not "the current folder".
    failed, empty = report["failed"]
    assert empty == {"filename": "", "error": "'': an empty input name"}
    assert set(failed) == {"filename", "error"} and failed["filename"] == "gone.jpg"
    assert str(missing) in failed["error"]
    assert report["errors"] == [failed["error"], empty["error"]]
    assert report["finished"] is True and report["queue_count"] == 0
    assert out.is_file()


def test_stdin_to_stdout_gives_the_same_png_as_a_file(bgrm, fixtures, tmp_path):
    data = (fixtures / "rocket.jpg").read_bytes()
    proc = bgrm("image", "-", input=data)
    assert proc.returncode == 0, err(proc)
    assert proc.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "stdout.png").write_bytes(proc.stdout)
    proc = bgrm("image", fixtures / "rocket.jpg", "-o", tmp_path)
    assert proc.returncode == 0, err(proc)
    a = np.asarray(Image.open(tmp_path / "stdout.png"))
    b = np.asarray(Image.open(tmp_path / "rocket_processed.png"))
    assert a.shape == (427, 640, 4) and (a == b).all()


def test_stdin_with_matting_keeps_stdout_a_clean_png(bgrm, fixtures):
    # These thresholds make pymatting print a warning; it must not land in the PNG.
    proc = bgrm("image", "-", "--alpha-matting", "--alpha-fg", "250", "--only-mask",
                input=(fixtures / "astronaut.png").read_bytes())
    assert proc.returncode == 0, err(proc)
    assert proc.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    from io import BytesIO

    assert Image.open(BytesIO(proc.stdout)).mode == "L"


def test_broken_stdin_is_one_line_and_exit_1(bgrm):
    proc = bgrm("image", "-", input=b"GIF89a not really")
    assert proc.returncode == 1
    [line] = lines(proc)
    assert line.startswith("bgrm: <stdin>: not an image bgrm can read (")
    assert proc.stdout == b""


def test_folders_recursive_and_reruns_in_place(cli, shots, fixtures, quick_model):
    """Which files a folder gives (the stand-in model: the masks are not the subject)."""
    (shots / "raw").mkdir()
    shutil.copy(fixtures / "chelsea.png", shots / "raw" / "cat.png")
    (shots / "readme.txt").write_text("not a picture, not an image extension")
    (shots / "._astronaut.png").write_bytes(b"macOS resource fork")
    (shots / ".thumbs").mkdir()
    shutil.copy(fixtures / "coffee.png", shots / ".thumbs" / "c.png")
    # Two inputs that would share an output name, and an earlier collision output.
    shutil.copy(fixtures / "rocket.jpg", shots / "rocket.png")
    proc = cli("image", shots, "--only-mask", "--json", "--model", quick_model)
    assert proc.returncode == 0, err(proc)
    written = sorted(p.name for p in shots.iterdir() if "_processed" in p.name)
    assert written == ["astronaut_processed.png", "chelsea_processed.png",
                       "coffee_processed.png", "rocket_processed.png",
                       "rocket_processed_2.png"]
    assert not (shots / "raw" / "cat_processed.png").exists()
    # Again, recursively: bgrm's own outputs (also the _2 one) are not inputs.
    proc = cli("image", shots, "--recursive", "--only-mask", "--json", "--model", quick_model)
    assert proc.returncode == 0, err(proc)
    report = json.loads(proc.stdout)
    assert [f["filename"] for f in report["files"]] == [
        "astronaut_processed.png", "chelsea_processed.png", "coffee_processed.png",
        "cat_processed.png", "rocket_processed.png", "rocket_processed_2.png"]
    assert (shots / "raw" / "cat_processed.png").is_file()
    assert not list(shots.rglob("*_processed_processed*"))
    assert not (shots / ".thumbs" / "c_processed.png").exists()


def test_a_folder_skips_only_outputs_beside_their_input_and_names_each(tmp_path, fixtures,
                                                                       run_main, models_home):
    """``X_processed.ext`` is passed over only beside an input ``X.*`` (and ``_N`` only
    as far as bgrm numbers); every file passed over is named on stderr and in --json."""
    from videoclips import make_clip

    shots = tmp_path / "shots"
    shots.mkdir()
    for name, photo in [("beach.jpg", "rocket.jpg"), ("beach_processed.png", "chelsea.png"),
                        ("beach_processed_2023.png", "coffee.png"),
                        ("scan_processed.jpg", "rocket.jpg"), ("cat.png", "chelsea.png"),
                        ("cat.jpg", "rocket.jpg"), ("cat_processed_3.webp", "coffee.png")]:
        shutil.copy(fixtures / photo, shots / name)
    status, out, err = run_main("image", shots, "--only-mask", "--json", "-o", tmp_path / "o")
    assert status == 0, err
    report = json.loads(out)
    assert [f["filename"] for f in report["files"]] == [
        "beach_processed.png", "beach_processed_2023_processed.png", "cat_processed.png",
        "cat_processed_2.png", "scan_processed_processed.png"]
    skipped = [str(shots / "beach_processed.png"), str(shots / "cat_processed_3.webp")]
    assert [s["input"] for s in report["skipped"]] == skipped
    assert report["skipped"][0]["reason"] == "named as bgrm's output for beach.jpg"
    for name in skipped:
        assert f"bgrm: {name}: skipped, named as bgrm's output for " in err
    # Videos alike.
    clips = tmp_path / "clips"
    clips.mkdir()
    make_clip(clips / "talk.mp4", fixtures / "astronaut.png", frames=2)
    shutil.copy(clips / "talk.mp4", clips / "talk_processed.mp4")
    shutil.copy(clips / "talk.mp4", clips / "walk_processed.mp4")
    status, out, err = run_main("video", clips, "--json", "--video-format", "gif",
                                "--frame-limit", 1)
    assert status == 0, err
    report = json.loads(out)
    assert [f["filename"] for f in report["files"]] == ["talk_processed.gif",
                                                        "walk_processed_processed.gif"]
    assert [s["input"] for s in report["skipped"]] == [str(clips / "talk_processed.mp4")]
    assert f"bgrm: {clips / 'talk_processed.mp4'}: skipped" in err


def test_an_empty_folder_says_so(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("image", tmp_path / "empty")
    assert proc.returncode == 0
    assert "no images" in err(proc)


def test_never_overwrites_an_input(cli, fixtures, tmp_path):
    # An input named like another input's output keeps its bytes.
    shutil.copy(fixtures / "coffee.png", tmp_path / "cup.png")
    shutil.copy(fixtures / "chelsea.png", tmp_path / "cup_processed.png")
    before = digest(tmp_path / "cup_processed.png")
    proc = cli("image", tmp_path / "cup.png", tmp_path / "cup_processed.png", "--only-mask",
                "--json")
    assert proc.returncode == 0, err(proc)
    assert digest(tmp_path / "cup_processed.png") == before
    names = [f["filename"] for f in json.loads(proc.stdout)["files"]]
    assert names == ["cup_processed_2.png", "cup_processed_processed.png"]


def test_mixed_batch_writes_the_good_and_names_the_bad(cli, shots, broken, tmp_path):
    inputs = [shots / "chelsea.png", broken["zero"], broken["text"], shots / "rocket.jpg",
              broken["truncated"], tmp_path / "missing.png"]
    before = {p: digest(p) for p in inputs if p.exists()}
    out = tmp_path / "out"
    proc = cli("image", *inputs, "-o", out, "--json", "--only-mask")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert [f["filename"] for f in report["files"]] == ["chelsea_processed.png",
                                                        "rocket_processed.png"]
    assert [f["filename"] for f in report["failed"]] == ["zero.jpg", "notes.jpg", "cut.png",
                                                         "missing.png"]
    errors = dict(zip(["zero", "text", "truncated", "missing"], report["errors"], strict=True))
    assert "empty file" in errors["zero"]
    assert "not an image" in errors["text"]
    assert "truncated" in errors["truncated"]
    assert "no such file" in errors["missing"]
    # On stderr: one line per bad file, naming it, and no traceback.
    said = lines(proc)
    assert "Traceback" not in err(proc)
    for path in (broken["zero"], broken["text"], broken["truncated"], tmp_path / "missing.png"):
        assert sum(str(path) in line for line in said) == 1
    assert len(said) == 4
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_processed.png",
                                                      "rocket_processed.png"]
    assert {p: digest(p) for p in before} == before
    assert leftovers(tmp_path) == []


def test_traceback_flag_shows_the_traceback(cli, broken, tmp_path):
    proc = cli("image", broken["truncated"], "-o", tmp_path, "--traceback")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in err(proc)
    assert err(proc).rstrip().endswith("truncated)")


def test_all_good_is_exit_0_with_quiet_stderr(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "coffee.png", "-o", tmp_path)
    assert proc.returncode == 0
    assert lines(proc) == []  # only the one-line default-model notice
    assert "using the bundled u2netp" in err(proc)
    assert proc.stdout == b""
    assert Image.open(tmp_path / "coffee_processed.png").mode == "RGBA"


def test_animated_gif_processes_its_first_frame_and_says_so(cli, fixtures, tmp_path):
    proc = cli("image", fixtures / "no_time_for_that_tiny.gif", "-o", tmp_path)
    assert proc.returncode == 0, err(proc)
    [note] = lines(proc)
    assert "no_time_for_that_tiny.gif" in note and "first frame" in note
    assert Image.open(tmp_path / "no_time_for_that_tiny_processed.png").mode == "RGBA"


def test_pool_gives_the_same_files_in_input_order(cli, shots, broken, tmp_path):
    inputs = [broken["text"], shots / "rocket.jpg", broken["zero"], shots / "chelsea.png",
              shots / "coffee.png"]
    one = cli("image", *inputs, "-o", tmp_path / "one", "--jobs", "1", "--json")
    two = cli("image", *inputs, "-o", tmp_path / "two", "--jobs", "2", "--json",
               "--progress")
    assert one.returncode == two.returncode == 1
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert [f["filename"] for f in r2["files"]] == [
        "rocket_processed.png", "chelsea_processed.png", "coffee_processed.png"]
    assert [f["filename"] for f in r1["files"]] == [f["filename"] for f in r2["files"]]
    assert r1["failed"] == r2["failed"]
    assert [f["filename"] for f in r2["failed"]] == ["notes.jpg", "zero.jpg"]
    for f in r1["files"]:
        a = np.asarray(Image.open(tmp_path / "one" / f["filename"]))
        b = np.asarray(Image.open(tmp_path / "two" / f["filename"]))
        assert (a == b).all(), f["filename"]
    # Errors are told in input order too, whichever worker finished first.
    said = [line for line in lines(two) if line.startswith("bgrm: /")]
    assert str(broken["text"]) in said[0] and str(broken["zero"]) in said[1]
    assert "100%" in err(two)  # --progress forces the bar without a terminal
    assert "100%" not in err(one)
    assert leftovers(tmp_path) == []


def test_skip_existing_leaves_finished_outputs(cli, fixtures, tmp_path):
    done = tmp_path / "chelsea_processed.png"
    done.write_bytes(b"finished earlier")
    proc = cli("image", fixtures / "chelsea.png", fixtures / "coffee.png", "-o", tmp_path,
                "--skip-existing", "--only-mask", "--json")
    assert proc.returncode == 0, err(proc)
    assert done.read_bytes() == b"finished earlier"
    assert (tmp_path / "coffee_processed.png").is_file()


def test_ctrl_c_is_130_and_leaves_no_temporary_files(models_home, fixtures, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    big = Image.open(fixtures / "astronaut.png").resize((1200, 1200))
    for i in range(10):
        big.save(folder / f"a{i}.png", compress_level=1)
    # Interrupted once the first file is done, with the others in flight.
    proc = subprocess.Popen([sys.executable, "-m", "bgrm", "image", folder, "--jobs", "2"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not leftovers(folder) and \
            not list(folder.glob("*_processed.png")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert stderr.decode().rstrip().endswith("bgrm: interrupted")
    assert leftovers(folder) == []
    assert len(list(folder.glob("*_processed.png"))) < 10


def test_flags_without_effect_are_pointed_out(cli, tmp_path):
    proc = cli("image", tmp_path / "gone.jpg", "--alpha-fg", "200", "--alpha-erode", "3",
                "--bg-color-value", "#000000")
    assert proc.returncode == 1
    said = lines(proc)
    assert "bgrm: --alpha-fg, --alpha-erode: no effect without --alpha-matting or --vitmatte" in said
    assert "bgrm: --bg-color-value: no effect without --bg-type color" in said
