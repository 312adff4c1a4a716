"""Small ONNX stand-ins for each model family, with the real models' signatures.

Only u2netp's real weights exist here. These graphs take and give what the real
exports do (input name, N x 3 x S x S float, the map as the first output, plus
a second output as the real multi-output exports have) and compute a cheap but
image-dependent map: average pooling to 64 x 64, two seeded 3x3 convolutions
with a ReLU between, bilinear resize back to S, and the family's last step (a sigmoid
inside the graph for U^2-Net, IS-Net and BRIA; raw logits for BiRefNet, whose
session applies the sigmoid). Runs in tens of milliseconds at 1024.

Used by the parity tests and by ``make bench`` (bench/bench.py imports it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# name of the input, whether the graph ends in a sigmoid, batch dim as exported
SIGNATURES = {
    "u2net": ("input.1", True, 1, 320),
    "isnet": ("input_image", True, 1, 1024),
    "birefnet": ("input_image", False, "batch_size", 1024),
    "bria": ("pixel_values", True, "batch", 1024),
}


def standin_onnx(path: Path, family: str, seed: int = 0, size: int | None = None,
                 in_channels: int = 3, out_channels: int = 1,
                 batch: int | str | None = None, gain: float = 1.0,
                 weight_mb: float = 0) -> Path:
    """Write a stand-in of ``family`` to ``path``; ``size``/channels/batch override
    the family's signature (for wrong-shape tests). ``gain`` scales the last
    convolution: above 1 the map is nearer 0 or 1, as a real model's mostly is.
    ``weight_mb``: that many MB of weights more, which a session must hold in
    memory (read at run time at an index the picture gives, so never folded
    away), for a model as heavy as a real one."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    input_name, sigmoid, exported_batch, side = SIGNATURES[family]
    side = size or side
    batch = exported_batch if batch is None else batch
    rng = np.random.default_rng(seed)
    # Colour features blurred over 3x3 (a map of regions rather than of edges),
    # then a seeded mix of them.
    blur = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float32) / 16
    colours = rng.normal(0.0, 1.0, (4, in_channels)).astype(np.float32)
    w1 = colours[:, :, None, None] * blur
    w2 = (gain * rng.normal(0.0, 0.6, (out_channels, 4, 3, 3))).astype(np.float32)
    factor = side // 64  # pooled to 64 x 64 (320 -> 5, 1024 -> 16)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([1, 1, factor, factor], dtype=np.float32),
                                     "scales"),
             numpy_helper.from_array(np.array([], dtype=np.float32), "roi")]
    last = "map" if not sigmoid else "logits"
    nodes = [
        helper.make_node("AveragePool", [input_name], ["pooled"], kernel_shape=[factor, factor],
                         strides=[factor, factor]),
        helper.make_node("Conv", ["pooled", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c2", "roi", "scales"], [last], mode="linear"),
    ]
    if weight_mb:
        count = int(weight_mb * 1e6 / 4)
        inits += [numpy_helper.from_array(np.full(count, 0.5, dtype=np.float32), "ballast"),
                  numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
        nodes[-2].output[0] = "c2raw"
        nodes[-1:-1] = [
            helper.make_node("ReduceMin", [input_name], ["least"], keepdims=0),
            helper.make_node("Mul", ["least", "zero"], ["nought"]),
            helper.make_node("Cast", ["nought"], ["index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["ballast", "index"], ["picked"]),
            helper.make_node("Mul", ["picked", "zero"], ["none"]),
            helper.make_node("Add", ["c2raw", "none"], ["c2"]),
        ]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["map"]))
    nodes.append(helper.make_node("Identity", ["map"], ["side1"]))
    out_shape = [batch, out_channels, side, side]
    graph = helper.make_graph(
        nodes, f"standin_{family}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                       [batch, in_channels, side, side])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, out_shape),
         helper.make_tensor_value_info("side1", TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime >= 1.16 (our floor) reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def broken_onnx(path: Path, output: str) -> Path:
    """A u2net-shaped graph (1 x 3 x 320 x 320 in, a 1 x 1 x H x W map declared out)
    whose map is broken only when it runs: ``"nan"`` (every value NaN, as a bad
    float16 export gives) or ``"empty"`` (0 rows)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mean = helper.make_node("ReduceMean", ["input.1"], ["grey"], axes=[1], keepdims=1)
    if output == "nan":
        inits = [numpy_helper.from_array(np.array([np.nan], dtype=np.float32), "nan")]
        last = helper.make_node("Mul", ["grey", "nan"], ["map"])
    else:
        inits = [numpy_helper.from_array(np.array([0], dtype=np.int64), name)
                 for name in ("start", "end")] + \
            [numpy_helper.from_array(np.array([2], dtype=np.int64), "axis")]
        last = helper.make_node("Slice", ["grey", "start", "end", "axis"], ["map"])
    graph = helper.make_graph(
        [mean, last], f"broken_{output}",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 1, "h", "w"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
