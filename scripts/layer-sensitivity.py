"""Per-layer sensitivity of a decoded checkpoint: each 3x3 conv in turn replaced by the
original's, accuracy on the last 10,000 training images and on the 10,000 test images.

    out/torchenv/bin/python scripts/layer-sensitivity.py ORIGINAL.safetensors DECODED.safetensors

Uses ../shared/bench/train_fixtures.py for the model; about 10 minutes on 2 cores for ResNet-20.
"""
import sys, os, json, torch, numpy as np
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'shared', 'bench'))
from train_fixtures import CifarResNet, load_idx, MEAN, STD
from safetensors.torch import load_file
D='/usr/share/datasets/fashion-mnist'
torch.set_num_threads(2)
def data(split, n):
    x = torch.tensor(load_idx(f"{D}/{split}-images-idx3-ubyte.gz")[-n:]).float().div(255).sub(MEAN).div(STD).unsqueeze(1)
    y = torch.tensor(load_idx(f"{D}/{split}-labels-idx1-ubyte.gz")[-n:]).long()
    return x, y
xt, yt = data('t10k', 10000); xh, yh = data('train', 10000)
O = load_file(sys.argv[1]); Dd = load_file(sys.argv[2])
blocks = len({k.split(".")[1] for k in O if k.startswith("layer1.")})
m = CifarResNet(6*blocks+2, width=O["conv1.weight"].shape[0]//16)
@torch.no_grad()
def acc(sd, x, y):
    m.load_state_dict(sd, strict=True); m.eval()
    p = torch.cat([m(x[i:i+1000]).argmax(1) for i in range(0, len(x), 1000)])
    return round(100*(p==y).float().mean().item(), 2)
base = (acc(Dd, xh, yh), acc(Dd, xt, yt)); orig = (acc(O, xh, yh), acc(O, xt, yt))
print('orig', orig, 'decoded', base)
convs = [k for k in O if O[k].dim()==4 and O[k].shape[-1]==3]
for k in convs:
    sd = dict(Dd); sd[k] = O[k]
    err = (Dd[k]-O[k]).pow(2).mean().sqrt().item()
    r = (acc(sd, xh, yh), acc(sd, xt, yt))
    print(k, tuple(O[k].shape), 'rmse %.4f' % err, 'rel %.3f' % (err / O[k].pow(2).mean().sqrt().item()), 'restored', r, 'gain', round(r[0]-base[0],2), round(r[1]-base[1],2), flush=True)
