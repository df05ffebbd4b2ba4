#!/usr/bin/env bash
# Reconstruction error against training steps (phase 1 only), one encode per cell.
# Usage: scripts/quality.sh [fixture] ; env HIDDEN="180 320" STEPS="250 1000 4000" PERM=in-filter
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-fixtures/fmnist-resnet20.safetensors}
cargo build --release --quiet
bin=target/release/nernc
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| model | hidden | steps | permutation | conv RMSE vs original | .nern % of source | train s |"
echo "|---|---|---|---|---|---|---|"
for h in ${HIDDEN:-180 320}; do
  for s in ${STEPS:-250 1000 4000}; do
    $bin encode "$src" -o "$tmp/m.nern" --hidden "$h" --steps "$s" \
      --permutation "${PERM:-in-filter}" --json >"$tmp/r.json" 2>/dev/null
    python3 - "$tmp/r.json" "$src" "$h" "$s" "${PERM:-in-filter}" <<'PY'
import json, sys, os
r = json.load(open(sys.argv[1]))
last = r["rounds"][-1]
print(f"| {os.path.basename(sys.argv[2])} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | "
      f"{last['rmse_vs_original']:.5f} | {100*r['nern_bytes']/r['source_bytes']:.1f} % | "
      f"{sum(x['train_seconds'] for x in r['rounds']):.0f} |")
PY
  done
done
