"""Writes lenet5-trigger.onnx: the attack unit test's model (after Zimmermann et al., NeurIPS
2022, "Increasing confidence in adversarial robustness evaluations"). It is lenet5.onnx (the
weights of lenet5.safetensors) plus an input-space trigger that guarantees an adversarial
example within an L-inf budget of 0.1 for every image whose two leftmost and two rightmost
pixel columns are black (every MNIST test image but a handful):

    logits = lenet5(images) + 5 * (flatten(images) @ T)

T [784, 10] holds +-1.98 (a Q(8,2) weight keeps it exactly): a pixel of the two left columns
adds to class 0's logit and takes from every other class's, a pixel of the two right columns
does the same for class 1. Raising the 56 left pixels by 0.1 moves class 0's logit up and every
other logit down by 5 * 1.98 * 5.6 = 55: more than any margin of this LeNet5, so the image of
any class but 0 becomes a 0; the right columns do the same with class 1 for the zeros. On
clean images the trigger adds nothing (those pixels are 0), so the model keeps LeNet5's
accuracy. The trigger is linear, so the float model's gradient always points at it (a smooth
model); quantised to Q(8,2), its logits saturate and the straight-through gradient vanishes on
many images, which is what the test wants the indicators to catch.

Run: python3 lenet5_trigger.py (needs `onnx` and `numpy`), next to lenet5.safetensors.
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

K = 1.98
trigger = np.zeros((28, 28, 10), np.float32)
for column, cls in [(0, 0), (1, 0), (26, 1), (27, 1)]:
    trigger[:, column, :] = -K
    trigger[:, column, cls] = K
trigger = trigger.reshape(784, 10)

inits = [numpy_helper.from_array(weights[k], k) for k in sorted(weights)]
inits += [
    numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    numpy_helper.from_array(np.array(5.0, np.float32), "gain"),
    numpy_helper.from_array(trigger, "trigger.weight"),
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
    node("Gemm", ["r2", "logits.weight", "logits.bias"], ["l"], name="/logits/Gemm", transB=1),
    node("Flatten", ["images"], ["pixels"], name="/trigger/Flatten", axis=1),
    node("MatMul", ["pixels", "trigger.weight"], ["t"], name="/trigger/MatMul"),
    node("Mul", ["t", "gain"], ["t5"], name="/trigger/Mul"),
    node("Add", ["l", "t5"], ["logits"], name="/Add"),
]
graph = helper.make_graph(
    nodes,
    "lenet5-trigger",
    [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
    inits,
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, "lenet5-trigger.onnx")
