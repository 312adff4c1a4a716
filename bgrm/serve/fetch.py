"""Fetching a client's URL (``image_url``) and posting to one (``webhook_url``)
without handing clients the server's own network.

A URL names a host; the host is resolved once, every address it stands for is
checked against the ``Policy`` (no loopback, private, link-local, multicast,
reserved or otherwise not globally routable address, IPv4-mapped and other
IPv6 forms of IPv4 included), and the connection goes to exactly one of those
checked addresses, never to a name resolved again: a DNS answer that changes
between the check and the connection (rebinding) reaches nothing it should
not. The peer the socket reached is checked once more, and every redirect is a
new URL checked the same way. Standard library only; no proxy from the
environment is used (it would connect to an address not checked here).
"""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import mimetypes
import os
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bgrm.outputs import describe_os_error, remove_tmp, tmp_name
from bgrm.serve.upload import extension, safe_name
from bgrm.version import __version__

USER_AGENT = f"bgrm/{__version__}"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
MAX_URL_CHARS = 8192
MAX_POST_ANSWER = 64 * 1024  # a webhook's answer is read (then dropped) up to this
ALLOW_HINT = ("this server fetches only from public addresses (its operator can allow "
              "others with --allow-private-urls)")
# Python's mimetypes does not know every image type on every system.
TYPE_EXTENSIONS = {
    "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
    "image/avif": ".avif", "image/heic": ".heic", "image/heif": ".heif", "image/bmp": ".bmp",
    "image/tiff": ".tif", "video/mp4": ".mp4", "video/quicktime": ".mov",
    "video/webm": ".webm", "video/x-matroska": ".mkv", "video/x-msvideo": ".avi",
}
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """A URL that was not fetched; the message is fit to show the client."""


class URLRefused(FetchError):
    """A URL the policy refuses: its scheme, its form, or an address its host
    (or a redirect's) resolves to. The message names the host and the reason."""


class FetchFailed(FetchError):
    """A URL that could not be fetched: an HTTP error status, a timeout, a
    refused connection, a body over the limit, too many redirects."""


@dataclass(frozen=True)
class Policy:
    """Where the server may connect, and for how long.

    ``allow_private``: every address is allowed (``--allow-private-urls``).
    ``timeout``: seconds for the connection and for each read. ``deadline``:
    seconds for the whole fetch, redirects included, so that a server sending a
    byte just within each read's timeout cannot hold it. ``resolve``: like
    ``socket.getaddrinfo``. ``allowed``: networks treated as public (tests).
    ``tls``: the context for https (tests); None is ssl's default context.
    """

    allow_private: bool = False
    timeout: float = 20.0
    max_redirects: int = 5
    resolve: Callable[..., list] = socket.getaddrinfo
    allowed: tuple[Network, ...] = ()
    deadline: float = 300.0
    tls: ssl.SSLContext | None = None

    def __post_init__(self):
        # Networks may be given as text ("127.0.0.2/32").
        object.__setattr__(self, "allowed", tuple(ipaddress.ip_network(n) for n in self.allowed))


@dataclass(frozen=True)
class _Target:
    url: str
    tls: bool
    host: str  # as the URL has it, lower case, IDNA-encoded, no brackets
    port: int
    path: str  # the request target: path and query, percent-encoded


def refusal(address: str, policy: Policy) -> str | None:
    """Why ``policy`` refuses a connection to ``address`` ('a loopback address'),
    or None when it allows it."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # fe80::1%eth0: the scope is no part
    if policy.allow_private or any(ip in net for net in policy.allowed):
        return None
    # An IPv6 address that stands for an IPv4 one is judged as that one.
    ip = _embedded(ip) or ip
    if any(ip in net for net in policy.allowed):
        return None
    for test, reason in (("is_unspecified", "an unspecified address"),
                         ("is_loopback", "a loopback address"),
                         ("is_link_local", "a link-local address"),
                         ("is_multicast", "a multicast address"),
                         ("is_private", "a private address"),
                         ("is_reserved", "a reserved address")):
        if getattr(ip, test):
            return reason
    return None if ip.is_global else "not a globally routable address"


def _embedded(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries: mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::a.b.c.d) or 6to4 (2002:aabb:ccdd::)."""
    if ip.version == 4:
        return None
    if ip.ipv4_mapped:
        return ip.ipv4_mapped
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def check(url: str, policy: Policy, *, field: str = "image_url") -> None:
    """The quick check when a request comes in: an http(s) URL whose host
    resolves, and only to addresses the policy allows. Raises URLRefused."""
    target = _parse(url, field)
    try:
        _addresses(target, policy, field)
    except FetchFailed as exc:
        raise URLRefused(str(exc)) from None


def fetch(url: str, dest: Path, *, max_bytes: int, policy: Policy,
          field: str = "image_url") -> str:
    """GET ``url`` into ``dest``; return a safe file name for what came.

    Redirects are followed up to ``policy.max_redirects``, each checked like
    the first URL. The body is written to a temporary name beside ``dest`` and
    renamed onto it once complete; on any failure nothing is left. A body over
    ``max_bytes`` fails as soon as it is known to be (its Content-Length, or the
    byte past the limit). Raises URLRefused or FetchFailed.
    """
    end = time.monotonic() + policy.deadline
    target = _parse(url, field)
    for _ in range(policy.max_redirects + 1):
        conn = _Pinned(target, policy, field, end)
        try:
            resp = _send(conn, "GET", None, {"Accept": "*/*"})
            if resp.status not in REDIRECTS:
                if resp.status >= 300:
                    raise FetchFailed(f"{field}: host {target.host!r} answered HTTP "
                                      f"{resp.status} {resp.reason}".rstrip())
                _save(conn, resp, dest, max_bytes)
                return result_name(resp.getheader("Content-Disposition"), target.url,
                                   resp.getheader("Content-Type"))
            target = _redirect(target, resp.getheader("Location"), field)
        finally:
            conn.shut()
    raise FetchFailed(f"{field}: more than {policy.max_redirects} redirects, "
                      f"the last to host {target.host!r}")


def post(url: str, body: bytes, headers: dict, *, policy: Policy,
         field: str = "webhook_url") -> int:
    """POST ``body`` to ``url``; return the HTTP status of the answer.

    Redirects are not followed: a 3xx is returned like any status that is not
    a success. Raises URLRefused for a refused address, FetchFailed when no
    answer came (no connection, a timeout).
    """
    end = time.monotonic() + policy.deadline
    target = _parse(url, field)
    conn = _Pinned(target, policy, field, end)
    try:
        resp = _send(conn, "POST", body, headers)
        # Read a little of the answer so the server is not cut off mid-reply.
        _guard(conn, lambda: resp.read(MAX_POST_ANSWER))
        return resp.status
    finally:
        conn.shut()


def result_name(disposition: str | None, url: str, content_type: str | None) -> str:
    """A file name for a fetched body: Content-Disposition's filename, else the
    URL path's last part, else 'image'; given an extension from Content-Type
    when it has none. Printable, no path separators, at most 120 characters."""
    message = http.client.HTTPMessage()
    if disposition:
        message["Content-Disposition"] = disposition
    raw = message.get_filename() or ""
    if not raw.strip(" ./\\"):
        path = urllib.parse.urlsplit(url).path
        raw = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
    name = safe_name(raw) if raw.strip(" ./\\") else "image"
    if not extension(name) and content_type:
        mime = content_type.split(";", 1)[0].strip().lower()
        suffix = TYPE_EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ""
        name = safe_name(name + suffix)
    return name


def _parse(url: str, field: str) -> _Target:
    """The URL's parts, or URLRefused saying what is wrong with it."""
    if not isinstance(url, str) or len(url) > MAX_URL_CHARS:
        raise URLRefused(f"{field}: not a URL of at most {MAX_URL_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise URLRefused(f"{field}: a URL cannot contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise URLRefused(f"{field}: not a valid URL (its host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLRefused(f"{field}: only http and https URLs can be fetched, "
                         f"not {scheme or 'a URL without a scheme'}")
    if not host:
        raise URLRefused(f"{field}: the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise URLRefused(f"{field}: host {host!r}: a URL cannot carry a user name or "
                         "password")
    if port == 0:
        raise URLRefused(f"{field}: host {host!r}: port 0 is not a port to connect to")
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return _Target(url, scheme == "https", host, port or (443 if scheme == "https" else 80),
                   path)


def _redirect(target: _Target, location: str | None, field: str) -> _Target:
    if not location:
        raise FetchFailed(f"{field}: host {target.host!r} redirected without a Location")
    return _parse(urllib.parse.urljoin(target.url, location.strip()), field)


def _addresses(target: _Target, policy: Policy, field: str) -> list[tuple]:
    """The host's addresses, resolved once, as (family, sockaddr); every one
    allowed by the policy, or URLRefused naming the first that is not."""
    try:
        infos = policy.resolve(target.host, target.port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        infos = []
    found = [(family, sockaddr) for family, _, _, _, sockaddr in infos
             if family in (socket.AF_INET, socket.AF_INET6)]
    if not found:
        raise FetchFailed(f"{field}: host {target.host!r} does not resolve")
    for _, sockaddr in found:
        _allow(target.host, sockaddr[0], policy, field)
    return found


def _allow(host: str, address: str, policy: Policy, field: str) -> None:
    reason = refusal(address, policy)
    if reason is None:
        return
    address = address.split("%", 1)[0]
    where = (f"host {host!r} is {reason}" if address == host
             else f"host {host!r} resolves to {address}, {reason}")
    raise URLRefused(f"{field}: {where}; {ALLOW_HINT}")


@functools.cache
def _default_tls() -> ssl.SSLContext:
    return ssl.create_default_context()


class _Pinned(http.client.HTTPConnection):
    """An HTTP(S) connection to one checked address of the URL's host.

    http.client sends Host: the URL's host; for https the certificate is
    checked against that name (and it is the name sent as SNI).
    """

    def __init__(self, target: _Target, policy: Policy, field: str, end: float):
        super().__init__(target.host, target.port, timeout=policy.timeout)
        self.default_port = 443 if target.tls else 80  # no ':443' in the Host header
        self.target, self.policy, self.field, self.end = target, policy, field, end
        self.wire: _Wire | None = None

    def connect(self) -> None:
        found = _addresses(self.target, self.policy, self.field)
        sock = self._open(found)
        try:
            self.wire = _Wire(sock, self.policy.timeout, self.end)
            if self.target.tls:
                tls = self.policy.tls or _default_tls()
                self.wire.arm()  # the handshake too ends by the deadline
                sock = tls.wrap_socket(sock, server_hostname=self.target.host)
                self.wire = _Wire(sock, self.policy.timeout, self.end)
        except BaseException:
            sock.close()
            raise
        self.sock = self.wire

    def shut(self) -> None:
        """Close the connection and its socket, whatever still reads from it."""
        self.close()
        if self.wire is not None:
            self.wire.sock.close()

    def _open(self, found: list[tuple]) -> socket.socket:
        """A socket connected to the first of ``found`` that answers."""
        error: OSError = TimeoutError()
        for family, sockaddr in found:
            left = self.end - time.monotonic()
            if left <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(min(self.policy.timeout, left))
                sock.connect(sockaddr)
                self._check_peer(sock.getpeername()[0], sockaddr[0])
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error

    def _check_peer(self, peer: str, dialled: str) -> None:
        """Checked again: what the socket reached, not only what was dialled."""
        if ipaddress.ip_address(peer.split("%", 1)[0]) != ipaddress.ip_address(
                dialled.split("%", 1)[0]):
            raise URLRefused(f"{self.field}: host {self.target.host!r}: the connection "
                             f"reached {peer}, not {dialled}")
        _allow(self.target.host, peer, self.policy, self.field)


class _Wire:
    """A connected socket as http.client uses it (``sendall``, ``makefile``,
    ``close``), each send and each read given the time left before the fetch's
    deadline, at most the policy's timeout: a server sending a byte just within
    each timeout cannot hold a fetch past its deadline."""

    def __init__(self, sock: socket.socket, timeout: float, end: float):
        self.sock, self.timeout, self.end = sock, timeout, end
        self.capped = False  # the last wait was cut short by the deadline
        # Like a socket's makefile: http.client closes the connection while the
        # answer is still being read from it; the socket stays until both close.
        self.readers, self.closed = 0, False

    def arm(self) -> None:
        left = self.end - time.monotonic()
        self.capped = left < self.timeout
        if left <= 0:
            raise TimeoutError("past the deadline")
        self.sock.settimeout(min(self.timeout, left))

    def sendall(self, data) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        self.readers += 1
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self.closed = True
        if not self.readers:
            self.sock.close()

    def release(self) -> None:
        self.readers -= 1
        if self.closed and not self.readers:
            self.sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, wire: _Wire):
        super().__init__()
        self.wire = wire

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.wire.arm()
        return self.wire.sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self.wire.release()
        super().close()


def _send(conn: _Pinned, method: str, body: bytes | None,
          headers: dict) -> http.client.HTTPResponse:
    """Send the request and read the answer's head."""
    sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}

    def exchange() -> http.client.HTTPResponse:
        conn.request(method, conn.target.path, body=body, headers=sent)
        return conn.getresponse()

    return _guard(conn, exchange)


def _guard(conn: _Pinned, step):
    """Run ``step`` on the connection; its network errors become FetchFailed."""
    host, field = conn.target.host, conn.field
    try:
        return step()
    except FetchError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        capped = conn.wire is not None and conn.wire.capped
        if isinstance(exc, TimeoutError) and (capped or time.monotonic() >= conn.end):
            why = f"took longer than {conn.policy.deadline:g} s in all"
        else:
            why = _describe(exc, conn.policy)
        raise FetchFailed(f"{field}: host {host!r}: {why}") from None


def _describe(exc: Exception, policy: Policy) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {policy.timeout:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate is not valid: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"the TLS connection failed: {exc.reason or 'handshake error'}"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the whole body came"
    if isinstance(exc, http.client.HTTPException | ConnectionError):
        return "the connection closed or the answer is not HTTP"
    return exc.strerror or type(exc).__name__


def _save(conn: _Pinned, resp: http.client.HTTPResponse, dest: Path, max_bytes: int) -> None:
    """The body into ``dest``, whole, or nothing there and FetchFailed."""
    host, field = conn.target.host, conn.field
    expected = resp.length  # Content-Length, None when chunked or unsaid
    if expected is not None and expected > max_bytes:
        raise FetchFailed(f"{field}: host {host!r}: the body is {expected} bytes, more "
                          f"than the limit of {max_bytes}")
    tmp = tmp_name(dest)
    try:
        with open(tmp, "wb") as out:
            size = 0
            while chunk := _guard(conn, lambda: resp.read1(CHUNK)):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchFailed(f"{field}: host {host!r}: the body is more than "
                                      f"the limit of {max_bytes} bytes")
                out.write(chunk)
        if expected is not None and size != expected:
            raise FetchFailed(f"{field}: host {host!r}: the connection closed after "
                              f"{size} of {expected} bytes")
        os.replace(tmp, dest)
    except OSError as exc:
        raise FetchFailed(f"{field}: the server could not store the body: "
                          f"{describe_os_error(exc)}") from None
    finally:
        remove_tmp(tmp)
