"""bgrm serve's URL fetcher against real HTTP servers on loopback addresses.

Host names resolve through an injected resolver, so a test can make a name
stand for any address; a guard on ``socket.socket.connect`` records every
address dialled and refuses, without sending anything, any that is not
loopback: a fetcher that fails to refuse an address is caught, never let out.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bgrm import __version__
from bgrm.serve.fetch import FetchFailed, Policy, URLRefused, check, fetch, post, result_name

PICTURE = bytes(range(256)) * 40  # 10 KB standing in for an image: the fetcher never decodes


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback


@pytest.fixture(autouse=True)
def dialled(monkeypatch):
    """Every address the code under test connects to; only loopback ones go out."""
    seen: list[str] = []
    real = socket.socket.connect

    def connect(sock, address):
        seen.append(address[0])
        if not _loopback(address[0]):
            raise ConnectionRefusedError(f"the test guard stopped a connection to {address[0]}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield seen
    assert all(_loopback(a) for a in seen), f"tried to connect to {seen}"


class Resolver:
    """Like socket.getaddrinfo over a table of names; an IP literal stands for
    itself. ``then``: the table from the second call on (a rebinding DNS)."""

    def __init__(self, table: dict, then: dict | None = None):
        self.table, self.then, self.calls = table, then, []

    def __call__(self, host, port, *args, **kwargs):
        table = self.then if self.then is not None and self.calls else self.table
        self.calls.append(host)
        found = table.get(host, host)
        infos = []
        for ip in [found] if isinstance(found, str) else found:
            try:
                v6 = ipaddress.ip_address(ip.split("%", 1)[0]).version == 6
            except ValueError:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
            infos.append((socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                          (ip, port, 0, 0) if v6 else (ip, port)))
        return infos


class Site:
    """A real HTTP server on one loopback address, on a thread. ``routes`` maps
    a path to a function answering the request; every request is recorded."""

    def __init__(self, host: str, tls: ssl.SSLContext | None = None):
        self.routes, self.requests = {}, []
        self.stop = threading.Event()  # set at teardown: slow answers end by themselves
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                site.requests.append((self.command, self.path, self.headers, body))
                site.routes.get(self.path, not_found)(self)

            do_POST = do_GET

            def log_message(self, *args):
                pass

        server_class = ThreadingHTTPServer
        if ":" in host:
            server_class = type("Server6", (ThreadingHTTPServer,),
                                {"address_family": socket.AF_INET6})
        self.server = server_class((host, 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [path for _, path, _, _ in self.requests]

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def not_found(h):
    h.send_error(404, "Not Found")


def serve_bytes(data: bytes, **headers):
    def answer(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            h.send_header(name.replace("_", "-"), value)
        h.end_headers()
        h.wfile.write(data)
    return answer


def redirect(location: str, status: int = 302):
    def answer(h):
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return answer


@pytest.fixture
def site():
    """``site(host)``: a new Site on that loopback address, closed at teardown."""
    made: list[Site] = []

    def make(host: str = "127.0.0.2", tls: ssl.SSLContext | None = None) -> Site:
        made.append(Site(host, tls))
        return made[-1]

    yield make
    for s in made:
        s.close()


def public(table: dict, **kwargs) -> Policy:
    """127.0.0.2 counts as public here; names resolve through ``table``."""
    kwargs.setdefault("timeout", 3.0)
    return Policy(allowed=("127.0.0.2/32",), resolve=Resolver(table), **kwargs)


REFUSED = [
    ("127.0.0.1", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.0.0.1", "a private address"),
    ("192.168.1.1", "a private address"),
    ("169.254.169.254", "a link-local address"),
    ("fe80::1%lo", "a link-local address"),
    ("224.0.0.1", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("::ffff:127.0.0.1", "a loopback address"),
    ("::ffff:10.1.2.3", "a private address"),
    ("64:ff9b::a9fe:a9fe", "a link-local address"),  # NAT64 of 169.254.169.254
    ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("fc00::1", "a private address"),
    ("::7f00:1", "a reserved address"),
    ("100.64.0.1", "not a globally routable address"),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED, ids=[a for a, _ in REFUSED])
def test_a_host_resolving_to_a_non_public_address_is_refused(address, reason, tmp_path,
                                                              dialled):
    policy = Policy(resolve=Resolver({"images.test": address}))
    shown = address.split("%")[0]
    with pytest.raises(URLRefused) as caught:
        check("http://images.test/cat.png", policy)
    assert (f"image_url: host 'images.test' resolves to {shown}, {reason}; "
            in str(caught.value))
    assert "--allow-private-urls" in str(caught.value)
    with pytest.raises(URLRefused, match=reason):
        fetch("http://images.test/cat.png", tmp_path / "0.png", max_bytes=10**6, policy=policy)
    with pytest.raises(URLRefused, match="webhook_url: host 'images.test'"):
        post("http://images.test/hook", b"{}", {}, policy=policy)
    assert dialled == []
    assert list(tmp_path.iterdir()) == []


def test_one_refused_address_among_public_ones_refuses_the_host():
    policy = Policy(resolve=Resolver({"images.test": ["8.8.8.8", "2606:4700::1111",
                                                      "10.0.0.1"]}))
    with pytest.raises(URLRefused, match="resolves to 10.0.0.1, a private address"):
        check("https://images.test/cat.png", policy)


def test_public_addresses_pass_the_check(dialled):
    # The control for the refusals above: check() resolves but connects nowhere.
    for address in ("8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"):
        check("https://images.test/cat.png", Policy(resolve=Resolver({"images.test": address})))
    assert dialled == []


def test_a_private_address_is_fetched_only_with_allow_private(site, tmp_path):
    local = site("127.0.0.1")
    local.routes["/cat.png"] = serve_bytes(PICTURE, Content_Type="image/png")
    url = f"http://127.0.0.1:{local.port}/cat.png"
    with pytest.raises(URLRefused, match="host '127.0.0.1' is a loopback address"):
        fetch(url, tmp_path / "0.png", max_bytes=10**6, policy=Policy())
    assert local.requests == []
    name = fetch(url, tmp_path / "0.png", max_bytes=10**6, policy=Policy(allow_private=True))
    assert name == "cat.png"
    assert (tmp_path / "0.png").read_bytes() == PICTURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png"]


def test_ipv6_loopback_is_fetched_only_with_allow_private(site, tmp_path):
    try:
        local = site("::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    local.routes["/cat.png"] = serve_bytes(PICTURE)
    url = f"http://[::1]:{local.port}/cat.png"
    with pytest.raises(URLRefused, match="host '::1' is a loopback address"):
        fetch(url, tmp_path / "0.png", max_bytes=10**6, policy=Policy())
    assert fetch(url, tmp_path / "0.png", max_bytes=10**6,
                 policy=Policy(allow_private=True)) == "cat.png"
    assert (tmp_path / "0.png").read_bytes() == PICTURE
    (_, _, headers, _), = local.requests
    assert headers["Host"] == f"[::1]:{local.port}"


@pytest.mark.parametrize("url", [
    "ftp://images.test/cat.png", "file:///etc/passwd", "javascript:alert(1)",
    "images.test/cat.png", "http:///cat.png", "http://user:secret@images.test/cat.png",
    "http://user:secret@images.test:99999/cat.png", "http://images.test:0/", "http://images.test/a b.png",
    "http://images.test/\r\nX-Evil: 1", "http://" + "x" * 9000 + ".test/",
])
def test_urls_that_are_not_http_to_a_host_are_refused(url, tmp_path):
    resolver = Resolver({"images.test": "8.8.8.8"})
    with pytest.raises(URLRefused) as caught:
        fetch(url, tmp_path / "0.png", max_bytes=10**6, policy=Policy(resolve=resolver))
    assert str(caught.value).startswith("image_url: ")
    assert "secret" not in str(caught.value)
    assert resolver.calls == []


def test_a_redirect_to_a_refused_address_is_refused(site, tmp_path, dialled):
    inside, outside = site("127.0.0.1"), site("127.0.0.2")
    inside.routes["/secret"] = serve_bytes(b"the metadata service's keys")
    outside.routes["/literal"] = redirect(f"http://127.0.0.1:{inside.port}/secret")
    outside.routes["/named"] = redirect(f"http://inside.test:{inside.port}/secret", 307)
    outside.routes["/file"] = redirect("file:///etc/passwd", 301)
    policy = public({"images.test": "127.0.0.2", "inside.test": "127.0.0.1"})
    with pytest.raises(URLRefused, match="host '127.0.0.1' is a loopback address"):
        fetch(f"http://images.test:{outside.port}/literal", tmp_path / "0.png",
              max_bytes=10**6, policy=policy)
    with pytest.raises(URLRefused, match="host 'inside.test' resolves to 127.0.0.1"):
        fetch(f"http://images.test:{outside.port}/named", tmp_path / "0.png",
              max_bytes=10**6, policy=policy)
    with pytest.raises(URLRefused, match="only http and https URLs can be fetched, not file"):
        fetch(f"http://images.test:{outside.port}/file", tmp_path / "0.png",
              max_bytes=10**6, policy=policy)
    assert outside.paths() == ["/literal", "/named", "/file"]
    assert inside.requests == []
    assert "127.0.0.1" not in dialled
    assert list(tmp_path.iterdir()) == []


def test_redirects_are_followed_up_to_the_limit(site, tmp_path):
    web = site("127.0.0.2")
    web.routes["/r/0"] = serve_bytes(PICTURE)
    for n, status in zip(range(1, 8), (301, 302, 303, 307, 308, 302, 302), strict=True):
        web.routes[f"/r/{n}"] = redirect(f"/r/{n - 1}" if n % 2 else
                                         f"http://cdn.test:{web.port}/r/{n - 1}", status)
    policy = public({"images.test": "127.0.0.2", "cdn.test": "127.0.0.2"})
    assert fetch(f"http://images.test:{web.port}/r/5", tmp_path / "a.png", max_bytes=10**6,
                 policy=policy) == "0"
    assert (tmp_path / "a.png").read_bytes() == PICTURE
    hosts = [headers["Host"] for _, _, headers, _ in web.requests]
    assert hosts[:2] == [f"images.test:{web.port}", f"images.test:{web.port}"]
    assert hosts[2] == f"cdn.test:{web.port}"  # /r/4 sent it to the other name
    with pytest.raises(FetchFailed, match="more than 5 redirects"):
        fetch(f"http://images.test:{web.port}/r/6", tmp_path / "b.png", max_bytes=10**6,
              policy=policy)
    with pytest.raises(FetchFailed, match="more than 2 redirects"):
        fetch(f"http://images.test:{web.port}/r/3", tmp_path / "b.png", max_bytes=10**6,
              policy=public({"images.test": "127.0.0.2", "cdn.test": "127.0.0.2"},
                            max_redirects=2))
    assert not (tmp_path / "b.png").exists()


def test_the_checked_address_is_the_one_connected_to(site, tmp_path, dialled):
    # A rebinding DNS: a public answer for the check, then loopback for whoever
    # asks again. The fetch asks once and connects to what it checked.
    web = site("127.0.0.2")
    web.routes["/cat.png"] = serve_bytes(PICTURE)
    url = f"http://rebind.test:{web.port}/cat.png"
    rebind = Resolver({"rebind.test": "127.0.0.2"}, then={"rebind.test": "127.0.0.1"})
    policy = Policy(allowed=("127.0.0.2/32",), resolve=rebind, timeout=3.0)
    fetch(url, tmp_path / "0.png", max_bytes=10**6, policy=policy)
    assert (tmp_path / "0.png").read_bytes() == PICTURE
    assert rebind.calls == ["rebind.test"]
    # Checked when the request came, fetched later: the second answer is checked too.
    rebind = Resolver({"rebind.test": "127.0.0.2"}, then={"rebind.test": "127.0.0.1"})
    policy = Policy(allowed=("127.0.0.2/32",), resolve=rebind, timeout=3.0)
    check(url, policy)
    with pytest.raises(URLRefused, match="resolves to 127.0.0.1, a loopback address"):
        fetch(url, tmp_path / "1.png", max_bytes=10**6, policy=policy)
    assert "127.0.0.1" not in dialled
    assert dialled == ["127.0.0.2"]


def test_the_address_reached_is_checked_again(site, tmp_path, monkeypatch):
    # The socket says it reached another address than the one dialled (as a
    # transparent proxy or a NAT rule could make it): nothing is sent there.
    web = site("127.0.0.2")
    web.routes["/cat.png"] = serve_bytes(PICTURE)
    monkeypatch.setattr(socket.socket, "getpeername", lambda sock: ("127.0.0.1", web.port))
    with pytest.raises(URLRefused, match="the connection reached 127.0.0.1, not 127.0.0.2"):
        fetch(f"http://images.test:{web.port}/cat.png", tmp_path / "0.png", max_bytes=10**6,
              policy=public({"images.test": "127.0.0.2"}))
    assert web.requests == []
    assert list(tmp_path.iterdir()) == []


def test_the_request_says_who_asks_and_for_which_host(site, tmp_path):
    web = site("127.0.0.2")
    web.routes["/cat.png?size=large"] = serve_bytes(PICTURE)
    fetch(f"http://images.test:{web.port}/cat.png?size=large#top", tmp_path / "0.png",
          max_bytes=10**6, policy=public({"images.test": "127.0.0.2"}))
    (method, path, headers, _), = web.requests
    assert (method, path) == ("GET", "/cat.png?size=large")
    assert headers["Host"] == f"images.test:{web.port}"
    assert headers["User-Agent"] == f"bgrm/{__version__}"
    assert headers["Accept"] == "*/*"


def test_a_body_announced_over_the_limit_is_refused_before_it_is_read(site, tmp_path):
    web = site("127.0.0.2")

    def huge(h):
        h.send_response(200)
        h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.flush()
        web.stop.wait(10)  # a body that never comes: reading it would hang

    web.routes["/huge.png"] = huge
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="is 1000000000 bytes, more than the limit of 5000"):
        fetch(f"http://images.test:{web.port}/huge.png", tmp_path / "0.png", max_bytes=5000,
              policy=public({"images.test": "127.0.0.2"}))
    assert time.monotonic() - started < 2.5  # not the 3 s read timeout
    assert list(tmp_path.iterdir()) == []


def test_a_streamed_body_stops_at_the_limit_and_leaves_nothing(site, tmp_path):
    web = site("127.0.0.2")
    sent = []

    def endless(h):  # no Content-Length: the body runs until the connection closes
        h.send_response(200)
        h.end_headers()
        try:
            for _ in range(10_000):  # 40 MB at most, if nobody stopped reading
                if web.stop.is_set():
                    break
                h.wfile.write(b"x" * 4096)
                sent.append(4096)
        except OSError:
            pass

    web.routes["/endless.png"] = endless
    with pytest.raises(FetchFailed, match="more than the limit of 50000 bytes"):
        fetch(f"http://images.test:{web.port}/endless.png", tmp_path / "0.png",
              max_bytes=50_000, policy=public({"images.test": "127.0.0.2"}))
    assert list(tmp_path.iterdir()) == []
    assert 50_000 < sum(sent) < 10_000 * 4096


def test_a_body_cut_short_fails(site, tmp_path):
    web = site("127.0.0.2")

    def short(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.send_header("Connection", "close")
        h.end_headers()
        h.wfile.write(b"y" * 10)

    web.routes["/short.png"] = short
    with pytest.raises(FetchFailed, match="closed after 10 of 1000 bytes"):
        fetch(f"http://images.test:{web.port}/short.png", tmp_path / "0.png", max_bytes=10**6,
              policy=public({"images.test": "127.0.0.2"}))
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_does_not_answer_times_out(site, tmp_path):
    web = site("127.0.0.2")
    web.routes["/slow.png"] = lambda h: web.stop.wait(10)
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="host 'images.test': no answer within 0.5 s"):
        fetch(f"http://images.test:{web.port}/slow.png", tmp_path / "0.png", max_bytes=10**6,
              policy=public({"images.test": "127.0.0.2"}, timeout=0.5))
    assert 0.4 < time.monotonic() - started < 3
    assert list(tmp_path.iterdir()) == []


def test_a_trickling_server_is_cut_at_the_deadline(site, tmp_path):
    web = site("127.0.0.2")

    def trickle(h):  # a byte every 50 ms: well within each read's timeout
        h.send_response(200)
        h.send_header("Content-Length", "200")
        h.end_headers()
        try:
            for _ in range(200):
                h.wfile.write(b"z")
                h.wfile.flush()
                if web.stop.wait(0.05):
                    break
        except OSError:
            pass

    web.routes["/trickle.png"] = trickle
    started = time.monotonic()
    with pytest.raises(FetchFailed, match="took longer than 0.6 s in all"):
        fetch(f"http://images.test:{web.port}/trickle.png", tmp_path / "0.png",
              max_bytes=10**6, policy=public({"images.test": "127.0.0.2"}, deadline=0.6))
    assert time.monotonic() - started < 3  # not the 10 s the whole body takes
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 500, 304])
def test_an_error_status_fails_with_the_status(site, tmp_path, status):
    web = site("127.0.0.2")
    web.routes["/gone.png"] = lambda h: h.send_error(status)
    with pytest.raises(FetchFailed, match=f"host 'images.test' answered HTTP {status}"):
        fetch(f"http://images.test:{web.port}/gone.png", tmp_path / "0.png", max_bytes=10**6,
              policy=public({"images.test": "127.0.0.2"}))
    assert list(tmp_path.iterdir()) == []


def test_a_closed_port_fails_as_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchFailed, match="host '127.0.0.1': connection refused"):
        fetch(f"http://127.0.0.1:{port}/cat.png", tmp_path / "0.png", max_bytes=10**6,
              policy=Policy(allow_private=True))
    with pytest.raises(FetchFailed, match="webhook_url: host '127.0.0.1': connection refused"):
        post(f"http://127.0.0.1:{port}/hook", b"{}", {}, policy=Policy(allow_private=True))


def test_a_host_that_does_not_resolve():
    policy = Policy(resolve=Resolver({}))
    with pytest.raises(URLRefused, match="host 'nowhere.test' does not resolve"):
        check("http://nowhere.test/cat.png", policy)


def test_the_name_comes_from_content_disposition_then_the_path(site, tmp_path):
    web = site("127.0.0.2")
    web.routes["/dl?id=7"] = serve_bytes(
        PICTURE, Content_Disposition='attachment; filename="../../etc/My Photo.png"')
    web.routes["/photos/cat%20pic.webp"] = serve_bytes(PICTURE, Content_Type="image/webp")
    web.routes["/download"] = serve_bytes(PICTURE, Content_Type="image/jpeg; charset=binary")
    web.routes["/"] = serve_bytes(PICTURE, Content_Type="image/png")
    policy = public({"images.test": "127.0.0.2"})
    names = [fetch(f"http://images.test:{web.port}{path}", tmp_path / f"{i}.bin",
                   max_bytes=10**6, policy=policy)
             for i, path in enumerate(["/dl?id=7", "/photos/cat%20pic.webp", "/download", "/"])]
    assert names == ["My Photo.png", "cat pic.webp", "download.jpg", "image.png"]
    assert all((tmp_path / f"{i}.bin").read_bytes() == PICTURE for i in range(4))


def test_result_names_are_safe():
    assert result_name("attachment; filename*=UTF-8''caf%C3%A9.jpg", "http://h/x", None) \
        == "café.jpg"
    assert result_name('inline; filename="a\x07b\\c/d.png"', "http://h/x", None) == "d.png"
    assert result_name(None, "http://h/%2E%2E%2Fetc%2Fpasswd", "image/png") == "passwd.png"
    assert result_name(None, "http://h/", None) == "image"
    assert result_name(None, "http://h/dir/", "video/mp4") == "dir.mp4"
    long = result_name(None, "http://h/" + "a" * 300 + ".png", None)
    assert len(long) == 120 and long.endswith(".png")
    long = result_name(f'attachment; filename="{"b" * 300}"', "http://h/x", "image/webp")
    assert len(long) <= 120 and long.endswith(".webp")


def test_post_sends_the_body_and_returns_the_status(site):
    web = site("127.0.0.2")
    web.routes["/hook"] = serve_bytes(b"thanks")
    web.routes["/broken"] = lambda h: h.send_error(500)
    web.routes["/moved"] = redirect("/hook")
    policy = public({"hooks.test": "127.0.0.2"})
    body = b'{"uuid": "u", "status": "done"}'
    headers = {"Content-Type": "application/json", "X-Bgrm-Signature": "sig"}
    assert post(f"http://hooks.test:{web.port}/hook", body, headers, policy=policy) == 200
    assert post(f"http://hooks.test:{web.port}/broken", body, headers, policy=policy) == 500
    assert post(f"http://hooks.test:{web.port}/moved", body, headers, policy=policy) == 302
    assert web.paths() == ["/hook", "/broken", "/moved"]  # the redirect was not followed
    method, _, got, sent = web.requests[0]
    assert (method, sent) == ("POST", body)
    assert got["Content-Type"] == "application/json"
    assert got["X-Bgrm-Signature"] == "sig"
    assert got["User-Agent"] == f"bgrm/{__version__}"
    assert got["Host"] == f"hooks.test:{web.port}"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for images.test: (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=images.test", "-addext", "subjectAltName=DNS:images.test",
                    "-keyout", folder / "key.pem", "-out", folder / "cert.pem"],
                   check=True, capture_output=True, timeout=30)
    return folder / "cert.pem", folder / "key.pem"


def test_https_checks_the_certificate_against_the_url_host(site, tmp_path, certificate):
    cert, key = certificate
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    web = site("127.0.0.2", tls=server)
    web.routes["/cat.png"] = serve_bytes(PICTURE)
    trusting = ssl.create_default_context(cafile=str(cert))
    table = {"images.test": "127.0.0.2", "other.test": "127.0.0.2"}
    assert fetch(f"https://images.test:{web.port}/cat.png", tmp_path / "0.png",
                 max_bytes=10**6, policy=public(table, tls=trusting)) == "cat.png"
    assert (tmp_path / "0.png").read_bytes() == PICTURE
    # The same server under another name: its certificate does not name that host.
    with pytest.raises(FetchFailed, match="host 'other.test': its certificate is not valid"):
        fetch(f"https://other.test:{web.port}/cat.png", tmp_path / "1.png", max_bytes=10**6,
              policy=public(table, tls=trusting))
    # ssl's default context does not trust a self-signed certificate.
    with pytest.raises(FetchFailed, match="host 'images.test': its certificate is not valid"):
        fetch(f"https://images.test:{web.port}/cat.png", tmp_path / "2.png", max_bytes=10**6,
              policy=public(table))
    assert web.paths() == ["/cat.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png"]
