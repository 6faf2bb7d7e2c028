"""The alternative a user would pick, for `cargo xtask bench`: LeNet5 in a plain PyTorch loop
on advcomp's weights (a safetensors checkpoint), or an ONNX model converted to PyTorch by
onnx2torch, on the same test images (MNIST, or Fashion-MNIST: the same files), running the
same attacks with advcomp's definitions (docs/design.md). Prints one JSON object.

    python pytorch_lenet5.py --weights W.safetensors --mnist assets/mnist --work ifgsm \
        --images 1024 --batch 256 --threads 2
    python pytorch_lenet5.py --onnx resnet8-fmnist.onnx \
        --mnist /usr/share/datasets/fashion-mnist --work ifgsm --images 1024 --batch 256 \
        --threads 2
"""

import argparse
import gzip
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file


class LeNet5(torch.nn.Module):
    """advcomp's LeNet5: images in [0, 1] mapped to 2x - 1 inside the model."""

    def __init__(self):
        super().__init__()
        self.conv0 = torch.nn.Conv2d(1, 20, 5)
        self.conv1 = torch.nn.Conv2d(20, 50, 5)
        self.fc1 = torch.nn.Linear(800, 500)
        self.logits = torch.nn.Linear(500, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv0(x * 2 - 1)), 2)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.logits(x)


def read_idx(path):
    data = gzip.open(path).read()
    ndims = data[3]
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims).reshape(dims)


def loss_gradient(model, x, y):
    x = x.clone().requires_grad_(True)
    picked = F.log_softmax(model(x), dim=1).gather(1, y[:, None])
    (grad,) = torch.autograd.grad(-picked.sum(), x)
    return grad


def iterative(model, x0, y, eps, steps, scaled):
    """IFGSM (sign step) or IFGM (step eps*sqrt(d)*g/||g||_2); every step clipped to within
    eps of the current image and to [0, 1]."""
    x = x0.clone()
    d = x0[0].numel()
    for _ in range(steps):
        g = loss_gradient(model, x, y)
        if scaled:
            flat = g.flatten(1)
            peak = flat.abs().amax(1, keepdim=True)
            norm = (flat / peak).square().sum(1, keepdim=True).sqrt() * peak
            step = (flat * (eps * math.sqrt(d) / norm)).view_as(g)
            step = torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            step = eps * g.sign()
        x = torch.min(torch.max(x + step, x - eps), x + eps).clamp(0, 1)
    return x


def deepfool(model, x0, y, overshoot=0.02, max_iterations=50, slack=1e-4, floor=1e-12):
    """Batched DeepFool-L2 (advcomp's and Foolbox's form: the overshoot scales the accumulated
    perturbation); an image leaves the batch once its label flips."""
    n = x0.shape[0]
    d = x0[0].numel()
    total = torch.zeros(n, d)
    active = torch.arange(n)
    with torch.no_grad():
        classes = model(x0[:1]).shape[1]

    def place(r):
        return (x0 + (1 + overshoot) * r.view_as(x0)).clamp(0, 1)

    for _ in range(max_iterations):
        if active.numel() == 0:
            break
        x = place(total)[active].repeat(classes, 1, 1, 1).requires_grad_(True)
        logits = model(x)
        m = active.numel()
        rows = torch.arange(classes).repeat_interleave(m)
        (grads,) = torch.autograd.grad(logits[torch.arange(classes * m), rows].sum(), x)
        grads = grads.view(classes, m, d).transpose(0, 1)
        logits = logits[:m].detach()
        truth = y[active]
        still = logits.argmax(1) == truth
        active, logits, grads, truth = active[still], logits[still], grads[still], truth[still]
        if active.numel() == 0:
            break
        m = active.numel()
        margin = logits - logits.gather(1, truth[:, None])
        directions = grads - grads[torch.arange(m), truth][:, None, :]
        norms = directions.square().sum(2).sqrt().clamp_min(floor)
        distance = (margin.abs() / norms).scatter(1, truth[:, None], float("inf"))
        nearest = distance.argmin(1)
        direction = directions[torch.arange(m), nearest]
        gap = margin[torch.arange(m), nearest].abs() + slack
        norm = norms[torch.arange(m), nearest]
        step = direction * (gap / norm.square())[:, None]
        total[active] += step
        active = active[step.abs().amax(1) > 0]
    return place(total)


def foolbox_deepfool(model, x, y):
    """Foolbox 3.3.4's L2 DeepFool with advcomp's settings: all 10 classes as candidates,
    overshoot 0.02, at most 50 steps, images in [0, 1]."""
    import foolbox

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1))
    attack = foolbox.attacks.L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)
    _, clipped, _ = attack(fmodel, x, y, epsilons=None)
    return clipped.detach()


def main():
    parser = argparse.ArgumentParser()
    model_file = parser.add_mutually_exclusive_group(required=True)
    model_file.add_argument("--weights", help="a LeNet5 checkpoint (safetensors)")
    model_file.add_argument("--onnx", help="an ONNX classifier, converted by onnx2torch")
    parser.add_argument("--mnist", required=True)
    parser.add_argument("--work", choices=["eval", "ifgsm", "ifgm", "deepfool"], required=True)
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--steps", type=int, default=12)
    # foolbox: Foolbox's batched L2DeepFoolAttack on the same model (deepfool only).
    parser.add_argument("--library", choices=["pytorch", "foolbox"], default="pytorch")
    args = parser.parse_args()
    if args.library == "foolbox" and args.work != "deepfool":
        parser.error("--library foolbox runs deepfool only")
    torch.set_num_threads(args.threads)

    if args.onnx:
        import onnx
        import onnx2torch

        model = onnx2torch.convert(onnx.load(args.onnx))
    else:
        model = LeNet5()
        state = {k: v for k, v in load_file(args.weights).items() if not k.endswith("_mask")}
        model.load_state_dict(state)
    model.eval()
    mnist = Path(args.mnist)
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[: args.images]
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[: args.images]
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    y_all = torch.from_numpy(labels.astype(np.int64))

    start = time.perf_counter()
    outputs = []
    for i in range(0, len(y_all), args.batch):
        x, y = x_all[i : i + args.batch], y_all[i : i + args.batch]
        if args.work == "eval":
            with torch.no_grad():
                outputs.append(model(x).argmax(1))
        elif args.work == "deepfool" and args.library == "foolbox":
            outputs.append(foolbox_deepfool(model, x, y))
        elif args.work == "deepfool":
            outputs.append(deepfool(model, x, y))
        else:
            outputs.append(iterative(model, x, y, args.eps, args.steps, args.work == "ifgm"))
    seconds = time.perf_counter() - start

    result = {
        "work": args.work,
        "images": len(y_all),
        "batch_size": args.batch,
        "threads": args.threads,
        "seconds": seconds,
        "images_per_second": len(y_all) / seconds,
        "torch": torch.__version__,
        "library": args.library,
    }
    if args.work == "eval":
        result["accuracy"] = (torch.cat(outputs) == y_all).float().mean().item()
    else:
        adversarial = torch.cat(outputs)
        with torch.no_grad():
            predicted = model(adversarial).argmax(1)
        result["adversarial_accuracy"] = (predicted == y_all).float().mean().item()
        result["mean_l2"] = (adversarial - x_all).flatten(1).norm(dim=1).mean().item()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
