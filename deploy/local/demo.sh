#!/usr/bin/env bash
# The demo: installs what is missing, builds overlayd, brings up 3 namespace nodes with 2 pods
# each on overlayd, prints a pod-to-pod ping matrix and an iperf3 result, then tears down.
#   KEEP=1 deploy/local/demo.sh   leaves the cluster up; tear down with
#                                  deploy/local/cluster.sh down demo
#   ETCD=1 deploy/local/demo.sh   the nodes lease their subnets from an etcd (Flannel's etcd
#                                  subnet manager) started in the demo's switch namespace at
#                                  198.18.0.254:2379, instead of reading a NodeList file;
#                                  `cluster.sh down demo` stops it with the namespaces
#   DUALSTACK=1 deploy/local/demo.sh  a dual-stack cluster (EnableIPv6, an IPv6 underlay, pods
#                                  with an IPv6 address too): the ping matrix and iperf3 run
#                                  over IPv6 as well (combines with ETCD=1)
#   IPV6ONLY=1 deploy/local/demo.sh   an IPv6-only cluster (EnableIPv4 false, an IPv6-only
#                                  underlay, pods with only an IPv6 address): the IPv6 ping
#                                  matrix and an IPv6 iperf3, nothing over IPv4 (combines with
#                                  ETCD=1: etcd then listens at [fd00:18::fe]:2379)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces)" >&2; exit 1; }
# cluster.sh reads DUALSTACK and IPV6ONLY too.
export DUALSTACK=${DUALSTACK:-} IPV6ONLY=${IPV6ONLY:-}
[ "$DUALSTACK" = 0 ] && DUALSTACK=
[ "$IPV6ONLY" = 0 ] && IPV6ONLY=
if [ -n "$DUALSTACK" ] && [ -n "$IPV6ONLY" ]; then
  echo "demo.sh: DUALSTACK=1 and IPV6ONLY=1 exclude each other: set one of them" >&2
  exit 1
fi
bash deploy/local/install-deps.sh
cargo build --release --quiet -p overlayd -p cni-shim
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
P=demo DIR=/tmp/overlayd-demo NODES=3 PODS=2
bash deploy/local/cluster.sh down "$P"
rm -rf "$DIR"
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "cluster left up: namespaces ${P}n1..3 / ${P}p<node>-<pod>; logs in $DIR"
    echo "tear down with: bash deploy/local/cluster.sh down $P"
  else
    bash deploy/local/cluster.sh down "$P"
    rm -rf "$DIR/etcd"
  fi
}
trap cleanup EXIT
bash deploy/local/cluster.sh up "$P" "$DIR" "$NODES" "$PODS"
source=(--nodes-file "$DIR/nodes.yaml" --net-config-path "$DIR/net-conf.json")
if [ "${ETCD:-0}" = 1 ]; then
  # etcd in the switch namespace (the nodes' gateway address), killed by `cluster.sh down`.
  EP=http://198.18.0.254:2379
  [ -n "$IPV6ONLY" ] && EP="http://[fd00:18::fe]:2379"
  ip netns exec "${P}sw" etcd --name demo --data-dir "$DIR/etcd" \
    --listen-client-urls "$EP" --advertise-client-urls "$EP" \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster demo=http://127.0.0.1:2380 >"$DIR/etcd.log" 2>&1 &
  # net-conf.json at <prefix>/config, through etcd's v3 JSON gateway (keys and values base64).
  put() { printf '{"key":"%s","value":"%s"}' "$(printf %s "$1" | base64 -w0)" "$(printf %s "$2" | base64 -w0)"; }
  for _ in $(seq 1 100); do
    ip netns exec "${P}sw" curl -gsf -m 1 -X POST "$EP/v3/kv/put" \
      -d "$(put /coreos.com/network/config "$(cat "$DIR/net-conf.json")")" >/dev/null && break
    sleep 0.1
  done
  echo "etcd up at $EP (log $DIR/etcd.log); /coreos.com/network/config = $(cat "$DIR/net-conf.json")"
  source=(--etcd-endpoints "$EP")
fi
for i in $(seq 1 $NODES); do
  ip netns exec "${P}n$i" "$BIN/overlayd" --node-name "node$i" "${source[@]}" \
    --subnet-file "$DIR/subnet$i.env" \
    --http-addr 127.0.0.1:9102 >"$DIR/overlayd$i.log" 2>&1 &
done
for i in $(seq 1 $NODES); do
  for _ in $(seq 1 100); do grep -q "overlayd ready" "$DIR/overlayd$i.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "overlayd ready" "$DIR/overlayd$i.log" || { cat "$DIR/overlayd$i.log"; exit 1; }
  # Pods are wired by the overlayd-cni plugin from the subnet.env overlayd just wrote.
  OVERLAYD_CNI=$BIN/overlayd-cni bash deploy/local/cluster.sh wire "$P" "$DIR" "$i" "$PODS"
done
# Node i's subnet as its subnet.env says (FLANNEL_SUBNET=10.244.X.1/24 -> 10.244.X), and pod j's
# address in it: the plugin's sequential IPAM gives pod j the host j+1.
net_of() { sed -n 's/^FLANNEL_SUBNET=\(.*\)\.1\/24$/\1/p' "$DIR/subnet$1.env"; }
ip_of() { echo "$(net_of "${1%-*}").$(( ${1#*-} + 1 ))"; }
# The same for IPv6 (FLANNEL_IPV6_SUBNET=fd00:10:244:X::1/64 -> pod j is fd00:10:244:X::<j+1>).
net6_of() { sed -n 's/^FLANNEL_IPV6_SUBNET=\(.*\)::1\/64$/\1/p' "$DIR/subnet$1.env"; }
ip6_of() { echo "$(net6_of "${1%-*}")::$(( ${1#*-} + 1 ))"; }
if [ -n "$IPV6ONLY" ]; then
  echo "3 nodes up (IPv6-only): $(for i in $(seq 1 $NODES); do printf 'node%s=%s::/64 ' "$i" "$(net6_of "$i")"; done)"
else
  echo "3 nodes up: $(for i in $(seq 1 $NODES); do printf 'node%s=%s.0/24 ' "$i" "$(net_of "$i")"; done)"
fi
if [ -n "$DUALSTACK" ]; then
  echo "  IPv6: $(for i in $(seq 1 $NODES); do printf 'node%s=%s::/64 ' "$i" "$(net6_of "$i")"; done)"
fi
pods=()
for i in $(seq 1 $NODES); do for j in $(seq 1 $PODS); do pods+=("$i-$j"); done; done
fail=0
# Prints the ping matrix over the addresses function $1 gives (ip_of or ip6_of).
matrix() {
  local addr=$1 w=14
  [ "$addr" = ip6_of ] && w=22
  echo
  echo "ping matrix (rows: from pod, columns: to pod; ok = reply within 1 s)"
  printf "%-${w}s" ""
  for d in "${pods[@]}"; do printf "%-${w}s" "$($addr "$d")"; done
  echo
  for s in "${pods[@]}"; do
    printf "%-${w}s" "$($addr "$s")"
    for d in "${pods[@]}"; do
      if ip netns exec "${P}p$s" ping -c 1 -W 1 "$($addr "$d")" >/dev/null 2>&1; then
        printf "%-${w}s" ok
      else
        printf "%-${w}s" FAIL; fail=1
      fi
    done
    echo
  done
}
# iperf3 for 5 s from pod 1-1 to pod 3-1 at the addresses function $1 gives.
iperf() {
  local addr=$1
  echo
  ip netns exec "${P}p3-1" iperf3 -s -1 -D
  sleep 0.3
  echo "iperf3 TCP $($addr 1-1) (node1) -> $($addr 3-1) (node3), 5 s:"
  ip netns exec "${P}p1-1" iperf3 -c "$($addr 3-1)" -t 5 | grep -E "sender|receiver"
}
[ -n "$IPV6ONLY" ] || matrix ip_of
if [ -n "$DUALSTACK$IPV6ONLY" ]; then
  # A freshly wired pod's first IPv6 packet waits up to ~2 s for neighbour discovery of its
  # gateway (cni0), on the pod's own node, before it reaches the overlay: resolve it first,
  # so the matrix's 1 s timeout measures the overlay.
  for s in "${pods[@]}"; do
    ip netns exec "${P}p$s" ping -c 1 -W 3 "$(net6_of "${s%-*}")::1" >/dev/null 2>&1 || true
  done
  matrix ip6_of
fi
[ -n "$IPV6ONLY" ] || iperf ip_of
if [ -n "$DUALSTACK$IPV6ONLY" ]; then iperf ip6_of; fi
exit $fail
