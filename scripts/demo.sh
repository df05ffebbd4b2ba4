#!/usr/bin/env bash
# The main job on a fixture: build, encode the ResNet-20 checkpoint, decode it, report.
# Usage: scripts/demo.sh [fixture.safetensors] [extra encode flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-fixtures/fmnist-resnet20.safetensors}
shift || true
cargo build --release --quiet
bin=target/release/nernc
mkdir -p out
name=$(basename "$src" .safetensors)
data=/usr/share/datasets/fashion-mnist
if [ -d "$data" ]; then
  # The README's best ResNet-20 recipe in one command: phase 1 (3000 steps), then phase 2 on real
  # data trained through int8 storage, selected on held-out training images; the test split is
  # only measured. About 5 minutes on 2 cores.
  echo "== encode $src (hidden 180, PE L=20, no permutation tables, phase 1 + int8 phase 2, CPU)"
  $bin encode "$src" -o "out/$name.nern" --hidden 180 --pe-levels 20 --permutation none \
    --steps "${STEPS:-3000}" --predictor-dtype int8 --data "$data" \
    --distill-steps "${DISTILL_STEPS:-200}" --test-eval "$@"
else
  echo "== encode $src (hidden 180, phase 1 only: no Fashion-MNIST at $data, accuracy unmeasured)"
  $bin encode "$src" -o "out/$name.nern" --hidden 180 --steps "${STEPS:-2000}" "$@"
fi
echo "== decode"
$bin decode "out/$name.nern" -o "out/$name.decoded.safetensors"
echo "== inspect"
$bin inspect "out/$name.nern" | head -12
if [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "== accuracy of the decoded checkpoint (all 10,000 Fashion-MNIST test images)"
  $bin eval "out/$name.decoded.safetensors" --reference "$src"
fi
echo "== summary"
printf '%-40s %12s\n' "source checkpoint" "$(stat -c %s "$src") bytes"
printf '%-40s %12s\n' ".nern file" "$(stat -c %s "out/$name.nern") bytes"
printf '%-40s %12s\n' "decoded checkpoint" "$(stat -c %s "out/$name.decoded.safetensors") bytes"
