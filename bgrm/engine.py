"""Inference engines for the segmentation model: onnxruntime, or OpenVINO's own runtime.

Both run the same ONNX file in float32 and give the same maps (within ~1e-6;
masks within one level of 255). OpenVINO (the extra ``bgrm[openvino]``) runs
u2netp's convolutions closer to the core's peak (docs/speed.md), at the price
of an import and a compile once per process; its compiled models are kept in
``$XDG_CACHE_HOME/bgrm/openvino`` so later processes load them instead.

Each engine is opened on a model file, tells its graph's inputs and outputs
(``Port``, in onnxruntime's terms, for ``Segmenter``'s shape check) and runs
one tensor at a time with ``run(tensor) -> [outputs]``; several threads may
call ``run`` at once (a video's lanes).
"""

from __future__ import annotations

import importlib.util
import os
import queue
from dataclasses import dataclass
from pathlib import Path

from bgrm.errors import ModelError, ParameterError, first_line
from bgrm.settings import ENGINES

INSTALL_HINT = "pip install 'bgrm[openvino]'"


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported here (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def check_engine(engine: str, device: str = "auto") -> None:
    """A ParameterError (exit 2) for an engine that cannot run here at all."""
    if engine not in ENGINES:
        raise ParameterError(f"engine: {engine!r} is not one of {', '.join(ENGINES)}")
    if engine != "openvino":
        return
    if not openvino_installed():
        raise ParameterError(f"--engine openvino: OpenVINO is not installed; install it "
                             f"with: {INSTALL_HINT}")
    if device == "cuda":
        raise ParameterError("--engine openvino runs on the CPU; use --device cpu or auto, "
                             "or --engine onnxruntime for --device cuda")


def choose(engine: str, device: str, gpu: bool) -> str:
    """The engine that runs: ``auto`` is OpenVINO where it is installed and the model
    runs on the CPU (``gpu``: onnxruntime has a usable CUDA provider), else onnxruntime."""
    check_engine(engine, device)
    if engine != "auto":
        return engine
    on_cpu = device == "cpu" or device == "auto" and not gpu
    return "openvino" if on_cpu and openvino_installed() else "onnxruntime"


def cache_dir() -> Path:
    """Where OpenVINO keeps compiled models: the user's cache, never beside the model."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bgrm" / "openvino"


@dataclass(frozen=True)
class Port:
    """An input or output of the graph as onnxruntime names it: dims are ints, or
    strings for dynamic ones; ``type`` as ``tensor(float)``."""

    name: str
    shape: list
    type: str


class OnnxRuntime:
    """An onnxruntime ``InferenceSession`` (made by the caller, who picks providers)."""

    name = "onnxruntime"

    def __init__(self, session):
        self.session = session
        self.inputs = session.get_inputs()
        self.outputs = session.get_outputs()

    def run(self, tensor):
        """Model input -> every output of the graph, as numpy arrays."""
        return self.session.run(None, {self.inputs[0].name: tensor})


class OpenVino:
    """The model compiled by OpenVINO for the CPU, in float32.

    ``threads`` a run and ``lanes`` runs at once (one stream each), as
    onnxruntime's sessions are sized; an idle infer request is reused, so
    ``lanes`` threads calling ``run`` at once never share one.
    """

    name = "openvino"

    def __init__(self, path: Path, size: int, threads: int, lanes: int = 1):
        import openvino as ov

        core = ov.Core()
        folder = cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(folder)})
        except OSError:
            pass  # a read-only home: compile every time, as without the cache
        try:
            # The ONNX reader alone: read_model tries every framework's on a file it
            # cannot parse, and TensorFlow's prints its complaints on stderr.
            onnx = ov.frontend.FrontEndManager().load_by_framework("onnx")
            graph = onnx.convert(onnx.load(str(path)))
            self.inputs = [_port(p) for p in graph.inputs]
            self.outputs = [_port(p) for p in graph.outputs]
            _fix_shape(graph, size)
            self.compiled = core.compile_model(graph, "CPU", {
                # Not bfloat16 (OpenVINO's default where the CPU has it): its masks
                # differ from onnxruntime's by up to IoU 0.02-0.9 (docs/speed.md).
                "INFERENCE_PRECISION_HINT": "f32",
                "INFERENCE_NUM_THREADS": max(1, threads) * max(1, lanes),
                "NUM_STREAMS": max(1, lanes),
                # Other processes share these cores: no thread is tied to one.
                "ENABLE_CPU_PINNING": False,
            })
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own untyped errors
            raise ModelError(f"model {path}: cannot be loaded by OpenVINO: "
                             f"{_reason(exc)}") from exc
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, tensor):
        """Model input -> every output of the graph, as numpy arrays of their own."""
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            request.infer({0: tensor})
            # The request's buffers are overwritten by its next run: copy them out.
            return [request.get_output_tensor(i).data.copy()
                    for i in range(len(self.outputs))]
        finally:
            self._idle.put(request)


def _reason(exc: Exception) -> str:
    """OpenVINO's message without its "Exception from src/...cpp:N:" lines."""
    lines = [line.strip() for line in str(exc).splitlines()
             if line.strip() and not line.startswith("Exception from ")]
    return lines[0] if lines else first_line(exc)


def _port(port) -> Port:
    shape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else f"dim{i}" for i, d in enumerate(shape)] \
        if shape.rank.is_static else []
    kind = "tensor(float)" if port.get_element_type().get_type_name() == "f32" \
        else f"tensor({port.get_element_type().get_type_name()})"
    return Port(port.get_any_name(), dims, kind)


def _fix_shape(graph, size: int) -> None:
    """Dynamic input dims -> one picture at the family's size: a static shape
    compiles to faster code. A graph that cannot take it is left for the shape check."""
    shape = graph.inputs[0].get_partial_shape()
    if len(graph.inputs) != 1 or not shape.rank.is_static or len(shape) != 4 \
            or shape.is_static:
        return
    fill = [1, 3, size, size]
    dims = [d.get_length() if d.is_static else fill[i] for i, d in enumerate(shape)]
    try:
        graph.reshape(dims)
    except Exception:  # noqa: BLE001, S110 - the check says what is wrong with it
        pass
