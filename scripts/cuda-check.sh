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
#   3. the README's best ResNet-20 recipe (hidden 209, int6, PE L = 20, f16 passthrough, 12,000
#      phase-1 steps, 800 phase-2 steps on real data) encoded on CUDA end to end, after a short
#      warm-up of the same shapes that measures the one-time kernel compilation apart
#   4. the decoded checkpoint loaded by PyTorch with strict=True, and its test accuracy
#   5. determinism: the recipe's phase 1 encoded twice on CUDA gives the same file
#   6. with time left, ResNet-56 at int4's size (--target-size 10.9 %) on a long schedule
# Every step's limit is cut to what is left of CUDA_CHECK_BUDGET (default 540 s).
# Results go to $OUT (or out/cuda-check/results) as logs plus summary.md.
#
# Measured on an H200 (2026-11-27, 2026-12-04): burn-cuda compiles every kernel with NVRTC at
# run time, on one CPU thread, about 1 s each, and its matmul autotune compiles every candidate
# for every new shape: the recipe's first phase-1 step took 154 s, phase 2 had not begun
# training after 5 minutes more (624 kernels, 399 of them matmul candidates). So `run` writes a
# cubecl.toml that keeps compiled PTX and autotune results on disk (later steps of the same
# run reuse them), logs each compilation (their count and time are in the summary), warms up
# first under its own limit, and packs the caches into $OUT/cubecl-cache.tar.gz: carrying that
# to a later GPU session (CUDA_CHECK_CACHE=path) skips the compilation entirely.
# Environment for `run`: CUDA_CHECK_DEVICE (default cuda; `cpu` tests the script's own path on
# a machine without a GPU), CUDA_CHECK_STEPS (phase-1 steps of the recipe, default 12000),
# CUDA_CHECK_DISTILL (phase-2 steps, default 800), CUDA_CHECK_BENCH_STEPS (default 40),
# CUDA_CHECK_WARMUP_LIMIT (seconds, default 300), CUDA_CHECK_BUDGET (seconds, default 540: every
# step's limit is cut to what is left of it, so the whole run ends inside one device call).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=out/cuda-check

prepare() {
    set -e
    # CUDA_CHECK_FEATURES=cuda-autotune bundles the autotuned build instead (slow cold start).
    local features=${CUDA_CHECK_FEATURES:-cuda}
    cargo build --release --features "$features" --bin nernc
    # The bench binary, built (not run) by cargo; its path comes from cargo's JSON messages.
    local bench
    bench=$(cargo bench --features "$features" --bench encode --no-run --message-format=json 2>/dev/null |
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
    echo "$features" >"$BUNDLE/features"
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
    # The whole run must end inside the device call: every step's limit is cut to what is left
    # of CUDA_CHECK_BUDGET (seconds) less a reserve for packing the results.
    local budget=${CUDA_CHECK_BUDGET:-540} t_start
    t_start=$(date +%s)
    # Unpack the binaries outside the bundle with Python's lzma (the GPU machine may lack xz).
    local bin=${TMPDIR:-/tmp}/nernc-cuda-check
    mkdir -p "$bin"
    python3 -c 'import lzma,os,shutil,sys
for p in sys.argv[2:]:
    out = os.path.join(sys.argv[1], os.path.basename(p)[:-3])
    if os.path.exists(out): continue
    with lzma.open(p) as f, open(out, "wb") as o: shutil.copyfileobj(f, o)
    os.chmod(out, 0o755)' "$bin" "$BUNDLE/nernc.xz" "$BUNDLE/encode-bench.xz"
    export CUDA_PATH=${CUDA_PATH:-/usr/local/cuda}
    export FMNIST=$PWD/$BUNDLE/data
    local N=$bin/nernc R20=$PWD/fixtures/fmnist-resnet20.safetensors
    local steps=${CUDA_CHECK_STEPS:-12000} dsteps=${CUDA_CHECK_DISTILL:-800}
    local S=$res/summary.md
    : >"$S"
    say() { echo "$*" | tee -a "$S"; }
    # timed LIMIT NAME CMD...: runs CMD with min(LIMIT, time left), logs to NAME.log.
    timed() {
        local limit=$1 name=$2
        shift 2
        local left=$((budget - ($(date +%s) - t_start) - 15))
        [ "$left" -lt "$limit" ] && limit=$left
        if [ "$limit" -lt 10 ]; then
            say "- $name: skipped (no time left)"
            return 124
        fi
        local t0 rc
        t0=$(date +%s.%N)
        timeout "$limit" "$@" >"$res/$name.log" 2>&1
        rc=$?
        local secs
        secs=$(python3 -c "import time;print(round(time.time()-$t0,1))")
        say "- $name: exit $rc, ${secs} s (limit $limit s)"
        return $rc
    }
    compiled() { grep -c '^\[Compiling kernel\]' "$res/cubecl-compile.log" 2>/dev/null; }
    # Kernel cache and compile log (cubecl reads cubecl.toml from the working directory).
    local cache=${CUDA_CHECK_CACHE_DIR:-${TMPDIR:-/tmp}/cubecl-cache}
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
    pack() { tar -czf "$res/cubecl-cache.tar.gz" -C "$cache" . 2>/dev/null; }
    say "# cuda-check $(date -u +%FT%TZ), device $dev, build features $(cat "$BUNDLE/features" 2>/dev/null), budget $budget s"
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } |
        sed 's/^/    gpu: /' | tee -a "$S"
    python3 -c 'import torch;print("    torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 |
        tee -a "$S"
    # The README's best ResNet-20 recipe (the one that beats plain int4 on CPU).
    local recipe=(--hidden 209 --predictor-dtype int6 --pe-levels 20 --passthrough f16
        --data "$FMNIST" --test-eval --device "$dev")
    # 1. The PyTorch references on this GPU (seconds; they need no compilation).
    if [ "${CUDA_CHECK_TORCH:-1}" = 1 ]; then
    timed 60 torch-recon python3 "$BUNDLE/bench/torch_recon_bench.py" "$R20" --device "$dev" \
        --steps "${CUDA_CHECK_BENCH_STEPS:-40}"
    timed 60 torch-distill python3 "$BUNDLE/bench/torch_distill_bench.py" "$R20" --device "$dev" \
        --steps 10
    fi
    # 2. Warm-up: the recipe's shapes for a few steps of each phase (with held-out evaluation),
    #    so the one-time kernel compilation is measured apart from training.
    timed "${CUDA_CHECK_WARMUP_LIMIT:-300}" warmup "$N" encode "$R20" -o "$res/warmup.nern" \
        "${recipe[@]}" --steps 30 --distill-steps 8 --eval-every 4 --held-out 500
    say "- kernels compiled by the warm-up: $(compiled)"
    pack
    # 3. The recipe end to end, kernels cached.
    timed 240 recipe "$N" encode "$R20" -o "$res/r20-recipe.nern" "${recipe[@]}" \
        --steps "$steps" --distill-steps "$dsteps" --json
    say "- kernels compiled after the recipe: $(compiled)"
    if [ -f "$res/r20-recipe.nern" ]; then
        timed 60 decode "$N" decode "$res/r20-recipe.nern" -o "$res/r20-recipe.safetensors"
        timed 60 torch-eval python3 "$BUNDLE/bench/eval_torch.py" "$res/r20-recipe.safetensors" \
            --ref "$R20"
        "$N" inspect "$res/r20-recipe.nern" >"$res/inspect.txt" 2>&1
        rm -f "$res/r20-recipe.safetensors"
    fi
    # 4. Determinism: the recipe's phase 1, short, twice with the same seed.
    for i in 1 2; do
        timed 60 "determinism-$i" "$N" encode "$R20" -o "$res/det-$i.nern" --hidden 209 \
            --predictor-dtype int6 --pe-levels 20 --steps 500 --distill-steps 0 --device "$dev"
    done
    # The provenance records wall times, so the decoded checkpoints are what must be equal.
    for i in 1 2; do
        [ -f "$res/det-$i.nern" ] && "$N" decode "$res/det-$i.nern" -o "$res/det-$i.safetensors" \
            >/dev/null 2>&1
    done
    if [ -f "$res/det-1.safetensors" ] && cmp -s "$res/det-1.safetensors" "$res/det-2.safetensors"; then
        say "- determinism: the two decoded checkpoints are identical"
    else
        say "- determinism: the two decoded checkpoints DIFFER (or one is missing)"
    fi
    cmp -s "$res/det-1.nern" "$res/det-2.nern" && say "- determinism: the two files are identical"
    rm -f "$res"/det-*.safetensors
    # 5. Throughput beside the PyTorch references (warm-up steps untimed in the bench).
    timed 200 nernc-bench env NERNC_BENCH_DEVICES="$dev" NERNC_BENCH_MODEL="$R20" \
        NERNC_BENCH_STEPS="${CUDA_CHECK_BENCH_STEPS:-40}" "$bin/encode-bench"
    # 6. With time left: ResNet-56 at int4's size (10.9 % of the checkpoint), a long schedule
    #    that the 2-core CPU cannot afford (phase 1 scaled by the kernel count: 3x ResNet-20's).
    local R56=$PWD/fixtures/fmnist-resnet56.safetensors
    if [ $((budget - ($(date +%s) - t_start))) -gt "${CUDA_CHECK_R56_MIN:-200}" ]; then
        timed 400 r56-budget "$N" encode "$R56" -o "$res/r56-budget.nern" --target-size 10.9% \
            --predict-all --predictor-dtype int6 --pe-levels 20 --passthrough f16 --data "$FMNIST" --test-eval \
            --device "$dev" --steps "${CUDA_CHECK_R56_STEPS:-36000}" \
            --distill-steps "${CUDA_CHECK_R56_DISTILL:-2000}" --json
    else
        say "- r56-budget: skipped (under ${CUDA_CHECK_R56_MIN:-200} s left)"
    fi
    say "- kernels compiled in all: $(compiled)"
    pack
    rm -f cubecl.toml
    say ""
    say "## nernc encode bench"
    grep '^|' "$res/nernc-bench.log" | tee -a "$S"
    say ""
    say "## PyTorch references"
    tail -1 "$res/torch-recon.log" | tee -a "$S"
    tail -1 "$res/torch-distill.log" | tee -a "$S"
    say ""
    say "## warm-up (tail)"
    tail -8 "$res/warmup.log" | tee -a "$S"
    say ""
    say "## recipe"
    tail -40 "$res/recipe.log" | tee -a "$S"
    [ -f "$res/torch-eval.log" ] && tail -3 "$res/torch-eval.log" | tee -a "$S"
    [ -f "$res/inspect.txt" ] && head -30 "$res/inspect.txt" >>"$S"
    if [ -f "$res/r56-budget.log" ]; then
        say ""
        say "## ResNet-56 at 10.9 %"
        tail -40 "$res/r56-budget.log" | tee -a "$S"
    fi
    # At most 8 files come back from a device call: keep the summary, the logs that matter
    # and the cache; fold the rest into one archive.
    # (tar may warn that a file changed while read, exit 1: the cleanup runs regardless.)
    (cd "$res" && { tar -czf logs.tar.gz --exclude=logs.tar.gz --exclude=cubecl-cache.tar.gz \
        --exclude='*.nern' . || true; } && find . -maxdepth 1 -type f ! -name summary.md \
        ! -name logs.tar.gz ! -name cubecl-cache.tar.gz ! -name r20-recipe.nern \
        ! -name recipe.log ! -name r56-budget.nern ! -name r56-budget.log -delete)
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
