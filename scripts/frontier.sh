#!/usr/bin/env bash
# The rate-accuracy frontier: nernc at several size budgets on each fixture beside plain
# per-channel quantisation (int8/int4/int3/int2, `nernc eval --quantize`, the recipe of
# ../shared/bench/baselines.py) and, when a torch venv is given, quantisation-aware training
# (../shared/bench/qat_baseline.py). Every figure is on the 10,000 Fashion-MNIST test images;
# nernc's choices use held-out training images only.
#
# Finished points are skipped (their JSON is kept under $OUT), so the frontier can be built over
# several runs and machines; the table says on which device each row ran.
#
#   scripts/frontier.sh                      # all fixtures, budgets 6 8 9 10 11 %, seed 0
#   FIXTURES="fmnist-resnet20" BUDGETS="9 11" SEEDS="0 1" scripts/frontier.sh
#   DEVICE=cuda NERNC_BIN=./nernc scripts/frontier.sh
#   TORCH_VENV=/tmp/torchenv scripts/frontier.sh    # adds the QAT rows, one per seed (minutes per bit width)
#   CODED=none scripts/frontier.sh           # without the coded-conv recipes (below)
#
# Besides the budgets, each fixture runs its coded-conv recipes (`--code`, format 1.8: convs as
# integer codes trained in phase 2, the stem predicted), one point per recipe and seed; their
# size follows from the codes' bits and ranks, or from the budget of an `@auto` recipe.
# CODED="NAME=FLAGS;..." replaces a fixture's list (applied to every fixture in FIXTURES); `none` skips them.
#
# Output: $OUT/frontier.md (the table) and $OUT/frontier-FIXTURE.svg (size % against test accuracy).
# Points measured earlier whose JSON is gone can be listed in $OUT/points.csv (docs/frontier/ has
# the README's: `python3 scripts/frontier_table.py docs/frontier fmnist-resnet20 fmnist-resnet56
#   fmnist-resnet20w4`).
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=${FIXTURES-"fmnist-resnet20 fmnist-resnet56 fmnist-resnet20w4"}
BUDGETS=${BUDGETS-"6 8 9 10 11"}
SEEDS=${SEEDS-0}
DEVICE=${DEVICE:-cpu}
OUT=${OUT:-out/frontier}
# The recipe every budget runs: every conv predicted (the budget chooses the hidden width that
# fits); without --predict-all a budget alone stores codes (the `auto-*` recipes below).
RECIPE=${RECIPE:-"--predict-all --predictor-dtype int6 --pe-levels 20 --passthrough f16 --distill-steps 800"}
DATA=/usr/share/datasets/fashion-mnist
# The coded-conv recipes measured in sessions 34-36 (docs/measurements.md): the stem predicted
# by a small int8 predictor, every other conv as codes (`@auto`: each conv's bits chosen to fill
# the budget).
STEM="--hidden 8 --pe-levels 4 --predictor-dtype int8 --steps 20000"
coded_recipes() {
  if [ -n "${CODED:-}" ]; then
    [ "$CODED" = none ] || echo "$CODED"
    return
  fi
  case $1 in
    fmnist-resnet20|fmnist-resnet56)
      echo "3bit=--code layer=1@3 --passthrough f16 $STEM --distill-steps 1200;\
3-3-4bit=--code layer1=1@3 --code layer2=1@3 --code layer=1@4 --passthrough f16 $STEM --distill-steps 600;\
auto-7.5=--code layer=1@auto --target-size 7.5% --passthrough f16 $STEM --distill-steps 1200;\
auto-5=--code layer=1@auto --target-size 5% --passthrough f16 $STEM --distill-steps 1200" ;;
    fmnist-resnet20w4)
      echo "3bit-layer3-rank8th=--code layer3=1/8 --code layer=1 --hidden 32 --predictor-dtype int8 --steps 20000 --distill-steps 400" ;;
  esac
}
bin=${NERNC_BIN:-}
if [ -z "$bin" ]; then
  if [ "$DEVICE" = cuda ]; then
    cargo build --release --quiet --features cuda
  else
    cargo build --release --quiet
  fi
  bin=target/release/nernc
fi
[ -d "$DATA" ] || { echo "frontier.sh: Fashion-MNIST is needed at $DATA (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
mkdir -p "$OUT"

fixture_path() {
  if [ -f "fixtures/$1.safetensors" ]; then echo "fixtures/$1.safetensors"; else echo "../shared/fixtures/$1.safetensors"; fi
}

for f in $FIXTURES; do
  src=$(fixture_path "$f")
  [ -f "$src" ] || { echo "frontier.sh: no checkpoint $f" >&2; exit 1; }
  for bits in int8 int4 int3 int2; do
    j="$OUT/$f-ptq-$bits.json"
    [ -s "$j" ] && continue
    echo "== $f: plain per-channel $bits" >&2
    "$bin" eval "$src" --data "$DATA" --quantize "$bits" --json > "$j.tmp" && mv "$j.tmp" "$j"
  done
  if [ -n "${TORCH_VENV:-}" ]; then
    # One QAT run per seed, as for nernc: the baseline is a draw too. Seed 0 is the shared
    # bench's own draw (scripts/qat_seed.py only replaces its torch.manual_seed(0)).
    for s in $SEEDS; do
      if [ "$s" = 0 ]; then j="$OUT/$f-qat.json"; else j="$OUT/$f-qat-s$s.json"; fi
      [ -s "$j" ] && continue
      echo "== $f: quantisation-aware training, 2/3/4 bits, seed $s (PyTorch)" >&2
      "$TORCH_VENV/bin/python" scripts/qat_seed.py "$s" "$src" --bits 2,3,4 --steps 600 | tail -1 > "$j.tmp" && mv "$j.tmp" "$j"
    done
  fi
  for b in $BUDGETS; do
    for s in $SEEDS; do
      j="$OUT/$f-$b-s$s.json"
      [ -s "$j" ] && continue
      echo "== $f: nernc --target-size $b% --seed $s ($DEVICE)" >&2
      start=$(date +%s)
      # shellcheck disable=SC2086
      "$bin" encode "$src" -o "$OUT/$f-$b-s$s.nern" --target-size "$b%" --seed "$s" \
        --device "$DEVICE" --data "$DATA" --test-eval --json $RECIPE > "$j.tmp"
      echo "{\"wall_seconds\": $(( $(date +%s) - start )), \"host\": \"$(hostname)\"}" > "$j.wall"
      mv "$j.tmp" "$j"
    done
  done
  IFS=';' read -r -a recipes <<< "$(coded_recipes "$f")"
  for r in "${recipes[@]}"; do
    [ -n "$r" ] || continue
    name=${r%%=*}
    flags=${r#*=}
    for s in $SEEDS; do
      j="$OUT/$f-code-$name-s$s.json"
      [ -s "$j" ] && continue
      echo "== $f: nernc coded convs, recipe $name, seed $s ($DEVICE)" >&2
      start=$(date +%s)
      # shellcheck disable=SC2086
      "$bin" encode "$src" -o "$OUT/$f-code-$name-s$s.nern" --seed "$s" \
        --device "$DEVICE" --data "$DATA" --test-eval --json $flags > "$j.tmp"
      echo "{\"wall_seconds\": $(( $(date +%s) - start )), \"host\": \"$(hostname)\"}" > "$j.wall"
      echo "$flags" > "$j.recipe"
      mv "$j.tmp" "$j"
    done
  done
done

python3 scripts/frontier_table.py "$OUT" $FIXTURES
