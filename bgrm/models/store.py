"""Where models live, which file a run uses, and whether it is the official one.

Runs never open a network connection: models are bundled (u2netp), or installed
by the user into the models directory (``bgrm.models.installer``, in
``bgrm.models.installer``, is the one place in bgrm that may download).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bgrm.errors import ModelError, ParameterError, a_or_an
from bgrm.models.families import DEFAULT_FAMILY, FAMILIES, Family
from bgrm.models.registry import (
    DEFAULT_MODEL,
    FALLBACK_MODEL,
    REGISTRY,
    SEGMENTATION_MODELS,
    ModelSpec,
)

ASSETS = Path(__file__).parent.parent / "assets"


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


def rembg_path(spec: ModelSpec) -> Path | None:
    """Where rembg 2.0.86 keeps this model (``<home>/models/<name>/<file>``), read
    as a second place to look; None when $BGRM_MODELS names bgrm's one folder.

    rembg's home is $U2NET_HOME when set, else $REMBG_HOME, else
    $XDG_DATA_HOME/rembg, else ~/.rembg (rembg/sessions/base.py).
    """
    if os.environ.get("BGRM_MODELS"):
        return None
    xdg = os.environ.get("XDG_DATA_HOME")
    home = os.environ.get("U2NET_HOME") or os.environ.get("REMBG_HOME") or \
        (os.path.join(xdg, "rembg") if xdg else "~/.rembg")
    folder = spec.name if spec.family is not None else "vitmatte"  # rembg/matting.py's
    return Path(home).expanduser() / "models" / folder / spec.filename


def _found(spec: ModelSpec) -> tuple[Path, str] | None:
    """The file a run uses for ``spec`` and where it came from: bgrm's models
    directory, then rembg's, then the bundled copy."""
    for path, where in ((installed_path(spec), "installed"), (rembg_path(spec), "installed"),
                        (bundled_path(spec) if spec.bundled else None, "bundled")):
        if path is not None and path.is_file():
            return path, where
    return None


def file_checksum(path: Path, algorithm: str, chunk: int = 1 << 20) -> str:
    """``"<algorithm>:<hex>"`` of the file, as the registry writes checksums."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


@dataclass(frozen=True)
class ResolvedModel:
    """A model file chosen for a run: the spec it follows and where it is."""

    spec: ModelSpec
    path: Path
    custom: bool = False

    @property
    def family(self) -> Family:
        return self.spec.family_row()

    @property
    def big(self) -> bool:
        """A 1024-input model: one inference at a time per process (see run.py)."""
        return self.family.size > FAMILIES[DEFAULT_FAMILY].size


def _install_hint(spec: ModelSpec) -> str:
    other = ", or choose --model u2netp, which is bundled" if spec.family else ""
    rembg = rembg_path(spec)
    looked = f"{installed_path(spec)}" + (f" and rembg's {rembg}" if rembg else "")
    return (f"model {spec.name} is not installed (looked for {looked}); "
            f"install it with: bgrm models install {spec.name} (downloads "
            f"~{spec.approx_mb:.0f} MB from {spec.url}), or --from /path/to/{spec.filename}"
            + other)


# -- verification ---------------------------------------------------------------------
#
# A full md5 of a 176 MB model costs ~0.27 s (page cache warm, 2-core machine), a
# sha256 of the 1 GB bria-rmbg several seconds, which a shell loop of one-file runs
# would pay on every run. So a successful check is
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


def remember(path: Path, st: os.stat_result, checksum: str) -> None:
    """Record a verified file; never creates the models directory, never fails a run."""
    folder = models_dir()
    if not folder.is_dir():
        return
    stamps = _read_stamps()
    stamps[str(path.resolve())] = {**_file_key(st), "checksum": checksum}
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
    """The outcome of checking one model file against its official checksum."""

    ok: bool
    expected: str
    actual: str | None  # None when a remembered check was trusted
    size: int


def check_file(path: Path, expected: str, full: bool = False) -> Check:
    """Compare ``path``'s checksum with ``expected`` ("md5:..." or "sha256:...");
    ``full`` ignores remembered checks."""
    st = path.stat()
    # In this process too, not only in the stamp file: a ViTMatte file is asked
    # for at every video frame, and a read-only models folder keeps no stamps.
    seen = (str(path.resolve()), expected, *_file_key(st).values())
    if not full:
        if seen in _CHECKED:
            return Check(True, expected, None, st.st_size)
        stamp = _read_stamps().get(seen[0])
        if isinstance(stamp, dict) and stamp.get("checksum") == expected and \
                all(stamp.get(k) == v for k, v in _file_key(st).items()):
            _CHECKED.add(seen)
            return Check(True, expected, None, st.st_size)
    actual = file_checksum(path, expected.split(":", 1)[0])
    ok = actual == expected
    if ok and path.stat().st_mtime_ns == st.st_mtime_ns:
        remember(path, st, actual)
        _CHECKED.add(seen)
    return Check(ok, expected, actual, st.st_size)


# Files whose checksum this process has found right: (path, checksum, its stat key).
_CHECKED: set[tuple] = set()


@dataclass(frozen=True)
class ModelStatus:
    """What ``bgrm models list`` shows for one registry model."""

    spec: ModelSpec
    status: str  # bundled | installed | missing | corrupt
    path: Path  # where it is, or where it would be installed
    size: int | None
    actual_checksum: str | None = None

    def as_dict(self) -> dict:
        spec = self.spec
        return {"name": spec.name, "kind": spec.kind, "family": spec.family,
                "status": self.status, "path": str(self.path), "size": self.size,
                "approx_mb": spec.approx_mb, "checksum": spec.checksum,
                "actual_checksum": self.actual_checksum, "bundled": spec.bundled,
                "url": spec.url, "licence": spec.licence, "source": spec.source}


def mismatch(expected: str, actual: str | None) -> str:
    """'md5 <actual>, expected <official>' for a failed check."""
    algorithm, official = expected.split(":", 1)
    return f"{algorithm} {(actual or '').split(':', 1)[-1]}, expected {official}"


def status(spec: ModelSpec, full: bool = False) -> ModelStatus:
    """The file a run would use for ``spec`` and whether it matches its checksum.

    An installed copy wins over the bundled one, as in ``resolve``.
    """
    found = _found(spec)
    if found is None:
        return ModelStatus(spec, "missing", installed_path(spec), None)
    path, where = found
    check = check_file(path, spec.checksum, full=full)
    return ModelStatus(spec, where if check.ok else "corrupt", path, check.size, check.actual)


def _verified(spec: ModelSpec) -> Path:
    """The file for ``spec`` if its checksum is the official one; missing or corrupt
    is an error that says how to install it."""
    found = _found(spec)
    if found is None:
        raise ModelError(_install_hint(spec))
    path = found[0]
    check = check_file(path, spec.checksum)
    if not check.ok:
        if path == bundled_path(spec):
            raise ModelError(f"the bundled {spec.name} ({path}) is corrupt: "
                             f"{mismatch(check.expected, check.actual)}; reinstall bgrm")
        raise ModelError(f"model {spec.name} at {path} is corrupt: {mismatch(check.expected, check.actual)}; "
                         f"reinstall it with: bgrm models install {spec.name} "
                         "[--from PATH|URL], or delete it")
    return path


def verified_path(name: str) -> Path:
    """The installed, checksum-verified file of registry model ``name``, of any kind
    (segmentation or ViTMatte); a ModelError (exit 2) saying how to install it
    when it is missing or corrupt. Never downloads."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise ModelError(f"unknown model {name!r}: use one of {', '.join(REGISTRY)}")
    return _verified(spec)


def resolve(model: str | None, family: str | None = None, notice=None) -> ResolvedModel:
    """Pick the file for ``--model`` (a registry name, a path, or None for the default).

    With no model named, u2net is used when installed, otherwise the bundled
    u2netp, and ``notice`` (default: the ``bgrm.models`` logger) is told so in one line. ``family``
    (``--model-family``) says how to run a path; a registry model has its own.
    """
    if family is not None and family not in FAMILIES:
        raise ParameterError(f"--model-family {family!r}: use one of {', '.join(FAMILIES)}")
    named = REGISTRY.get(model or "")
    if family is not None and (model is None or named and named.family not in (None, family)):
        what = f"{model} is {a_or_an(named.family)} model" if named else "no --model was given"
        raise ParameterError(f"--model-family {family} applies to --model PATH.onnx ({what})")
    if model is None:
        default = REGISTRY[DEFAULT_MODEL]
        if _found(default) is not None:
            return ResolvedModel(default, _verified(default))
        say = notice or logging.getLogger("bgrm.models").warning
        say(f"bgrm: {DEFAULT_MODEL} is not installed in {models_dir()}; "
            f"using the bundled {FALLBACK_MODEL} (faster, less precise)")
        model = FALLBACK_MODEL
    spec = REGISTRY.get(model)
    if spec is None:
        path = Path(model).expanduser()
        if path.is_dir():
            raise ModelError(f"model file {model}: is a folder, not an .onnx file")
        if path.suffix.lower() != ".onnx" and not path.is_file():
            known = ", ".join(SEGMENTATION_MODELS)
            raise ModelError(f"unknown model {model!r}: use one of {known}, "
                             "or a path to an .onnx file")
        if not path.is_file():
            raise ModelError(f"model file {model}: no such file")
        return ResolvedModel(ModelSpec(path.stem, path.name, "", 0.0,
                                       family or DEFAULT_FAMILY), path, custom=True)
    if spec.family is None:
        raise ModelError(f"{model} is a {spec.kind} model (ViTMatte), not one that finds "
                         f"the subject: use one of {', '.join(SEGMENTATION_MODELS)}")
    return ResolvedModel(spec, _verified(spec))
