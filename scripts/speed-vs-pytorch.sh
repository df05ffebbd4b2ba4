#!/usr/bin/env bash
# Encoder speed beside plain PyTorch, same machine, same run, same thread count (all cores):
# phase 1 (kernels/s, batch 4096, hidden 140/180/320) and phase 2 (images/s, batch 128 of noise,
# teacher forward every step, hidden 140/180). Prints one table with the ratio per row.
#
#   scripts/speed-vs-pytorch.sh [BENCH_BINARY...]
#
# With no argument it runs `cargo bench --bench encode`; with bench binaries (e.g. one built from
# an older commit) it runs each, so a before/after comparison shares one PyTorch run.
# The PyTorch side is ../shared/bench/torch_{recon,distill}_bench.py in a venv ($TORCH_VENV,
# default out/torchenv) that is created with torch from PyPI when absent (several GB: the wheel
# carries CUDA libraries; it runs on the CPU here). Not part of CI.
# NERNC_BENCH_STEPS sets the timed phase-1 steps (default 20; phase 2 runs a quarter, >= 3).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TORCH_VENV:-out/torchenv}
BENCH=${NERNC_TORCH_BENCH:-../shared/bench}
MODEL=fixtures/fmnist-resnet20.safetensors
STEPS=${NERNC_BENCH_STEPS:-20}
OUTDIR=out/speed
mkdir -p "$OUTDIR"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q torch safetensors numpy zstandard  # zstandard: qat_baseline.py (frontier.sh)
fi

runs=()
if [ $# -eq 0 ]; then
    NERNC_BENCH_DEVICES=cpu NERNC_BENCH_STEPS=$STEPS cargo bench --bench encode | tee "$OUTDIR/nernc-0.txt"
    runs=("$OUTDIR/nernc-0.txt")
else
    i=0
    for b in "$@"; do
        echo "== $b" >&2
        NERNC_BENCH_DEVICES=cpu NERNC_BENCH_STEPS=$STEPS NERNC_BENCH_MODEL=$MODEL "$b" |
            tee "$OUTDIR/nernc-$i.txt"
        runs+=("$OUTDIR/nernc-$i.txt")
        i=$((i + 1))
    done
fi
"$VENV/bin/python" "$BENCH/torch_recon_bench.py" "$MODEL" --steps "$STEPS" | tee "$OUTDIR/torch-recon.json"
"$VENV/bin/python" "$BENCH/torch_distill_bench.py" "$MODEL" --steps "$(((STEPS / 4) > 3 ? STEPS / 4 : 3))" |
    tee "$OUTDIR/torch-distill.json"

python3 - "$OUTDIR/torch-recon.json" "$OUTDIR/torch-distill.json" "${runs[@]}" <<'EOF'
import json, sys
recon = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
distill = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
runs = sys.argv[3:]

def nernc_rows(path):
    """(phase, hidden) -> throughput from the bench's markdown tables."""
    out, phase = {}, 1
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] != "cpu":
            if line.startswith("| device") and "images" in line:
                phase = 2
            continue
        try:
            out[(phase, int(cells[1]))] = float(cells[4])
        except ValueError:
            pass
    return out

tables = [nernc_rows(p) for p in runs]
head = "| work | PyTorch |" + "".join(f" nernc ({i}) | ratio ({i}) |" for i in range(len(runs)))
print()
print(f"threads: PyTorch {recon['threads']}, nernc all cores (rayon default)")
print(head)
print("|" + "---|" * (2 + 2 * len(runs)))
rows = [(1, h, recon["by_hidden"][str(h)]["kernels_per_s"], "kernels/s, batch 4096")
        for h in (140, 180, 320)]
rows += [(2, h, distill["by_hidden"][str(h)]["images_per_s"], "images/s, batch 128")
         for h in (140, 180)]
for phase, h, ref, unit in rows:
    cells = ""
    for t in tables:
        v = t.get((phase, h))
        cells += f" {v:,.0f} | {v / ref:.2f} |" if v else " - | - |"
    print(f"| phase {phase}, hidden {h} ({unit}) | {ref:,.0f} |{cells}")
EOF
