"""Writes the malformed ONNX models the import tests refuse (run: python3 make.py; needs `onnx`).

Each is a tiny graph, valid ONNX, with one thing advcomp does not support or cannot use.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(name, nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, f"{name}.onnx")


def image(name="images", dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, ["N", 1, 28, 28])


def logits(name="logits", shape=("N", 10)):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


weight = numpy_helper.from_array(np.full((10, 784), 0.01, np.float32), "fc.weight")
flatten = helper.make_node("Flatten", ["images"], ["flat"], name="flatten", axis=1)
gemm = helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)

# An op advcomp does not run (Hardmax: a one-hot argmax, no gradient to follow).
save("unsupported-op",
     [flatten, helper.make_node("Hardmax", ["flat"], ["e"], name="the_hardmax"),
      helper.make_node("Gemm", ["e", "fc.weight"], ["logits"], name="fc", transB=1)],
     [image()], [logits()], [weight])

# Conv with auto_pad SAME_UPPER.
conv_w = numpy_helper.from_array(np.full((2, 1, 3, 3), 0.1, np.float32), "conv.weight")
fc2 = numpy_helper.from_array(np.full((10, 2 * 14 * 14), 0.01, np.float32), "fc.weight")
save("auto-pad",
     [helper.make_node("Conv", ["images", "conv.weight"], ["c"], name="the_conv",
                       auto_pad="SAME_UPPER", strides=[2, 2], kernel_shape=[3, 3]),
      helper.make_node("Flatten", ["c"], ["flat"], name="flatten", axis=1),
      helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)],
     [image()], [logits()], [conv_w, fc2])

# Two inputs.
save("two-inputs",
     [flatten, helper.make_node("Flatten", ["other"], ["flat2"], name="flatten2", axis=1),
      helper.make_node("Add", ["flat", "flat2"], ["sum"], name="add"),
      helper.make_node("Gemm", ["sum", "fc.weight"], ["logits"], name="fc", transB=1)],
     [image(), image("other")], [logits()], [weight])

# Integer images.
save("int-input",
     [helper.make_node("Cast", ["images"], ["f"], name="cast", to=TensorProto.FLOAT),
      helper.make_node("Flatten", ["f"], ["flat"], name="flatten", axis=1),
      helper.make_node("Gemm", ["flat", "fc.weight"], ["logits"], name="fc", transB=1)],
     [image(dtype=TensorProto.UINT8)], [logits()], [weight])

# An output that is not [N, classes]: the images themselves, through a Relu.
save("not-logits", [helper.make_node("Relu", ["images"], ["out"], name="relu")], [image()],
     [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 28, 28])])

# Softmax at the end: accepted, stripped, said on stderr.
save("softmax-last",
     [flatten, gemm, helper.make_node("Softmax", ["logits"], ["probs"], name="the_softmax", axis=1)],
     [image()], [logits("probs")], [weight])

# Shapes that do not fit: 784 features into a Gemm that takes 100.
small = numpy_helper.from_array(np.full((10, 100), 0.01, np.float32), "fc.weight")
save("shapes-do-not-fit", [flatten, gemm], [image()], [logits()], [small])
