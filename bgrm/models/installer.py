"""``bgrm models install NAME [--from PATH|URL]``: the one place in bgrm that may
download, and only when asked to.

Without ``--from`` the file comes from the row's official URL (rembg's
release); with it, from the user's file or URL. Either way the bytes go to a
hidden temporary file beside the destination while their checksum is
computed, and only a file with the official checksum is renamed into place.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bgrm.errors import DownloadError, ModelError, OutputError
from bgrm.models.registry import REGISTRY
from bgrm.models.store import check_file, installed_path, mismatch, remember

_CHUNK = 1 << 20
_TIMEOUT_S = 60


def is_url(source: str) -> bool:
    return "://" in source


@dataclass(frozen=True)
class Installed:
    path: Path
    checksum: str
    size: int
    already: bool = False  # it was there and verified; nothing was copied


def _open_source(source: str):
    """``(stream, total_bytes_or_None, label)`` for a path or an http(s) URL."""
    if is_url(source):
        from urllib.parse import urlsplit

        scheme = urlsplit(source).scheme.lower()
        if scheme == "file":
            from urllib.request import url2pathname

            return _open_source(url2pathname(urlsplit(source).path))
        if scheme not in ("http", "https"):
            raise ModelError(f"--from {source}: only http://, https:// or a file path")
        # The only network access in bgrm, asked for by the user.
        import urllib.error
        import urllib.request

        from bgrm.version import __version__

        request = urllib.request.Request(source, headers={"User-Agent": f"bgrm/{__version__}"})
        try:
            response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)  # noqa: S310
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{source}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(f"{source}: cannot download: {reason}") from None
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        return response, total, source
    path = Path(source).expanduser()
    if path.is_dir():
        raise ModelError(f"--from {source}: is a folder; give the model's .onnx file")
    if not path.is_file():
        raise ModelError(f"--from {source}: no such file")
    try:
        return open(path, "rb"), path.stat().st_size, str(path)
    except OSError as exc:
        raise ModelError(f"--from {source}: cannot read: {exc.strerror or exc}") from None


def install(name: str, source: str | None = None, *, force: bool = False,
            progress: bool = False) -> Installed:
    """Copy or download model ``name`` into the models directory.

    ``source`` is a file or URL the user gave, or None for the official URL.
    A checksum mismatch is refused and nothing is left behind; a file that
    cannot be written (full disk, read-only folder) is an OutputError.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(REGISTRY)}")
    if source is None:
        if spec.url is None:
            raise ModelError(f"{name} has no official URL; use --from PATH|URL")
        source = spec.url
    dest = installed_path(spec)
    if not force and dest.is_file() and check_file(dest, spec.checksum, full=True).ok:
        return Installed(dest, spec.checksum, dest.stat().st_size, already=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{dest.parent}: cannot create the models directory: "
                          f"{exc.strerror or exc}") from None
    stream, total, label = _open_source(source)
    actual = _write_checked(stream, total, label, spec, dest, progress)
    st = dest.stat()
    remember(dest, st, actual)
    return Installed(dest, actual, st.st_size)


def _write_checked(stream, total: int | None, label: str, spec, dest: Path,
                   progress: bool) -> str:
    """Copy ``stream`` to a hidden file beside ``dest`` and rename it there only
    with the official size and checksum; return the checksum. ``stream`` is
    closed, and the hidden file gone, whatever happens."""
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{spec.filename}.",
                                        suffix=".part")
        tmp = Path(tmp_name)
        with os.fdopen(fd, "wb") as out:
            digest, received = _copy(stream, out, total, label, spec, progress)
        if total is not None and received != total:
            raise DownloadError(f"{label}: got {received} of {total} bytes; try again")
        actual = f"{spec.algorithm}:{digest.hexdigest()}"
        if actual != spec.checksum:
            raise ModelError(f"{label} is not the official {spec.name}: "
                             f"{mismatch(spec.checksum, actual)}; nothing was installed")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; models are readable like any data
        os.replace(tmp, dest)
        tmp = None
    except OSError as exc:
        # The disk, not the user's choice of model: exit 1 like any unwritable output.
        raise OutputError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    finally:
        stream.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return actual


def _copy(stream, out, total: int | None, label: str, spec, progress: bool):
    """``stream`` into ``out`` (synced to disk), with a bar on stderr when asked:
    ``(hash object, bytes received)``. A failed transfer is a DownloadError."""
    from http.client import HTTPException

    from tqdm import tqdm

    digest = hashlib.new(spec.algorithm)
    received = 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=spec.name,
              file=sys.stderr, disable=not progress, leave=False) as bar:
        while True:
            try:
                block = stream.read(_CHUNK)
            except (OSError, HTTPException) as exc:  # timeouts, resets, cut short
                raise DownloadError(f"{label}: transfer failed after {received} bytes: "
                                    f"{exc}") from None
            if not block:
                break
            digest.update(block)
            out.write(block)
            received += len(block)
            bar.update(len(block))
        out.flush()
        os.fsync(out.fileno())
    return digest, received
