#!/usr/bin/env bash
# Everything CI checks, from a fresh clone: formatting, lints, the decode-only build, all tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# The decode-only nernc must build without burn.
cargo build --release --no-default-features
if cargo tree --no-default-features -e normal 2>/dev/null | grep -q '^.*burn'; then
  echo "decode-only build depends on burn" >&2
  exit 1
fi
cargo test --release
# The core's tests (format, decoder, spec conformance) also pass without the encoder.
cargo test --release --no-default-features
# Every fuzz target briefly (the long runs are done by hand: scripts/fuzz.sh 600).
scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
