"""u2netp's FLOPs per inference and the core's float32 peak: the bench's flops row.

    .venv/bin/python bench/flops.py

FLOPs: every Conv of the ONNX graph at the 1 x 3 x 320 x 320 input (shapes from
onnx's shape inference), 2 x output elements x (input channels / groups) x
kernel area, i.e. one multiply and one add per multiply-accumulate; bias, ReLU,
pooling, resizes and concatenations are left out (under 1% of it).
Peak of one core: 2 FMA units x the vector's float32 lanes (16 with AVX-512,
8 with AVX2) x 2 flops per FMA x the clock /proc/cpuinfo reports (its "cpu MHz",
the base clock; turbo can run higher, so the fraction is an upper estimate).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "bgrm" / "assets" / "u2netp.onnx"


def u2netp_flops(path: Path = MODEL, side: int = 320) -> float:
    """Floating-point operations of the graph's convolutions for one picture."""
    import onnx
    from onnx import shape_inference

    graph = onnx.load(str(path))
    for dim, value in zip(graph.graph.input[0].type.tensor_type.shape.dim,
                          (1, 3, side, side), strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = value
    graph = shape_inference.infer_shapes(graph)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*graph.graph.value_info, *graph.graph.output]}
    weights = {w.name: list(w.dims) for w in graph.graph.initializer}
    total = 0
    for node in graph.graph.node:
        if node.op_type == "Conv":
            kernel = weights[node.input[1]]  # out, in / groups, kh, kw
            total += 2 * int(np.prod(shapes[node.output[0]])) * int(np.prod(kernel[1:]))
    return float(total)


def core_peak() -> tuple[float, str]:
    """(GFlop/s of one core in float32, how it was derived)."""
    info = Path("/proc/cpuinfo").read_text()
    flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
    mhz = float(next(line for line in info.splitlines() if line.startswith("cpu MHz"))
                .split(":")[1])
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    return 2 * lanes * 2 * mhz / 1e3, f"2 FMA x {lanes} floats x 2 x {mhz / 1e3:.2f} GHz"


def engine_seconds(reps: int = 5) -> dict[str, float]:
    """Best seconds of one u2netp run on one thread, for each engine installed."""
    from bgrm.engine import openvino_installed
    from bgrm.models import resolve
    from bgrm.segment import Segmenter

    model = resolve("u2netp", notice=lambda message: None)
    tensor = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    out = {}
    for name in ("onnxruntime", *(("openvino",) if openvino_installed() else ())):
        seg = Segmenter(model, "cpu", threads=1, engine=name)
        seg.predict(tensor)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            seg.predict(tensor)
            times.append(time.perf_counter() - start)
        out[name] = min(times)
    return out


def main() -> None:
    work = u2netp_flops()
    peak, how = core_peak()
    print(f"u2netp: {work / 1e9:.2f} GFlop a run (convolutions); one core's peak {peak:.0f} "
          f"GFlop/s ({how}); load average {os.getloadavg()[0]:.2f}")
    for name, seconds in engine_seconds().items():
        rate = work / seconds / 1e9
        print(f"{name:12s} {seconds * 1e3:6.0f} ms a run, {rate:5.0f} GFlop/s, "
              f"{rate / peak:.2f} of peak")


if __name__ == "__main__":
    main()
