"""Reference numbers for advcomp's APGD, Square and AutoAttack (issue 28): torchattacks'
implementations on advcomp's LeNet5 weights (a safetensors checkpoint, read as
pytorch_lenet5.py reads it) and the MNIST test images. Prints one JSON object per run.

    python reference_attacks.py --weights W.safetensors --mnist assets/mnist --work apgd-ce \
        --images 1000 --batch 256 --threads 2 --eps 0.1 --seed 0

--work:
  apgd-ce, apgd-dlr  torchattacks.APGD, L-inf, loss ce / dlr, steps 100 (torchattacks' default
                     is 10; AutoAttack's APGD uses 100), n_restarts 1, rho 0.75, eot_iter 1
  apgdt              torchattacks.APGDT (targeted DLR over the 9 runner-up classes), steps 100,
                     n_restarts 1, rho 0.75
  square             torchattacks.Square, L-inf, n_queries 5000, p_init 0.8, loss margin,
                     n_restarts 1, resc_schedule true
  autoattack         torchattacks.AutoAttack(version="standard"), as torchattacks builds it:
                     APGD-CE, APGD-T, FAB-T, Square 5000, each with torchattacks' own defaults
                     (so APGD and APGD-T run 10 steps there, not AutoAttack's 100)
  cascade            issue 28's `auto`: APGD-CE, then APGD-DLR, then Square (the settings
                     above), each on the images still correct (torchattacks.MultiAttack)

Robust accuracy = share of the images whose returned image the model classifies correctly
(images misclassified when clean count as not robust). torchattacks returns the clean image
for every image it did not fool, so mean_l2 (over all images) counts those as 0; mean_l2_fooled
averages over the images that were correct when clean and are wrong after the attack.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pytorch_lenet5 import LeNet5, read_idx  # noqa: E402

WORKS = ["apgd-ce", "apgd-dlr", "apgdt", "square", "autoattack", "cascade"]


def build(work, model, eps, seed, args):
    import torchattacks as ta

    apgd = dict(norm="Linf", eps=eps, steps=args.steps, n_restarts=1, seed=seed, eot_iter=1, rho=0.75)
    square = dict(norm="Linf", eps=eps, n_queries=args.n_queries, n_restarts=1, p_init=args.p_init,
                  loss="margin", resc_schedule=True, seed=seed)
    if work == "apgd-ce":
        return ta.APGD(model, loss="ce", **apgd), {"attack": "torchattacks.APGD", "loss": "ce", **apgd}
    if work == "apgd-dlr":
        return ta.APGD(model, loss="dlr", **apgd), {"attack": "torchattacks.APGD", "loss": "dlr", **apgd}
    if work == "apgdt":
        return ta.APGDT(model, n_classes=10, **apgd), {"attack": "torchattacks.APGDT", "loss": "dlr-targeted",
                                                       "n_target_classes": 9, **apgd}
    if work == "square":
        return ta.Square(model, **square), {"attack": "torchattacks.Square", **square}
    if work == "autoattack":
        atk = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=seed)
        stages = [{"attack": type(a).__name__, **{k: getattr(a, k) for k in ("steps", "n_queries", "p_init", "n_restarts",
                                                                              "thr_decr", "loss", "multi_targeted")
                                                   if hasattr(a, k)}}
                  for a in atk._autoattack.attacks]
        return atk, {"attack": "torchattacks.AutoAttack", "version": "standard", "norm": "Linf", "eps": eps,
                     "seed": seed, "stages": stages}
    if work == "cascade":
        atk = ta.MultiAttack([ta.APGD(model, loss="ce", **apgd), ta.APGD(model, loss="dlr", **apgd),
                              ta.Square(model, **square)])
        return atk, {"attack": "torchattacks.MultiAttack", "stages": [{"attack": "APGD", "loss": "ce", **apgd},
                     {"attack": "APGD", "loss": "dlr", **apgd}, {"attack": "Square", **square}]}
    raise ValueError(work)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", required=True)
    parser.add_argument("--mnist", required=True)
    parser.add_argument("--work", choices=WORKS, required=True)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--eps", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100, help="APGD/APGD-T iterations (not for autoattack)")
    parser.add_argument("--n-queries", type=int, default=5000, help="Square's query budget (not for autoattack)")
    parser.add_argument("--p-init", type=float, default=0.8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchattacks

    model = LeNet5()
    state = {k: v for k, v in load_file(args.weights).items() if not k.endswith("_mask")}
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mnist = Path(args.mnist)
    images = read_idx(mnist / "t10k-images-idx3-ubyte.gz")[: args.images]
    labels = read_idx(mnist / "t10k-labels-idx1-ubyte.gz")[: args.images]
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    y_all = torch.from_numpy(labels.astype(np.int64))

    atk, settings = build(args.work, model, args.eps, args.seed, args)
    multi = getattr(atk, "_autoattack", atk if args.work == "cascade" else None)
    if multi is not None:  # per-stage survivors, summed over batches
        multi._accumulate_multi_atk_records = True
        multi._multi_atk_records = [0.0] * (len(multi.attacks) + 1)

    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    outputs = [atk(x_all[i : i + args.batch], y_all[i : i + args.batch]) for i in range(0, len(y_all), args.batch)]
    seconds = time.perf_counter() - start

    adversarial = torch.cat(outputs).detach()
    with torch.no_grad():
        clean = model(x_all).argmax(1) == y_all
        robust = model(adversarial).argmax(1) == y_all
    delta = (adversarial - x_all).flatten(1)
    l2 = delta.norm(dim=1)
    fooled = clean & ~robust
    result = {
        "work": args.work,
        "library": f"torchattacks {torchattacks.__version__}",
        "torch": torch.__version__,
        "images": len(y_all),
        "batch_size": args.batch,
        "threads": args.threads,
        "eps": args.eps,
        "seed": args.seed,
        "settings": settings,
        "clean_accuracy": clean.float().mean().item(),
        "robust_accuracy": robust.float().mean().item(),
        "robust_images": int(robust.sum()),
        "mean_l2": l2.mean().item(),
        "mean_l2_fooled": l2[fooled].mean().item() if fooled.any() else 0.0,
        "max_linf": delta.abs().max().item(),
        "seconds": seconds,
        "images_per_second": len(y_all) / seconds,
        # 1-minute load average before and after: the timing means little if others ran.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if multi is not None:
        names = [s.get("loss", s["attack"]) if isinstance(s, dict) else s for s in settings["stages"]]
        records = multi._multi_atk_records
        result["stages"] = [{"stage": f"{i + 1}:{settings['stages'][i]['attack']}"
                             + (f"-{settings['stages'][i]['loss']}" if "loss" in settings["stages"][i] else ""),
                             "still_correct_after": int(records[i + 1]) if i + 1 < len(records) else None}
                            for i in range(len(names))]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
