#!/usr/bin/env bash
# Scale benchmark of the etcd path, beside kube-scale.sh: N leases (default 5000) in a real etcd
# (Debian's etcd-server) in Flannel's schema, one overlayd in etcd mode, all in a throwaway
# network namespace. Root only. Goals: full sync <= 2 s including netlink, one lease change to
# the kernel <= 100 ms.   LEASES=5000 benches/etcd-scale.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "etcd-scale: needs root (network namespace)" >&2; exit 1; }
command -v etcd >/dev/null || { echo "etcd-scale: needs etcd (deploy/local/install-deps.sh installs etcd-server)" >&2; exit 1; }
cargo build --release -q -p overlayd -p overlayd-benches --bin overlayd --bin etcd-scale
T=${CARGO_TARGET_DIR:-target}
OVERLAYD="$T/release/overlayd" "$T/release/etcd-scale"
