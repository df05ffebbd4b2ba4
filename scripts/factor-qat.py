"""Prototype, not nernc: a checkpoint with some 3x3 convs stored as rank-r factors, every conv
weight and factor quantised per row, fine-tuned by logit distillation from the original. It
measures what a factor storage kind would give (docs/measurements.md, session 33: the 4x-wide
ResNet-20's layer3 is low-rank where the small networks' are not).

    out/torchenv/bin/python scripts/factor-qat.py MODEL.safetensors [--bits 3] [--layer3 0.125]
        [--layer12 0] [--steps 400] [--seed 0]

Each 3x3 conv of layer3 (and of layer1/layer2 with --layer12 > 0), seen as a Cout x (Cin*9)
matrix W, becomes U (Cout x r) and V (r x Cin*9) from its truncated SVD (r = Cout x fraction,
the singular values split evenly); the other conv weights stay whole. Every matrix is quantised
per row at --bits (symmetric, scale max|row| / (2^(bits-1) - 1), straight-through rounding),
as ../shared/bench/qat_baseline.py does per output channel; training is that bench's: Adam,
lr 1e-4 cosine, batches of 128 training images, KL to the original's logits at T = 1, the last
step kept, the test split evaluated only at the start and the end. Size: every code one byte
with fp16 per-row scales and every other tensor fp32 as stored, zstd-19 over the whole, as a
percent of the source file. --seed draws the batches (the factors come from the SVD).
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
import torch_bench as tb
import zstandard
from safetensors.torch import load_file


class Quantised:
    """The trainable matrices of one checkpoint: whole convs and (U, V) factor pairs."""

    def __init__(self, sd, fractions, bits):
        self.sd, self.qmax = sd, 2 ** (bits - 1) - 1
        self.params = {}
        for name, w in sd.items():
            if w.dim() != 4:
                continue
            if name in fractions:
                _, r, u, s, vh = tb.svd(w, fractions[name])
                root = s[:r].sqrt()
                self.params[name + ".U"] = torch.nn.Parameter((u[:, :r] * root).float())
                self.params[name + ".V"] = torch.nn.Parameter((root[:, None] * vh[:r]).float())
            else:
                self.params[name] = torch.nn.Parameter(w.flatten(1).clone())

    def parts(self, name):
        return [name + ".U", name + ".V"] if name + ".U" in self.params else [name]

    def scale(self, m):
        return m.detach().abs().amax(1, keepdim=True).clamp_min(1e-12) / self.qmax

    def rounded(self, m):
        s = self.scale(m)
        return m + (torch.round(m / s).clamp(-self.qmax, self.qmax) * s - m).detach()

    def weights(self):
        out = {}
        for name, w in self.sd.items():
            if w.dim() == 4:
                mats = [self.rounded(self.params[p]) for p in self.parts(name)]
                out[name] = (mats[0] @ mats[1] if len(mats) == 2 else mats[0]).reshape(w.shape)
        return out

    def stored_bytes(self):
        blobs = []
        for name, w in self.sd.items():
            if w.dim() != 4:
                blobs.append(w.numpy().tobytes())
                continue
            for p in self.parts(name):
                m = self.params[p].detach()
                s = self.scale(m)
                codes = torch.round(m / s).clamp(-self.qmax, self.qmax) + self.qmax
                blobs += [codes.to(torch.uint8).numpy().tobytes(), s.half().numpy().tobytes()]
        return len(zstandard.ZstdCompressor(level=19).compress(b"".join(blobs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--bits", type=int, default=3)
    ap.add_argument("--layer3", type=float, default=0.125, help="rank fraction of layer3's 3x3 convs")
    ap.add_argument("--layer12", type=float, default=0.0, help="rank fraction of layer1/layer2's (0: whole)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    sd = load_file(a.model)
    raw = os.path.getsize(a.model)
    xt, yt, xtr = tb.images("t10k"), tb.labels("t10k"), tb.images("train")
    teacher = tb.model(sd)
    for p in teacher.parameters():
        p.requires_grad_(False)
    fractions = {}
    for name, w in sd.items():
        if w.dim() == 4 and w.shape[-1] == 3:
            if name.startswith("layer3."):
                fractions[name] = a.layer3
            elif a.layer12 > 0 and name.startswith(("layer1.", "layer2.")):
                fractions[name] = a.layer12
    q = Quantised(sd, fractions, a.bits)
    student = tb.model(sd)

    def test():
        with torch.no_grad():
            final = dict(sd)
            final.update({k: w.detach() for k, w in q.weights().items()})
        return round(tb.accuracy(final, xt, yt), 2)

    head = {"model": os.path.basename(a.model), "bits": a.bits, "layer3": a.layer3, "layer12": a.layer12,
            "seed": a.seed, "factor_params": sum(p.numel() for k, p in q.params.items() if k.endswith((".U", ".V")))}
    print(json.dumps({**head, "start_test": test(), "start_bytes": q.stored_bytes()}), flush=True)
    opt = torch.optim.Adam(q.params.values(), 1e-4)
    t0 = time.time()
    for step in range(a.steps):
        x = xtr[torch.randint(0, xtr.shape[0], (128,))]
        with torch.no_grad():
            t = teacher(x)
        s = torch.func.functional_call(student, q.weights(), (x,))
        loss = F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), reduction="batchmean", log_target=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        for g in opt.param_groups:
            g["lr"] = 1e-4 * 0.5 * (1 + np.cos(np.pi * (step + 1) / a.steps))
        if step % 50 == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "s": round(time.time() - t0)}), flush=True)
    n = q.stored_bytes()
    print(json.dumps({**head, "steps": a.steps, "test": test(), "bytes": n, "pct": round(100 * n / raw, 2),
                      "seconds": round(time.time() - t0)}), flush=True)


if __name__ == "__main__":
    main()
