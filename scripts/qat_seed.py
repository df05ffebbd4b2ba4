"""Run ../shared/bench/qat_baseline.py under another seed.

The shared bench seeds PyTorch with 0 and nothing else (its only randomness is the draw of each
step's training images, `torch.randint`), so one figure per machine is all it gives. Comparing
nernc's seeds with one QAT draw mixes the codec's spread with the baseline's; this wrapper makes
the bench's `torch.manual_seed(0)` seed with SEED instead and runs the bench unchanged.

    out/torchenv/bin/python scripts/qat_seed.py SEED MODEL.safetensors --bits 3 --steps 600

SEED 0 is the bench itself, draw for draw.
"""
import os
import runpy
import sys

import torch

if len(sys.argv) < 3:
    sys.exit(__doc__)
seed = int(sys.argv[1])
bench = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench", "qat_baseline.py")
if not os.path.exists(bench):
    sys.exit(f"qat_seed.py: the shared bench is not at {bench}")

_manual_seed = torch.manual_seed


def _seeded(_ignored):
    return _manual_seed(seed)


torch.manual_seed = _seeded
sys.argv = [bench] + sys.argv[2:]
runpy.run_path(bench, run_name="__main__")
