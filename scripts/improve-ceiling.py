"""Improve mode's ceiling: how far plain fp32 fine-tuning with logit distillation from a stronger
teacher lifts a checkpoint, with no compression at all. Every `.nern` decodes to the same
network with constrained weights, so whatever this reaches bounds what improve mode can reach
with the same teacher, data and steps.

    out/torchenv/bin/python scripts/improve-ceiling.py \
        --student fixtures/fmnist-resnet20.safetensors \
        --teacher ../shared/fixtures/fmnist-resnet20w4.safetensors --epochs 6 --lr 0.01

Selection as in the improve-mode runs of docs/measurements.md: test images 0-4,999 choose the
epoch, 5,000-9,999 are reported unseen. The teacher's logits are computed once for `--views`
augmented views of every training image (view 0 the image itself; the others a random 2-pixel
translation and flip, as the fixtures were trained), so each step costs one student step.
Prints one line per epoch and a JSON summary.
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import torch_bench as tb
from train_fixtures import augment


@torch.no_grad()
def accuracy(model, x, y):
    model.eval()
    hits = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    return 100.0 * hits / len(x)


@torch.no_grad()
def teacher_views(teacher, x, views):
    """`views` views of every image, (views, N, 1, H, W) (4 views of Fashion-MNIST's 60,000: 750
    MB), and the teacher's logits of each, (views, N, classes). Draws from the global RNG."""
    imgs = [x] + [augment(x) for _ in range(views - 1)]
    logits = [torch.cat([teacher(v[i:i + 1000]) for i in range(0, len(v), 1000)]) for v in imgs]
    return torch.stack(imgs), torch.stack(logits)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--label-weight", type=float, default=0.0, help="weight of cross-entropy on labels beside KD")
    ap.add_argument("--views", type=int, default=4, help="cached augmented views per training image (1: none)")
    ap.add_argument("--freeze-bn", action="store_true", help="BN in eval mode (running statistics fixed), as nernc's phase 2")
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="training images (all by default)")
    ap.add_argument("--cache", help="file of the teacher's views and logits: read if it exists, else written")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    xtr, ytr = tb.images("train", a.limit), tb.labels("train", a.limit)
    xte, yte = tb.images("t10k"), tb.labels("t10k")
    halves = [(xte[:5000], yte[:5000]), (xte[5000:], yte[5000:])]
    student = tb.model(load_file(a.student))
    teacher = tb.model(load_file(a.teacher))
    base = [accuracy(student, x, y) for x, y in halves]
    if a.cache and os.path.exists(a.cache):
        imgs, logits, teach = torch.load(a.cache)
        assert imgs.shape[:2] == (a.views, len(xtr)), "the cache holds other views or images"
    else:
        teach = [accuracy(teacher, x, y) for x, y in halves]
        imgs, logits = teacher_views(teacher, xtr, a.views)
        if a.cache:
            torch.save((imgs, logits, teach), a.cache)
    t_cache = time.time() - t0
    print(f"original {base[0]:.2f} / {base[1]:.2f}  teacher {teach[0]:.2f} / {teach[1]:.2f}  "
          f"teacher logits of {a.views} views ready in {t_cache:.0f} s", flush=True)
    opt = torch.optim.SGD(student.parameters(), lr=a.lr, momentum=0.9, nesterov=True, weight_decay=a.weight_decay)
    n = len(xtr)
    steps_per_epoch = n // a.batch
    total = steps_per_epoch * a.epochs
    T = a.temperature
    rows, best = [], None
    step = 0
    for epoch in range(1, a.epochs + 1):
        student.train()
        if a.freeze_bn:
            for m in student.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
        perm = torch.randperm(n)
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * a.batch:(b + 1) * a.batch]
            view = torch.randint(0, a.views, (len(idx),))
            x, t = imgs[view, idx], logits[view, idx]
            for group in opt.param_groups:
                group["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            out = student(x)
            loss = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(t / T, 1), log_target=True, reduction="batchmean") * T * T
            if a.label_weight > 0:
                loss = loss + a.label_weight * F.cross_entropy(out, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item()
            step += 1
        sel, unseen = (accuracy(student, x, y) for x, y in halves)
        row = {"epoch": epoch, "loss": loss_sum / steps_per_epoch, "selection": sel, "unseen": unseen,
               "test": (sel + unseen) / 2, "seconds": round(time.time() - t0)}
        rows.append(row)
        if best is None or sel > best["selection"]:
            best = row
        print(f"epoch {epoch}: loss {row['loss']:.4f}  selection {sel:.2f} ({sel - base[0]:+.2f})  "
              f"unseen {unseen:.2f} ({unseen - base[1]:+.2f})  all {row['test']:.2f}  {row['seconds']} s", flush=True)
    print(json.dumps({"args": vars(a), "original": base, "teacher": teach, "epochs": rows, "kept": best,
                      "kept_unseen_gain": round(best["unseen"] - base[1], 2),
                      "kept_test_gain": round(best["test"] - (base[0] + base[1]) / 2, 2)}))


if __name__ == "__main__":
    main()
