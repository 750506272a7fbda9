#!/usr/bin/env bash
# The demo: installs what is missing, builds overlayd, brings up 3 namespace nodes with 2 pods
# each on overlayd, prints a pod-to-pod ping matrix and an iperf3 result, then tears down.
#   KEEP=1 deploy/local/demo.sh   leaves the cluster up; tear down with
#                                  deploy/local/cluster.sh down demo
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces)" >&2; exit 1; }
bash deploy/local/install-deps.sh
cargo build --release --quiet -p overlayd -p cni-shim
BIN=$PWD/target/release
P=demo DIR=/tmp/overlayd-demo NODES=3 PODS=2
bash deploy/local/cluster.sh down "$P"
rm -rf "$DIR"
cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "cluster left up: namespaces ${P}n1..3 / ${P}p<node>-<pod>; logs in $DIR"
    echo "tear down with: bash deploy/local/cluster.sh down $P"
  else
    bash deploy/local/cluster.sh down "$P"
  fi
}
trap cleanup EXIT
bash deploy/local/cluster.sh up "$P" "$DIR" "$NODES" "$PODS"
for i in $(seq 1 $NODES); do
  ip netns exec "${P}n$i" "$BIN/overlayd" --node-name "node$i" --nodes-file "$DIR/nodes.yaml" \
    --net-config-path "$DIR/net-conf.json" --subnet-file "$DIR/subnet$i.env" \
    --http-addr 127.0.0.1:9102 >"$DIR/overlayd$i.log" 2>&1 &
done
for i in $(seq 1 $NODES); do
  for _ in $(seq 1 100); do grep -q "overlayd ready" "$DIR/overlayd$i.log" 2>/dev/null && break; sleep 0.1; done
  grep -q "overlayd ready" "$DIR/overlayd$i.log" || { cat "$DIR/overlayd$i.log"; exit 1; }
  # Pods are wired by the overlayd-cni plugin from the subnet.env overlayd just wrote.
  OVERLAYD_CNI=$BIN/overlayd-cni bash deploy/local/cluster.sh wire "$P" "$DIR" "$i" "$PODS"
done
echo "3 nodes up: $(for i in $(seq 1 $NODES); do printf 'node%s=10.244.%s.0/24 ' "$i" "$i"; done)"
echo
echo "ping matrix (rows: from pod, columns: to pod; ok = reply within 1 s)"
pods=()
for i in $(seq 1 $NODES); do for j in $(seq 1 $PODS); do pods+=("$i-$j"); done; done
printf '%-14s' ""
for d in "${pods[@]}"; do printf '%-13s' "10.244.${d%-*}.$(( ${d#*-} + 1 ))"; done
echo
fail=0
for s in "${pods[@]}"; do
  printf '%-14s' "10.244.${s%-*}.$(( ${s#*-} + 1 ))"
  for d in "${pods[@]}"; do
    if ip netns exec "${P}p$s" ping -c 1 -W 1 "10.244.${d%-*}.$(( ${d#*-} + 1 ))" >/dev/null 2>&1; then
      printf '%-13s' ok
    else
      printf '%-13s' FAIL; fail=1
    fi
  done
  echo
done
echo
ip netns exec "${P}p3-1" iperf3 -s -1 -D
sleep 0.3
echo "iperf3 TCP 10.244.1.2 (node1) -> 10.244.3.2 (node3), 5 s:"
ip netns exec "${P}p1-1" iperf3 -c 10.244.3.2 -t 5 | grep -E "sender|receiver"
exit $fail
