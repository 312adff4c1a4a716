"""Which U^2-Net models exist, where they live, and which file a run uses.

Nothing here opens a network connection: models are bundled (u2netp), or
installed by the user into the models directory.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bgrm.errors import ModelError

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
            f" (or --from URL), or choose --model u2netp, which is bundled")


def resolve(model: str | None, notice=None) -> ResolvedModel:
    """Pick the file for ``--model`` (a registry name, a path, or None for the default).

    With no model named, u2net is used when installed, otherwise the bundled
    u2netp, and ``notice`` (default: stderr) is told so in one line.
    """
    if model is None:
        default = REGISTRY[DEFAULT_MODEL]
        if installed_path(default).is_file():
            return ResolvedModel(default, installed_path(default))
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
        return ResolvedModel(spec, installed_path(spec))
    if spec.bundled:
        return ResolvedModel(spec, bundled_path(spec))
    raise ModelError(_install_hint(spec))
