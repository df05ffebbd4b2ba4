#!/usr/bin/env bash
# Everything to measure on a GPU machine, as one call. Two halves:
#
#   scripts/cuda-check.sh prepare    # here (CPU machine with Rust): build with --features cuda,
#                                    # strip, bundle binaries + Fashion-MNIST + the PyTorch
#                                    # references into out/cuda-check/ (git-ignored, < 64 MiB)
#   scripts/cuda-check.sh run        # on the GPU machine (no Rust, has PyTorch), from the
#                                    # repository root with out/cuda-check carried along
#
# `run` measures, each step under its own time limit so one slow step cannot eat the rest:
#   1. nernc's phase-1 and phase-2 throughput on CUDA (the encode bench binary)
#   2. the PyTorch references (../shared/bench) on the same GPU
#   3. the README's best ResNet-20 recipe (hidden 180, PE L = 20, no permutation, 3000 phase-1
#      steps, then int8 quantisation-aware phase 2 on real data) encoded on CUDA end to end
#   4. the decoded checkpoint loaded by PyTorch with strict=True, and its test accuracy
#   5. determinism: the recipe's phase 1 encoded twice on CUDA gives the same file
# Results go to $OUT (or out/cuda-check/results) as logs plus summary.md.
#
# Measured on an H200 (2026-11-27): burn-cuda compiles every kernel with NVRTC at run time, on
# one CPU thread, 0.05-2.4 s each (matmul autotune candidates are the slow ones); a 5-step
# hidden-16 encode had not finished after 70 s, all of it compiling. So `run` writes a
# cubecl.toml that keeps compiled PTX and autotune results on disk (later steps of the same
# run reuse them), logs each compilation (their count and time are in the summary), warms up
# first under its own limit, and packs the caches into $OUT/cubecl-cache.tar.gz: carrying that
# to a later GPU session (CUDA_CHECK_CACHE=path) skips the compilation entirely.
# Environment for `run`: CUDA_CHECK_DEVICE (default cuda; `cpu` tests the script's own path on
# a machine without a GPU), CUDA_CHECK_STEPS (phase-1 steps of the recipe, default 3000),
# CUDA_CHECK_DISTILL (phase-2 steps, default 200), CUDA_CHECK_BENCH_STEPS (default 40).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=out/cuda-check

prepare() {
    set -e
    cargo build --release --features cuda --bin nernc
    # The bench binary, built (not run) by cargo; its path comes from cargo's JSON messages.
    local bench
    bench=$(cargo bench --features cuda --bench encode --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="encode" and m.get("executable"):
        print(m["executable"])' | tail -1)
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/data" "$BUNDLE/bench"
    # Stripped, each binary is ~41 MB (cubecl + burn-cuda); xz brings it to ~7 MB.
    strip -o "$BUNDLE/nernc" target/release/nernc
    strip -o "$BUNDLE/encode-bench" "$bench"
    xz -T2 -6 "$BUNDLE/nernc" "$BUNDLE/encode-bench"
    cp /usr/share/datasets/fashion-mnist/*.gz "$BUNDLE/data/"
    cp ../shared/bench/*.py "$BUNDLE/bench/"
    du -sh "$BUNDLE"
    local bytes
    bytes=$(du -sb "$BUNDLE" | cut -f1)
    if [ "$bytes" -gt $((64 * 1024 * 1024)) ]; then
        echo "bundle is $bytes bytes: over the 64 MiB carry limit" >&2
        exit 1
    fi
}

run() {
    local dev=${CUDA_CHECK_DEVICE:-cuda}
    local res=${OUT:-$BUNDLE/results}
    mkdir -p "$res"
    # Unpack the binaries outside the bundle with Python's lzma (the GPU machine may lack xz).
    local bin=${TMPDIR:-/tmp}/nernc-cuda-check
    mkdir -p "$bin"
    python3 -c 'import lzma,os,shutil,sys
for p in sys.argv[2:]:
    out = os.path.join(sys.argv[1], os.path.basename(p)[:-3])
    with lzma.open(p) as f, open(out, "wb") as o: shutil.copyfileobj(f, o)
    os.chmod(out, 0o755)' "$bin" "$BUNDLE/nernc.xz" "$BUNDLE/encode-bench.xz"
    export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
    export FMNIST=$PWD/$BUNDLE/data
    local N=$bin/nernc R20=$PWD/fixtures/fmnist-resnet20.safetensors
    local steps=${CUDA_CHECK_STEPS:-3000} dsteps=${CUDA_CHECK_DISTILL:-200}
    local S=$res/summary.md
    : >"$S"
    say() { echo "$*" | tee -a "$S"; }
    # timed LIMIT NAME CMD...: runs CMD with a limit, logs to NAME.log, records wall seconds.
    timed() {
        local limit=$1 name=$2
        shift 2
        local t0 rc
        t0=$(date +%s.%N)
        timeout "$limit" "$@" >"$res/$name.log" 2>&1
        rc=$?
        local secs
        secs=$(python3 -c "import time;print(round(time.time()-$t0,1))")
        say "- $name: exit $rc, ${secs} s (limit $limit s)"
        return $rc
    }
    # Kernel cache and compile log (cubecl reads cubecl.toml from the working directory).
    local cache=${TMPDIR:-/tmp}/cubecl-cache
    mkdir -p "$cache"
    if [ -n "${CUDA_CHECK_CACHE:-}" ] && [ -f "$CUDA_CHECK_CACHE" ]; then
        tar -xzf "$CUDA_CHECK_CACHE" -C "$cache"
    fi
    cat >cubecl.toml <<TOML
[compilation]
cache = { file = "$cache" }
[compilation.logger]
level = "basic"
file = "$res/cubecl-compile.log"
[autotune]
level = "${CUDA_CHECK_AUTOTUNE:-minimal}"
cache = { file = "$cache" }
TOML
    say "# cuda-check $(date -u +%FT%TZ), device $dev"
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } |
        sed 's/^/    gpu: /' | tee -a "$S"
    python3 -c 'import torch;print("    torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
        tee -a "$S"
    # Warm-up: the recipe's shapes for a few steps, so the compilation cost is measured apart.
    timed 240 warmup "$N" encode "$R20" -o "$res/warmup.nern" --hidden 180 --pe-levels 20 \
        --permutation none --steps 20 --device "$dev"
    say "- kernels compiled so far: $(grep -c 'START_KERNEL_COMPILATION\|^|' "$res/cubecl-compile.log" 2>/dev/null)"
    timed 120 nernc-bench env NERNC_BENCH_DEVICES="$dev" NERNC_BENCH_MODEL="$R20" \
        NERNC_BENCH_STEPS="${CUDA_CHECK_BENCH_STEPS:-40}" "$bin/encode-bench"
    timed 60 torch-recon python3 "$BUNDLE/bench/torch_recon_bench.py" "$R20" --device "$dev" \
        --steps "${CUDA_CHECK_BENCH_STEPS:-40}"
    timed 60 torch-distill python3 "$BUNDLE/bench/torch_distill_bench.py" "$R20" --device "$dev" \
        --steps 10
    local real=(--data "$FMNIST" --held-out 2000 --test-eval --device "$dev")
    timed 270 recipe "$N" encode "$R20" -o "$res/r20-recipe.nern" --hidden 180 --pe-levels 20 \
        --permutation none --steps "$steps" --predictor-dtype int8 --distill-steps "$dsteps" \
        --eval-every 50 "${real[@]}" --json
    if [ -f "$res/r20-recipe.nern" ]; then
        timed 60 decode "$N" decode "$res/r20-recipe.nern" -o "$res/r20-recipe.safetensors"
        timed 60 torch-eval python3 "$BUNDLE/bench/eval_torch.py" "$res/r20-recipe.safetensors" \
            --ref "$R20"
        "$N" inspect "$res/r20-recipe.nern" >"$res/inspect.txt" 2>&1
        rm -f "$res/r20-recipe.safetensors"
    fi
    # Determinism: two short phase-1 encodes with the same seed on the same device.
    for i in 1 2; do
        timed 45 "determinism-$i" "$N" encode "$R20" -o "$res/det-$i.nern" --hidden 64 \
            --steps 300 --device "$dev"
    done
    if cmp -s "$res/det-1.nern" "$res/det-2.nern"; then
        say "- determinism: the two files are identical"
    else
        say "- determinism: the two files DIFFER"
    fi
    say "- kernels compiled in all: $(grep -c 'START_KERNEL_COMPILATION\|^|' "$res/cubecl-compile.log" 2>/dev/null)"
    tar -czf "$res/cubecl-cache.tar.gz" -C "$cache" . 2>/dev/null
    rm -f cubecl.toml
    say ""
    say "## nernc encode bench"
    grep '^|' "$res/nernc-bench.log" | tee -a "$S"
    say ""
    say "## PyTorch references"
    tail -1 "$res/torch-recon.log" | tee -a "$S"
    tail -1 "$res/torch-distill.log" | tee -a "$S"
    say ""
    say "## recipe"
    tail -25 "$res/recipe.log" | tee -a "$S"
    [ -f "$res/torch-eval.log" ] && tail -3 "$res/torch-eval.log" | tee -a "$S"
    [ -f "$res/inspect.txt" ] && head -30 "$res/inspect.txt" >>"$S"
    return 0
}

case ${1:-} in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: scripts/cuda-check.sh prepare|run" >&2
    exit 2
    ;;
esac
