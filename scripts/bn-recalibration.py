"""Does re-estimating BatchNorm statistics for a decoded checkpoint's (predicted) conv weights
help? For each checkpoint: test accuracy as stored, then with every BN's running mean and
variance re-estimated (cumulative average, train-mode forward, no gradients) on 2,000 and on
10,000 random training images (the last 5,000, a held-out stand-in, are reported too).

    out/torchenv/bin/python scripts/bn-recalibration.py DECODED.safetensors [MORE ...]

Uses ../shared/bench/eval_torch.py for the model. One JSON line per file; a few minutes per
ResNet-20 on 2 cores, much longer for the 4x-wide one.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench"))
from eval_torch import DATA, build, predict  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_fixtures import MEAN, STD, load_idx  # noqa: E402

torch.set_num_threads(os.cpu_count())


def split(kind):
    x = torch.tensor(load_idx(f"{DATA}/{kind}-images-idx3-ubyte.gz")).float().div(255).sub(MEAN).div(STD).unsqueeze(1)
    y = torch.tensor(load_idx(f"{DATA}/{kind}-labels-idx1-ubyte.gz")).long()
    return x, y


def accuracy(model, x, y):
    return round(100.0 * (predict(model, x) == y).float().mean().item(), 2)


xt, yt = split("t10k")
xtr, ytr = split("train")
tail_x, tail_y = xtr[-5000:], ytr[-5000:]
for path in sys.argv[1:]:
    sd = load_file(path)
    model = build(sd)
    model.load_state_dict(sd, strict=True)
    row = {"file": os.path.basename(path), "test": accuracy(model, xt, yt), "train_tail": accuracy(model, tail_x, tail_y)}
    for n in (2000, 10000):
        model.load_state_dict(sd, strict=True)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over every batch
        model.train()
        order = torch.randperm(xtr.shape[0] - 5000, generator=torch.Generator().manual_seed(0))[:n]
        with torch.no_grad():
            for i in range(0, n, 500):
                model(xtr[order[i:i + 500]])
        row[f"recal{n}_test"] = accuracy(model, xt, yt)
        row[f"recal{n}_train_tail"] = accuracy(model, tail_x, tail_y)
    print(json.dumps(row), flush=True)
