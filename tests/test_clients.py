"""The seed's own client examples (tests/clients/: Python requests, PHP curl,
Node `request`, a curl session), run against a real `bgrm serve`.

Each copy is the seed's text as its users have it. Only what the seed leaves
to its user changes here: the domain, the scheme, the key, and the
placeholder paths of the input file and the download folder. The seed's
image examples ask for u2net, which the tests' empty models folder lacks: run
as they are, they must show the server's reason and how to install it; with
u2netp put in the model's place, they get their file. All the runs go at
once, against one server, so the module costs about as much as its slowest
client.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import videoclips
from live import KEY, assert_cutout, need, served

CLIENTS = Path(__file__).resolve().parent / "clients"
NODE_MODULES = CLIENTS / "node_modules"
SEED_DOMAIN = "api.backgroundremoverai.com"
FRAMES = 3  # each frame is a model run: keep the clip short


def _has_php_curl() -> bool:
    if not shutil.which("php"):
        return False
    probe = ["php", "-r", "exit(extension_loaded('curl') ? 0 : 1);"]
    return subprocess.run(probe, capture_output=True).returncode == 0


TOOLS = {
    "python": lambda: True,
    "php": _has_php_curl,
    "node": lambda: bool(shutil.which("node")) and (NODE_MODULES / "request").is_dir(),
    "curl": lambda: bool(shutil.which("curl")) and bool(shutil.which("sh")),
}
TOOL_NAMES = {"python": "python", "php": "php with its curl extension (php-cli, php-curl)",
              "node": "node with `request` in tests/clients/node_modules", "curl": "curl"}


def _edits(tool: str, base: str, folder: Path, media: str) -> list[tuple]:
    """(seed text, ours) pairs: the user's own edits to the example."""
    scheme, host = base.split("://")
    if tool == "python":
        edits = [(f'api_domain = "{SEED_DOMAIN}"', f'api_domain = "{host}"'),
                 ('port = "https"', f'port = "{scheme}"')]
    else:
        edits = [(f"https://{SEED_DOMAIN}", base)]
    # The seed's PHP video example spells its key placeholder differently.
    key = "Authorization: api_key" if (tool, media) == ("php", "video") else "YOUR_API_KEY"
    edits.append((key, key.replace("api_key", KEY).replace("YOUR_API_KEY", KEY)))
    source = {"php": f"/path/to/files/{'image.jpeg' if media == 'image' else 'blah.mp4'}",
              "node": f"/testfiles/blah.{'jpeg' if media == 'image' else 'mp4'}"}
    if tool in source:
        edits.append((source[tool], str(folder / _input_name(media))))
    if tool == "php":
        edits.append(("/path/to/result/files/", f"{folder}/"))
    return edits


def _input_name(media: str) -> str:
    return "image.jpeg" if media == "image" else "video.mp4"


def _script(tool: str, media: str) -> Path:
    ext = {"python": "py", "php": "php", "node": "js"}.get(tool)
    return CLIENTS / (f"{media}.{ext}" if ext else "session.sh")


def _launch(tool, media, bundled, base, folder: Path, inputs: dict) -> subprocess.Popen:
    folder.mkdir(parents=True)
    where = folder / "testfiles" if tool == "python" else folder
    where.mkdir(exist_ok=True)
    shutil.copy(inputs[media], where / _input_name(media))
    text = _script(tool, media).read_text()
    for seed, ours in _edits(tool, base, folder, media):
        assert seed in text, f"{_script(tool, media).name} no longer holds {seed!r}"
        text = text.replace(seed, ours)
    if bundled:  # only where the example names a model: the others take the default
        text = text.replace("'u2net'", "'u2netp'")
    copy = folder / _script(tool, media).name
    copy.write_text(text)
    argv = {"python": [sys.executable, copy], "php": ["php", copy], "node": ["node", copy],
            "curl": ["sh", copy, media]}[tool]
    env = dict(os.environ, NODE_PATH=str(NODE_MODULES))
    return subprocess.Popen(argv, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env)


# (tool, media, u2netp in u2net's place): the image examples as they are, and
# each example with the model the tests have.
RUNS = [(t, "image", False) for t in ("python", "php", "node")] + [
    (t, m, True) for t in TOOLS for m in ("image", "video")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env, fixtures):
    """Every client run at once against one server: {(tool, media, bundled):
    (output text, its folder, the server's base URL)}."""
    tmp = tmp_path_factory.mktemp("clients")
    inputs = {"image": tmp / "image.jpeg", "video": tmp / "video.mp4"}
    shutil.copy(fixtures / "rocket.jpg", inputs["image"])
    videoclips.make_clip(inputs["video"], fixtures / "astronaut.png", size=(96, 64),
                         frames=FRAMES)
    done = {}
    with served(tmp / "data", env) as base:
        started = {run: _launch(*run, base, tmp / "-".join(map(str, run)), inputs)
                   for run in RUNS if TOOLS[run[0]]()}
        deadline = time.monotonic() + 240
        for run, proc in started.items():
            try:
                out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
                out += b"\n(killed: no answer in time)"
            done[run] = (out.decode(errors="replace"), tmp / "-".join(map(str, run)), base)
        yield done


def _result(runs, tool, media, bundled):
    need(TOOLS[tool](), TOOL_NAMES[tool])
    return runs[(tool, media, bundled)]


@pytest.mark.parametrize("tool", ["python", "php", "node"])
def test_seed_example_as_written_names_the_missing_model(runs, tool):
    out, folder, base = _result(runs, tool, "image", False)
    # The server's own words for this request, asked directly, are what the
    # example must have shown its user.
    with open(folder / "image.jpeg" if tool != "python" else
              folder / "testfiles" / "image.jpeg", "rb") as f:
        answer = requests.post(base + "/v1/convert/", headers={"Authorization": KEY},
                               data={"convert_to": "image-backgroundremover", "model": "u2net"},
                               files=[("files", f)])
    assert 400 <= answer.status_code < 500
    reason = answer.json()["error"]
    assert "u2net" in reason and "bgrm models install" in reason, reason
    # Each example prints it its own way (Python a bytes repr, Node inspect).
    assert all(word in out for word in re.findall(r"[A-Za-z0-9_.-]{3,}", reason)), out
    assert not list(folder.glob("*_processed*")), out


@pytest.mark.parametrize("media", ["image", "video"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_seed_example_gets_its_file(runs, tool, media):
    out, folder, base = _result(runs, tool, media, True)
    name = "image_processed.png" if media == "image" else "video_processed.mov"
    if tool == "node":
        # The seed's Node example logs the results object and downloads nothing.
        logged = re.findall(r"url: '([^']+)'", out)
        assert logged and f"filename: '{name}'" in out, out
        got = requests.get(base + logged[-1], timeout=30)
        assert got.status_code == 200, got.text
        data = got.content
    else:
        written = folder / name
        assert written.is_file(), f"{sorted(p.name for p in folder.iterdir())}\n{out}"
        data = written.read_bytes()
    if media == "image":
        assert_cutout(data)
    else:
        clip = folder / "downloaded.mov"
        clip.write_bytes(data)
        probed = videoclips.probe(clip)
        assert probed.frames.shape[0] == FRAMES
        alpha = probed.frames[..., 3]
        assert alpha.min() < 16 and alpha.max() > 240, out
