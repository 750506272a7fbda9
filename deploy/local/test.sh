#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit and integration tests (the netns tests
# need root; under CI=true they fail instead of skipping), and the benchmarks built and run
# once each in test mode (criterion's `cargo test --benches`), so they never rot; built with
# the test profile the tests already compiled, not a release+LTO build of every crate (about a
# fifth of a fresh CI run), which the benchmark runs themselves do.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
cargo test --workspace --locked --benches
echo "all checks passed"
