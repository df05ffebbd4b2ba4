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
echo "== encode $src (hidden 180, in-filter permutation, CPU)"
$bin encode "$src" -o "out/$name.nern" --hidden 180 --steps "${STEPS:-2000}" "$@"
echo "== decode"
$bin decode "out/$name.nern" -o "out/$name.decoded.safetensors"
echo "== inspect"
$bin inspect "out/$name.nern" | head -12
if [ -d /usr/share/datasets/fashion-mnist ]; then
  echo "== accuracy of the decoded checkpoint (first 2000 Fashion-MNIST test images)"
  $bin eval "out/$name.decoded.safetensors" --reference "$src" --limit 2000
fi
echo "== summary"
printf '%-40s %12s\n' "source checkpoint" "$(stat -c %s "$src") bytes"
printf '%-40s %12s\n' ".nern file" "$(stat -c %s "out/$name.nern") bytes"
printf '%-40s %12s\n' "decoded checkpoint" "$(stat -c %s "out/$name.decoded.safetensors") bytes"
