"""`bgrm serve`: the hosted API's clients, over real HTTP, against a real server
process (one for the module), with the bundled u2netp."""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servers import IMAGE, VIDEO, Server, leftovers, multipart

pytest.importorskip("starlette")

KEY = "test-key-0123"


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    srv = Server(env, tmp_path_factory.mktemp("serve") / "data", "--api-key", KEY)
    try:
        yield srv
    finally:
        srv.stop()


def _jobs(server) -> set[str]:
    return {p.name for p in (server.data_dir / "jobs").iterdir()}


def _same_as_library(fixtures, tmp_path, name: str, params: dict) -> bytes:
    """What the library writes for ``name`` with ``params`` (the command line's bytes)."""
    from bgrm.api import Session
    from bgrm.options import from_params

    dst = tmp_path / f"lib-{name}.png"
    Session("u2netp", threads=os.cpu_count()).write("image", fixtures / name, dst,
                                                    from_params("image", params))
    return dst.read_bytes()


def test_seed_python_client_flow(server, fixtures, tmp_path):
    """The seed's Python example: files under "files", string parameters, uuid
    urlencoded, then each files[].url downloaded with the domain in front."""
    params = {"lang": "en", "convert_to": IMAGE, "alpha_matting": "true", "alpha_fg": "240",
              "alpha_bg": "10", "alpha_erode": "10"}
    r = server.convert([("files", fixtures / "chelsea.png")], params, key=KEY)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"uuid"} and uuid.UUID(r.json()["uuid"]).version == 4
    answer = server.wait(r.json()["uuid"])
    assert {"files", "failed", "finished", "queue_count", "errors"} <= set(answer)
    assert answer["failed"] == [] and answer["errors"] == [] and answer["queue_count"] == 0
    assert [f["filename"] for f in answer["files"]] == ["chelsea_processed.png"]
    got = server.get(answer["files"][0]["url"])  # no key: the uuid guards results
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    assert 'filename="chelsea_processed.png"' in got.headers["content-disposition"]
    lib = {k: v for k, v in params.items() if k not in ("lang", "convert_to")}
    assert got.content == _same_as_library(fixtures, tmp_path, "chelsea.png", lib)


def test_php_field_names_and_every_way_to_send_the_uuid(server, fixtures):
    r = server.convert([("file[0]", fixtures / "coffee.png"), ("file[1]", fixtures / "rocket.jpg")],
                       {"lang": "en", "convert_to": IMAGE, "only_mask": "true"}, key=KEY)
    key = r.json()["uuid"]
    answer = server.wait(key)
    assert [f["filename"] for f in answer["files"]] == ["coffee_processed.png",
                                                        "rocket_processed.png"]
    as_multipart = server.post("/v1/results/", files={"uuid": (None, key)}).json()
    as_json = server.post("/v1/results/", json={"uuid": key}).json()
    assert as_multipart == as_json == answer
    mask = Image.open(io.BytesIO(server.get(answer["files"][0]["url"]).content))
    assert mask.mode == "L"


def test_key_guards_convert_only(server, fixtures):
    photo = [("files", fixtures / "chelsea.png")]
    for key in (None, "wrong-key"):
        r = server.convert(photo, {"convert_to": IMAGE}, key=key)
        assert r.status_code == 401 and "Authorization" in r.json()["error"]


def test_refused_requests_name_the_parameter_and_keep_nothing(server, fixtures):
    before = _jobs(server)
    photo = [("files", fixtures / "chelsea.png")]
    cases = [
        ({"convert_to": IMAGE, "alpha_fg": "999"}, photo, "alpha_fg"),
        ({"convert_to": IMAGE, "no_such": "1"}, photo, "no_such"),
        ({"convert_to": "audio-remover"}, photo, "convert_to"),
        ({"convert_to": IMAGE, "model": "/etc/passwd"}, photo, "model"),
        ({"convert_to": IMAGE, "model": "../models/u2netp.onnx"}, photo, "model"),
        ({"convert_to": IMAGE, "bg_type": "image", "bg_image": "/etc/hostname"}, photo, "bg_image"),
        ({"convert_to": VIDEO, "video_format": "video_over_video", "bg_video": "/x.mp4"}, photo,
         "bg_video"),
        ({"convert_to": VIDEO, "video_format": "png_sequence"}, photo, "png_sequence"),
        ({"convert_to": IMAGE}, [("bg_image", fixtures / "coffee.png")], "no files"),
    ]
    for data, files, named in cases:
        r = server.convert(files, data, key=KEY)
        assert r.status_code == 400, (data, r.text)
        assert named in r.json()["error"], (data, r.json())
        assert str(server.data_dir) not in r.text
    r = server.post("/v1/convert/", data={"convert_to": IMAGE}, headers={"Authorization": KEY})
    assert r.status_code == 400 and "multipart" in r.json()["error"]
    assert _jobs(server) == before


def test_a_model_not_installed_says_how_to_install_it(server, fixtures):
    # The seed's examples ask for u2net; this server has only the bundled u2netp.
    r = server.convert([("files", fixtures / "chelsea.png")],
                       {"convert_to": IMAGE, "model": "u2net"}, key=KEY)
    assert r.status_code == 400
    assert "bgrm models install u2net" in r.json()["error"]
    assert "/" not in r.json()["error"].split("install u2net")[0]  # no server path


def test_background_picture_as_an_upload(server, fixtures):
    r = server.convert([("files", fixtures / "chelsea.png"), ("bg_image", fixtures / "coffee.png")],
                       {"convert_to": IMAGE, "bg_type": "image"}, key=KEY)
    answer = server.wait(r.json()["uuid"])
    assert len(answer["files"]) == 1, answer  # the background is not an input
    out = Image.open(io.BytesIO(server.get(answer["files"][0]["url"]).content))
    assert out.size == Image.open(fixtures / "chelsea.png").size
    assert np.asarray(out.convert("RGBA"))[..., 3].min() == 255  # opaque: the picture behind


def test_one_bad_file_fails_alone(server, fixtures):
    r = server.convert([("files", ("broken.jpg", b"\xff\xd8 not a jpeg")),
                        ("files", fixtures / "rocket.jpg")], {"convert_to": IMAGE}, key=KEY)
    answer = server.wait(r.json()["uuid"])
    assert [f["filename"] for f in answer["files"]] == ["rocket_processed.png"]
    assert [f["filename"] for f in answer["failed"]] == ["broken.jpg"]
    assert "broken.jpg" in answer["errors"][0]
    assert str(server.data_dir) not in json.dumps(answer) and "/in/" not in json.dumps(answer)


def test_hostile_filenames_stay_inside_the_data_dir(server, fixtures, tmp_path):
    names = [b"../../escaped.png", b"/tmp/absolute.png", b"nul\x00byte.png", b"x" * 1000 + b".png",
             b"caf\xe9-latin1.png", b"..", b"C:\\Windows\\win.png"]
    # A small photo: seven runs of the model, on 2 cores.
    small = io.BytesIO()
    Image.open(fixtures / "chelsea.png").resize((90, 60)).save(small, "PNG")
    png = small.getvalue()
    body, ctype = multipart([(b"convert_to", None, IMAGE.encode()),
                             *((b"files", n, png) for n in names)])
    r = server.post("/v1/convert/", data=body, headers={"Content-Type": ctype,
                                                        "Authorization": KEY})
    assert r.status_code == 200, r.text
    answer = server.wait(r.json()["uuid"])
    assert answer["failed"] == [] and len(answer["files"]) == len(names)
    for entry in answer["files"]:
        name = entry["filename"]
        assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) < 200
        assert server.get(entry["url"]).content[:4] == b"\x89PNG"
    shown = [f["filename"] for f in answer["files"]]
    assert shown[0] == "escaped_processed.png" and shown[6] == "win_processed.png"
    for outside in (server.data_dir.parent, server.data_dir.parent.parent, Path("/tmp")):
        assert not list(outside.glob("escaped*")) and not list(outside.glob("absolute*"))
    job = server.data_dir / "jobs" / r.json()["uuid"]
    assert sorted(p.name for p in (job / "out").iterdir()) == \
        sorted(f"{n}_processed.png" for n in range(len(names)))


def test_hostile_urls_and_unknown_uuids_get_404(server, fixtures):
    r = server.convert([("files", fixtures / "chelsea.png")], {"convert_to": IMAGE}, key=KEY)
    key = r.json()["uuid"]
    answer = server.wait(key)
    url = answer["files"][0]["url"]
    for path in (f"/v1/files/{key}/0/..%2F..%2Fjobs.sqlite3", f"/v1/files/{key}/%2e%2e/x",
                 f"/v1/files/{key}/1/x.png", "/v1/files/%2e%2e/0/x", "/v1/files/../jobs.sqlite3",
                 "/static/..%2Fjobs.sqlite3", "/static/%2e%2e", "/static/.hidden",
                 f"/v1/files/{uuid.uuid4()}/0/x.png", "/jobs.sqlite3"):
        got = server.get(path)
        assert got.status_code == 404 and "error" in got.json(), path
    for bad in (str(uuid.uuid4()), "../../jobs.sqlite3", "x" * 500):
        got = server.post("/v1/results/", data={"uuid": bad})
        assert got.status_code == 404 and "error" in got.json()
    assert server.post("/v1/results/", data={}).status_code == 400
    # A link planted in a job's folder is not followed out of the data dir.
    out = server.data_dir / "jobs" / key / "out" / "0_processed.png"
    out.unlink()
    out.symlink_to(Path("/etc/hostname"))
    assert server.get(url).status_code == 404


def test_ranges_and_queue_count(server, fixtures):
    first = server.convert([("files", fixtures / n) for n in ("astronaut.png", "coffee.png",
                                                              "rocket.jpg")],
                           {"convert_to": IMAGE}, key=KEY).json()["uuid"]
    second = server.convert([("files", fixtures / "chelsea.png")], {"convert_to": IMAGE},
                            key=KEY).json()["uuid"]
    waiting = server.results(second)
    assert not waiting["finished"] and isinstance(waiting["queue_count"], int)
    assert waiting["queue_count"] >= 1  # files of the first job, ahead of it
    answer = server.wait(second)
    assert server.results(first)["finished"]  # arrival order
    url = answer["files"][0]["url"]
    whole = server.get(url).content
    part = server.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == whole[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(whole)}"


def test_video_job(server, fixtures, tmp_path):
    from videoclips import make_clip, probe

    clip = make_clip(tmp_path / "clip.mp4", fixtures / "astronaut.png", frames=8)
    r = server.convert([("files", clip)], {"convert_to": VIDEO, "video_format": "mov",
                                           "frame_limit": "6"}, key=KEY)
    answer = server.wait(r.json()["uuid"])
    assert answer["failed"] == [] and answer["files"][0]["filename"] == "clip_processed.mov"
    got = server.get(answer["files"][0]["url"])
    assert got.headers["content-type"] == "video/quicktime"
    (tmp_path / "out.mov").write_bytes(got.content)
    probed = probe(tmp_path / "out.mov")
    assert probed.count == 6 and probed.size == (160, 96)


def test_a_large_upload_streams_to_disk(server):
    """600 MB sent in one request: the server's peak memory grows by far less."""
    def peak() -> int:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines()
                        if line.startswith("VmHWM")))  # kB

    before = peak()
    chunk = b"\x00" * (1 << 20)
    boundary = b"bgrm-big-upload"
    ctype = "multipart/form-data; boundary=" + boundary.decode()
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="convert_to"\r\n\r\n'
            + IMAGE.encode() + b"\r\n--" + boundary
            + b'\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n')
    tail = b"\r\n--" + boundary + b"--\r\n"

    def stream():
        yield head
        for _ in range(600):
            yield chunk
        yield tail

    r = server.post("/v1/convert/", data=stream(), headers={"Content-Type": ctype,
                                                            "Authorization": KEY})
    assert r.status_code == 200, r.text
    answer = server.wait(r.json()["uuid"])
    assert [f["filename"] for f in answer["failed"]] == ["big.jpg"]  # not a picture
    assert peak() - before < 100_000, (before, peak())
    assert not leftovers(server.data_dir)


def test_health(server):
    r = server.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert server.get("/").headers["content-type"].startswith("text/html")
    # Jobs ran in this process: its stdout is still its own (the CLI's dup2 onto
    # stderr is not the service's).
    assert os.readlink(f"/proc/{server.proc.pid}/fd/1") == os.devnull
