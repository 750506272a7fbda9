#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 180), one after another, starting from the
# committed seeds (fuzz/seeds/<target>) and a local growing corpus (fuzz/corpus/<target>,
# not committed). Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain the
# sanitizer flags are allowed with RUSTC_BOOTSTRAP=1. A crash leaves its input in
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed, and
# overlayd/tests/fuzz_corpus.rs replays it in every test run.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-180}; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(decap encap ingress_offload tso_split gro_coalesce nodes_file net_conf cni)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t (${secs}s)"
  cargo fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=70000 -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss|Done|ERROR|SUMMARY|panicked|INFO: seed corpus" || true
done
