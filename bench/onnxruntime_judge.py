"""The deployed runtime as the judge (`cargo xtask judge`): ONNX Runtime runs a (QDQ) ONNX
model on the clean test images and on advcomp's adversarial set, and its predictions are
compared, image by image, with advcomp's own on the same images.

Prints one JSON object: per ONNX Runtime optimisation level (disabled: the graph as written,
QuantizeLinear / DequantizeLinear around float ops; default: ORT_ENABLE_ALL, the QDQ groups
fused into integer kernels where ORT can), the share of images where ORT and advcomp predict
the same class, both accuracies, and the images where they differ (with ORT's top-two logit
gap: 0 is a tie on the quantised logits). Predictions are numpy's argmax: the lowest class
wins a tie, as advcomp's.
"""

import argparse
import gzip
import json
import os

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file, save_file


def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, 1, rows, cols)


def idx_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)


def test_split(dataset, data_dir, n):
    folder = data_dir or {
        "mnist": os.path.join(os.path.dirname(__file__), "..", "assets", "mnist"),
        "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    }[dataset]
    images = idx_images(os.path.join(folder, "t10k-images-idx3-ubyte.gz"))[:n]
    labels = idx_labels(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"))[:n]
    # advcomp's pixels: u8 / 255 in f32.
    return images.astype(np.float32) / np.float32(255.0), labels


def advcomp_predictions(path):
    rows = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)
    return rows[:, 2]


def run(model, images, level, batch=500):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate(
        [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )
    return logits


def compare(logits, labels, ours):
    predicted = np.argmax(logits, axis=1)
    top2 = np.sort(logits, axis=1)[:, -2:]
    differ = np.nonzero(predicted != ours)[0]
    return {
        "images": int(len(labels)),
        "agreement": float(np.mean(predicted == ours)),
        "accuracy_onnxruntime": float(np.mean(predicted == labels)),
        "accuracy_advcomp": float(np.mean(ours == labels)),
        "tied_top_logits": int(np.sum(top2[:, 1] == top2[:, 0])),
        "disagreements": [
            {
                "image": int(i),
                "label": int(labels[i]),
                "advcomp": int(ours[i]),
                "onnxruntime": int(predicted[i]),
                "onnxruntime_top2_gap": float(top2[i, 1] - top2[i, 0]),
            }
            for i in differ[:20]
        ],
        "disagreement_count": int(len(differ)),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--dataset")
    p.add_argument("--data-dir")
    p.add_argument("--images", type=int)
    p.add_argument("--adversarial")
    p.add_argument("--advcomp-clean")
    p.add_argument("--advcomp-adversarial")
    # An adversarial set as images advcomp evaluates (`--test-data`): images, labels.
    p.add_argument("--to-images", nargs=2, metavar=("SET", "OUT"))
    a = p.parse_args()
    if a.to_images:
        adv = load_file(a.to_images[0])
        save_file({"images": adv["adversarial"], "labels": adv["labels"]}, a.to_images[1])
        return
    clean, labels = test_split(a.dataset, a.data_dir, a.images)
    adv = load_file(a.adversarial)
    adv_images, adv_labels = adv["adversarial"].astype(np.float32), adv["labels"]
    ours_clean = advcomp_predictions(a.advcomp_clean)
    ours_adv = advcomp_predictions(a.advcomp_adversarial)
    levels = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    out = {"onnxruntime": ort.__version__, "model": a.model}
    for name, level in levels.items():
        out[name] = {
            "clean": compare(run(a.model, clean, level), labels, ours_clean),
            "adversarial": compare(run(a.model, adv_images, level), adv_labels, ours_adv),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
