"""Writes lenet5.onnx: advcomp's built-in LeNet5 as an ONNX graph, with the weights of the
checkpoint lenet5.safetensors (run: python3 lenet5_to_onnx.py; needs `onnx` and `numpy`).

The graph is what `torch.onnx.export` writes for the same PyTorch module: the input mapping
x -> 2x - 1 (Mul, Sub), Conv 5x5 + Relu, MaxPool 2/2, Conv 5x5 + Relu, MaxPool 2/2, Flatten,
Gemm + Relu, Gemm; initialisers named as the checkpoint's tensors. The test checks that the
imported graph and the built-in model compute the same logits, gradients, DNS masks and
fixed-point outputs.
"""
import json
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

with open("lenet5.safetensors", "rb") as f:
    data = f.read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8 : 8 + n])
body = data[8 + n :]
weights = {}
for name, info in header.items():
    if name == "__metadata__":
        continue
    begin, end = info["data_offsets"]
    weights[name] = np.frombuffer(body[begin:end], np.float32).reshape(info["shape"])

inits = [numpy_helper.from_array(weights[k], k) for k in sorted(weights)]
inits += [
    numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    numpy_helper.from_array(np.array(1.0, np.float32), "one"),
]
node = helper.make_node
nodes = [
    node("Mul", ["images", "two"], ["x2"], name="/Mul"),
    node("Sub", ["x2", "one"], ["x"], name="/Sub"),
    node("Conv", ["x", "conv0.weight", "conv0.bias"], ["c0"], name="/conv0/Conv", kernel_shape=[5, 5]),
    node("Relu", ["c0"], ["r0"], name="/Relu"),
    node("MaxPool", ["r0"], ["p0"], name="/pool/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    node("Conv", ["p0", "conv1.weight", "conv1.bias"], ["c1"], name="/conv1/Conv", kernel_shape=[5, 5]),
    node("Relu", ["c1"], ["r1"], name="/Relu_1"),
    node("MaxPool", ["r1"], ["p1"], name="/pool_1/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
    node("Flatten", ["p1"], ["f"], name="/Flatten", axis=1),
    node("Gemm", ["f", "fc1.weight", "fc1.bias"], ["h"], name="/fc1/Gemm", transB=1),
    node("Relu", ["h"], ["r2"], name="/Relu_2"),
    node("Gemm", ["r2", "logits.weight", "logits.bias"], ["logits"], name="/logits/Gemm", transB=1),
]
graph = helper.make_graph(
    nodes,
    "lenet5",
    [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, "lenet5.onnx")
