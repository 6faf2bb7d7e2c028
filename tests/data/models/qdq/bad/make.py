"""Writes the malformed quantised (QDQ) ONNX models the import tests refuse, and records what
ONNX Runtime does with each (run: python3 make.py; needs `onnx`, `numpy`; `onnxruntime` for the
record in ort.json).

Each is a tiny graph, valid ONNX (onnx.checker with full_check passes), with one hostile thing
in its QuantizeLinear / DequantizeLinear nodes. Images [N, 1, 28, 28] in [0, 1], logits [N, 10].
"""
import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

node = helper.make_node
DESCRIPTIONS = {}


def save(name, description, nodes, inits, opset=17):
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 10
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, f"{name}.onnx")
    DESCRIPTIONS[name] = description


def f32(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def tensor(name, dtype, dims, values):
    return helper.make_tensor(name, dtype, dims, values)


# The float tail shared by every graph: Flatten -> Gemm (10 x 784).
fc = f32("fc.weight", np.full((10, 784), 0.01))
tail = [node("Flatten", ["dq"], ["flat"], name="flatten", axis=1),
        node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]


def activation_qdq(scale, zero_point, opset=17):
    """images -> QuantizeLinear -> DequantizeLinear -> dq (per tensor)."""
    return [node("QuantizeLinear", ["images", "s", "zp"], ["q"], name="quant"),
            node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dequant")], [scale, zero_point]


# A conv whose int8 weight [4, 1, 3, 3] goes through DequantizeLinear (ONNX Runtime's QDQ form
# for weights), then the float tail: Conv (pads 1) -> [N, 4, 28, 28] -> Flatten -> Gemm.
fc_conv = f32("fc.weight", np.full((10, 4 * 28 * 28), 0.01))
conv_tail = [node("Conv", ["images", "w_dq"], ["dq"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Flatten", ["dq"], ["flat"], name="flatten", axis=1),
             node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)]
w_int8 = numpy_helper.from_array(np.arange(-18, 18, dtype=np.int8).reshape(4, 1, 3, 3), "w_q")


def weight_dq(scale, zero_point, axis=0, quantized=w_int8):
    return [node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w_dq"], name="weight_dequant", axis=axis)], \
           [quantized, scale, zero_point]


# 1. Zero scale on an activation: QuantizeLinear divides by 0.
n, i = activation_qdq(f32("s", 0.0), tensor("zp", TensorProto.UINT8, [], [0]))
save("zero-scale", "activation QuantizeLinear/DequantizeLinear (uint8, per tensor) with scale 0.0",
     n + tail, i + [fc])

# 1b. One zero among the per-channel weight scales.
n, i = weight_dq(f32("w_s", [0.01, 0.0, 0.01, 0.01]), tensor("w_zp", TensorProto.INT8, [4], [0, 0, 0, 0]))
save("zero-scale-weight", "int8 conv weight, DequantizeLinear axis 0, per-channel scales [0.01, 0, 0.01, 0.01]",
     n + conv_tail, i + [fc_conv])

# 2. A zero point outside its type's range. A UINT8 (or INT8) tensor keeps its values in the
#    protobuf's int32_data field, which can hold 300 (or -200): the file is valid ONNX, the
#    value is not representable in the type, and readers differ on what they make of it
#    (numpy_helper.to_array wraps 300 to 44).
zp = TensorProto()
zp.name, zp.data_type = "zp", TensorProto.UINT8
zp.int32_data.append(300)
n, i = activation_qdq(f32("s", 1.0 / 255), zp)
save("zero-point-out-of-range", "activation QDQ, uint8 zero point stored as 300 in int32_data (outside 0..255)",
     n + tail, i + [fc])

zpw = TensorProto()
zpw.name, zpw.data_type = "w_zp", TensorProto.INT8
zpw.dims.append(4)
zpw.int32_data.extend([0, -200, 0, 0])
n, i = weight_dq(f32("w_s", [0.01] * 4), zpw)
save("zero-point-out-of-range-weight", "int8 conv weight DequantizeLinear, per-channel zero points [0, -200, 0, 0] in int32_data",
     n + conv_tail, i + [fc_conv])

# 3. Per-axis scales of the wrong length: 3 scales (and zero points) for 4 output channels.
n, i = weight_dq(f32("w_s", [0.01] * 3), tensor("w_zp", TensorProto.INT8, [3], [0, 0, 0]))
save("per-axis-wrong-length", "int8 conv weight [4,1,3,3], DequantizeLinear axis 0 with 3 scales and 3 zero points",
     n + conv_tail, i + [fc_conv])

# 3b. The axis itself outside the weight's rank.
n, i = weight_dq(f32("w_s", [0.01] * 4), tensor("w_zp", TensorProto.INT8, [4], [0] * 4), axis=4)
save("per-axis-bad-axis", "int8 conv weight [4,1,3,3], DequantizeLinear axis 4 (rank 4) with 4 scales",
     n + conv_tail, i + [fc_conv])

# 4. Integer types outside int8/uint8, all valid ONNX at opset 21 (19 for float8).
n, i = activation_qdq(f32("s", 1.0 / 65535), tensor("zp", TensorProto.INT16, [], [0]), opset=21)
save("int16", "activation QDQ with int16 (opset 21)", n + tail, i + [fc], opset=21)

n, i = activation_qdq(f32("s", 1.0 / 65535), tensor("zp", TensorProto.UINT16, [], [0]), opset=21)
save("uint16", "activation QDQ with uint16 (opset 21)", n + tail, i + [fc], opset=21)

w_int4 = helper.make_tensor("w_q", TensorProto.INT4, [4, 1, 3, 3], (np.arange(36) % 16 - 8).tolist())
n, i = weight_dq(f32("w_s", [0.1] * 4), tensor("w_zp", TensorProto.INT4, [4], [0] * 4), quantized=w_int4)
save("int4-weight", "int4 conv weight with per-channel DequantizeLinear (opset 21)", n + conv_tail, i + [fc_conv],
     opset=21)

n, i = activation_qdq(f32("s", 1.0 / 448), tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0]), opset=19)
save("float8", "activation QDQ with float8 e4m3fn (opset 19)", n + tail, i + [fc], opset=19)

# int32 weights through DequantizeLinear (valid ONNX: int32 is how biases are stored).
w_int32 = numpy_helper.from_array(np.arange(-18, 18, dtype=np.int32).reshape(4, 1, 3, 3), "w_q")
n, i = weight_dq(f32("w_s", [0.01] * 4), tensor("w_zp", TensorProto.INT32, [4], [0] * 4), quantized=w_int32)
save("int32-weight", "int32 conv weight with per-channel DequantizeLinear (valid ONNX; int32 is the bias type)",
     n + conv_tail, i + [fc_conv])


def try_ort():
    """What ONNX Runtime says when it loads and runs each file (both optimisation levels)."""
    import onnxruntime as ort

    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    report = {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "files": {}}
    for name, description in DESCRIPTIONS.items():
        entry = {"description": description}
        for level, opt in (("no_optimisation", ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                           ("default_optimisation", ort.GraphOptimizationLevel.ORT_ENABLE_ALL)):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = opt
            opts.intra_op_num_threads = 1
            try:
                sess = ort.InferenceSession(f"{name}.onnx", opts, providers=["CPUExecutionProvider"])
            except Exception as e:  # noqa: BLE001
                entry[level] = {"load": "refused", "error": str(e).strip()}
                continue
            try:
                (out,) = sess.run(None, {"images": x})
                entry[level] = {"load": "ok", "run": "ok", "finite": bool(np.isfinite(out).all()),
                                "logits_row0": [round(float(v), 6) for v in out[0][:4]]}
            except Exception as e:  # noqa: BLE001
                entry[level] = {"load": "ok", "run": "refused", "error": str(e).strip()}
        report["files"][name] = entry
        print(name, json.dumps(entry, indent=1))
    with open("ort.json", "w") as f:
        f.write(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        sys.exit(0)
    try_ort()
