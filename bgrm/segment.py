"""Segmentation: an RGB frame in, a full-size mask out (onnxruntime or OpenVINO,
``bgrm.engine``).

The pre- and post-processing follow rembg's session class of the model's
family step for step (``bgrm.models.families``: Lanczos to the model size,
scale by the image maximum, mean/std, the family's activation and min-max of
its output map, Lanczos back), so masks match rembg's for the same model.
Only the model-size copy of a frame is made here: a 1024-input model costs
12 MB of float32 per frame whatever the frame's size.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

from bgrm.engine import OnnxRuntime, OpenVino, choose
from bgrm.errors import ModelError, a_or_an, first_line
from bgrm.models import ResolvedModel

log = logging.getLogger("bgrm.segment")


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise ModelError("--device cuda: onnxruntime has no CUDA support here; "
                         "install it with: pip install 'bgrm[gpu]'")
    return ["CPUExecutionProvider"]


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _ort_options(threads: int, spinning: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # this session's warnings only: the host's logger stays
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spinning:
        # Spinning threads steal the cores that decoding and encoding need.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def check_device(device: str) -> None:
    """Fail early, in the main process, when ``device`` cannot be had at all."""
    _providers(device)


def _session(model: ResolvedModel, opts, device: str):
    """An InferenceSession on ``device``; ``auto`` falls back to the CPU with one notice."""
    import onnxruntime as ort

    providers = _providers(device)

    def create(chosen):
        # enable_fallback=0: onnxruntime's own fallback prints banners on stdout,
        # which would corrupt `bgrm image -` and --json output; we fall back here.
        return ort.InferenceSession(str(model.path), sess_options=opts, providers=chosen,
                                    enable_fallback=0)

    def on_cpu(why: str):
        try:
            session = create(["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(f"model {model.path}: cannot be loaded by onnxruntime: "
                             f"{first_line(exc)}") from exc
        if device == "cuda":
            raise ModelError(f"--device cuda: the CUDA provider failed to load ({why}); "
                             "check the CUDA and cuDNN libraries, or use --device cpu")
        log.warning("bgrm: CUDA is not usable here (%s); running on the CPU", why)
        return session

    try:
        session = create(providers)
    except Exception as exc:  # noqa: BLE001
        if providers[0] != "CUDAExecutionProvider":
            raise ModelError(f"model {model.path}: cannot be loaded by onnxruntime: "
                             f"{first_line(exc)}") from exc
        return on_cpu(first_line(exc))
    if providers[0] == "CUDAExecutionProvider" and \
            "CUDAExecutionProvider" not in session.get_providers():
        # onnxruntime-gpu without a usable GPU or libraries quietly runs on the CPU.
        if device == "cuda":
            raise ModelError("--device cuda: the CUDA provider failed to load (no GPU, "
                             "or CUDA/cuDNN libraries missing); use --device cpu")
        log.warning("bgrm: CUDA is not usable here (no GPU, or CUDA/cuDNN libraries missing); "
                    "running on the CPU")
    return session


def video_lanes(model: ResolvedModel, device: str, threads: int | None) -> tuple[int, int]:
    """(onnxruntime threads a run, runs at once) for a video's frames on ``threads`` cores.

    One run on several threads spends CPU keeping them in step (~4% on idle
    cores, ~10% beside a video's decoding and encoding); one-thread runs side
    by side share nothing. A 1024-input model (its activations are large) and
    a GPU keep one run at a time on every thread.
    """
    import onnxruntime as ort

    cores = threads or os.cpu_count() or 1
    gpu = device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers()
    if cores <= 1 or gpu or model.big:
        return cores, 1
    return 1, cores


class Segmenter:
    """One model session, loaded once and reused for every frame.

    ``lanes``: how many callers may run it at once (a video's frames, see
    ``video_lanes``); each run uses ``threads`` threads. ``engine``: ``auto``,
    ``onnxruntime`` or ``openvino`` (``bgrm.engine.choose``).
    """

    def __init__(self, model: ResolvedModel, device: str = "auto", threads: int | None = None,
                 spinning: bool = True, lanes: int = 1, engine: str = "auto"):
        self.threads, self.lanes = threads or (os.cpu_count() or 1), lanes
        self.family = model.family
        self.session = None  # onnxruntime's, when it runs the model
        self.engine = None
        if choose(engine, device, gpu=device != "cpu" and _cuda_available()) == "openvino":
            try:
                self.engine = OpenVino(model.path, self.family.size, self.threads, lanes)
            except ModelError:
                if engine != "auto":
                    raise  # asked for: said as OpenVINO's error
                # auto: onnxruntime runs what OpenVINO cannot read, or says why not.
        if self.engine is None:
            self.session = _session(model, _ort_options(self.threads, spinning), device)
            self.engine = OnnxRuntime(self.session)
        self.where = f"model {model.path}"
        self.input_name = self._check_shape(model)
        self.size = (self.family.size, self.family.size)
        mean, std = model.spec.normalisation()
        self.mean = np.array(mean, dtype=np.float32)
        self.std = np.array(std, dtype=np.float32)

    def _check_shape(self, model: ResolvedModel) -> str:
        """The input's name, once the graph is known to fit its family; a graph of
        another shape is one clear error before any file."""
        family = self.family
        inputs, outputs = self.engine.inputs, self.engine.outputs
        side = family.size
        where = f"model {model.path}"
        expected = (f"{a_or_an(family.name)}-family ({family.title}) model takes one float input "
                    f"N x 3 x {side} x {side} and gives a 1-channel saliency map "
                    f"N x 1 x H x W as output {family.output}")
        if len(inputs) != 1 or len(outputs) <= family.output:
            raise ModelError(f"{where}: {len(inputs)} inputs and {len(outputs)} outputs; "
                             f"{expected}")
        inp = inputs[0]
        shape = inp.shape
        if len(shape) != 4 or shape[1] not in (3, "3") or inp.type != "tensor(float)":
            raise ModelError(f"{where}: input {inp.name!r} is {inp.type} {shape}; {expected}")
        if isinstance(shape[0], int) and shape[0] != 1:
            # bgrm runs one picture at a time: a graph exported for a fixed batch of
            # 2 would fail on every file.
            raise ModelError(f"{where}: input {inp.name!r} is {shape}, a fixed batch of "
                             f"{shape[0]}; bgrm runs one picture at a time (N = 1, or a "
                             f"named batch dimension); {expected}")
        fixed = [d for d in shape[2:] if isinstance(d, int)]
        if any(d != side for d in fixed):
            others = [f.name for f in _families_of_size(fixed)]
            hint = f" (--model-family {'|'.join(others)}?)" if others and model.custom else ""
            raise ModelError(f"{where}: input {inp.name!r} is {shape}; {expected}{hint}")
        out_shape = outputs[family.output].shape
        if len(out_shape) != 4 or out_shape[1] not in (1, "1", None) and \
                not isinstance(out_shape[1], str) or 0 in out_shape[2:]:
            raise ModelError(f"{where}: output {family.output} is {out_shape}; {expected}")
        return inp.name

    def prepare(self, image: Image.Image) -> np.ndarray:
        """RGB image -> the model's input tensor (1, 3, H, W)."""
        if image.mode != "RGB":
            image = image.convert("RGB")  # (convert would copy even an RGB frame)
        small = image.resize(self.size, Image.Resampling.LANCZOS,
                             reducing_gap=self.family.reducing_gap)
        arr = np.asarray(small, dtype=np.float32)
        arr /= max(float(arr.max()), 1e-6)
        arr = (arr - self.mean) / self.std
        return arr.transpose(2, 0, 1)[None]

    def predict(self, tensor: np.ndarray) -> np.ndarray:
        """Model input -> the saliency map at model size, uint8 0-255."""
        out = self.engine.run(tensor)[self.family.output]
        if out.ndim != 4 or out.shape[0] < 1 or out.shape[1] < 1 or out.size == 0:
            raise ModelError(f"{self.where}: gave an output of shape {list(out.shape)} for "
                             "this picture, not a 1 x 1 x H x W map")
        pred = out[0, 0]
        if not np.isfinite(pred).all():
            # A map of NaN would min-max into a fully transparent cut-out.
            raise ModelError(f"{self.where}: gave a map with NaN or infinite values for "
                             "this picture (a broken export, or float16 overflow?)")
        if self.family.activation == "sigmoid":
            with np.errstate(over="ignore"):  # exp of a large logit: 0 after 1 / (1 + inf)
                pred = 1 / (1 + np.exp(-pred))  # rembg's BiRefNet step, in float32 as there
        lo, hi = float(pred.min()), float(pred.max())
        pred = (pred - lo) / max(hi - lo, 1e-12)
        return (pred * 255).astype(np.uint8)

    def mask(self, image: Image.Image) -> Image.Image:
        """RGB image -> mask ('L') at the image's full size."""
        return Image.fromarray(upscale(self.predict(self.prepare(image)), image.size))


def _families_of_size(dims: list[int]):
    from bgrm.models import FAMILIES

    return [f for f in FAMILIES.values() if all(d == f.size for d in dims)]


def upscale(small: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A model-size mask (uint8) -> ``size`` (w, h), with rembg's Lanczos step;
    images and video frames both come through here, so their masks agree."""
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.LANCZOS))


class SegmenterCache:
    """The process's loaded models: one ``Segmenter`` per model file and settings,
    reused, the least recently used let go beyond ``limit``.

    Keyed by the file's identity (device, inode, size, modification time), so a
    file replaced on disk is loaded afresh, never run from its old copy. A model
    evicted while a file still runs on it is freed when that file is done.
    """

    def __init__(self, limit: int = 4):
        self.limit = limit
        self._items: OrderedDict[tuple, Segmenter] = OrderedDict()
        # Held while a model loads: two threads asking for one model load it once.
        self._lock = threading.Lock()

    def get(self, model: ResolvedModel, device: str = "auto", threads: int | None = None,
            spinning: bool = True, lanes: int = 1, engine: str = "auto") -> Segmenter:
        key = (_identity(model.path), model.spec.family, device, engine, threads, lanes,
               spinning)
        with self._lock:
            found = self._items.get(key)
            if found is None:
                found = Segmenter(model, device, threads, spinning, lanes, engine)
                self._items[key] = found
            self._items.move_to_end(key)
            self._trim()
            return found

    def resize(self, limit: int) -> None:
        """Keep at most ``limit`` models loaded from now on."""
        with self._lock:
            self.limit = max(1, limit)
            self._trim()

    def forget(self, path) -> None:
        """Let every model loaded from ``path`` go."""
        with self._lock:
            for key in [k for k in self._items if k[0][0] == str(path)]:
                del self._items[key]

    def items(self) -> list[tuple[tuple, Segmenter]]:
        """What is loaded, least recently used first, by key: ``((path, device,
        inode, size, mtime), family, device, engine, threads, lanes, spinning)``."""
        with self._lock:
            return list(self._items.items())

    def keys(self) -> list[tuple]:
        return [key for key, _ in self.items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _trim(self) -> None:
        while len(self._items) > self.limit:
            self._items.popitem(last=False)


def _identity(path) -> tuple:
    st = os.stat(path)
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


SEGMENTERS = SegmenterCache()


def get_segmenter(model: ResolvedModel, device: str = "auto", threads: int | None = None,
                  spinning: bool = True, lanes: int = 1, engine: str = "auto") -> Segmenter:
    """The process's segmenter for this model and settings (``SEGMENTERS``), reused."""
    return SEGMENTERS.get(model, device, threads, spinning, lanes, engine)


def check_model(model: ResolvedModel, engine: str = "auto") -> None:
    """Load ``model`` on the CPU once to check that its graph fits its family, and
    let it go: for a parent whose workers load their own copies."""
    Segmenter(model, "cpu", threads=1, engine=engine)
