#!/usr/bin/env bash
# Reproduces the accuracy table in docs/measurements.md ("Measured so far"): every row is encoded here, then a markdown table
# is printed (size of the .nern against the fp32 safetensors, held-out and test accuracy).
#
#   scripts/accuracy.sh [OUT_DIR]          # default out/accuracy; finished rows are skipped
#
# Environment: NERNC_DATA (Fashion-MNIST directory, default the Debian package's),
# NERNC_DEVICE (cpu or cuda; cuda builds with --features cuda), NERNC_ROWS (a regex: only
# the rows whose name matches are run and printed).
# On the 2-core CPU VM the whole table takes about two and a half hours.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-out/accuracy}
DATA=${NERNC_DATA:-/usr/share/datasets/fashion-mnist}
DEVICE=${NERNC_DEVICE:-cpu}
ROWS=${NERNC_ROWS:-.}
mkdir -p "$OUT"

features=()
[ "$DEVICE" = cuda ] && features=(--features cuda)
cargo build --release --quiet "${features[@]}"
N=target/release/nernc
R20=fixtures/fmnist-resnet20.safetensors
R56=fixtures/fmnist-resnet56.safetensors
# The 4x-wide teacher (17 MB) is not committed; it lives with the shared fixtures.
W4=${NERNC_TEACHER:-../shared/fixtures/fmnist-resnet20w4.safetensors}
real=(--data "$DATA" --held-out 2000 --test-eval --device "$DEVICE")
# Rows are f32 unless they say otherwise (the encoder's default is f16).
f32=(--predictor-dtype f32)

# run NAME ARGS...: encode to $OUT/NAME.nern unless it exists (or NAME is filtered out).
run() {
    local name=$1
    shift
    [[ $name =~ $ROWS ]] || return 0
    [ -f "$OUT/$name.nern" ] && return 0
    echo "== $name" >&2
    local t0=$SECONDS
    "$N" encode "$@" -o "$OUT/$name.nern" --json >"$OUT/$name.json"
    echo $((SECONDS - t0)) >"$OUT/$name.seconds"
}

run r20-h140-p1 "$R20" "${f32[@]}" --hidden 140 --steps 4000 "${real[@]}"
run r20-h140-p2 "$R20" "${f32[@]}" --resume "$OUT/r20-h140-p1.nern" --distill-steps 600 --eval-every 100 "${real[@]}"
run r20-h140-p2-f16 "$R20" --resume "$OUT/r20-h140-p2.nern" --predictor-dtype f16 "${real[@]}"
run r20-h140-p2-int8 "$R20" --resume "$OUT/r20-h140-p2.nern" --predictor-dtype int8 \
    --distill-steps 100 --distill-lr 2e-5 --eval-every 25 "${real[@]}"
run r20-h140-noise "$R20" --resume "$OUT/r20-h140-p1.nern" --distill-steps 150 --data noise \
    "${f32[@]}" --device "$DEVICE"
run r20-h180-p1 "$R20" "${f32[@]}" --hidden 180 --steps 4000 "${real[@]}"
run r20-h180-p2 "$R20" "${f32[@]}" --resume "$OUT/r20-h180-p1.nern" --distill-steps 300 --eval-every 50 "${real[@]}"
if [ -f "$W4" ]; then
    run r20-h180-w4 "$R20" "${f32[@]}" --resume "$OUT/r20-h180-p2.nern" --distill-steps 100 \
        --distill-lr 2e-5 --eval-every 20 --teacher "$W4" "${real[@]}"
fi
run r20-h180-pe20-p1 "$R20" "${f32[@]}" --hidden 180 --pe-levels 20 --permutation none --steps 3000 \
    "${real[@]}"
run r20-h180-pe20-int8 "$R20" --resume "$OUT/r20-h180-pe20-p1.nern" --predictor-dtype int8 \
    --distill-steps 200 --eval-every 50 "${real[@]}"
run r20-h160-p1 "$R20" "${f32[@]}" --hidden 160 --steps 4000 "${real[@]}"
run r20-h160-int8 "$R20" --resume "$OUT/r20-h160-p1.nern" --predictor-dtype int8 --distill-steps 300 \
    --eval-every 50 "${real[@]}"
run r20-h80-p1 "$R20" "${f32[@]}" --hidden 80 --steps 4000 "${real[@]}"
run r20-h80-p2-f16 "$R20" --resume "$OUT/r20-h80-p1.nern" --distill-steps 150 --eval-every 50 \
    --predictor-dtype f16 "${real[@]}"
run r20-h320-r2 "$R20" "${f32[@]}" --hidden 320 --steps 1000 --rounds 2 "${real[@]}"
run r56-h180-p1 "$R56" "${f32[@]}" --hidden 180 --steps 4000 "${real[@]}"
run r56-h180-p2 "$R56" "${f32[@]}" --resume "$OUT/r56-h180-p1.nern" --distill-steps 150 --eval-every 50 "${real[@]}"
run r56-h180-p3-f16 "$R56" --resume "$OUT/r56-h180-p2.nern" --predictor-dtype f16 --distill-steps 300 \
    --eval-every 50 "${real[@]}"

# row NAME: one markdown row from the file's own metadata (noise rows are evaluated here).
row() {
    local name=$1 f="$OUT/$1.nern"
    [[ $name =~ $ROWS ]] && [ -f "$f" ] || return 0
    local info size held test secs
    info=$("$N" inspect "$f")
    size=$(sed -n 's/.*this file is \([0-9.]*\) % of it.*/\1/p' <<<"$info")
    held=$(sed -n 's/^accuracy: held-out \([0-9.]*\) %.*/\1/p' <<<"$info")
    test=$(sed -n 's/^accuracy:.*test \([0-9.]*\) %.*/\1/p' <<<"$info")
    if [ -z "$test" ]; then
        test=$("$N" eval "$f" --data "$DATA" --device "$DEVICE" | sed -n 's/.*: \([0-9.]*\) % top-1.*/\1/p')
    fi
    secs=$(cat "$OUT/$name.seconds" 2>/dev/null || echo "?")
    echo "| $name | ${size} % | ${held:--} | ${test} | ${secs} |"
}

echo
echo "| row | .nern % of fp32 | held-out % | test % | encode s |"
echo "|---|---|---|---|---|"
for r in "$R20" "$R56"; do
    "$N" eval "$r" --data "$DATA" --device "$DEVICE" | sed -n 's/^\(.*\): \([0-9.]*\) % top-1.*/| original \1 | 100 % | - | \2 | - |/p'
done
for name in r20-h140-p1 r20-h140-p2 r20-h140-p2-f16 r20-h140-p2-int8 r20-h140-noise \
    r20-h180-p1 r20-h180-p2 r20-h180-w4 r20-h180-pe20-p1 r20-h180-pe20-int8 r20-h160-p1 r20-h160-int8 r20-h80-p1 r20-h80-p2-f16 r20-h320-r2 r56-h180-p1 r56-h180-p2 r56-h180-p3-f16; do
    row "$name"
done
