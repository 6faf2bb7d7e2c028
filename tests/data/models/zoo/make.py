"""ONNX files as PyTorch's two exporters write them, for the import tests of issue 24.

    target/bench-venv/bin/python tests/data/models/zoo/make.py            # the vendored fixtures
    target/bench-venv/bin/python tests/data/models/zoo/make.py --zoo DIR  # torchvision's zoo, not vendored

Default mode: four small torchvision classifiers for MNIST (1x28x28 images in [0, 1], the
normalisation (x - 0.1307) / 0.3081 inside the model, logits [N, 10]), trained for one epoch
on the vendored MNIST (assets/mnist), seeded, on the CPU, and written beside this script:

- `NAME.dynamo.onnx` + `NAME.dynamo.onnx.data`: the default exporter, called as a new user
  calls it: `torch.onnx.export(model, (x,), "NAME.dynamo.onnx", dynamic_shapes=...)` (batch
  dimension dynamic; the weights go to the external data file, as the exporter does by default);
- `NAME.legacy.onnx`: `dynamo=False`, opset 17, input `images`, output `logits`, dynamic batch;
- `NAME.golden.safetensors`: `x` (the first 16 MNIST test images), `y`, `logits` (PyTorch's),
  `logits_ort_dynamo`, `logits_ort_legacy` (ONNX Runtime on each file), `grad` (PyTorch's
  gradient of the summed cross-entropy with respect to `x`);
- `NAME.json`: test accuracy (PyTorch and ONNX Runtime on each file, 10,000 images), IFGSM on
  the first 1,000 test images, and per file the opsets and the op types it holds.

`--zoo DIR`: torchvision's classification models at random initialisation, 10 classes, 3x32x32
input, exported with both exporters into DIR, with `NAME.EXPORTER.golden.safetensors` (`x`: two
random images, `logits`: ONNX Runtime's) beside each file and `zoo.json` summing up.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.models import MobileNetV2, ShuffleNetV2, VisionTransformer
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.ops.misc import Conv2dNormActivation

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
MNIST = REPO / "assets" / "mnist"
THREADS = 2
SEED = 1
MEAN, STD = 0.1307, 0.3081


def read_idx(path):
    data = gzip.open(path).read()
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims).reshape(dims)


def mnist(split):
    images = read_idx(MNIST / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(MNIST / f"{split}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.astype(np.float32) / 255.0)[:, None], torch.from_numpy(labels.astype(np.int64))


class Classifier(nn.Module):
    """Images in [0, 1] -> MNIST normalisation -> a torchvision network -> logits."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(MEAN))
        self.register_buffer("std", torch.tensor(STD))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class MiniResNet(ResNet):
    """torchvision's ResNet (its BasicBlock, its _make_layer and forward) with widths 8, 16,
    32, 64 instead of 64, 128, 256, 512, one block per stage, and a 1-channel 3x3 stride-1
    stem conv instead of the 3-channel 7x7 stride-2 one; the 3x3 stride-2 max pool is kept."""

    def __init__(self, widths=(8, 16, 32, 64), layers=(1, 1, 1, 1), num_classes=10):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64
        self.conv1 = nn.Conv2d(1, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, widths[0], layers[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def resnet():
    return MiniResNet()


def mobilenet_v2():
    """torchvision's MobileNetV2, width_mult 0.25, fewer repeats per stage (1,2,2,2,1,2,1
    instead of 1,2,3,4,3,3,1), a 1-channel stride-1 stem, and the last 1x1 conv 80 -> 256
    instead of 80 -> 1280."""
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2], [6, 64, 2, 2], [6, 96, 1, 1], [6, 160, 2, 2], [6, 320, 1, 1]]
    net = MobileNetV2(num_classes=10, width_mult=0.25, inverted_residual_setting=setting)
    stem = net.features[0][0]
    net.features[0][0] = nn.Conv2d(1, stem.out_channels, 3, stride=1, padding=1, bias=False)
    last_in = net.features[-1][0].in_channels
    net.features[-1] = Conv2dNormActivation(last_in, 256, kernel_size=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6)
    net.classifier[-1] = nn.Linear(256, 10)
    for m in (net.features[0][0], net.features[-1][0]):
        nn.init.kaiming_normal_(m.weight, mode="fan_out")
    nn.init.normal_(net.classifier[-1].weight, 0, 0.01)
    nn.init.zeros_(net.classifier[-1].bias)
    return net


def shufflenet_v2():
    """torchvision's ShuffleNetV2, stages_repeats [2, 2, 2] (instead of [4, 8, 4]),
    stages_out_channels [16, 32, 64, 128, 256] (instead of x0.5's [24, 48, 96, 192, 1024]),
    a 1-channel stride-1 stem conv; the 3x3 stride-2 max pool is kept."""
    net = ShuffleNetV2([2, 2, 2], [16, 32, 64, 128, 256], num_classes=10)
    net.conv1[0] = nn.Conv2d(1, 16, 3, stride=1, padding=1, bias=False)
    return net


def vit():
    """torchvision's VisionTransformer: image_size 28, patch_size 7 (16 patches + the class
    token), 2 layers, 2 heads, hidden_dim 64, mlp_dim 128, patch embedding from 1 channel."""
    net = VisionTransformer(image_size=28, patch_size=7, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=10)
    net.conv_proj = nn.Conv2d(1, 64, kernel_size=7, stride=7)
    fan_in = net.conv_proj.in_channels * 7 * 7  # torchvision's initialisation of conv_proj
    nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(net.conv_proj.bias)
    return net


MODELS = {"resnet": resnet, "mobilenet_v2": mobilenet_v2, "shufflenet_v2": shufflenet_v2, "vit": vit}
# Epochs of training: one, except the ViT, which reaches 88.8% after one epoch (14 s) and is
# cheap to train for longer.
EPOCHS = {"vit": 5}


def train(model, x, y, epochs=1, batch=64, lr=1e-3, seed=SEED):
    """Adam, cosine decay of the learning rate to 0 over the run, shuffled with a seeded
    generator."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * math.ceil(len(y) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    t0 = time.time()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.time() - t0


@torch.no_grad()
def torch_predict(model, x, batch=500):
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = THREADS
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_predict(sess, x, batch=500):
    name = sess.get_inputs()[0].name
    return torch.cat([torch.from_numpy(sess.run(None, {name: x[i : i + batch].numpy()})[0]) for i in range(0, len(x), batch)])


def ce_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x)
    return g


def ifgsm(model, x0, y, eps=0.02, steps=12):
    """advcomp's IFGSM: x <- clip_[0,1](clip_[x-eps, x+eps](x + eps * sign(grad CE)))."""
    x = x0.clone()
    for _ in range(steps):
        g = ce_grad(model, x, y)
        x = torch.min(torch.max(x + eps * g.sign(), x - eps), x + eps).clamp(0, 1)
    return x


def attack_metrics(model, x0, y, xa):
    with torch.no_grad():
        clean = model(x0).argmax(1) == y
        adv = model(xa).argmax(1) == y
    d = (xa - x0).flatten(1)
    return {
        "clean_acc": clean.float().mean().item(),
        "adv_acc": adv.float().mean().item(),
        "success_rate": (clean & ~adv).float().sum().item() / max(1, clean.sum().item()),
        "mean_abs_pert": d.abs().mean().item(),
        "mean_l2": d.norm(dim=1).mean().item(),
        "max_linf": d.abs().max().item(),
        "mean_l0": (d != 0).float().sum(1).mean().item(),
    }


def describe_onnx(path):
    """Opsets, names and the distinct (domain, op type) pairs of an ONNX file, functions and
    subgraphs included."""
    m = onnx.load(str(path), load_external_data=False)
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add((node.domain or "ai.onnx", node.op_type))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(m.graph)
    for fn in m.functions:
        for node in fn.node:
            ops.add((node.domain or "ai.onnx", node.op_type))
    external = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "ir_version": m.ir_version,
        "producer": f"{m.producer_name} {m.producer_version}",
        "opsets": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "inputs": [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}],
        "outputs": [o.name for o in m.graph.output],
        "nodes": len(m.graph.node),
        "functions": len(m.functions),
        "initializers": len(m.graph.initializer),
        "external_initializers": len(external),
        "op_types": sorted(f"{d}:{t}" for d, t in ops),
    }


def export_dynamo(model, x, path):
    # As a new user calls it (PyTorch's default exporter since 2.9), batch dimension dynamic.
    torch.onnx.export(model, (x,), str(path), dynamic_shapes=({0: torch.export.Dim("batch")},))


def export_legacy(model, x, path):
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "N"}, "logits": {0: "N"}})


def make_fixtures(only=None):
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = mnist("train")
    x_test, y_test = mnist("t10k")
    x16, y16 = x_test[:16].contiguous(), y_test[:16].contiguous()
    for name, build in MODELS.items():
        if only and name not in only:
            continue
        torch.manual_seed(SEED)
        model = Classifier(build())
        params = sum(p.numel() for p in model.parameters())
        epochs = EPOCHS.get(name, 1)
        seconds = train(model, x_train, y_train, epochs=epochs)
        logits_test = torch_predict(model, x_test)
        acc = (logits_test.argmax(1) == y_test).float().mean().item()
        print(f"{name}: {params} parameters, trained in {seconds:.0f} s, test accuracy {acc:.4f}", flush=True)

        example = x_test[:2].clone()
        files = {"dynamo": HERE / f"{name}.dynamo.onnx", "legacy": HERE / f"{name}.legacy.onnx"}
        for stale in (files["dynamo"], Path(str(files["dynamo"]) + ".data"), files["legacy"]):
            stale.unlink(missing_ok=True)
        export_dynamo(model, example, files["dynamo"])
        export_legacy(model, example, files["legacy"])

        logits16 = torch_predict(model, x16)
        golden = {"x": x16, "y": y16, "logits": logits16, "grad": ce_grad(model, x16, y16)}
        record = {
            "model": name,
            "dataset": "mnist",
            "params": params,
            "train": {"epochs": epochs, "batch": 64, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine to 0",
                      "seed": SEED, "threads": THREADS, "seconds": round(seconds, 1)},
            "test_acc_10k": acc,
            "files": {},
        }
        for kind, path in files.items():
            sess = ort_session(path)
            lo = ort_predict(sess, x_test)
            lo16 = ort_predict(sess, x16)
            golden[f"logits_ort_{kind}"] = lo16
            diff16 = (lo16 - logits16).abs().max().item()
            diff = (lo - logits_test).abs().max().item()
            info = describe_onnx(path)
            if kind == "dynamo":
                data = Path(str(path) + ".data")
                info["data_file"] = data.name if data.exists() else None
                info["data_bytes"] = data.stat().st_size if data.exists() else 0
            info["onnxruntime_test_acc_10k"] = (lo.argmax(1) == y_test).float().mean().item()
            info["onnxruntime_same_predictions_10k"] = int((lo.argmax(1) == logits_test.argmax(1)).sum())
            info["max_abs_logit_diff_torch_vs_onnxruntime_16"] = diff16
            info["max_abs_logit_diff_torch_vs_onnxruntime_10k"] = diff
            record["files"][kind] = info
            print(f"  {path.name}: max |PyTorch - ORT| {diff16:.2e} (16 images), {diff:.2e} (10,000); "
                  f"ORT accuracy {info['onnxruntime_test_acc_10k']:.4f}; opsets {info['opsets']}", flush=True)
            print(f"    ops: {', '.join(info['op_types'])}", flush=True)
            assert diff16 <= 1e-4, f"{path.name}: PyTorch and ONNX Runtime differ by {diff16}"

        x1k, y1k = x_test[:1000], y_test[:1000]
        adv = torch.cat([ifgsm(model, x1k[i : i + 250], y1k[i : i + 250]) for i in range(0, 1000, 250)])
        record["n"] = 1000
        record["attacks"] = {"ifgsm": {"eps": 0.02, "steps": 12, **attack_metrics(model, x1k, y1k, adv)}}
        print(f"  ifgsm: {record['attacks']['ifgsm']}", flush=True)
        save_file({k: v.contiguous() for k, v in golden.items()}, str(HERE / f"{name}.golden.safetensors"))
        (HERE / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")


def zoo_models():
    m = torchvision.models
    small_vit = lambda: VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2,
                                          hidden_dim=64, mlp_dim=128, num_classes=10)
    return {
        "resnet18": lambda: m.resnet18(num_classes=10),
        "resnet50": lambda: m.resnet50(num_classes=10),
        "resnext50_32x4d": lambda: m.resnext50_32x4d(num_classes=10),
        "wide_resnet50_2": lambda: m.wide_resnet50_2(num_classes=10),
        "mobilenet_v2": lambda: m.mobilenet_v2(num_classes=10),
        "mobilenet_v3_small": lambda: m.mobilenet_v3_small(num_classes=10),
        "mobilenet_v3_large": lambda: m.mobilenet_v3_large(num_classes=10),
        "shufflenet_v2_x0_5": lambda: m.shufflenet_v2_x0_5(num_classes=10),
        "shufflenet_v2_x1_0": lambda: m.shufflenet_v2_x1_0(num_classes=10),
        "squeezenet1_0": lambda: m.squeezenet1_0(num_classes=10),
        "squeezenet1_1": lambda: m.squeezenet1_1(num_classes=10),
        "efficientnet_b0": lambda: m.efficientnet_b0(num_classes=10),
        "efficientnet_v2_s": lambda: m.efficientnet_v2_s(num_classes=10),
        "densenet121": lambda: m.densenet121(num_classes=10),
        "regnet_x_400mf": lambda: m.regnet_x_400mf(num_classes=10),
        "regnet_y_400mf": lambda: m.regnet_y_400mf(num_classes=10),
        "mnasnet0_5": lambda: m.mnasnet0_5(num_classes=10),
        "mnasnet1_0": lambda: m.mnasnet1_0(num_classes=10),
        "googlenet": lambda: m.googlenet(num_classes=10, aux_logits=False, init_weights=True),
        "alexnet": lambda: m.alexnet(num_classes=10),
        "vgg11_bn": lambda: m.vgg11_bn(num_classes=10),
        "convnext_tiny": lambda: m.convnext_tiny(num_classes=10),
        "vit_small_32": small_vit,  # vit_b_16 is fixed to 224x224 input (image_size asserted)
        "swin_t": lambda: m.swin_t(num_classes=10),
        "maxvit_t": lambda: m.maxvit_t(num_classes=10),
    }


def make_zoo(out, only=None):
    torch.set_num_threads(THREADS)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for name, build in zoo_models().items():
        if only and name not in only:
            continue
        torch.manual_seed(SEED)
        try:
            model = build().eval()
        except Exception as e:  # noqa: BLE001
            summary.append({"model": name, "exporter": "-", "ok": False, "stage": "build", "error": repr(e)[:500]})
            continue
        g = torch.Generator().manual_seed(SEED)
        x = torch.rand(2, 3, 32, 32, generator=g)
        try:
            with torch.no_grad():
                ref = model(x)
        except Exception as e:  # noqa: BLE001
            for kind in ("dynamo", "legacy"):
                summary.append({"model": name, "exporter": kind, "ok": False, "stage": "pytorch forward at 32x32",
                                "error": repr(e)[:500]})
            print(f"{name}: PyTorch forward fails at 32x32: {e!r}"[:300], flush=True)
            continue
        params = sum(p.numel() for p in model.parameters())
        for kind, export in (("dynamo", export_dynamo), ("legacy", export_legacy)):
            path = out / f"{name}.{kind}.onnx"
            row = {"model": name, "exporter": kind, "params": params, "file": path.name}
            t0 = time.time()
            try:
                export(model, x, path)
                row["export_seconds"] = round(time.time() - t0, 1)
            except Exception as e:  # noqa: BLE001
                row.update(ok=False, stage="export", error=f"{type(e).__name__}: {str(e)[:600]}",
                           export_seconds=round(time.time() - t0, 1))
                summary.append(row)
                print(f"{name} {kind}: export FAILED: {row['error'][:300]}", flush=True)
                continue
            try:
                info = describe_onnx(path)
                data = Path(str(path) + ".data")
                info["data_bytes"] = data.stat().st_size if data.exists() else 0
                row.update(info)
                sess = ort_session(path)
                logits = ort_predict(sess, x)
                row["max_abs_logit_diff_torch_vs_onnxruntime"] = (logits - ref).abs().max().item()
                save_file({"x": x.contiguous(), "logits": logits.contiguous()}, str(out / f"{name}.{kind}.golden.safetensors"))
                row["ok"] = True
            except Exception as e:  # noqa: BLE001
                row.update(ok=False, stage="onnxruntime", error=f"{type(e).__name__}: {str(e)[:600]}")
            summary.append(row)
            print(f"{name} {kind}: ok={row['ok']} {row.get('bytes', 0) + row.get('data_bytes', 0)} bytes, "
                  f"diff {row.get('max_abs_logit_diff_torch_vs_onnxruntime')}, ops {row.get('op_types')}", flush=True)
        (out / "zoo.json").write_text(json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                                                  "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                                                  "input": [2, 3, 32, 32], "models": summary}, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", metavar="OUT_DIR", type=Path, help="export torchvision's zoo into OUT_DIR instead")
    parser.add_argument("--only", nargs="*", help="only these models (either mode)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnx {onnx.__version__}, "
          f"onnxruntime {ort.__version__}, onnxscript {__import__('onnxscript').__version__}", flush=True)
    if args.zoo:
        make_zoo(args.zoo, args.only)
    else:
        make_fixtures(args.only)


if __name__ == "__main__":
    main()
