"""`bgrm serve` for operators: readiness, metrics, the OpenAPI document, an
operator's own model, image_url input and signed webhooks. Real server
processes over real HTTP on loopback; the receivers are threads of the test."""

from __future__ import annotations

import http.server
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from servers import IMAGE, Server
from standins import standin_onnx

from bgrm.serve.webhooks import verify

KEY = "operator-key-42"


def _photo(fixtures, name="chelsea.png", size=(160, 120)) -> bytes:
    out = io.BytesIO()
    Image.open(fixtures / name).convert("RGB").resize(size).save(out, "PNG")
    return out.getvalue()


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread: serves ``files`` on GET, and
    answers POSTs with the statuses in ``answers`` (then 200), keeping each."""

    def __init__(self, files: dict[str, bytes] | None = None, answers=()):
        self.files, self.answers, self.posts = files or {}, list(answers), []
        self.posted = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = outer.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = outer.answers.pop(0) if outer.answers else 200
                outer.posts.append((dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                outer.posted.set()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_posts(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, self.posts
            self.posted.wait(0.2)
            self.posted.clear()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def operator_model(tmp_path_factory) -> Path:
    # An IS-Net-shaped export (1024 input), standing in for an operator's own.
    return standin_onnx(tmp_path_factory.mktemp("op") / "shoes.onnx", "isnet", seed=3, gain=8)


@pytest.fixture(scope="module")
def server(env, tmp_path_factory, operator_model):
    srv = Server(env, tmp_path_factory.mktemp("operators") / "data", "--api-key", KEY,
                 "--custom-model", f"shoes=isnet:{operator_model}")
    try:
        yield srv
    finally:
        srv.stop()


def test_ready_and_health(server):
    r = server.get("/ready")
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert server.get("/health").json()["status"] == "ok"


def test_metrics_read_as_prometheus_does(server, fixtures):
    key = server.convert([("files", ("p.png", _photo(fixtures))),
                          ("files", ("bad.png", b"not a picture"))],
                         {"convert_to": IMAGE, "model": "u2netp"}, key=KEY).json()["uuid"]
    server.wait(key)
    r = server.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("bgrm_files_total", (("kind", "image"), ("outcome", "done")))] >= 1
    assert samples[("bgrm_files_total", (("kind", "image"), ("outcome", "failed")))] >= 1
    assert samples[("bgrm_jobs_total", (("kind", "image"), ("outcome", "partial")))] >= 1
    assert samples[("bgrm_file_seconds_count", (("kind", "image"),))] >= 1
    assert samples[("bgrm_upload_bytes_total", ())] >= len(b"not a picture")
    assert samples[("bgrm_queue_files", ())] == 0
    assert samples[("bgrm_models_loaded", ())] >= 1
    # Never the key, a file name or a uuid.
    for secret in (KEY, "bad.png", "p.png", key):
        assert secret not in r.text


def test_openapi_document_validates_and_lists_the_operator_model(server, operator_model):
    from openapi_spec_validator import validate

    r = server.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate(doc)
    form = doc["paths"]["/v1/convert/"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]
    assert "shoes" in form["model"]["enum"] and "u2netp" in form["model"]["enum"]
    assert form["alpha_fg"]["maximum"] == 255 and form["alpha_fg"]["default"] == 240
    assert str(operator_model.parent) not in r.text and "shoes.onnx" not in r.text
    assert 'href="openapi.json"' in server.get("/").text  # the page links to it


def test_the_operator_model_gives_the_command_lines_mask(server, fixtures, operator_model,
                                                       run_main, tmp_path):
    photo = _photo(fixtures, "astronaut.png")
    key = server.convert([("files", ("a.png", photo))],
                         {"convert_to": IMAGE, "model": "shoes", "only_mask": "true"},
                         key=KEY).json()["uuid"]
    answer = server.wait(key)
    assert answer["failed"] == [], answer
    served = np.asarray(Image.open(io.BytesIO(server.get(answer["files"][0]["url"]).content)))
    (tmp_path / "a.png").write_bytes(photo)
    code, _, err = run_main("image", tmp_path / "a.png", "--model", operator_model,
                            "--model-family", "isnet", "--only-mask", "-o", tmp_path / "out")
    assert code == 0, err
    local = np.asarray(Image.open(tmp_path / "out" / "a_processed.png"))
    assert served.shape == local.shape and np.array_equal(served, local)
    assert 0.05 < (served > 127).mean() < 0.95  # a real mask, not a blank
    # A family given with it is refused; its path is never named.
    r = server.convert([("files", ("a.png", photo))],
                       {"convert_to": IMAGE, "model": "shoes", "model_family": "u2net"}, key=KEY)
    assert r.status_code == 400 and "model_family" in r.json()["error"]
    assert str(operator_model) not in r.text


def test_a_broken_operator_model_stops_the_server_at_start(bgrm, tmp_path):
    wrong = standin_onnx(tmp_path / "wrong.onnx", "u2net")
    r = bgrm("serve", "--port", "0", "--data-dir", tmp_path / "d",
             "--custom-model", f"x=isnet:{wrong}")
    assert r.returncode == 2 and b"--custom-model x" in r.stderr, r.stderr
    r = bgrm("serve", "--port", "0", "--data-dir", tmp_path / "d",
             "--custom-model", "u2netp=u2net:" + str(wrong))
    assert r.returncode == 2 and b"that name is taken" in r.stderr, r.stderr


def test_urls_on_the_servers_own_network_are_refused(server, fixtures):
    receiver = Receiver({"/a.png": _photo(fixtures)})
    try:
        before = {p.name for p in (server.data_dir / "jobs").iterdir()}
        for field in ("image_url", "webhook_url"):
            parts = [("convert_to", (None, IMAGE))]
            if field == "image_url":
                parts.append(("image_url", (None, receiver.url + "/a.png")))
            else:
                parts += [("webhook_url", (None, "http://localhost:9/hook")),
                          ("files", ("a.png", _photo(fixtures)))]
            r = server.post("/v1/convert/", files=parts, headers={"Authorization": KEY})
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert field in error and "loopback" in error, error
            assert "--allow-private-urls" in error
        assert {p.name for p in (server.data_dir / "jobs").iterdir()} == before
        assert receiver.posts == []
    finally:
        receiver.close()


def test_image_url_fetched_and_signed_webhook_retried_until_taken(env, fixtures, tmp_path):
    photo = _photo(fixtures)
    receiver = Receiver({"/cat.png": photo}, answers=[500, 503])
    server = Server(env, tmp_path / "data", "--api-key", KEY, "--allow-private-urls")
    try:
        r = server.post("/v1/convert/", headers={"Authorization": KEY}, data={
            "convert_to": IMAGE, "model": "u2netp", "webhook_url": receiver.url + "/hook",
            "image_url": [receiver.url + "/cat.png", receiver.url + "/missing.png"]},
            files={"files": ("up.png", photo)})
        assert r.status_code == 200, r.text
        key = r.json()["uuid"]
        answer = server.wait(key)
        assert [f["filename"] for f in answer["files"]] == ["up_processed.png",
                                                            "cat_processed.png"]
        assert [f["filename"] for f in answer["failed"]] == ["missing.png"]
        assert "404" in answer["errors"][0]
        receiver.wait_posts(3)  # two failures, then taken (2 s and 4 s apart)
        statuses = [status for _, _, status in receiver.posts]
        assert statuses == [500, 503, 200]
        headers, body, _ = receiver.posts[-1]
        assert verify(KEY, body, headers["X-Bgrm-Signature"])
        assert not verify("another-key", body, headers["X-Bgrm-Signature"])
        assert headers["X-Bgrm-Job"] == key and json.loads(body) == server.results(key)
    finally:
        server.stop()
        receiver.close()


def test_a_webhook_outlives_a_restart(env, fixtures, tmp_path):
    receiver = Receiver(answers=[500])
    data = tmp_path / "data"
    server = Server(env, data, "--allow-private-urls")
    try:
        key = server.convert([("files", ("a.png", _photo(fixtures)))], {
            "convert_to": IMAGE, "model": "u2netp",
            "webhook_url": receiver.url + "/hook"}).json()["uuid"]
        server.wait(key)
        receiver.wait_posts(1)  # refused once: the next try is due in about 2 s
    finally:
        server.stop()
    assert len(receiver.posts) == 1
    again = Server(env, data, "--allow-private-urls")
    try:
        receiver.wait_posts(2)
        headers, body, status = receiver.posts[-1]
        assert status == 200 and headers["X-Bgrm-Job"] == key
        assert "X-Bgrm-Signature" not in headers  # no key, no signature
        assert json.loads(body)["files"][0]["filename"] == "a_processed.png"
    finally:
        again.stop()
        receiver.close()
