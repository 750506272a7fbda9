#!/usr/bin/env bash
# Scale benchmark of the Kubernetes path: N Nodes (default 5000) from a fake API server to one
# overlayd in a throwaway network namespace. Root only. Goals: full sync <= 2 s including
# netlink, one update <= 100 ms, RSS <= 30 MiB.   NODES=5000 benches/kube-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "kube-scale: needs root (network namespace)" >&2; exit 1; }
cargo build --release -q -p overlayd -p overlayd-benches --bin overlayd --bin kube-scale
T=${CARGO_TARGET_DIR:-target}
OVERLAYD="$T/release/overlayd" "$T/release/kube-scale"
