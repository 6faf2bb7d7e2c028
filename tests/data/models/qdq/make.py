"""Quantised (QDQ) ONNX models as ONNX Runtime's static quantiser writes them, for issue 25.

    target/bench-venv/bin/python tests/data/models/qdq/make.py

From the vendored float models beside this folder:

- `resnet8-fmnist.int8.onnx`: ../resnet8-fmnist.onnx, calibrated on the first 1,000
  Fashion-MNIST training images (/usr/share/datasets/fashion-mnist/);
- `lenet5.int8.onnx`: ../lenet5.onnx, calibrated on the first 1,000 MNIST training images
  (assets/mnist);
- `NAME.int8-s8act.onnx`: the same with int8 (asymmetric) instead of uint8 activations.

Each: `onnxruntime.quantization.quant_pre_process` (ONNX Runtime's documented preparation:
shape inference and basic graph optimisation, which folds BatchNormalization into Conv), then
`quantize_static(quant_format=QDQ, per_channel=True, weight_type=QInt8, activation_type=QUInt8
(or QInt8), calibrate_method=MinMax)`, every other option left at its default (weights
symmetric, activations asymmetric, reduce_range False). The first N images are taken in order,
so no randomness is involved (MinMax calibration is deterministic).

Beside each: `NAME.golden.safetensors` (`x`: the first 16 test images, `y`, `logits_ort`: ONNX
Runtime on the quantised model, CPU, graph optimisations disabled; `logits_ort_opt`: the same
with ONNX Runtime's default optimisation level (ORT_ENABLE_ALL); `logits_float`: ONNX Runtime
on the float model) and `NAME.json` (accuracy on the 10,000 test images, agreement between the
two optimisation levels, the graph's opsets, op types, node patterns, scale and zero-point types).
"""

import gzip
import json
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent
REPO = HERE.parents[3]
DATA = {"mnist": REPO / "assets" / "mnist", "fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
CALIBRATION_IMAGES = 1000
THREADS = 2


def read_idx(path):
    data = gzip.open(path).read()
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims).reshape(dims)


def dataset(name, split):
    images = read_idx(DATA[name] / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(DATA[name] / f"{split}-labels-idx1-ubyte.gz")
    return (images.astype(np.float32) / 255.0)[:, None], labels.astype(np.int64)


class Reader(CalibrationDataReader):
    def __init__(self, x, batch=100):
        self.batches = [{"images": x[i : i + batch]} for i in range(0, len(x), batch)]
        self.i = 0

    def get_next(self):
        if self.i == len(self.batches):
            return None
        self.i += 1
        return self.batches[self.i - 1]


def session(path, optimise):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def predict(sess, x, batch=500):
    return np.concatenate([sess.run(None, {"images": x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def ties(logits, y):
    """Images whose largest logit is shared by several classes, and how many of them have the
    true class among the tied ones."""
    top = logits.max(1, keepdims=True)
    tied = (logits == top).sum(1) > 1
    return int(tied.sum()), int((tied & (logits[np.arange(len(y)), y] == top[:, 0])).sum())


def optimised_graph_ops(path, tmp):
    """The op types ONNX Runtime runs after its default optimisations (the graph it saves)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    m = onnx.load(str(tmp))
    tmp.unlink()
    return dict(sorted(Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node).items()))


TYPE = {v: k for k, v in onnx.TensorProto.DataType.items()}


def describe(path):
    """Opsets, op types, and the QDQ patterns of a quantised graph."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    patterns = Counter()
    qparams = Counter()
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        src = n.input[0]
        what = ("initialiser " + TYPE[inits[src].data_type]) if src in inits else \
               ("graph input" if src not in producers else f"output of {producers[src].op_type}")
        axis = [a.i for a in n.attribute if a.name == "axis"]
        scale = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        per = "per-tensor" if scale is None or scale.ndim == 0 else f"per-axis ({scale.shape[0]} scales)"
        users = sorted({u.op_type for u in consumers.get(n.output[0], [])})
        zp_desc = "no zero point" if zp is None else f"zero point {TYPE[zp.data_type]} {list(zp.dims)}"
        zp_vals = "" if zp is None else (" all 0" if not numpy_helper.to_array(zp).any() else " nonzero")
        scale_desc = "scale " + (TYPE[inits[n.input[1]].data_type] + f" {list(inits[n.input[1]].dims)}"
                                 if n.input[1] in inits else "computed")
        patterns[f"{n.op_type}({what}), {per}, axis={axis[0] if axis else 'absent'}, {scale_desc}, "
                 f"{zp_desc}{zp_vals} -> {'/'.join(users) or 'graph output'}"] += 1
        qparams[(TYPE[inits[n.input[1]].data_type] if n.input[1] in inits else "?",
                 TYPE[zp.data_type] if zp is not None else "-")] += 1
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}",
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "op_types": dict(sorted(Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node).items())),
        "initialiser_types": dict(sorted(Counter(TYPE[t.data_type] for t in m.graph.initializer).items())),
        "qdq_patterns": dict(sorted(patterns.items())),
        "scale_and_zero_point_types": {f"scale {s}, zero point {z}": c for (s, z), c in sorted(qparams.items())},
    }


def make(name, dataset_name, variants):
    float_path = MODELS / f"{name}.onnx"
    x_cal, _ = dataset(dataset_name, "train")
    x_cal = x_cal[:CALIBRATION_IMAGES]
    x_test, y_test = dataset(dataset_name, "t10k")
    pre = HERE / f"{name}.pre.onnx"
    quant_pre_process(str(float_path), str(pre))
    float_logits = predict(session(float_path, False), x_test)
    pre_logits = predict(session(pre, False), x_test)
    for suffix, act_type in variants:
        out = HERE / f"{name}.{suffix}.onnx"
        quantize_static(str(pre), str(out), Reader(x_cal), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=act_type,
                        calibrate_method=CalibrationMethod.MinMax)
        plain = predict(session(out, False), x_test)
        opt = predict(session(out, True), x_test)
        p_plain, p_opt, p_float = plain.argmax(1), opt.argmax(1), float_logits.argmax(1)
        tag = f"{name}.{suffix}"
        record = {
            "model": tag,
            "from": f"../{float_path.name}",
            "dataset": dataset_name,
            "quantize_static": {"quant_format": "QDQ", "per_channel": True, "weight_type": "QInt8",
                                "activation_type": str(act_type).split(".")[-1], "calibrate_method": "MinMax",
                                "reduce_range": False, "calibration_images": f"the first {CALIBRATION_IMAGES} training images",
                                "preprocessing": "onnxruntime.quantization.quant_pre_process, defaults"},
            "onnxruntime": ort.__version__,
            "test_images": len(y_test),
            "acc_ort_int8_no_optimisation": float((p_plain == y_test).mean()),
            "acc_ort_int8_default_optimisation": float((p_opt == y_test).mean()),
            "acc_ort_float": float((p_float == y_test).mean()),
            "acc_ort_float_preprocessed": float((pre_logits.argmax(1) == y_test).mean()),
            "predictions_differing_no_opt_vs_opt": int((p_plain != p_opt).sum()),
            "predictions_differing_int8_vs_float": int((p_plain != p_float).sum()),
            "max_abs_logit_diff_no_opt_vs_opt": float(np.abs(plain - opt).max()),
            # The logits leave the graph through QuantizeLinear/DequantizeLinear, so they lie on
            # a grid and the top two can tie; argmax here takes the first (lowest) class index.
            "argmax_ties_no_opt": ties(plain, y_test)[0],
            "argmax_ties_no_opt_true_class_among_tied": ties(plain, y_test)[1],
            "argmax_ties_opt": ties(opt, y_test)[0],
            "max_abs_logit_diff_int8_vs_float": float(np.abs(plain - float_logits).max()),
            "max_abs_logit_diff_float_vs_preprocessed": float(np.abs(pre_logits - float_logits).max()),
            "graph": describe(out),
            "onnxruntime_optimised_graph_ops": optimised_graph_ops(out, HERE / f"{tag}.tmp.onnx"),
        }
        (HERE / f"{tag}.json").write_text(json.dumps(record, indent=1) + "\n")
        golden = {
            "x": torch.from_numpy(x_test[:16].copy()),
            "y": torch.from_numpy(y_test[:16].copy()),
            "logits_ort": torch.from_numpy(plain[:16].copy()),
            "logits_ort_opt": torch.from_numpy(opt[:16].copy()),
            "logits_float": torch.from_numpy(float_logits[:16].copy()),
        }
        save_file(golden, str(HERE / f"{tag}.golden.safetensors"))
        (HERE / f"{tag}.golden.safetensors").chmod(0o644)
        print(json.dumps({k: v for k, v in record.items() if k not in ("graph",)}, indent=1), flush=True)
        print(json.dumps(record["graph"], indent=1), flush=True)
    pre.unlink()


def main():
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}", flush=True)
    variants = [("int8", QuantType.QUInt8), ("int8-s8act", QuantType.QInt8)]
    make("resnet8-fmnist", "fashion-mnist", variants)
    make("lenet5", "mnist", variants)


if __name__ == "__main__":
    main()
