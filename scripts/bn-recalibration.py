"""Does re-estimating BatchNorm statistics for a decoded checkpoint's (predicted) conv weights
help? For each checkpoint: test accuracy as stored, then with every BN's running mean and
variance re-estimated (cumulative average, train-mode forward, no gradients) on 2,000 and on
10,000 random training images (the last 5,000, a held-out stand-in, are reported too).

    out/torchenv/bin/python scripts/bn-recalibration.py DECODED.safetensors [MORE ...]

The model and data come from torch_bench.py (the shared bench's code). One JSON line per
file; a few minutes per ResNet-20 on 2 cores, much longer for the 4x-wide one.
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file

import torch_bench as tb

torch.set_num_threads(os.cpu_count())


def accuracy(model, x, y):
    return round(100.0 * (tb.predict(model, x) == y).float().mean().item(), 2)


xt, yt = tb.images("t10k"), tb.labels("t10k")
xtr, ytr = tb.images("train"), tb.labels("train")
tail_x, tail_y = xtr[-5000:], ytr[-5000:]
for path in sys.argv[1:]:
    sd = load_file(path)
    model = tb.model(sd)
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
