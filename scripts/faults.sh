#!/usr/bin/env bash
# The full fault suite: `scripts/faults.sh [embedded|gcp] [COUNT]` (default: embedded, 10000).
# Prints one summary line (sent, acked, lost, duplicates, dead-lettered, replayed) and fails
# if anything was lost or any archive object or warehouse row was duplicated.
# `gcp` runs on the Google emulators (started here if they are not running): Pub/Sub with
# every fault but worker kills (COUNT deliveries), Pub/Sub with worker kills too (100: the
# emulator's dead streams, README), then the embedded queue with worker kills (COUNT); the
# test command runs them small (200, 100 and 200 deliveries, 2 s faults).
set -euo pipefail
cd "$(dirname "$0")/.."
engine="${1:-embedded}"
count="${2:-10000}"
case "$engine" in
  embedded) filter=embedded_never_loses ;;
  gcp)
    filter=gcp_
    if ! scripts/emulators.sh status >/dev/null 2>&1; then
      trap 'scripts/emulators.sh stop' EXIT
      scripts/emulators.sh start >/dev/null
    fi
    # shellcheck disable=SC1091
    source target/emulators/env
    ;;
  *) echo "usage: $0 [embedded|gcp] [COUNT]" >&2; exit 2 ;;
esac
HOOKLINE_FAULTS_COUNT="$count" HOOKLINE_FAULTS_PHASE_SECS=15 HOOKLINE_FAULTS_SLACK_SECS=30 \
  cargo test --release --locked --test faults "$filter" -- --nocapture 2>&1 |
  grep -E '^sent=|test result|panicked|assert'
