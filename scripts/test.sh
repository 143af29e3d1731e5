#!/usr/bin/env bash
# The whole test suite, from a fresh clone: `scripts/test.sh`. `.ci/run` calls exactly this.
#
# 1. Formatting and lints.
# 2. Installs (if missing) and starts the Google Cloud emulators the `gcp` tests need:
#    Google's Pub/Sub emulator, fake-gcs-server and bqemulator (scripts/emulators.sh).
# 3. Runs every test: unit, property, hostile input, end-to-end on the embedded engines and
#    on the emulators, the fault suite on both (small); then each fuzz target for a few
#    seconds, and the benchmark harness for a second per contender (bench/run.sh --smoke:
#    it must run end to end; no timing is judged).
# 4. Stops the emulators it started, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Terraform ships on these machines; provider plugins cannot be downloaded, so `validate`
# cannot run here (see infra/terraform/README.md), but formatting is checked.
terraform fmt -check -recursive infra/terraform

echo "==> Google Cloud emulators"
if scripts/emulators.sh status >/dev/null 2>&1; then
  echo "already running; leaving them running afterwards"
else
  trap 'scripts/emulators.sh stop' EXIT
  scripts/emulators.sh start
fi
# shellcheck disable=SC1091
source target/emulators/env

echo "==> tests"
cargo test --workspace --locked

echo "==> fuzz targets (bounded)"
scripts/fuzz.sh 15

echo "==> benchmark harness (smoke run; installs wrk, webhook and the Flask venv if missing)"
HOOKLINE_BIN="$PWD/target/debug/hookline" bench/run.sh --smoke
