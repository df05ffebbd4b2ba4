# Shared by the batch scripts (sourced, not run): the binary, a work folder, and optionally a
# real S3-protocol server for the same runs against object storage.
#
#   NERNC_BIN    binary to use (default: build target/release/nernc)
#   NERNC_STORE  "s3" to read sources from and publish outputs to s3s-fs (installed by
#                scripts/test.sh), over loopback; anything else: local folders

# Sets $bin and $work (removed on exit, with the server if one was started).
nernc_setup() {
  bin=${NERNC_BIN:-}
  if [ -z "$bin" ]; then
    cargo build --release --quiet
    bin=target/release/nernc
  fi
  work=$(mktemp -d)
  s3_pid=
  trap 'nernc_cleanup' EXIT
}

nernc_cleanup() {
  if [ -n "${s3_pid:-}" ]; then kill "$s3_pid" 2> /dev/null || true; fi
  rm -rf "$work"
}

# Sets $src_dir (where to write source checkpoints), $src_uri (how the manifest names that
# folder) and out_uri/out_dir for an output NAME: the same folder for local runs; for
# NERNC_STORE=s3 a bucket on s3s-fs, whose files are the objects (so checks read them there).
nernc_store() {
  if [ "${NERNC_STORE:-}" = s3 ]; then
    local s3s=${NERNC_S3S_FS:-$(command -v s3s-fs || echo "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs")}
    local port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$work/s3/nernc"
    "$s3s" --host 127.0.0.1 --port "$port" --access-key nernc --secret-key nernc-secret \
      "$work/s3" > "$work/s3s.log" 2>&1 &
    s3_pid=$!
    for _ in $(seq 100); do
      (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
      sleep 0.1
    done
    export AWS_ACCESS_KEY_ID=nernc AWS_SECRET_ACCESS_KEY=nernc-secret AWS_REGION=us-east-1 \
      AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true
    src_dir="$work/s3/nernc/src"
    src_uri="s3://nernc/src"
    store_label="s3 (s3s-fs on loopback)"
  else
    src_dir="$work/src"
    src_uri="$work/src"
    store_label="local folder"
  fi
  mkdir -p "$src_dir"
}

# out_uri NAME / out_dir NAME: an output location as nernc is given it, and as a folder here.
out_uri() {
  if [ "${NERNC_STORE:-}" = s3 ]; then echo "s3://nernc/$1"; else echo "$work/$1"; fi
}
out_dir() {
  if [ "${NERNC_STORE:-}" = s3 ]; then echo "$work/s3/nernc/$1"; else echo "$work/$1"; fi
}
