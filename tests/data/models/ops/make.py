"""Writes small ONNX graphs that exercise each op advcomp imports beyond what the exporters'
zoo (../zoo) holds, in the attribute forms of opsets 13, 17 and 20, with ONNX Runtime's outputs
as goldens (run from this folder: python make.py; needs onnx, onnxruntime, safetensors).

Every graph takes images [N, 2, 6, 6] and returns [N, K]: its branches flattened and
concatenated, so each op's output reaches the "logits" as it is.
"""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

rng = np.random.default_rng(1)
X = rng.random((3, 2, 6, 6), dtype=np.float32)


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.branches, self.k = [], [], [], 0

    def const(self, value, dtype=np.float32):
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op, inputs, **attrs):
        self.k += 1
        out = f"{op.lower()}{self.k}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.k}", **attrs))
        return out

    def ops(self, op, inputs, outputs, **attrs):
        self.k += 1
        outs = [f"{op.lower()}{self.k}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"{op}_{self.k}", **attrs))
        return outs

    def out(self, value):
        self.branches.append(self.op("Flatten", [value], axis=1))

    def save(self, name, opset):
        self.nodes.append(helper.make_node("Concat", self.branches, ["logits"], name="logits",
                                           axis=1))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 2, 6, 6])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None])],
            self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, f"{name}.onnx")
        session = ort.InferenceSession(f"{name}.onnx", providers=["CPUExecutionProvider"])
        return session.run(None, {"images": X})[0]


golden = {"x": X}

# Elementwise functions and activations (opset 17).
g = Graph()
xs = g.op("Sub", ["images", g.const(0.5)])
pos = g.op("Add", ["images", g.const(0.5)])
for op, attrs in [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}),
                  ("Elu", {"alpha": 0.7}), ("Selu", {}), ("Softplus", {}),
                  ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {}), ("Erf", {}),
                  ("Exp", {}), ("Neg", {}), ("Abs", {})]:
    g.out(g.op(op, [xs], **attrs))
for op in ["Log", "Sqrt", "Reciprocal"]:
    g.out(g.op(op, [pos]))
g.out(g.op("Pow", [pos, g.const(1.7)]))
g.out(g.op("Clip", [xs, g.const(-0.2)]))
g.out(g.op("Min", [xs, g.const([[[0.1]], [[-0.1]]])]))
g.out(g.op("Max", [xs, g.const(0.2)]))
g.out(g.op("Div", [xs, pos]))
golden["elementwise_opset17"] = g.save("elementwise.opset17", 17)

# Shapes, reductions and movement in opset 13's forms (axes and split as inputs).
g = Graph()
axes = lambda *a: g.const(list(a), np.int64)
g.out(g.op("ReduceSum", ["images", axes(2, 3)], keepdims=1))
g.out(g.op("ReduceMax", ["images"], axes=[1], keepdims=0))
g.out(g.op("ReduceMean", ["images"], axes=[-1], keepdims=0))
g.out(g.op("GlobalMaxPool", ["images"]))
g.out(g.op("Unsqueeze", [g.op("Squeeze", [g.op("ReduceSum", ["images", axes(1)], keepdims=1),
                                          axes(1)]), axes(3)]))
a, b = g.ops("Split", ["images", axes(1, 1)], 2, axis=1)
g.out(g.op("Sub", [a, b]))
g.out(g.op("Slice", ["images", axes(-1, 4), axes(-7, 0), axes(3, 2), axes(-2, -1)]))
g.out(g.op("Gather", ["images", g.const([[-1, 0], [3, 3]], np.int64)], axis=2))
g.out(g.op("Transpose", ["images"], perm=[0, 3, 1, 2]))
g.out(g.op("Mul", ["images", g.op("Expand", [g.const([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0]]),
                                             axes(2, 1, 6)])]))
g.out(g.op("Where", [g.const(np.eye(6, dtype=bool), bool), "images",
                     g.op("Neg", ["images"])]))
g.out(g.op("Softmax", ["images"], axis=-1))
g.out(g.op("LogSoftmax", ["images"], axis=1))
g.out(g.op("MatMul", ["images", g.op("Transpose", ["images"], perm=[0, 1, 3, 2])]))
g.out(g.op("MatMul", ["images", g.const(rng.random((6, 3)) - 0.5)]))
g.out(g.op("Pad", ["images", axes(0, 1, 2, 0, 0, 0, 1, 1), g.const(0.25)], mode="constant"))
g.out(g.op("Reshape", ["images", axes(0, -1, 4)]))
golden["shapes_opset13"] = g.save("shapes.opset13", 13)

# Windows and normalisation (opset 17).
g = Graph()
w = g.const((rng.random((4, 1, 3, 3)) - 0.5))
g.out(g.op("Conv", ["images", w, g.const([0.1, -0.2, 0.3, 0.0])], group=2, dilations=[2, 1],
           strides=[2, 1], pads=[1, 0, 0, 2], kernel_shape=[3, 3]))
g.out(g.op("AveragePool", ["images"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 0],
           ceil_mode=1, count_include_pad=1))
g.out(g.op("AveragePool", ["images"], kernel_shape=[2, 2], pads=[1, 1, 0, 0]))
g.out(g.op("MaxPool", ["images"], kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2],
           ceil_mode=1))
flat = g.op("Flatten", ["images"], axis=1)
c = 72
g.out(g.op("BatchNormalization", [flat, g.const(rng.random(c) + 0.5), g.const(rng.random(c)),
                                  g.const(rng.random(c)), g.const(rng.random(c) + 0.1)],
           epsilon=1e-3))
g.out(g.op("LayerNormalization", ["images", g.const(rng.random((6, 6)) + 0.5),
                                  g.const(rng.random(6))], axis=-2, epsilon=1e-4))
g.out(g.op("Gemm", [flat, g.const(rng.random((72, 5)) - 0.5), g.const(rng.random((1, 5)))],
           alpha=0.5, beta=2.0))
golden["windows_opset17"] = g.save("windows.opset17", 17)

# Opset 20: Gelu, Resize, and the forms attributes took as inputs by opset 18.
g = Graph()
for approximate in ["none", "tanh"]:
    g.out(g.op("Gelu", [g.op("Sub", ["images", g.const(0.5)])], approximate=approximate))
g.out(g.op("ReduceMean", ["images", axes(1, -1)], keepdims=1))
a, b, c3 = g.ops("Split", [g.op("Transpose", ["images"], perm=[0, 2, 1, 3])], 3, axis=1,
                 num_outputs=3)
g.out(g.op("Mul", [a, c3]))
g.out(b)
g.out(g.op("Pad", ["images", axes(1, 2, 0, 1), g.const(-1.0), axes(1, 3)], mode="constant"))
for mode, ctm, nearest, scales, sizes in [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None),  # nn.Upsample(scale_factor=2)
    ("linear", "half_pixel", "round_prefer_floor", [1, 1, 2, 2], None),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.5], None),
    ("linear", "align_corners", "round_prefer_floor", None, [9, 4]),
    ("nearest", "half_pixel", "round_prefer_ceil", None, [9, 4]),
    ("nearest", "align_corners", "round_prefer_floor", [1, 1, 0.5, 1.5], None),
]:
    if sizes:
        # As the legacy exporter writes nn.Upsample(size=...): N and C read from the input.
        leading = g.op("Slice", [g.op("Shape", ["images"]), axes(0), axes(2)])
        inputs = ["images", "", "", g.op("Concat", [leading, g.const(sizes, np.int64)], axis=0)]
    else:
        inputs = ["images", "", g.const(scales)]
    g.out(g.op("Resize", inputs, mode=mode, coordinate_transformation_mode=ctm,
               nearest_mode=nearest))
golden["resize_opset20"] = g.save("resize.opset20", 20)

# Data layout as the default exporter writes it for an attention block (opset 20).
g = Graph()
qkv = g.op("Reshape", ["images", axes(0, 2, 3, 12)])
q, k, v = g.ops("Split", [qkv, axes(1, 1, 1)], 3, axis=2)
scores = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k],
                                                                perm=[0, 1, 3, 2])]),
                                       g.const(0.3)])], axis=-1)
g.out(g.op("MatMul", [scores, v]))
gathered = g.op("GatherND", [g.op("Transpose", ["images"], perm=[2, 3, 0, 1]),
                             g.const([[[0, 1], [5, 5]], [[2, 2], [0, 0]]], np.int64)])
g.out(g.op("Transpose", [gathered], perm=[2, 0, 1, 3]))
golden["attention_opset20"] = g.save("attention.opset20", 20)

save_file(golden, "ops.golden.safetensors")
