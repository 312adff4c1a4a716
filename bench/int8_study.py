"""The int8 study of u2netp: what each technique does to the masks and the speed.

    .venv/bin/python bench/int8_study.py [--photos DIR] [--more] [--sensitivity]

Every variant is built here from the bundled fp32 model: opset 13 (per-channel
int8 needs it), onnxruntime's pre-processing, static QDQ quantization (uint8
activations, per-channel symmetric int8 weights, MinMax ranges) calibrated on
scikit-image photos that are never judged, then, where named, two repairs of
the weights: bias correction (each conv's bias minus its weight error times
the mean of its input, Nagel et al. 2019) and GPTQ rounding (each conv's int8
weights chosen column by column to undo the output error of those already
rounded, from the Hessian of its inputs; Frantar et al. 2022). Masks are
judged at full size against fp32 (IoU cut at half, mean absolute difference)
on the fixtures, their mirrors and crops, and on the photos of --photos DIR.
``make bench`` prints the same variants through bench.py's int8 row.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FP32 = ROOT / "bgrm" / "assets" / "u2netp.onnx"
FIXTURES = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
CALIBRATION = ["motorcycle_left.png", "motorcycle_right.png", "camera.png", "horse.png",
               "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png", "coins.png",
               "moon.png", "page.png", "brick.png", "grass.png", "gravel.png",
               "clock_motion.png", "logo.png", "cell.png", "text.png"]
# Where the error enters (per-layer sensitivity, --sensitivity): conv 787's
# input has one channel reaching 228 where the rest stay under 20, and its
# weights alone quantized take the worst IoU to 0.48; the fusion conv 1047 has
# one weight 207x the others. The five after them are the next most sensitive
# of the cheap convs (0.99 or less alone; 6.7% of the MACs together).
OUTLIER_PATH = ["Conv_765", "Relu_766", "Resize_785", "Concat_786", "Conv_787"]
SENSITIVE = ["Conv_0", "Conv_8", "Conv_136", "Conv_415", "Conv_497"]


def segmenter(path: Path):
    from bgrm.models import REGISTRY, ResolvedModel
    from bgrm.segment import Segmenter

    return Segmenter(ResolvedModel(REGISTRY["u2netp"], Path(path)), "cpu")


def photos_from(paths: list[Path]) -> list[tuple[str, Image.Image]]:
    """Each photo, its mirror and a crop: three framings the model sees differently."""
    out = []
    for path in paths:
        im = Image.open(path).convert("RGB")
        w, h = im.size
        out += [(path.stem, im), (f"{path.stem} mirrored", im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
                (f"{path.stem} cropped", im.crop((w // 8, h // 10, w - w // 6, h - h // 12)))]
    return out


def calibration_tensors() -> list[np.ndarray]:
    import skimage

    seg = segmenter(FP32)
    data = Path(skimage.__file__).parent / "data"
    tensors = []
    for name in CALIBRATION:
        photo = Image.open(data / name).convert("RGB")
        w, h = photo.size
        for im in (photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                   photo.crop((w // 6, h // 6, w - w // 5, h - h // 5))):
            tensors.append(seg.prepare(im))
    return tensors


def prepared(work: Path) -> Path:
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    opset13, pre = work / "u2netp13.onnx", work / "u2netp_pre.onnx"
    onnx.save(version_converter.convert_version(onnx.load(FP32), 13), opset13)
    quant_pre_process(str(opset13), str(pre), skip_symbolic_shape=True)
    return pre


def _conv_attrs(node):
    from onnx import helper

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    return a.get("pads", [0, 0, 0, 0]), a.get("dilations", [1, 1])


def input_statistics(pre: Path, tensors, samples: int = 2048, seed: int = 0):
    """Per conv of the fp32 graph: the mean of each input channel, and the Hessian
    X X^T of its input patches (``samples`` random positions per photo)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(pre)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    names = sorted({n.input[0] for n in convs} - {"input.1"})
    for name in names:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    means, hessians = {}, {}
    for t in tensors:
        feats = dict(zip(names, session.run(names, {"input.1": t}), strict=True))
        feats["input.1"] = t
        for n in convs:
            _, channels, kh, kw = weights[n.input[1]].shape
            (top, left, bottom, right), (dy, dx) = _conv_attrs(n)
            x = feats[n.input[0]][0]
            means[n.name] = means.get(n.name, 0) + x.mean(axis=(1, 2)).astype(np.float64) / len(tensors)
            x = np.pad(x, ((0, 0), (top, bottom), (left, right)))
            rows, cols = x.shape[1] - dy * (kh - 1), x.shape[2] - dx * (kw - 1)
            pick = rng.choice(rows * cols, min(samples, rows * cols), replace=False)
            ys, xs = pick // cols, pick % cols
            patches = np.stack([x[:, ys + i * dy, xs + j * dx] for i in range(kh) for j in range(kw)],
                               axis=1).reshape(channels * kh * kw, -1).astype(np.float64)
            hessians[n.name] = hessians.get(n.name, 0) + patches @ patches.T
    return means, hessians


def gptq_round(w: np.ndarray, scale: np.ndarray, hessian: np.ndarray, damp: float = 0.01):
    """int8 weights on onnxruntime's per-channel grid (``scale``), chosen one input
    column at a time so that the rounding error of each is carried into those after."""
    rows = w.shape[0]
    wm = w.reshape(rows, -1).astype(np.float64).copy()
    h = hessian.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    wm[:, dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    s = scale.reshape(rows, 1).astype(np.float64)
    q = np.zeros_like(wm)
    for i in range(wm.shape[1]):
        q[:, i:i + 1] = np.clip(np.round(wm[:, i:i + 1] / s), -127, 127)
        err = (wm[:, i:i + 1] - q[:, i:i + 1] * s) / upper[i, i]
        wm[:, i + 1:] -= err * upper[i:i + 1, i + 1:]
    return q.reshape(w.shape).astype(np.int8)


def on_int8_grid(w: np.ndarray) -> np.ndarray:
    """Conv weights rounded to onnxruntime's per-channel symmetric int8 grid
    (scale = the row's largest magnitude / 127), back in float32."""
    s = np.abs(w).reshape(len(w), -1).max(1)[:, None, None, None] / 127
    return (np.round(w / np.where(s > 0, s, 1)) * s).astype(np.float32)


def quantized(pre: Path, dst: Path, tensors, exclude=()) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(tensors)

        def get_next(self):
            t = next(self.it, None)
            return None if t is None else {"input.1": t}

    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(exclude))
    return dst


def repaired(qdq: Path, dst: Path, pre: Path, stats, gptq: bool) -> Path:
    """Rewrite a QDQ model's int8 weights (GPTQ, or onnxruntime's own rounding
    kept) and its int32 biases (bias correction against the fp32 input means)."""
    import onnx
    from onnx import numpy_helper

    means, hessians = stats
    model = onnx.load(qdq)
    init = {i.name: i for i in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(pre).graph.initializer}
    fp32_convs = {n.name: n for n in onnx.load(pre).graph.node if n.op_type == "Conv"}
    for n in model.graph.node:
        dq_w = made_by.get(n.input[1]) if n.op_type == "Conv" else None
        if dq_w is None or dq_w.op_type != "DequantizeLinear":
            continue  # a conv left in fp32
        orig = fp32_convs[n.name]
        w = fp32[orig.input[1]]
        scale = numpy_helper.to_array(init[dq_w.input[1]])
        q = gptq_round(w, scale, hessians[n.name]) if gptq else numpy_helper.to_array(init[dq_w.input[0]])
        init[dq_w.input[0]].CopyFrom(numpy_helper.from_array(q, dq_w.input[0]))
        if len(n.input) > 2:
            dq_b = made_by[n.input[2]]
            error = (q.astype(np.float64) * scale.reshape(-1, 1, 1, 1) - w).sum(axis=(2, 3))
            bias = fp32[orig.input[2]].astype(np.float64) - error @ means[n.name]
            b_scale = numpy_helper.to_array(init[dq_b.input[1]])
            init[dq_b.input[0]].CopyFrom(numpy_helper.from_array(
                np.round(bias / b_scale).astype(np.int32), dq_b.input[0]))
    onnx.save(model, dst)
    return dst


def fp16_weights(pre: Path, dst: Path) -> Path:
    """fp32 with every conv weight rounded through float16: not a speed-up, the
    smallest perturbation a reduced precision can make, for scale."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(pre)
    for i in model.graph.initializer:
        a = numpy_helper.to_array(i)
        if a.dtype == np.float32 and a.ndim == 4:
            i.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), i.name))
    onnx.save(model, dst)
    return dst


def variants(work: Path, tensors) -> list[tuple[str, Path]]:
    """The study's rows, cheapest repair first."""
    import onnx

    pre = prepared(work)
    sigmoids = [n.name for n in onnx.load(pre).graph.node if n.op_type == "Sigmoid"]
    head = ["Concat_1046", "Conv_1047", *sigmoids]
    stats = input_statistics(pre, tensors)
    every = quantized(pre, work / "every.onnx", tensors)
    kept = quantized(pre, work / "kept.onnx", tensors, OUTLIER_PATH + head)
    kept5 = quantized(pre, work / "kept5.onnx", tensors, OUTLIER_PATH + head + SENSITIVE)
    return [
        ("every op int8", every),
        ("every op + bias correction", repaired(every, work / "every-bc.onnx", pre, stats, False)),
        ("every op + GPTQ + bias corr.", repaired(every, work / "every-g.onnx", pre, stats, True)),
        ("all but conv 787 path + head, GPTQ + b.c.",
         repaired(kept, work / "kept-g.onnx", pre, stats, True)),
        ("that + 5 sensitive convs fp32, GPTQ + b.c.",
         repaired(kept5, work / "kept5-g.onnx", pre, stats, True)),
        ("fp32, weights rounded to fp16 (floor)", fp16_weights(pre, work / "fp16w.onnx")),
    ]


def judge(path: Path, photos, refs) -> list[tuple[float, float]]:
    """(IoU, mean abs difference /255) of each photo's full-size mask against fp32's."""
    seg = segmenter(path)
    out = []
    for (_, photo), ref in zip(photos, refs, strict=True):
        m = np.asarray(seg.mask(photo), dtype=np.int16)
        x, y = m >= 128, ref >= 128
        out.append(((x & y).sum() / max((x | y).sum(), 1), float(np.abs(m - ref).mean())))
    return out


def speed(path: Path, tensor: np.ndarray, reps: int = 5) -> tuple[float, float]:
    """Median seconds per inference of fp32 and of ``path``, alternated in this process."""
    a, b = segmenter(FP32), segmenter(path)
    times: dict = {a: [], b: []}
    for s in (a, b):
        s.predict(tensor)
    for _ in range(reps):
        for s in (a, b):
            start = time.perf_counter()
            for _ in range(3):
                s.predict(tensor)
            times[s].append((time.perf_counter() - start) / 3)
    return statistics.median(times[a]), statistics.median(times[b])


def sensitivity(pre: Path, photos, refs) -> None:
    """Weights of one conv at a time rounded to per-channel int8 (activations fp32)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(pre)
    init = {i.name: i for i in model.graph.initializer}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [n for n in model.graph.node if n.op_type == "Conv"]:
            w = numpy_helper.to_array(init[n.input[1]])
            init[n.input[1]].CopyFrom(numpy_helper.from_array(on_int8_grid(w), n.input[1]))
            onnx.save(model, Path(tmp) / "one.onnx")
            init[n.input[1]].CopyFrom(numpy_helper.from_array(w, n.input[1]))
            r = judge(Path(tmp) / "one.onnx", photos, refs)
            rows.append((min(i for i, _ in r), n.name, max(m for _, m in r)))
    for iou, name, mad in sorted(rows)[:12]:
        print(f"  {name:10s} alone: worst IoU {iou:.3f}, worst MAD {mad:.2f}")


def equalized(pre: Path, dst: Path, tensors, alpha: float) -> Path:
    """Cross-layer equalization: each ReLU conv's output channel c divided by
    s_c and every conv that reads it (through MaxPool, Resize, Concat) given
    input column c times s_c; exact, as ReLU(x / s) = ReLU(x) / s. s_c =
    a_c^alpha / w_c^(1 - alpha) over their geometric mean, a_c the channel's
    largest calibration value, w_c its largest weight relative to the row:
    alpha 0 evens out the weights (Nagel et al.), 0.5 the products."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(pre)
    g = model.graph
    made_by = {o: n for n in g.node for o in n.output}
    readers: dict = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    w = {i.name: numpy_helper.to_array(i).copy() for i in g.initializer}
    channels = {"input.1": 3}
    for n in g.node:
        if n.op_type == "Conv":
            channels[n.output[0]] = w[n.input[1]].shape[0]
        elif n.op_type == "Concat":
            channels[n.output[0]] = sum(channels[i] for i in n.input)
        else:
            channels[n.output[0]] = channels.get(n.input[0], 0)

    def reached(tensor, offset, found):
        """The convs reading ``tensor`` (with the channel offset there), or None
        when something else (Add, Sigmoid, an output) reads it."""
        for n in readers.get(tensor, []):
            if n.input[0] != tensor and n.op_type != "Concat":
                return None
            if n.op_type == "Conv":
                found.append((n, offset))
            elif n.op_type in ("MaxPool", "Resize", "Relu", "Concat"):
                at = offset + sum(channels[i] for i in n.input[:list(n.input).index(tensor)]) \
                    if n.op_type == "Concat" else offset
                if reached(n.output[0], at, found) is None:
                    return None
            else:
                return None
        return found

    pairs = []
    for n in g.node:
        conv = made_by.get(n.input[0]) if n.op_type == "Relu" else None
        if conv is not None and conv.op_type == "Conv" and len(readers[n.input[0]]) == 1:
            found = reached(n.output[0], 0, [])
            if found:
                pairs.append((conv, n.output[0], found))
    probe = onnx.load(pre)
    for _, name, _ in pairs:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [name for _, name, _ in pairs]
    top = {name: 0 for name in names}
    for t in tensors:
        for name, v in zip(names, session.run(names, {"input.1": t}), strict=True):
            top[name] = np.maximum(top[name], v.max(axis=(0, 2, 3)))
    for conv, name, found in pairs:
        a = np.maximum(top[name], 1e-6)
        rel = np.zeros(len(a))
        for reader, at in found:
            k = w[reader.input[1]]
            col = np.abs(k[:, at:at + len(a)]).max(axis=(2, 3))
            rel = np.maximum(rel, (col / np.abs(k).reshape(len(k), -1).max(1, keepdims=True)).max(0))
        s = a ** alpha / np.maximum(rel, 1e-6) ** (1 - alpha)
        s = np.clip(s / np.exp(np.log(s).mean()), 1e-3, 1e3).astype(np.float32)
        w[conv.input[1]] /= s[:, None, None, None]
        w[conv.input[2]] /= s
        for reader, at in found:
            w[reader.input[1]][:, at:at + len(a)] *= s[None, :, None, None]
    for i in g.initializer:
        if i.name in w and w[i.name].dtype == np.float32:
            i.CopyFrom(numpy_helper.from_array(w[i.name], i.name))
    onnx.save(model, dst)
    return dst


def weights_only(pre: Path, dst: Path) -> Path:
    """fp32 with every conv weight on the per-channel int8 grid: the weights' share."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(pre)
    convs = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for i in model.graph.initializer:
        if i.name in convs:
            w = numpy_helper.to_array(i)
            i.CopyFrom(numpy_helper.from_array(on_int8_grid(w), i.name))
    onnx.save(model, dst)
    return dst


def more(work: Path, tensors) -> list[tuple[str, Path]]:
    """--more: the weights' share of the error, and cross-layer equalization
    (with and without the repairs), on top of the main variants."""
    import onnx

    pre = work / "u2netp_pre.onnx"
    sigmoids = [n.name for n in onnx.load(pre).graph.node if n.op_type == "Sigmoid"]
    keep = OUTLIER_PATH + ["Concat_1046", "Conv_1047", *sigmoids]
    rows = [("weights int8 only, activations fp32", weights_only(pre, work / "wonly.onnx"))]
    for alpha in (0.0, 0.5):
        eq = equalized(pre, work / f"cle{alpha}.onnx", tensors, alpha)
        stats = input_statistics(eq, tensors)
        for label, exclude in (("every op", []), ("all but 787 path + head", keep)):
            q = quantized(eq, work / f"cle{alpha}-{len(rows)}.onnx", tensors, exclude)
            rows.append((f"CLE alpha {alpha}, {label}", q))
            rows.append((f"CLE alpha {alpha}, {label}, GPTQ + b.c.",
                         repaired(q, work / f"cle{alpha}-{len(rows)}g.onnx", eq, stats, True)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="a folder of more photos to judge on")
    parser.add_argument("--more", action="store_true",
                        help="also the weights' share and cross-layer equalization")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also print the 12 convs most sensitive alone")
    args = parser.parse_args()
    paths = [ROOT / "fixtures" / f for f in FIXTURES]
    if args.photos:
        paths += sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".png", ".jpg"))
    photos = photos_from(paths)
    ref = segmenter(FP32)
    refs = [np.asarray(ref.mask(p), dtype=np.int16) for _, p in photos]
    tensors = calibration_tensors()
    with tempfile.TemporaryDirectory(prefix="bgrm-int8-") as tmp:
        work = Path(tmp)
        rows = variants(work, tensors)
        for name, path in rows + (more(work, tensors) if args.more else []):
            r = judge(path, photos, refs)
            t32, t8 = speed(path, tensors[0])
            worst = min(range(len(r)), key=lambda i: r[i][0])
            print(f"{name}: {t32 / t8:.2f}x fp32 speed; worst IoU {r[worst][0]:.3f} "
                  f"({photos[worst][0]}), worst MAD {max(m for _, m in r):.1f}; "
                  f"{sum(i >= 0.98 and m <= 4 for i, m in r)}/{len(r)} photos within target")
            print("   " + " ".join(f"{i:.3f}" for i, _ in r))
        if args.sensitivity:
            sensitivity(work / "u2netp_pre.onnx", photos, refs)


if __name__ == "__main__":
    main()
