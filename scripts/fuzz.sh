#!/usr/bin/env bash
# Runs every fuzz target for a bounded time and prints executions and crashes per target.
# Usage: scripts/fuzz.sh [seconds per target, default 60]
# cargo-fuzz needs nightly flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them, and
# `--sanitizer none` avoids the sanitizer runtimes stable does not ship (libFuzzer's coverage
# guidance still works; memory errors would show as crashes in debug-assertion builds).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
cargo fuzz build --sanitizer none -O --debug-assertions >/dev/null
mkdir -p fuzz/corpus
status=0
printf '| target | seconds | executions | exec/s | crashes |\n|---|---|---|---|---|\n'
for target in container decode safetensors; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  # Seeds: the committed real files (golden .nern files; fixture checkpoints for safetensors).
  if [ "$target" = safetensors ]; then
    cp -n fixtures/fmnist-resnet20.safetensors "$corpus/" 2>/dev/null || true
  else
    cp -n fixtures/golden/*.nern "$corpus/" 2>/dev/null || true
  fi
  log=$(mktemp)
  set +e
  cargo fuzz run --sanitizer none -O --debug-assertions "$target" "$corpus" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=4194304 \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
  rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
  crashes=$(ls fuzz/artifacts/"$target" 2>/dev/null | wc -l)
  printf '| %s | %s | %s | %s | %s |\n' "$target" "$secs" "${execs:-?}" "${rate:-?}" "$crashes"
  if [ $rc -ne 0 ]; then
    status=1
    tail -30 "$log" >&2
  fi
  rm -f "$log"
done
exit $status
