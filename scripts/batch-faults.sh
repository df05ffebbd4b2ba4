#!/usr/bin/env bash
# Fault campaign for `nernc batch` (issue 12's goal: 20 runs with SIGTERM at random moments,
# 0 partial outputs, 0 lost inputs, 0 duplicates).
#
#   scripts/batch-faults.sh [ROUNDS]     (default 20; NERNC_BIN: another binary; NERNC_STORE=s3:
#                                         sources and outputs on a loopback S3 server)
#
# Each round starts a local indexed job over a manifest of 6 distinct checkpoints (copies of the
# ResNet-20 fixture with one conv weight changed): shard 0 and shard 1 of 2, plus a second
# worker on index 0 (two pods on the same index). At a random moment one of the three gets
# SIGTERM. Then every worker that did not finish is rerun until its shard is done. After each
# round the script checks:
#   - nothing partial: no temporary file in the output folder, every published file passes
#     `nernc inspect` (which verifies every section hash);
#   - nothing lost: the 6 expected content-addressed outputs exist, no others;
#   - no duplicate: across all reports of the round each output was `encoded` exactly once;
#   - a killed worker exited 75 (retry) or, if the signal came after its last input, 0.
# Prints one line per round and a summary; exits non-zero on any violation. Not part of CI
# (about 10 s a round on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-20}
source scripts/lib.sh
nernc_setup
nernc_store
# Quick, data-free settings: each input takes about a second, so kills land mid-encode.
QUICK=(--hidden 16 --steps 150 --batch 512 --data noise --distill-steps 0)

python3 - fixtures/fmnist-resnet20.safetensors "$work" "$src_dir" "$src_uri" <<'EOF'
import json, struct, sys
src, work, src_dir, src_uri = sys.argv[1:5]
blob = bytearray(open(src, "rb").read())
n = struct.unpack("<Q", blob[:8])[0]
header = json.loads(blob[8:8 + n])
start = 8 + n + header["conv1.weight"]["data_offsets"][0]
with open(f"{work}/manifest.jsonl", "w") as m:
    for i in range(6):
        b = bytearray(blob)
        v = struct.unpack("<f", b[start:start + 4])[0]
        b[start:start + 4] = struct.pack("<f", v + 1e-3 * (i + 1))
        open(f"{src_dir}/ckpt-{i}.safetensors", "wb").write(b)
        m.write(json.dumps({"source": f"{src_uri}/ckpt-{i}.safetensors", "id": f"ckpt-{i}"}) + "\n")
EOF

# How long one shard takes here: the kills are drawn uniformly inside that window.
t0=$(date +%s.%N)
JOB_COMPLETION_INDEX=0 "$bin" batch --manifest "$work/manifest.jsonl" --out "$(out_uri calibrate)" \
  --shards 2 "${QUICK[@]}" > /dev/null 2>&1
window=$(python3 -c "print(max(0.5, $(date +%s.%N) - $t0))")
echo "outputs: $store_label; one shard (3 inputs) takes ${window}s here; SIGTERM lands uniformly in [0.1, that]"

violations=0
landed=0
for round in $(seq 1 "$ROUNDS"); do
  out=$(out_dir "out-$round")
  out_at=$(out_uri "out-$round")
  mkdir -p "$out"
  rep="$work/rep-$round"
  mkdir -p "$rep"
  declare -A pid=()
  start_worker() { # name index run
    JOB_COMPLETION_INDEX=$2 "$bin" batch --manifest "$work/manifest.jsonl" --out "$out_at" \
      --shards 2 --report "$rep/$1-$3.jsonl" "${QUICK[@]}" 2> "$rep/$1-$3.err" &
    pid[$1]=$!
  }
  start_worker a 0 0
  start_worker b 1 0
  start_worker c 0 0
  victim=$(printf 'a\nb\nc\n' | shuf -n 1)
  delay=$(python3 -c "import random; print(round(random.uniform(0.1, $window), 2))")
  sleep "$delay"
  kill -TERM "${pid[$victim]}" 2> /dev/null || true
  declare -A status=()
  for w in a b c; do
    set +e
    wait "${pid[$w]}"
    status[$w]=$?
    set -e
  done
  vstatus=${status[$victim]}
  case "$vstatus" in
    75) landed=$((landed + 1)) ;;
    0) ;;
    *) echo "round $round: killed worker $victim exited $vstatus" >&2; violations=$((violations + 1)) ;;
  esac
  partial=$(find "$out" -maxdepth 1 -type f ! -name '*.nern' | wc -l)
  # Rerun every worker that did not finish (a requeue), until it does.
  for w in a b c; do
    run=0
    while [ "${status[$w]}" -ne 0 ]; do
      run=$((run + 1))
      [ "$run" -le 3 ] || { echo "round $round: worker $w still failing" >&2; violations=$((violations + 1)); break; }
      idx=0; [ "$w" = b ] && idx=1
      start_worker "$w" "$idx" "$run"
      set +e
      wait "${pid[$w]}"
      status[$w]=$?
      set -e
    done
  done
  partial=$((partial + $(find "$out" -maxdepth 1 -type f ! -name '*.nern' | wc -l)))
  bad_files=0
  for f in "$out"/*.nern; do
    "$bin" inspect "$f" > /dev/null 2>&1 || bad_files=$((bad_files + 1))
  done
  verdict=$(python3 - "$rep" "$out" <<'EOF'
import glob, json, os, sys
rep, out = sys.argv[1], sys.argv[2]
encoded, outputs, lines_done = {}, set(), set()
for path in glob.glob(f"{rep}/*.jsonl"):
    for line in open(path):
        r = json.loads(line)
        if r.get("status") in ("encoded", "skipped"):
            lines_done.add(r["line"])
            outputs.add(os.path.basename(r["output"]))
        if r.get("status") == "encoded":
            name = os.path.basename(r["output"])
            encoded[name] = encoded.get(name, 0) + 1
published = {f for f in os.listdir(out) if f.endswith(".nern")}
lost = 6 - len(lines_done)
dups = sum(c - 1 for c in encoded.values() if c > 1)
stray = len(published ^ outputs) + (6 - len(outputs))
print(lost, dups, stray, len(published))
EOF
  )
  read -r lost dups stray published <<< "$verdict"
  echo "round $round: SIGTERM to worker $victim after ${delay}s -> exit $vstatus; published $published, partial $partial, unreadable $bad_files, lost $lost, duplicates $dups, unexpected $stray"
  if [ "$partial" -ne 0 ] || [ "$bad_files" -ne 0 ] || [ "$lost" -ne 0 ] || [ "$dups" -ne 0 ] || [ "$stray" -ne 0 ]; then
    violations=$((violations + 1))
  fi
  unset pid status
done
echo "batch-faults: $ROUNDS rounds, SIGTERM landed mid-shard in $landed (exit 75), violations: $violations"
[ "$violations" -eq 0 ]
