#!/usr/bin/env bash
# CNI ADD/DEL latency: overlayd-cni vs the reference bridge + host-local plugins, same machine,
# same run, interleaved per iteration so drift hits both alike. Everything happens inside
# network namespaces this script creates (a "node" holding both bridges, and one pod netns per
# plugin); nothing touches the host's own network config. Needs root.
#
#   benches/cni-latency.sh [ITERATIONS]          (default 200)
#   env: OVERLAYD_CNI=path/to/overlayd-cni (default: cargo build --release, target/release)
#        OVERLAYD_CNI_BASE=path/to/another/overlayd-cni  also time this build ("base") in the
#          same interleaved loop, to compare a change against the build before it
#        REF_DIR=/usr/lib/cni (Debian: apt-get install containernetworking-plugins)
# Prints a table and one JSON line with the p50/p99 of each and the ratios, and whether the
# goals hold: ADD p50 <= 0.5x and ADD p99 <= 1.0x the reference's, in the same run.
set -euo pipefail

ITER=${1:-200}
WARMUP=10
REF_DIR=${REF_DIR:-/usr/lib/cni}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[ "$(id -u)" = 0 ] || { echo "cni-latency: needs root (network namespaces)" >&2; exit 1; }
for p in bridge host-local; do
  [ -x "$REF_DIR/$p" ] || { echo "cni-latency: $REF_DIR/$p missing (apt-get install containernetworking-plugins)" >&2; exit 1; }
done
if [ -z "${OVERLAYD_CNI:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p cni-shim)
  OVERLAYD_CNI="${CARGO_TARGET_DIR:-$ROOT/target}/release/overlayd-cni"
fi
[ -x "$OVERLAYD_CNI" ] || { echo "cni-latency: $OVERLAYD_CNI not found" >&2; exit 1; }

BASE=${OVERLAYD_CNI_BASE:-}
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "cni-latency: OVERLAYD_CNI_BASE=$BASE not found" >&2; exit 1; }

TAG="cnib-$$"
NODE="$TAG-node"; POD_OURS="$TAG-pod-ours"; POD_REF="$TAG-pod-ref"; POD_BASE="$TAG-pod-base"
WORK=$(mktemp -d)
cleanup() {
  for ns in "$POD_OURS" "$POD_REF" "$POD_BASE" "$NODE"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
for ns in "$NODE" "$POD_OURS" "$POD_REF" "$POD_BASE"; do ip netns add "$ns"; done

printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n' > "$WORK/subnet.env"
# The same wiring Flannel's CNI config asks of bridge: gateway on the bridge, default route,
# cluster-network route, hairpin, MTU 1450. Different subnets, so both bridges coexist.
cat > "$WORK/ours.json" <<JSON
{"cniVersion":"1.0.0","name":"bench-ours","type":"overlayd-cni","bridge":"cni0",
 "subnetFile":"$WORK/subnet.env","dataDir":"$WORK/ipam-ours"}
JSON
# The base build gets its own bridge and subnet, so all three coexist.
cat > "$WORK/base.json" <<JSON
{"cniVersion":"1.0.0","name":"bench-base","type":"overlayd-cni","bridge":"cni2",
 "subnetFile":"$WORK/subnet-base.env","dataDir":"$WORK/ipam-base"}
JSON
printf 'FLANNEL_NETWORK=10.246.0.0/16\nFLANNEL_SUBNET=10.246.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n' > "$WORK/subnet-base.env"
cat > "$WORK/ref.json" <<JSON
{"cniVersion":"1.0.0","name":"bench-ref","type":"bridge","bridge":"cni1","mtu":1450,
 "isGateway":true,"isDefaultGateway":true,"hairpinMode":true,"ipMasq":false,
 "ipam":{"type":"host-local","subnet":"10.245.1.0/24","dataDir":"$WORK/ipam-ref",
         "routes":[{"dst":"10.245.0.0/16"}]}}
JSON

# The timing loop runs inside the node namespace, so each plugin is a plain fork+exec from
# bash (no `ip netns exec` per call); EPOCHREALTIME gives microseconds without forking.
cat > "$WORK/loop.sh" <<'LOOP'
set -euo pipefail
work=$1; iter=$2; warm=$3; ours=$4; ref_dir=$5; pod_ours=$6; pod_ref=$7; base=${8:-}; pod_base=${9:-}
export CNI_IFNAME=eth0 CNI_PATH=$ref_dir CNI_ARGS=
now_us() { local t=$EPOCHREALTIME; echo $(( ${t/./} )); }
run() { # label bin conf cmd id netns
  local label=$1 bin=$2 conf=$3 cmd=$4 id=$5 netns=$6 t0 t1
  t0=$(now_us)
  if ! CNI_COMMAND=$cmd CNI_CONTAINERID=$id CNI_NETNS=$netns "$bin" < "$conf" > "$work/out" 2>&1; then
    echo "$label $cmd failed: $(cat "$work/out")" >&2; exit 1
  fi
  t1=$(now_us)
  [ "$i" -lt "$warm" ] || echo "$(( t1 - t0 ))" >> "$work/$label-$cmd"
}
one() { # label cmd
  case $1 in
    ours) run ours "$ours" "$work/ours.json" "$2" "bench-$i" "/run/netns/$pod_ours" ;;
    ref) run ref "$ref_dir/bridge" "$work/ref.json" "$2" "bench-$i" "/run/netns/$pod_ref" ;;
    base) run base "$base" "$work/base.json" "$2" "base-$i" "/run/netns/$pod_base" ;;
  esac
}
labels=(ours ref)
[ -z "$base" ] || labels+=(base)
n=${#labels[@]}
# The order rotates every iteration: a plugin that always ran right after another one's
# file and netlink work would pay for it (a position effect of up to 2x seen at p50).
for ((i = 0; i < iter + warm; i++)); do
  for cmd in ADD DEL; do
    for ((k = 0; k < n; k++)); do one "${labels[(i + k) % n]}" "$cmd"; done
  done
done
LOOP
ip netns exec "$NODE" bash "$WORK/loop.sh" "$WORK" "$ITER" "$WARMUP" "$OVERLAYD_CNI" "$REF_DIR" "$POD_OURS" "$POD_REF" "$BASE" "$POD_BASE"

pct() { # file percentile -> ms with 2 decimals
  sort -n "$1" | awk -v p="$2" '{a[NR]=$1} END {i=int((NR*p+99)/100); if (i<1) i=1; printf "%.2f", a[i]/1000}'
}
declare -A R
LABELS="ours ref"
[ -z "$BASE" ] || LABELS="ours ref base"
for l in $LABELS; do for c in ADD DEL; do for p in 50 99; do R[$l-$c-$p]=$(pct "$WORK/$l-$c" $p); done; done; done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

echo
echo "CNI latency, $ITER iterations each (after $WARMUP warm-up), $(nproc) CPUs, kernel $(uname -r)"
printf '%-4s %-24s %10s %10s\n' op plugin p50_ms p99_ms
for c in ADD DEL; do
  printf '%-4s %-24s %10s %10s\n' $c overlayd-cni "${R[ours-$c-50]}" "${R[ours-$c-99]}"
  printf '%-4s %-24s %10s %10s\n' $c bridge+host-local "${R[ref-$c-50]}" "${R[ref-$c-99]}"
  printf '%-4s %-24s %10s %10s\n' $c "ratio (ours/ref)" "$(ratio "${R[ours-$c-50]}" "${R[ref-$c-50]}")" "$(ratio "${R[ours-$c-99]}" "${R[ref-$c-99]}")"
  if [ -n "$BASE" ]; then
    printf '%-4s %-24s %10s %10s\n' $c "base (OVERLAYD_CNI_BASE)" "${R[base-$c-50]}" "${R[base-$c-99]}"
    printf '%-4s %-24s %10s %10s\n' $c "ratio (base/ref)" "$(ratio "${R[base-$c-50]}" "${R[ref-$c-50]}")" "$(ratio "${R[base-$c-99]}" "${R[ref-$c-99]}")"
  fi
done
goal=$(awk -v r="$(ratio "${R[ours-ADD-50]}" "${R[ref-ADD-50]}")" 'BEGIN {print (r <= 0.5) ? "met" : "MISSED"}')
echo "goal ADD p50 <= 0.5x reference: $goal"
goal99=$(awk -v r="$(ratio "${R[ours-ADD-99]}" "${R[ref-ADD-99]}")" 'BEGIN {print (r <= 1.0) ? "met" : "MISSED"}')
echo "goal ADD p99 <= 1.0x reference (same run): $goal99"
printf '{"iterations":%d,"add":{"ours_p50_ms":%s,"ours_p99_ms":%s,"ref_p50_ms":%s,"ref_p99_ms":%s,"ratio_p50":%s,"ratio_p99":%s},"del":{"ours_p50_ms":%s,"ours_p99_ms":%s,"ref_p50_ms":%s,"ref_p99_ms":%s,"ratio_p50":%s,"ratio_p99":%s}}\n' \
  "$ITER" "${R[ours-ADD-50]}" "${R[ours-ADD-99]}" "${R[ref-ADD-50]}" "${R[ref-ADD-99]}" \
  "$(ratio "${R[ours-ADD-50]}" "${R[ref-ADD-50]}")" "$(ratio "${R[ours-ADD-99]}" "${R[ref-ADD-99]}")" \
  "${R[ours-DEL-50]}" "${R[ours-DEL-99]}" "${R[ref-DEL-50]}" "${R[ref-DEL-99]}" \
  "$(ratio "${R[ours-DEL-50]}" "${R[ref-DEL-50]}")" "$(ratio "${R[ours-DEL-99]}" "${R[ref-DEL-99]}")"
