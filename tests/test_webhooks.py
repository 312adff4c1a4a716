"""Webhooks (bgrm.serve.webhooks): signed deliveries to a real HTTP receiver on
127.0.0.1, retried with backoff, kept across restarts in SQLite, given up on a
4xx or when the results expire. Backoff here starts at 0.05 s; every wait is
for an event (a request received, a log record) and bounded."""

from __future__ import annotations

import http.client
import http.server
import json
import logging
import socket
import threading
import time
import uuid as uuidlib
from urllib.parse import urlsplit

import pytest

from bgrm.serve.webhooks import (
    DELIVERED,
    EXPIRED,
    FAILED,
    PENDING,
    Deliverer,
    GiveUp,
    Outbox,
    backoff,
    sign,
    verdict,
    verify,
)

KEY = "hook-key-5f3a9c"
BASE = 0.05  # the first retry's wait in these tests
WAIT_S = 15.0  # the longest any event is waited for


class Receiver:
    """An HTTP receiver on 127.0.0.1 that answers the statuses in ``script``, then
    ``default``; it records each request's headers and body. Its port is bound from
    the start, but until ``up()`` nothing listens there: connections are refused."""

    def __init__(self, script=(), default: int = 200):
        self.script, self.default = list(script), default
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self._changed = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/hook?x=1"
        self._server: http.server.ThreadingHTTPServer | None = None

    def up(self) -> Receiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = receiver.answer(dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(self._sock.getsockname(), Handler,
                                                 bind_and_activate=False)
        server.socket.close()
        server.socket = self._sock
        server.server_activate()  # listen(): from here on connections are taken
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self._server = server
        return self

    def answer(self, headers: dict[str, str], body: bytes) -> int:
        with self._changed:
            self.requests.append((headers, body))
            self._changed.notify_all()
            return self.script.pop(0) if self.script else self.default

    def wait(self, count: int) -> list[tuple[dict[str, str], bytes]]:
        """The first ``count`` requests, once they came."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.requests) >= count, WAIT_S), \
                f"{len(self.requests)} requests came, not {count}"
            return self.requests[:count]

    def jobs(self) -> list[str]:
        with self._changed:
            return [h["X-Bgrm-Job"] for h, _ in self.requests]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        else:
            self._sock.close()


def post(url: str, body: bytes, headers: dict) -> int:
    """A plain poster, for loopback receivers only."""
    parts = urlsplit(url)
    assert parts.hostname == "127.0.0.1", url
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", f"{parts.path}?{parts.query}", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Records(logging.Handler):
    """The ``bgrm.serve`` logger's records, to wait on."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def of(self, job: str) -> list[logging.LogRecord]:
        with self._changed:
            return [r for r in self.records if getattr(r, "uuid", None) == job]

    def wait(self, job: str, state: str, count: int = 1) -> list[logging.LogRecord]:
        """Job ``job``'s records once ``count`` of them ended in ``state``."""
        def seen():
            return sum(getattr(r, "webhook_state", None) == state for r in self.of(job))

        with self._changed:
            assert self._changed.wait_for(lambda: seen() >= count, WAIT_S), \
                f"{job}: {[r.getMessage() for r in self.of(job)]}"
        return self.of(job)


@pytest.fixture
def logs():
    logger = logging.getLogger("bgrm.serve")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # info records (deliveries) reach the handler
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    text = "\n".join(r.getMessage() + repr(r.__dict__) for r in handler.records)
    assert KEY not in text, "the API key was logged"


@pytest.fixture
def hooks(tmp_path):
    """``make(poster=post, key=KEY, base=BASE)``: a started Deliverer over a new
    Outbox on one database file; ``receiver(...)``: a Receiver. All closed after."""
    made: list = []
    db = tmp_path / "jobs.sqlite3"

    class Hooks:
        path = db

        @staticmethod
        def make(poster=post, key: str | None = KEY, base: float = BASE) -> Deliverer:
            outbox = Outbox(db, base=base)
            deliverer = Deliverer(outbox, poster, key)
            made.append(deliverer)
            deliverer.start()
            return deliverer

        @staticmethod
        def stop(deliverer: Deliverer) -> None:
            assert deliverer.close(5.0), "the deliverer did not stop"
            deliverer.outbox.close()
            made.remove(deliverer)

        @staticmethod
        def receiver(script=(), default: int = 200, up: bool = True) -> Receiver:
            receiver = Receiver(script, default)
            made.append(receiver)
            return receiver.up() if up else receiver

    try:
        yield Hooks
    finally:
        for item in reversed(made):
            item.close()
            if isinstance(item, Deliverer):
                item.outbox.close()


def _body(job: str) -> bytes:
    return json.dumps({"uuid": job, "finished": True, "files": [], "failed": []}).encode()


def _new() -> str:
    return str(uuidlib.uuid4())


def _later(seconds: float = 60.0) -> float:
    return time.time() + seconds


# -- delivery -----------------------------------------------------------------------


def test_500_twice_then_200_is_three_attempts_signed_with_the_key(hooks, logs):
    receiver = hooks.receiver(script=[500, 500])
    deliverer = hooks.make()
    job, body = _new(), _body(_new())
    assert deliverer.add(job, receiver.url, body, _later())
    records = logs.wait(job, DELIVERED)
    sent = receiver.wait(3)
    assert len(receiver.requests) == 3
    for headers, got in sent:
        assert got == body
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Bgrm-Job"] == job
        assert verify(KEY, got, headers["X-Bgrm-Signature"])
    assert not verify("another-key", body, sent[-1][0]["X-Bgrm-Signature"])
    row = deliverer.outbox.get(job)
    assert (row.state, row.attempts, row.last_error) == (DELIVERED, 3, "HTTP 200")
    assert [(r.attempt, r.status, r.webhook_state) for r in records] == [
        (1, 500, PENDING), (2, 500, PENDING), (3, 200, DELIVERED)]
    assert all(job in r.getMessage() for r in records)
    assert deliverer.outbox.pending() == 0


def test_without_a_key_there_is_no_signature(hooks, logs):
    receiver = hooks.receiver()
    deliverer = hooks.make(key=None)
    job = _new()
    deliverer.add(job, receiver.url, _body(job), _later())
    logs.wait(job, DELIVERED)
    headers, body = receiver.wait(1)[0]
    assert "X-Bgrm-Signature" not in headers
    assert headers["X-Bgrm-Job"] == job and body == _body(job)


def test_a_receiver_that_is_down_gets_it_once_it_comes_up(hooks, logs):
    receiver = hooks.receiver(up=False)
    deliverer = hooks.make()
    job = _new()
    deliverer.add(job, receiver.url, _body(job), _later())
    refused = logs.wait(job, PENDING, count=2)  # two refused connections, retried
    assert all(r.status is None and "Connection" in r.getMessage() for r in refused)
    receiver.up()
    logs.wait(job, DELIVERED)
    headers, body = receiver.wait(1)[0]
    assert body == _body(job) and verify(KEY, body, headers["X-Bgrm-Signature"])
    assert deliverer.outbox.get(job).attempts >= 3


@pytest.mark.parametrize("status", [408, 429, 502])
def test_a_status_the_receiver_may_get_over_is_retried(hooks, logs, status):
    receiver = hooks.receiver(script=[status])
    deliverer = hooks.make()
    job = _new()
    deliverer.add(job, receiver.url, _body(job), _later())
    logs.wait(job, DELIVERED)
    assert len(receiver.wait(2)) == 2 and deliverer.outbox.get(job).attempts == 2


@pytest.mark.parametrize("status", [400, 404, 410, 301])
def test_a_4xx_or_a_redirect_gives_up(hooks, logs, status):
    receiver = hooks.receiver(script=[status])
    deliverer = hooks.make()
    job, other = _new(), _new()
    deliverer.add(job, receiver.url, _body(job), _later())
    (record,) = logs.wait(job, FAILED)
    assert record.levelno == logging.WARNING and f"HTTP {status}" in record.getMessage()
    # Another job's delivery, after it: the first is not tried again meanwhile.
    deliverer.add(other, receiver.url, _body(other), _later())
    logs.wait(other, DELIVERED)
    assert receiver.jobs() == [job, other]
    assert deliverer.outbox.get(job).state == FAILED


def test_a_poster_that_refuses_the_address_gives_up_at_once(hooks, logs):
    def refusing(url, body, headers):
        raise GiveUp("a private address")

    deliverer = hooks.make(poster=refusing)
    job = _new()
    deliverer.add(job, "http://10.0.0.1/hook", _body(job), _later())
    (record,) = logs.wait(job, FAILED)
    assert "refused: a private address" in record.getMessage()
    assert deliverer.outbox.get(job).attempts == 1


def test_a_network_error_is_retried_and_the_key_never_logged(hooks, logs):
    receiver = hooks.receiver()
    calls = []

    def flaky(url, body, headers):
        calls.append(url)
        if len(calls) == 1:  # an error whose text happens to hold the key
            raise ConnectionResetError(f"reset while sending {headers['X-Bgrm-Signature']} "
                                       f"with {KEY}")
        return post(url, body, headers)

    deliverer = hooks.make(poster=flaky)
    job = _new()
    deliverer.add(job, receiver.url, _body(job), _later())
    records = logs.wait(job, DELIVERED)
    assert "ConnectionResetError" in records[0].getMessage()
    assert KEY not in (deliverer.outbox.get(job).last_error or "")
    assert len(calls) == 2
    # (the logs fixture checks that no record holds the key)


# -- durability ---------------------------------------------------------------------


def test_a_pending_delivery_is_made_by_the_next_process(hooks, logs):
    receiver = hooks.receiver(up=False)
    first = hooks.make()
    job = _new()
    first.add(job, receiver.url, _body(job), _later())
    logs.wait(job, PENDING)  # tried once, refused
    hooks.stop(first)
    receiver.up()
    second = hooks.make()  # a new Outbox on the same file: what a restart makes
    logs.wait(job, DELIVERED)
    headers, body = receiver.wait(1)[0]
    assert body == _body(job) and verify(KEY, body, headers["X-Bgrm-Signature"])
    assert second.outbox.get(job).attempts >= 2
    assert receiver.jobs() == [job]


def test_a_delivered_row_is_never_sent_again_after_a_restart(hooks, logs):
    receiver = hooks.receiver()
    first = hooks.make()
    job, later = _new(), _new()
    first.add(job, receiver.url, _body(job), _later())
    logs.wait(job, DELIVERED)
    row = first.outbox.get(job)
    hooks.stop(first)
    # Past the time a retry would have been due, had the row stayed pending.
    while time.time() <= row.next_at:
        time.sleep(0.01)
    second = hooks.make()
    # The job finishing again (a crash before its end was recorded) sends nothing.
    assert not second.add(job, receiver.url, b"{}", _later())
    second.add(later, receiver.url, _body(later), _later())
    logs.wait(later, DELIVERED)
    assert receiver.jobs() == [job, later]
    assert second.outbox.get(job) == row


def test_close_is_prompt_and_leaves_the_row_pending(hooks, logs):
    receiver = hooks.receiver(default=503)
    deliverer = hooks.make(base=600.0)  # the next try: 10 minutes away
    job = _new()
    deliverer.add(job, receiver.url, _body(job), _later(3600))
    logs.wait(job, PENDING)
    started = time.monotonic()
    assert deliverer.close(5.0)
    assert time.monotonic() - started < 2.0
    assert deliverer.outbox.get(job).state == PENDING and deliverer.outbox.pending() == 1


# -- expiry -------------------------------------------------------------------------


def test_a_row_past_its_expiry_is_not_sent(hooks, logs):
    receiver = hooks.receiver()
    deliverer = hooks.make()
    old, fresh = _new(), _new()
    deliverer.add(old, receiver.url, _body(old), time.time() - 1)
    (record,) = logs.wait(old, EXPIRED)
    assert "expired" in record.getMessage()
    deliverer.add(fresh, receiver.url, _body(fresh), _later())
    logs.wait(fresh, DELIVERED)
    assert receiver.jobs() == [fresh]
    assert deliverer.outbox.get(old).attempts == 0


def test_retries_stop_when_the_results_expire(hooks, logs):
    receiver = hooks.receiver(default=500)
    deliverer = hooks.make()
    job, fresh = _new(), _new()
    deliverer.add(job, receiver.url, _body(job), _later(2.0))
    records = logs.wait(job, EXPIRED)
    tried = len(receiver.requests)
    assert tried >= 2 and records[-1].attempt == tried
    receiver.default = 200
    deliverer.add(fresh, receiver.url, _body(fresh), _later())
    logs.wait(fresh, DELIVERED)
    assert receiver.jobs() == [job] * tried + [fresh]
    assert deliverer.outbox.get(job).state == EXPIRED and deliverer.outbox.pending() == 0


# -- the outbox, its schedule, signatures -------------------------------------------


def test_the_outbox_schedule(tmp_path):
    outbox = Outbox(tmp_path / "hooks.sqlite3", base=2.0, cap=600.0)
    try:
        assert outbox.add("a", "http://127.0.0.1:9/", b"body", expires_at=10_000.0, now=100.0)
        assert not outbox.add("a", "http://127.0.0.1:9/", b"other", expires_at=20_000.0,
                              now=101.0)
        assert [d.body for d in outbox.due(now=100.0)] == [b"body"]
        now, waits = 100.0, []
        for _ in range(12):
            assert outbox.attempted("a", 503, now=now) == PENDING
            row = outbox.get("a")
            waits.append(row.next_at - now)
            assert outbox.due(now=row.next_at - 0.001) == []
            now = row.next_at
        for n, wait in enumerate(waits):  # (1e-6: next_at - now is a float's rounding off)
            low, high = min(600.0, 2.0 * 2 ** n) * 0.9, min(600.0, 2.0 * 2 ** n * 1.1)
            assert low - 1e-6 <= wait <= high + 1e-6
        assert outbox.get("a").attempts == 12 and outbox.pending(now=now) == 1
        # Past the expiry: never due again, marked expired.
        assert outbox.due(now=10_000.0) == [] and outbox.next_at(now=10_000.0) is None
        assert outbox.expire(now=10_000.0) == ["a"]
        assert outbox.get("a").state == EXPIRED and outbox.pending(now=0.0) == 0
        outbox.forget("a")
        assert outbox.get("a") is None
    finally:
        outbox.close()


def test_a_retry_that_would_come_after_the_expiry_is_not_scheduled(tmp_path):
    outbox = Outbox(tmp_path / "hooks.sqlite3", base=2.0)
    try:
        outbox.add("a", "http://127.0.0.1:9/", b"x", expires_at=101.0, now=100.0)
        assert outbox.attempted("a", None, "ConnectionRefusedError", now=100.0) == EXPIRED
        assert outbox.get("a").last_error == "ConnectionRefusedError"
        # A late record of an attempt changes nothing once settled.
        assert outbox.attempted("a", 200, now=100.5) == EXPIRED
        assert outbox.attempted("gone", 200, now=100.5) == EXPIRED
    finally:
        outbox.close()


def test_the_outbox_shares_the_job_stores_file(tmp_path):
    from bgrm.serve.store import FileRow, Store

    path = tmp_path / "jobs.sqlite3"
    store, outbox = Store(path), Outbox(path)
    try:
        store.add("job", "image", {}, [FileRow(0, "a.png", "a_processed.png", "in/0",
                                               "out/0.png", "queued", None, None)])
        outbox.add("job", "http://127.0.0.1:9/", b"{}", _later())
        store.finish_file("job", 0, None)
        assert store.job("job").finished is not None and outbox.pending() == 1
    finally:
        outbox.close()
        store.close()


def test_verdicts_and_backoff():
    assert [verdict(s) for s in (200, 204, 299)] == [DELIVERED] * 3
    assert [verdict(s) for s in (None, 408, 429, 500, 503)] == [PENDING] * 5
    assert [verdict(s) for s in (100, 302, 400, 401, 403, 404, 413)] == [FAILED] * 7
    exact = lambda low, high: 1.0  # noqa: E731 - no jitter
    assert [backoff(n, rng=exact) for n in range(1, 11)] == [
        2, 4, 8, 16, 32, 64, 128, 256, 512, 600]
    assert backoff(10_000, rng=exact) == 600


def test_sign_and_verify():
    body = b'{"uuid": "x", "files": []}'
    header = sign(KEY, body)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    # The documented recipe, computed independently.
    import hashlib
    import hmac

    assert header[7:] == hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
    assert verify(KEY, body, header) and verify(KEY, body, f" {header} ")
    assert not verify(KEY, body + b" ", header)
    assert not verify("other", body, header)
    for bad in (None, "", header[7:], "sha1=" + header[7:], header.upper(), "sha256=é"):
        assert not verify(KEY, body, bad)
