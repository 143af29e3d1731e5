#!/usr/bin/env bash
# The whole test suite, from a fresh clone: `scripts/test.sh`.
# It builds the workspace and runs every test (unit, property and end-to-end). `.ci/run`
# calls exactly this. Anything it starts, it stops, even when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> tests"
cargo test --workspace --locked
