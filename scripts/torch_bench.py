"""What the project's PyTorch probes share: the shared bench's model and data code on the path,
normalised Fashion-MNIST images, a strict-loaded model, its accuracy, and a conv's truncated SVD.

    import torch_bench as tb    # from a script in scripts/
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench"))
from eval_torch import DATA, build, predict  # noqa: E402,F401
from train_fixtures import MEAN, STD, load_idx  # noqa: E402


def images(split, limit=None):
    """The first `limit` images of `split` ("t10k" or "train"), normalised as the fixtures were trained."""
    x = torch.tensor(load_idx(f"{DATA}/{split}-images-idx3-ubyte.gz")[:limit])
    return x.float().div(255).sub(MEAN).div(STD).unsqueeze(1)


def labels(split, limit=None):
    return torch.tensor(load_idx(f"{DATA}/{split}-labels-idx1-ubyte.gz")[:limit]).long()


def model(sd):
    """The network of state dict `sd`, loaded with strict=True, in eval mode."""
    m = build(sd)
    m.load_state_dict(sd, strict=True)
    m.eval()
    return m


def accuracy(sd, x, y):
    """Top-1 accuracy in percent of the network `sd` on images x, labels y."""
    return 100.0 * (predict(model(sd), x) == y).float().mean().item()


def svd(w, fraction):
    """A conv weight as a Cout x (Cin*k*k) float64 matrix, its rank max(1, Cout*fraction), and the
    matrix's thin SVD (u, s, vh)."""
    m = w.flatten(1).double()
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    return m, max(1, int(w.shape[0] * fraction)), u, s, vh
