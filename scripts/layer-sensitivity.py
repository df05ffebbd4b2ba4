"""Per-layer sensitivity of a decoded checkpoint: each 3x3 conv in turn replaced by the
original's, accuracy on the last 10,000 training images and on the 10,000 test images.

    out/torchenv/bin/python scripts/layer-sensitivity.py ORIGINAL.safetensors DECODED.safetensors

The model and data come from torch_bench.py (the shared bench's code); about 10 minutes on
2 cores for ResNet-20.
"""
import sys

import torch
from safetensors.torch import load_file

import torch_bench as tb

torch.set_num_threads(2)
xt, yt = tb.images("t10k"), tb.labels("t10k")
xh, yh = tb.images("train")[-10000:], tb.labels("train")[-10000:]
orig, decoded = load_file(sys.argv[1]), load_file(sys.argv[2])


def acc(sd, x, y):
    return round(tb.accuracy(sd, x, y), 2)


base = (acc(decoded, xh, yh), acc(decoded, xt, yt))
print("orig", (acc(orig, xh, yh), acc(orig, xt, yt)), "decoded", base)
for k in [k for k in orig if orig[k].dim() == 4 and orig[k].shape[-1] == 3]:
    sd = dict(decoded)
    sd[k] = orig[k]
    err = (decoded[k] - orig[k]).pow(2).mean().sqrt().item()
    r = (acc(sd, xh, yh), acc(sd, xt, yt))
    rel = err / orig[k].pow(2).mean().sqrt().item()
    print(k, tuple(orig[k].shape), "rmse %.4f" % err, "rel %.3f" % rel, "restored", r,
          "gain", round(r[0] - base[0], 2), round(r[1] - base[1], 2), flush=True)
