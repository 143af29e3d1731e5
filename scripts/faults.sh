#!/usr/bin/env bash
# The full fault suite on the embedded engine: `scripts/faults.sh [COUNT]` (default 10000).
# Prints one summary line (sent, acked, lost, duplicates, dead-lettered, replayed) and fails
# if anything was lost or any archive object or warehouse row was duplicated.
# The test command runs the same suite small (300 deliveries, 2 s faults).
set -euo pipefail
cd "$(dirname "$0")/.."
HOOKLINE_FAULTS_COUNT="${1:-10000}" HOOKLINE_FAULTS_PHASE_SECS=15 HOOKLINE_FAULTS_SLACK_SECS=30 \
  cargo test --release --locked --test faults -- --nocapture 2>&1 | grep -E '^sent=|test result|panicked|assert'
