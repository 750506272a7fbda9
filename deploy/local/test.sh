#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and integration tests (the netns tests
# need root; under CI=true they fail instead of skipping), and builds the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo bench --workspace --no-run --locked
echo "all checks passed"
