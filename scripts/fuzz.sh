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
# Each run's whole output goes to a log beside the fuzz crate's build; on success only its last
# lines (the final stats) are printed, on failure the last 80 lines, so a build error shows the
# compiler's message and a crash shows the input and backtrace, not just cargo-fuzz's last frame.
logs="$(pwd)/../target/fuzz-logs"
mkdir -p "$logs"
for target in signature_headers envelope_decoder; do
  echo "==> fuzz $target for ${seconds}s (log: target/fuzz-logs/$target.log)"
  if cargo fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 >"$logs/$target.log" 2>&1; then
    tail -n 4 "$logs/$target.log"
  else
    status=$?
    echo "fuzz $target FAILED (exit $status); last 80 lines of its log:" >&2
    tail -n 80 "$logs/$target.log" >&2
    exit "$status"
  fi
done
