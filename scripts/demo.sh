#!/usr/bin/env bash
# The main job on a fixture: build, encode the ResNet-20 checkpoint with nernc's defaults,
# decode it, report size and accuracy beside plain int4 quantisation.
# Usage: scripts/demo.sh [fixture.safetensors] [extra encode flags, e.g. --target-size 10%]
# The encode runs under `--time-limit 9m` (NERNC_DEMO_LIMIT, or a --time-limit among the extra
# flags, overrides it) so that the whole demo stays inside 10 minutes on a slow machine too: the
# schedule is the default one, scaled down only where this machine could not run it in time.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-fixtures/fmnist-resnet20.safetensors}
shift || true
cargo build --release --quiet
bin=${NERNC_BIN:-target/release/nernc}
mkdir -p out
name=$(basename "$src" .safetensors)
data=/usr/share/datasets/fashion-mnist
limit=(--time-limit "${NERNC_DEMO_LIMIT:-9m}")
for a in "$@"; do
  if [ "$a" = --time-limit ] || [[ "$a" == --time-limit=* ]]; then limit=(); fi
done
start=$(date +%s)
if [ -d "$data" ]; then
  # The default pipeline: phase 1, then phase 2 on Fashion-MNIST trained through int6 storage,
  # kept by held-out training images; --test-eval only records the test accuracy.
  echo "== nernc encode $src (defaults; Fashion-MNIST found at $data)"
  $bin encode "$src" -o "out/$name.nern" --test-eval "${limit[@]}" "$@"
else
  echo "== nernc encode $src (defaults; no Fashion-MNIST at $data: data-free phase 2, accuracy unmeasured)"
  $bin encode "$src" -o "out/$name.nern" "${limit[@]}" "$@"
fi
encoded=$(date +%s)
echo "== decode"
$bin decode "out/$name.nern" -o "out/$name.decoded.safetensors"
echo "== inspect"
$bin inspect "out/$name.nern" | head -6
if [ -d "$data" ]; then
  echo "== the decoded checkpoint against the original (all 10,000 Fashion-MNIST test images)"
  $bin eval "out/$name.decoded.safetensors" --reference "$src"
  # (Plain per-channel int4 of the same checkpoint is in the encode's summary above, measured on
  # the same images: `nernc eval SRC --quantize int4` gives it on its own.)
fi
echo "== summary"
printf '%-40s %12s\n' "source checkpoint" "$(stat -c %s "$src") bytes"
printf '%-40s %12s\n' ".nern file" "$(stat -c %s "out/$name.nern") bytes"
printf '%-40s %12s\n' "decoded checkpoint" "$(stat -c %s "out/$name.decoded.safetensors") bytes"
printf '%-40s %12s\n' "encode wall time" "$((encoded - start)) s"
printf '%-40s %12s\n' "demo wall time (build excluded)" "$(($(date +%s) - start)) s"
