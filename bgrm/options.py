"""The API's parameters as one table, and the immutable options built from them.

Every parameter is described once, in ``PARAMS``: the CLI builds its Click
options from these rows, and ``from_params`` validates a hosted-API params dict
with the same rows, so a value is accepted or refused the same way whichever
door it came in by.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgrm.errors import ParameterError
from bgrm.models.families import FAMILIES
from bgrm.models.registry import VITMATTE_DEFAULT, VITMATTE_VARIANTS

BG_TYPES = ("transparent", "color", "image")
VIDEO_FORMATS = (
    "mov",
    "mattekey",
    "gif",
    "video_over_image",
    "video_over_video",
    "gif_with_bg",
    "mp4_with_color",
    "webm",
    "png_sequence",
)
# Video formats that write a folder of files: the service cannot send one as a download.
FOLDER_FORMATS = ("png_sequence",)
IMAGE_FORMATS = ("png", "webp", "jpg")
DEVICES = ("auto", "cpu", "cuda")  # where the model runs (--device, Session's device)
MODEL_FAMILIES = tuple(FAMILIES)  # --model-family, for a model given as a path
CONVERT_TO = {"image": "image-backgroundremover", "video": "video-backgroundremover"}

# A hex colour as the API takes it (the service's OpenAPI document states it too).
HEX_COLOR_PATTERN = r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$"
_HEX = re.compile(HEX_COLOR_PATTERN)


def parse_color(value, name: str = "color") -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb' or '#rgb' (or an (r, g, b) already parsed) -> (r, g, b)."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()  # a numpy array of three channel values
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(
            isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255
            for c in value):
        # The CLI's Click type has parsed the flag already; from_params sees it again.
        return tuple(int(c) for c in value)  # type: ignore[return-value]
    if isinstance(value, (tuple, list)):
        raise ParameterError(f"{name}: {value!r} is not three integers 0-255 (r, g, b) "
                             "nor a hex colour like '#00ff00'")
    m = _HEX.match(str(value).strip())
    if not m:
        raise ParameterError(f"{name}: {value!r} is not a hex colour like '#00ff00'")
    digits = m.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


@dataclass(frozen=True)
class Param:
    """One API parameter: its name, kind, default and allowed values."""

    name: str  # the API's name; the CLI option is the same with dashes
    kind: str  # bool | int | choice | color | model | path
    default: Any
    help: str
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ("image", "video")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        if self.kind == "int":
            hi = "" if self.hi is None else str(self.hi)
            return f"an integer {self.lo}-{hi}" if hi else f"an integer >= {self.lo}"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "color":
            return "a hex colour like '#00ff00'"
        return "a value"

    def convert(self, value: Any) -> Any:
        """Validate and convert an API value (a string or a typed JSON value)."""
        where = f"{self.name} ({self.flag})"
        if value is None or isinstance(value, str) and value == "":
            return self.default
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ParameterError(f"{where}: {value!r} is not {self.allowed()}")
        if self.kind == "int":
            if isinstance(value, bool):
                raise ParameterError(f"{where}: {value!r} is not {self.allowed()}")
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # JSON writers turn 240 into 240.0
            try:
                number = int(str(value).strip()) if not isinstance(value, int) else value
            except ValueError:
                raise ParameterError(f"{where}: {value!r} is not {self.allowed()}") from None
            if (self.lo is not None and number < self.lo) or (
                self.hi is not None and number > self.hi
            ):
                raise ParameterError(f"{where}: {number} is out of range, allowed: {self.allowed()}")
            return number
        if self.kind == "choice":
            text = str(value).strip()
            if text not in self.choices:
                raise ParameterError(f"{where}: {value!r} is not {self.allowed()}")
            return text
        if self.kind == "color":
            return parse_color(value, where)
        if self.kind == "float":
            try:
                return float(value)
            except (TypeError, ValueError):
                raise ParameterError(f"{where}: {value!r} is not a number") from None
        if self.kind == "model":
            return str(value).strip()
        if self.kind == "path":
            path = Path(str(value)).expanduser()
            # The CLI's click.Path checks this for the flag; a params file needs the same.
            if not path.is_file():
                raise ParameterError(f"{where}: {str(value)!r}: no such file")
            return path
        raise AssertionError(self.kind)


# The edge steps' one order (bgrm.edges), whatever order the flags come in.
EDGE_ORDER = ("model > post-process > grow/shrink > matting or ViTMatte > feather > "
              "decontaminate > compose > crop")
# Largest --mask-grow / --mask-feather: far beyond any edge, small enough that
# a typo cannot run for minutes.
_EDGE_PX = 500
PARAMS: tuple[Param, ...] = (
    Param("model", "model", None,
          "A model by name (bgrm models list: u2net, isnet-general-use, birefnet-general, "
          "bria-rmbg, ...) or a path to an .onnx file "
          "[default: u2net if installed, else the bundled u2netp]"),
    Param("model_family", "choice", None,
          "How to run --model PATH.onnx: its pre- and post-processing "
          "[default: u2net]", choices=MODEL_FAMILIES),
    Param("alpha_matting", "bool", False, "Refine edges (hair, fur) with alpha matting."),
    Param("alpha_fg", "int", 240, "Trimap foreground threshold.", lo=0, hi=255),
    Param("alpha_bg", "int", 10, "Trimap background threshold.", lo=0, hi=255),
    Param("alpha_erode", "int", 10, "Edge erosion size.", lo=1, hi=25),
    Param("alpha_base_size", "int", 1000, "Longer side at which the matte is solved.",
          lo=64, hi=8000),
    Param("only_mask", "bool", False, "Write the black/white mask instead of a cutout.",
          jobs=("image",)),
    Param("bg_type", "choice", "transparent", "Background of the output.",
          choices=BG_TYPES, jobs=("image",)),
    Param("bg_color_value", "color", (255, 255, 255), "Background colour for --bg-type color.",
          jobs=("image",)),
    Param("format", "choice", "png", "Output encoding: png, webp (lossless, with alpha) or jpg "
          "(opaque results only: --bg-type color or image).", choices=IMAGE_FORMATS,
          jobs=("image",)),
    Param("video_format", "choice", "mov", "Output format.", choices=VIDEO_FORMATS,
          jobs=("video",)),
    Param("video_bg_color_enabled", "bool", False,
          "Solid colour background (API compatibility; implied by mp4_with_color).",
          jobs=("video",)),
    Param("video_bg_color", "color", (0, 255, 0), "Background colour for mp4_with_color.",
          jobs=("video",)),
    Param("framerate", "int", None, "Output frame rate [default: the input's].", lo=1, hi=60,
          jobs=("video",)),
    Param("frame_limit", "int", None, "Process only the first N frames.", lo=1,
          jobs=("video",)),
    # Not in the hosted API (it takes uploads); needed to name a background offline.
    Param("bg_image", "path", None, "Background picture (bg_type=image, video_over_image, "
          "gif_with_bg), scaled to cover, centred."),
    Param("bg_video", "path", None, "Background video for video_over_video (looped or cut).",
          jobs=("video",)),
    Param("temporal_smoothing", "float", 0.8, "Steadiness of video masks, 0 turns it off.",
          jobs=("video",)),
    # Not in the hosted API: how a long video is spread over a cluster (bgrm.video.segments).
    Param("segment_seconds", "int", 30, "With --scheduler: a video longer than this is split "
          "into segments of at most S seconds, each on its own worker, joined frame-exact.",
          lo=1, hi=86_400, jobs=("video",)),
    # Edge and cut controls (bgrm.edges), in the order they run (EDGE_ORDER,
    # which each command's help states once).
    Param("post_process_mask", "bool", False,
          "Clean the mask as rembg does (opening, blur, threshold: a hard edge)."),
    Param("mask_grow", "int", 0,
          "Move the mask's edge out by PX pixels (negative: in), at full size.",
          lo=-_EDGE_PX, hi=_EDGE_PX),
    Param("vitmatte", "bool", False,
          "Refine the edge with ViTMatte (rembg's learned matting; uses --alpha-fg, "
          "--alpha-bg, --alpha-erode; unmixes colour as --decontaminate)."),
    Param("vitmatte_model", "choice", None,
          "ViTMatte checkpoint (file in the models folder) [default: "
          f"{VITMATTE_DEFAULT}].", choices=VITMATTE_VARIANTS),
    Param("mask_feather", "int", 0,
          "Soften the edge over about PX pixels each side (Gaussian, sigma PX/2).",
          lo=0, hi=_EDGE_PX),
    Param("decontaminate", "bool", False,
          "Take the old background's colour out of soft edge pixels."),
    Param("crop", "bool", False,
          "Cut the output to the subject's box (alpha > 8/255; one box per video)."),
    Param("crop_margin", "int", 0, "Pixels kept around the subject's box with --crop "
          "(clamped to the picture).", lo=0, hi=100_000),
)
PARAM_BY_NAME = {p.name: p for p in PARAMS}
# Keys a migrating user's params dict may carry that select nothing here.
_IGNORED_KEYS = {"lang"}


@dataclass(frozen=True)
class MattingOptions:
    enabled: bool = False
    fg: int = 240
    bg: int = 10
    erode: int = 10
    base_size: int = 1000


@dataclass(frozen=True)
class EdgeOptions:
    """The edge and cut steps (bgrm.edges), in their fixed order."""

    post_process_mask: bool = False
    mask_grow: int = 0
    vitmatte: bool = False
    vitmatte_model: str | None = None  # None: VITMATTE_DEFAULT
    mask_feather: int = 0
    decontaminate: bool = False
    crop: bool = False
    crop_margin: int = 0

    def check(self, matting: MattingOptions, colourless: str | None) -> None:
        """Refuse combinations that mean nothing; ``colourless`` names an output
        without colour (only_mask, mattekey), or is None."""
        if self.vitmatte and matting.enabled:
            raise ParameterError("--vitmatte and --alpha-matting both refine the edge; "
                                 "choose one")
        if self.vitmatte_model is not None and not self.vitmatte:
            raise ParameterError("--vitmatte-model is used only with --vitmatte")
        if self.crop_margin and not self.crop:
            raise ParameterError("--crop-margin is used only with --crop")
        if self.decontaminate and colourless:
            raise ParameterError(f"--decontaminate changes colours, and {colourless} has "
                                 "none")


@dataclass(frozen=True)
class ImageOptions:
    model: str | None = None
    model_family: str | None = None  # for a model given as a path; None: u2net
    matting: MattingOptions = field(default_factory=MattingOptions)
    edges: EdgeOptions = field(default_factory=EdgeOptions)
    only_mask: bool = False
    bg_type: str = "transparent"
    bg_color: tuple[int, int, int] = (255, 255, 255)
    bg_image: Path | None = None
    format: str = "png"  # png | webp | jpg

    def __post_init__(self) -> None:
        if self.format == "jpg" and self.bg_type == "transparent" and not self.only_mask:
            # A mask is grey, opaque: JPEG holds it (lossy at its edges).
            raise ParameterError("format (--format) jpg cannot hold a transparent cut-out: "
                                 "JPEG has no transparency; use --bg-type color or image, "
                                 "--only-mask, or --format png or webp")
        if self.bg_type == "image" and self.bg_image is None:
            raise ParameterError("bg_type (--bg-type) image needs a picture: --bg-image PATH")
        if self.bg_image is not None and self.bg_type != "image":
            raise ParameterError("--bg-image is used only with --bg-type image")
        if self.only_mask and self.bg_type != "transparent":
            raise ParameterError("only_mask (--only-mask) cannot be combined with --bg-type "
                                 f"{self.bg_type}")
        self.edges.check(self.matting, "--only-mask" if self.only_mask else None)


@dataclass(frozen=True)
class VideoOptions:
    model: str | None = None
    model_family: str | None = None  # for a model given as a path; None: u2net
    matting: MattingOptions = field(default_factory=MattingOptions)
    edges: EdgeOptions = field(default_factory=EdgeOptions)
    video_format: str = "mov"
    video_bg_color_enabled: bool = False
    video_bg_color: tuple[int, int, int] = (0, 255, 0)
    framerate: int | None = None
    frame_limit: int | None = None
    bg_image: Path | None = None
    bg_video: Path | None = None
    temporal_smoothing: float = 0.8
    segment_seconds: int = 30  # with --scheduler only: the length of a video's segments

    def __post_init__(self) -> None:
        fmt = self.video_format
        needs_image = fmt in ("video_over_image", "gif_with_bg")
        if needs_image and self.bg_image is None:
            raise ParameterError(f"video_format {fmt} needs a background: --bg-image PATH")
        if fmt == "video_over_video" and self.bg_video is None:
            raise ParameterError("video_format video_over_video needs a background: "
                                 "--bg-video PATH")
        if self.bg_image is not None and not needs_image:
            raise ParameterError(f"--bg-image is not used by video_format {fmt}")
        if self.bg_video is not None and fmt != "video_over_video":
            raise ParameterError(f"--bg-video is not used by video_format {fmt}")
        if self.video_bg_color_enabled and fmt != "mp4_with_color":
            raise ParameterError(
                "video_bg_color_enabled (--video-bg-color-enabled) applies only to "
                f"video_format mp4_with_color, not {fmt}")
        if not 0.0 <= self.temporal_smoothing < 1.0:
            raise ParameterError("--temporal-smoothing must be at least 0 and below 1, "
                                 f"got {self.temporal_smoothing}")
        self.edges.check(self.matting, "video_format mattekey" if fmt == "mattekey" else None)


def params_for(job: str) -> tuple[Param, ...]:
    return tuple(p for p in PARAMS if job in p.jobs)


def from_params(job: str, params: Mapping[str, Any],
                overrides: Mapping[str, Any] | None = None) -> ImageOptions | VideoOptions:
    """Build options for ``job`` ('image' or 'video') from an API params dict.

    ``overrides`` are values the user gave explicitly on the command line; they
    win over the dict. Both are validated by the same ``PARAMS`` rows.
    """
    values: dict[str, Any] = {p.name: p.default for p in params_for(job)}
    for key, raw in params.items():
        if key == "convert_to":
            if raw != CONVERT_TO[job]:
                raise ParameterError(f"convert_to: {raw!r} does not match the "
                                     f"'{job}' command (expected {CONVERT_TO[job]!r})")
            continue
        if key in _IGNORED_KEYS:
            continue
        param = PARAM_BY_NAME.get(key)
        if param is None or job not in param.jobs:
            known = ", ".join(p.name for p in params_for(job))
            raise ParameterError(f"unknown parameter {key!r} for {job}; known: {known}")
        values[key] = param.convert(raw)
    for key, value in (overrides or {}).items():
        values[key] = PARAM_BY_NAME[key].convert(value)
    return build(job, values)


def build(job: str, values: Mapping[str, Any]) -> ImageOptions | VideoOptions:
    matting = MattingOptions(
        enabled=bool(values["alpha_matting"]), fg=values["alpha_fg"], bg=values["alpha_bg"],
        erode=values["alpha_erode"], base_size=values["alpha_base_size"])
    edges = EdgeOptions(**{f.name: values[f.name] for f in dataclasses.fields(EdgeOptions)})
    common = {"model": values["model"] or None, "model_family": values["model_family"],
              "matting": matting, "edges": edges}
    if job == "image":
        return ImageOptions(**common, only_mask=bool(values["only_mask"]),
                            bg_type=values["bg_type"], bg_color=values["bg_color_value"],
                            bg_image=values["bg_image"], format=values["format"])
    fields = {f.name for f in dataclasses.fields(VideoOptions)} - set(common)
    return VideoOptions(**common, **{k: values[k] for k in fields})
