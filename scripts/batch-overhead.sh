#!/usr/bin/env bash
# Per-input overhead of `nernc batch` besides training (issue 12's goal: <= 100 ms), on a manifest
# of N small checkpoints made for it (default 1,000): tiny CIFAR ResNets (one basic block per
# stage, widths 4/8/16, random weights, each distinct) and `--steps 1`, so training is negligible.
#
#   scripts/batch-overhead.sh [N]      (NERNC_BIN: another binary; NERNC_STORE=s3: sources
#                                       and outputs on a loopback S3 server, scripts/lib.sh)
#
# Two runs over the same manifest: the first encodes every input, the second finds every output
# published and skips it. Overhead per input = (the run's wall time - the encoder's own time,
# summed from the report's `encode_seconds`) / N: process start, manifest, SHA-256 of the
# source, the exists check, writing, fsync and the create-if-absent link, the report line.
# Prints a table. Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
source scripts/lib.sh
nernc_setup
nernc_store

python3 - "$work" "$N" "$src_dir" "$src_uri" <<'EOF'
import json, random, struct, sys
work, n, src_dir, src_uri = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def tensors(rng):
    t = {}
    def conv(name, o, i, k):
        t[name] = ("F32", [o, i, k, k])
    def bn(p, c):
        for f in ("weight", "bias", "running_mean", "running_var"):
            t[f"{p}.{f}"] = ("F32", [c])
        t[f"{p}.num_batches_tracked"] = ("I64", [])
    conv("conv1.weight", 4, 1, 3)
    bn("bn1", 4)
    c = 4
    for s, w in ((1, 4), (2, 8), (3, 16)):
        p = f"layer{s}.0"
        conv(f"{p}.conv1.weight", w, c, 3)
        bn(f"{p}.bn1", w)
        conv(f"{p}.conv2.weight", w, w, 3)
        bn(f"{p}.bn2", w)
        if c != w:
            conv(f"{p}.downsample.0.weight", w, c, 1)
            bn(f"{p}.downsample.1", w)
        c = w
    t["fc.weight"] = ("F32", [10, 16])
    t["fc.bias"] = ("F32", [10])
    return t

def data(name, dtype, shape, rng):
    count = 1
    for d in shape:
        count *= d
    if dtype == "I64":
        return struct.pack("<q", 100)
    if name.endswith("running_var"):
        vals = [rng.uniform(0.5, 1.5) for _ in range(count)]
    elif name.endswith("weight") and len(shape) == 1:
        vals = [rng.uniform(0.8, 1.2) for _ in range(count)]
    else:
        vals = [rng.gauss(0.0, 0.3) for _ in range(count)]
    return struct.pack(f"<{count}f", *vals)

with open(f"{work}/manifest.jsonl", "w") as m:
    for i in range(n):
        rng = random.Random(i)
        header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
        for name, (dtype, shape) in sorted(tensors(rng).items()):
            b = data(name, dtype, shape, rng)
            header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header, separators=(",", ":")).encode()
        h += b" " * (-len(h) % 8)
        with open(f"{src_dir}/ckpt-{i:04}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
        m.write(json.dumps({"source": f"{src_uri}/ckpt-{i:04}.safetensors", "id": f"ckpt-{i}"}) + "\n")
EOF
size=$(stat -c %s "$src_dir/ckpt-0000.safetensors")
echo "$N checkpoints of $size bytes (tiny CIFAR ResNet, widths 4/8/16); sources and outputs: $store_label"

run() { # label report
  local t0 t1
  t0=$(date +%s.%N)
  "$bin" batch --manifest "$work/manifest.jsonl" --out "$(out_uri out)" --report "$2" \
    --hidden 8 --steps 1 --batch 64 --data noise --distill-steps 0 2> "$work/$1.err" || {
      echo "batch failed:" >&2; tail -5 "$work/$1.err" >&2; exit 1; }
  t1=$(date +%s.%N)
  python3 - "$1" "$2" "$t0" "$t1" "$N" <<'EOF'
import json, sys
label, report, t0, t1, n = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rows = [json.loads(l) for l in open(report)]
status = {}
for r in rows:
    status[r["status"]] = status.get(r["status"], 0) + 1
assert len(rows) == n, f"{len(rows)} report lines for {n} inputs"
wall = t1 - t0
enc = sum(r.get("encode_seconds", 0.0) for r in rows)
per = sorted(r["seconds"] - r.get("encode_seconds", 0.0) for r in rows)
print(f"| {label} | {', '.join(f'{k} {v}' for k, v in sorted(status.items()))} | {wall:.1f} | {enc:.1f} "
      f"| {1e3 * (wall - enc) / n:.1f} | {1e3 * per[len(per) // 2]:.1f} | {1e3 * per[int(len(per) * 0.99)]:.1f} |")
EOF
}
echo
echo "| run | inputs | wall s | encoder s (sum) | overhead ms/input (wall - encoder) / N | in-loop overhead median ms | p99 ms |"
echo "|---|---|---|---|---|---|---|"
run encode "$work/report-1.jsonl"
run rerun "$work/report-2.jsonl"
