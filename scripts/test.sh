#!/usr/bin/env bash
# Everything CI checks, from a fresh clone: formatting, lints, the decode-only build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The decode-only nernc must build without burn. Its own target dir keeps target/release/nernc
# the full build (an encode after this script used to find the decode-only binary there).
core=(--release --no-default-features --target-dir target/core)
cargo build "${core[@]}"
if cargo tree --no-default-features -e normal 2>/dev/null | grep -q '^.*burn'; then
  echo "decode-only build depends on burn" >&2
  exit 1
fi
# ... nor on the object-store client (feature `store`: +9 MB stripped, its own HTTP and TLS).
if cargo tree --no-default-features -e normal 2>/dev/null | grep -q 'object_store'; then
  echo "decode-only build depends on object_store" >&2
  exit 1
fi
# The real S3-protocol server tests/object_store.rs starts (3 minutes to build, once).
if ! command -v s3s-fs >/dev/null && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ]; then
  cargo install s3s-fs@0.14.1 --features binary --locked
fi
cargo test --release
# The core's tests (format, decoder, spec conformance) also pass without the encoder.
cargo test "${core[@]}"
# Every fuzz target briefly (the long runs are done by hand: scripts/fuzz.sh 600).
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
