#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `scripts/fuzz.sh [SECONDS_PER_TARGET]` (default 20).
# Installs cargo-fuzz from crates.io when it is missing. Exits non-zero on any crash.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (once)"
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
for target in signature_headers envelope_decoder; do
  echo "==> fuzz $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 | tail -n 4
done
