"""How much of a checkpoint's conv weights does its function need? Each 3x3 conv of the chosen
stages, seen as a Cout x (Cin*9) matrix, is replaced by its best rank-r approximation (r a
fraction of Cout, truncated SVD); the network is evaluated with no fine-tuning.

    out/torchenv/bin/python scripts/low-rank.py probe CKPT.safetensors [--images N]
        # a table: stages x rank fraction -> test accuracy, energy kept, factor parameters
    out/torchenv/bin/python scripts/low-rank.py write CKPT.safetensors OUT.safetensors FRACTION STAGES
        # a copy with those convs at rank FRACTION*Cout (STAGES comma-separated, e.g. layer3);
        # same names, dtypes and shapes, so nernc can encode it (a phase-1 target experiment)

Uses ../shared/bench/eval_torch.py for the model (through scripts/torch_bench.py). Measured on the fixtures in
docs/measurements.md (session 33): the 4x-wide ResNet-20's layer3 keeps its accuracy at a
quarter of full rank; ResNet-20's and ResNet-56's do not.
"""
import argparse
import os

import torch
import torch_bench as tb
from safetensors.torch import load_file, save_file


def is_target(name, w, stages):
    return w.dim() == 4 and w.shape[-1] == 3 and any(name.startswith(s + ".") for s in stages)


def truncate(w, fraction):
    """Best rank-max(1, Cout*fraction) approximation of w as Cout x (Cin*k*k), and its energy."""
    m, r, u, s, vh = tb.svd(w, fraction)
    approx = (u[:, :r] * s[:r] @ vh[:r]).reshape(w.shape).to(w.dtype).contiguous()
    kept, total = (s[:r] ** 2).sum().item(), (s**2).sum().item()
    return approx, kept, total, r * (m.shape[0] + m.shape[1]), m.numel()


def probe(args):
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    x, y = tb.images("t10k", args.images), tb.labels("t10k", args.images)
    ref = load_file(args.ckpt)

    def accuracy(sd):
        return tb.accuracy(sd, x, y)

    print(f"{args.ckpt}: original {accuracy(ref):.2f} % on {args.images} test images")
    print("| stages | rank | test % | energy kept | factor parameters / weights |")
    print("|---|---|---|---|---|")
    for stages in (["layer3"], ["layer1", "layer2", "layer3"]):
        for fraction in (1 / 2, 1 / 4, 1 / 8):
            sd, kept, total, params, weights = dict(ref), 0.0, 0.0, 0, 0
            for name, w in ref.items():
                if is_target(name, w, stages):
                    sd[name], k, t, p, n = truncate(w, fraction)
                    kept, total, params, weights = kept + k, total + t, params + p, weights + n
            print(
                f"| {'+'.join(stages)} | Cout/{round(1 / fraction)} | {accuracy(sd):.2f} | "
                f"{kept / total:.3f} | {params} / {weights} ({params / weights:.2f}) |"
            )


def write(args):
    sd = load_file(args.ckpt)
    stages = args.stages.split(",")
    for name, w in list(sd.items()):
        if is_target(name, w, stages):
            sd[name] = truncate(w, args.fraction)[0]
    save_file(sd, args.out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("ckpt")
    p.add_argument("--images", type=int, default=2000)
    p.set_defaults(run=probe)
    w = sub.add_parser("write")
    w.add_argument("ckpt")
    w.add_argument("out")
    w.add_argument("fraction", type=float)
    w.add_argument("stages")
    w.set_defaults(run=write)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
