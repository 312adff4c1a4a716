"""Which U^2-Net models exist, where they live, which file a run uses, and
how a model gets there.

Runs never open a network connection: models are bundled (u2netp), or installed
by the user into the models directory. ``install`` (``bgrm models install NAME
--from PATH|URL``) is the one place in bgrm that may download, and only when
given a URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bgrm.errors import BgrmError, ModelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    md5: str
    approx_mb: float
    input_size: tuple[int, int] = (320, 320)  # (width, height)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bundled: bool = False
    url: str | None = None  # only `bgrm models install NAME --from URL` ever uses it


_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("u2net", "u2net.onnx", "60024c5c889badc19c04ad937298a77b", 176.0,
                  url=_RELEASES + "u2net.onnx"),
        ModelSpec("u2net_human_seg", "u2net_human_seg.onnx",
                  "c09ddc2e0104f800e3e1bb4652583d1f", 176.0,
                  url=_RELEASES + "u2net_human_seg.onnx"),
        ModelSpec("u2netp", "u2netp.onnx", "8e83ca70e441ab06c318d82300c84806", 4.6,
                  bundled=True, url=_RELEASES + "u2netp.onnx"),
    )
}
DEFAULT_MODEL = "u2net"
FALLBACK_MODEL = "u2netp"


def models_dir() -> Path:
    """$BGRM_MODELS, else rembg's $U2NET_HOME, else ~/.u2net."""
    for var in ("BGRM_MODELS", "U2NET_HOME"):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    return Path.home() / ".u2net"


def bundled_path(spec: ModelSpec) -> Path:
    return ASSETS / spec.filename


def installed_path(spec: ModelSpec) -> Path:
    return models_dir() / spec.filename


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedModel:
    """A model file chosen for a run: the spec it follows and where it is."""

    spec: ModelSpec
    path: Path
    custom: bool = False

    @property
    def label(self) -> str:
        return str(self.path) if self.custom else self.spec.name


def _install_hint(spec: ModelSpec) -> str:
    return (f"model {spec.name} is not installed (looked for {installed_path(spec)}); "
            f"install it with: bgrm models install {spec.name} --from /path/to/{spec.filename}"
            f" (or --from {spec.url or 'URL'}), or choose --model u2netp, which is bundled")


# -- verification ---------------------------------------------------------------------
#
# A full md5 of a 176 MB model costs ~0.27 s (page cache warm, 2-core machine), which
# a shell loop of one-file runs would pay on every run. So a successful check is
# remembered in the models directory, keyed by path, size, mtime and inode: any
# rewrite, truncation or replacement of the file misses the stamp and is hashed
# again. `bgrm models verify` always hashes in full.

STAMP_NAME = ".bgrm-verified.json"


def _stamp_file() -> Path:
    return models_dir() / STAMP_NAME


def _file_key(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def _read_stamps() -> dict:
    try:
        data = json.loads(_stamp_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, st: os.stat_result, md5: str) -> None:
    """Record a verified file; never creates the models directory, never fails a run."""
    folder = models_dir()
    if not folder.is_dir():
        return
    stamps = _read_stamps()
    stamps[str(path.resolve())] = {**_file_key(st), "md5": md5}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=STAMP_NAME + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(stamps, f, indent=1)
        os.replace(tmp, _stamp_file())  # concurrent runs each write a whole file
    except OSError:  # a read-only models directory: the next run hashes again
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@dataclass(frozen=True)
class Check:
    """The outcome of checking one model file against its official md5."""

    ok: bool
    expected: str
    actual: str | None  # None when a remembered check was trusted
    size: int


def check_file(path: Path, expected: str, full: bool = False) -> Check:
    """Compare ``path``'s md5 with ``expected``; ``full`` ignores remembered checks."""
    st = path.stat()
    if not full:
        stamp = _read_stamps().get(str(path.resolve()))
        if isinstance(stamp, dict) and stamp.get("md5") == expected and \
                all(stamp.get(k) == v for k, v in _file_key(st).items()):
            return Check(True, expected, None, st.st_size)
    actual = md5sum(path)
    ok = actual == expected
    if ok and path.stat().st_mtime_ns == st.st_mtime_ns:
        _remember(path, st, actual)
    return Check(ok, expected, actual, st.st_size)


@dataclass(frozen=True)
class ModelStatus:
    """What ``bgrm models list`` shows for one registry model."""

    spec: ModelSpec
    status: str  # bundled | installed | missing | corrupt
    path: Path  # where it is, or where it would be installed
    size: int | None
    actual_md5: str | None = None

    def as_dict(self) -> dict:
        return {"name": self.spec.name, "status": self.status, "path": str(self.path),
                "size": self.size, "md5": self.spec.md5, "actual_md5": self.actual_md5,
                "bundled": self.spec.bundled}


def status(spec: ModelSpec, full: bool = False) -> ModelStatus:
    """The file a run would use for ``spec`` and whether it matches its checksum.

    An installed copy wins over the bundled one, as in ``resolve``.
    """
    for path, good in ((installed_path(spec), "installed"),
                       (bundled_path(spec) if spec.bundled else None, "bundled")):
        if path is not None and path.is_file():
            check = check_file(path, spec.md5, full=full)
            return ModelStatus(spec, good if check.ok else "corrupt", path, check.size,
                               check.actual)
    return ModelStatus(spec, "missing", installed_path(spec), None)


def _checked(spec: ModelSpec, path: Path) -> ResolvedModel:
    """The model at ``path`` if its md5 is the official one; a corrupt file is an error."""
    check = check_file(path, spec.md5)
    if not check.ok:
        if path == bundled_path(spec):
            raise ModelError(f"the bundled {spec.name} ({path}) is corrupt: md5 "
                             f"{check.actual}, expected {check.expected}; reinstall bgrm")
        raise ModelError(f"model {spec.name} at {path} is corrupt: md5 {check.actual}, "
                         f"expected {check.expected}; reinstall it with: bgrm models install "
                         f"{spec.name} --from PATH|URL, or delete it")
    return ResolvedModel(spec, path)


def resolve(model: str | None, notice=None) -> ResolvedModel:
    """Pick the file for ``--model`` (a registry name, a path, or None for the default).

    With no model named, u2net is used when installed, otherwise the bundled
    u2netp, and ``notice`` (default: stderr) is told so in one line.
    """
    if model is None:
        default = REGISTRY[DEFAULT_MODEL]
        if installed_path(default).is_file():
            return _checked(default, installed_path(default))
        say = notice or (lambda msg: print(msg, file=sys.stderr))
        say(f"bgrm: {DEFAULT_MODEL} is not installed in {models_dir()}; "
            f"using the bundled {FALLBACK_MODEL} (faster, less precise)")
        model = FALLBACK_MODEL
    spec = REGISTRY.get(model)
    if spec is None:
        path = Path(model).expanduser()
        if path.suffix.lower() != ".onnx" and not path.is_file():
            known = ", ".join(REGISTRY)
            raise ModelError(f"unknown model {model!r}: use one of {known}, "
                             "or a path to an .onnx file")
        if not path.is_file():
            raise ModelError(f"model file {model}: no such file")
        return ResolvedModel(ModelSpec(path.stem, path.name, "", 0.0), path, custom=True)
    if installed_path(spec).is_file():
        return _checked(spec, installed_path(spec))
    if spec.bundled:
        return _checked(spec, bundled_path(spec))
    raise ModelError(_install_hint(spec))


# -- install ------------------------------------------------------------------------

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DownloadError(BgrmError):
    """A download that failed on the way (network, HTTP status, cut short)."""


def is_url(source: str) -> bool:
    return "://" in source


@dataclass(frozen=True)
class Installed:
    path: Path
    md5: str
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
        # The only network access in bgrm, asked for by the user by giving a URL.
        import urllib.error
        import urllib.request

        from bgrm import __version__

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
    if not path.is_file():
        raise ModelError(f"--from {source}: no such file")
    try:
        return open(path, "rb"), path.stat().st_size, str(path)
    except OSError as exc:
        raise ModelError(f"--from {source}: cannot read: {exc.strerror or exc}") from None


def install(name: str, source: str, *, force: bool = False,
            progress: bool = False) -> Installed:
    """Copy or download ``source`` into the models directory as model ``name``.

    The bytes go to a hidden temporary file beside the destination while their
    md5 is computed; only a file with the official md5 is renamed into place,
    so a run never sees a partial or wrong model. A mismatch is refused and
    nothing is left behind.
    """
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(REGISTRY)}")
    dest = installed_path(spec)
    if not force and dest.is_file() and check_file(dest, spec.md5, full=True).ok:
        return Installed(dest, spec.md5, dest.stat().st_size, already=True)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{dest.parent}: cannot create the models directory: "
                         f"{exc.strerror or exc}") from None
    stream, total, label = _open_source(source)
    tmp: Path | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{spec.filename}.",
                                        suffix=".part")
        tmp = Path(tmp_name)
        digest = hashlib.md5()
        received = 0
        from http.client import HTTPException

        from tqdm import tqdm

        with os.fdopen(fd, "wb") as out, tqdm(
                total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
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
        if total is not None and received != total:
            raise DownloadError(f"{label}: got {received} of {total} bytes; try again")
        actual = digest.hexdigest()
        if actual != spec.md5:
            raise ModelError(f"{label} is not the official {spec.name}: md5 {actual}, "
                             f"expected {spec.md5}; nothing was installed")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; models are readable like any data
        os.replace(tmp, dest)
        tmp = None
    except OSError as exc:
        raise ModelError(f"{dest}: cannot write: {exc.strerror or exc}") from None
    finally:
        stream.close()
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    st = dest.stat()
    _remember(dest, st, actual)
    return Installed(dest, actual, st.st_size)


# -- ViTMatte checkpoints (--vitmatte) ----------------------------------------------
#
# Edge refiners, not segmentation models, so not REGISTRY rows that --model
# could name. Names, files and sha256 sums are rembg's (rembg/matting.py,
# Apache-2.0 code; checkpoints converted from hustvl/ViTMatte, MIT). The file
# is looked up in the models directory under rembg's file name.
VITMATTE: dict[str, tuple[str, str]] = {  # variant: (file, sha256)
    "small-distinctions-646": ("vitmatte-small-distinctions-646.onnx",
                               "d232841ac9d9657df3e62f6c92ed425ee25df18d337245cd8b903fc1ba183631"),
    "small-composition-1k": ("vitmatte-small-composition-1k.onnx",
                             "659b9bb2870f80cffbe20dae4c7f18417fbdf68c0195861d24e9082c28373a24"),
    "base-distinctions-646": ("vitmatte-base-distinctions-646.onnx",
                              "d30190833269c1bec3e37319fe67af151028d3be32f6f60f6663a51b209cc8c1"),
    "base-composition-1k": ("vitmatte-base-composition-1k.onnx",
                            "87bb10979f816061497ba6867b338c65a05cebd7d1507f6dde92a86382dec1f2"),
}
_VITMATTE_CHECKED: dict[tuple, bool] = {}


def vitmatte_path(variant: str | None) -> Path:
    """The installed, checksum-verified ViTMatte file for ``variant``."""
    from bgrm.options import VITMATTE_DEFAULT

    variant = variant or VITMATTE_DEFAULT
    filename, sha256 = VITMATTE[variant]
    path = models_dir() / filename
    if not path.is_file():
        raise ModelError(f"ViTMatte {variant} is not installed (looked for {path}); put "
                         f"{_RELEASES}{filename} there")
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, sha256)
    if key not in _VITMATTE_CHECKED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _VITMATTE_CHECKED[key] = digest.hexdigest() == sha256
    if not _VITMATTE_CHECKED[key]:
        raise ModelError(f"ViTMatte {variant} at {path} is corrupt: its sha256 is not "
                         f"{sha256}; replace it with {_RELEASES}{filename}")
    return path
