"""The Python API: what scripts call, and what every ``bgrm`` command runs on.

Parameters have the hosted API's names (those of ``--params``), checked by the
same table (``bgrm.options.PARAMS``) as the command line's flags, so a call
and a command with the same options give the same bytes.

    >>> import bgrm
    >>> from PIL import Image
    >>> cutout = bgrm.remove(Image.open(photo))
    >>> cutout.mode, cutout.size
    ('RGBA', (451, 300))

Nothing heavy is imported until a model is needed.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgrm.errors import ParameterError
from bgrm.filejobs import JOBS as JOBS  # re-exported: the doors name extensions by it
from bgrm.filejobs import Progress, write_file
from bgrm.options import ImageOptions, VideoOptions, from_params

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from bgrm.models import ResolvedModel
    from bgrm.report import Processed

def _options(job: str, params: dict[str, Any]) -> ImageOptions | VideoOptions:
    return from_params(job, {k: v for k, v in params.items() if v is not None})


class Session:
    """A model loaded once and kept for many calls.

    ``model`` is a registry name (``u2net``, ``isnet-general-use``,
    ``birefnet-general``... : ``bgrm models list``) or a path to an ``.onnx``
    file, run the way ``model_family`` says (default ``u2net``); ``None`` means
    u2net when installed, otherwise the bundled u2netp (with a warning).
    ``threads``: onnxruntime threads a run (default: every core). ``lanes``: a
    video's frames in the model at once, each run on ``threads`` threads;
    ``threads=1, lanes=os.cpu_count()`` is what ``bgrm video`` does, at fewer
    CPU seconds than one run on every core. ``engine``: ``auto`` (OpenVINO
    where ``bgrm[openvino]`` is installed and the model runs on the CPU, else
    onnxruntime), ``onnxruntime`` or ``openvino``; the masks are the same.

    >>> from PIL import Image
    >>> session = bgrm.Session("u2netp")
    >>> masks = [session.remove(Image.open(p), only_mask=True) for p in (photo, photo)]
    >>> [m.mode for m in masks]
    ['L', 'L']
    """

    def __init__(self, model: str | ResolvedModel | None = None, *,
                 model_family: str | None = None, device: str = "auto",
                 threads: int | None = None, spinning: bool = True, lanes: int = 1,
                 engine: str = "auto"):
        from bgrm.engine import check_engine
        from bgrm.models import ResolvedModel, resolve
        from bgrm.options import DEVICES
        from bgrm.segment import get_segmenter

        if device not in DEVICES:
            raise ParameterError(f"device: {device!r} is not one of {', '.join(DEVICES)}")
        check_engine(engine, device)
        if not isinstance(model, ResolvedModel):
            model = resolve(model, model_family,
                            notice=lambda m: warnings.warn(m.removeprefix("bgrm: "),
                                                           stacklevel=3))
        self.model = model
        # One session per process and settings (segment's cache): another
        # Session with the same settings shares it.
        self.segmenter = get_segmenter(model, device, threads, spinning, lanes, engine)

    def _check_model(self, params: dict[str, Any]) -> None:
        model = params.pop("model", None)
        if model is not None and model not in (self.model.spec.name, str(self.model.path)):
            raise ParameterError(f"model: this session runs {self.model.spec.name}, not "
                                 f"{model!r}; make a Session for that model")
        family = params.pop("model_family", None)
        if family is not None and family != self.model.spec.family:
            raise ParameterError(f"model_family: this session runs {self.model.spec.name} as "
                                 f"{self.model.spec.family}, not {family!r}; make a Session "
                                 "with that model_family")

    def remove(self, image: Image.Image | bytes | np.ndarray, **params: Any):
        """``image`` without its background: a PIL image, PNG bytes or a numpy
        array, as it came in. ``params`` are the API's image parameters."""
        self._check_model(params)
        return remove_with(self, image, _options("image", params))

    def remove_video(self, src: str | Path, dst: str | Path, **params: Any) -> list[str]:
        """Write ``src`` without its background to ``dst``; return notes for the user.

        ``params`` are the API's video parameters (``video_format`` ...);
        ``dst`` should carry the format's extension.

        >>> session = bgrm.Session("u2netp")
        >>> notes = session.remove_video(clip, tmp / "clip.gif", video_format="gif",
        ...                              frame_limit=3)
        >>> (tmp / "clip.gif").read_bytes()[:6]
        b'GIF89a'
        """
        self._check_model(params)
        opts = _options("video", params)
        return list(self.write("video", *_paths(src, dst), opts).notes)

    def write(self, job: str, src: Path, dst: Path, opts, progress: Progress | None = None
              ) -> Processed:
        """One input file -> one output file with options already built (the CLI's way in)."""
        return write_file(job, src, dst, opts, self.segmenter, progress)

    def cut(self, data: Image.Image | bytes, opts: ImageOptions, name: str = "<image>"):
        """(picture, decoded) for an image in memory, with options already built:
        ``decoded`` holds the input's notes and EXIF for ``image.encode``."""
        from bgrm.image import decode, from_picture, render

        decoded = decode(data, name) if isinstance(data, bytes) else from_picture(data, name)
        return render(decoded, opts, self.segmenter), decoded


def _paths(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    # Path("") is the current folder: an empty name is a mistake, never "here".
    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ParameterError(f"{name}: a file name, not {value!r}")
    return Path(src), Path(dst)


def remove_with(session: Session, image, opts: ImageOptions):
    """``image`` (PIL, bytes or numpy) through ``session`` with ``opts``, as the same kind."""
    import numpy as np
    from PIL import Image

    from bgrm.image import encode

    if isinstance(image, (bytes, bytearray, memoryview)):
        picture, decoded = session.cut(bytes(image), opts)
        out = io.BytesIO()
        encode(picture, out, opts.format, decoded.exif)
        return out.getvalue()
    if isinstance(image, np.ndarray):
        picture, _ = session.cut(_array_picture(image), opts)
        return np.asarray(picture)
    if isinstance(image, Image.Image):
        return session.cut(image, opts)[0]
    raise ParameterError(f"image: a PIL image, bytes or a numpy array, not {type(image).__name__}")


def _array_picture(arr: np.ndarray) -> Image.Image:
    """An array as the picture it plainly is: H x W (grey), H x W x 1, 3 (RGB) or 4
    (RGBA); uint8 as is, bool as black and white, uint16 scaled down, floats as
    0..1, other integers when they hold 0..255. Anything else is a ParameterError
    that says what it got and what would do."""
    import numpy as np
    from PIL import Image

    got = f"image: an array of {arr.dtype}, shape {arr.shape}"
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.ndim == 3 and arr.shape[-1] not in (3, 4):
        hint = " (channels first? use arr.transpose(1, 2, 0))" \
            if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) else ""
        raise ParameterError(f"{got}; give H x W (grey), H x W x 3 (RGB) or H x W x 4 "
                             f"(RGBA){hint}")
    if arr.size == 0:
        raise ParameterError(f"{got}: no pixels")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 + 32767) // 65535
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ParameterError(f"{got}: float values must be 0..1 (divide 0..255 "
                                 "values by 255)")
        arr = arr * 255 + 0.5
    elif arr.dtype.kind in "iu" and arr.dtype != np.uint8:
        if arr.min() < 0 or arr.max() > 255:
            raise ParameterError(f"{got}: integer values must be 0..255")
    elif arr.dtype != np.uint8:
        raise ParameterError(f"{got}; give uint8, uint16, bool or float 0..1 values")
    return Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))


def _session(opts: ImageOptions | VideoOptions) -> Session:
    # The model itself stays loaded in segment's one cache of models, bounded.
    return Session(opts.model, model_family=opts.model_family)


def remove(image: Image.Image | bytes | np.ndarray, **params: Any):
    """``image`` without its background, returned as the kind that came in.

    A PIL image gives a PIL image, bytes (any format Pillow reads) give PNG
    bytes (or ``format``'s: webp, jpg), a numpy array gives a numpy array
    (H x W x 4 RGBA; H x W with ``only_mask``). ``params`` are the API's image
    parameters (``bgrm.options.PARAMS``): ``model``, ``model_family``,
    ``alpha_matting``, ``alpha_fg``, ``alpha_bg``, ``alpha_erode``,
    ``alpha_base_size``, ``only_mask``, ``bg_type``, ``bg_color_value``,
    ``bg_image``, ``format``, and the edge steps (``post_process_mask``,
    ``mask_grow``, ``vitmatte``, ``mask_feather``, ``decontaminate``, ``crop``
    ...); values as the API takes them (``"true"``, ``"240"``) or typed. The
    model stays loaded for the next call; see ``Session`` to choose where it runs.

    >>> png = bgrm.remove(open(photo, "rb").read(), bg_type="color", bg_color_value="#3366cc")
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    >>> import numpy as np
    >>> from PIL import Image
    >>> bgrm.remove(np.asarray(Image.open(photo)), only_mask=True).shape
    (300, 451)
    """
    opts = _options("image", params)
    return remove_with(_session(opts), image, opts)


def remove_video(src: str | Path, dst: str | Path, **params: Any) -> list[str]:
    """Write the video ``src`` without its background to ``dst``, with the API's video
    parameters (``video_format``, ``framerate``, ``frame_limit`` ...); return notes.

    >>> notes = bgrm.remove_video(clip, tmp / "clip.mov", frame_limit=2)
    >>> (tmp / "clip.mov").stat().st_size > 0
    True
    """
    opts = _options("video", params)
    return list(_session(opts).write("video", *_paths(src, dst), opts).notes)
