#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and integration tests (the netns tests
# need root; under CI=true they fail instead of skipping). The benchmarks are type-checked by
# clippy --all-targets; they are built and run by benches/ (a release build of every crate,
# about a fifth of a fresh CI run, is left to the benchmark runs that need it).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "all checks passed"
