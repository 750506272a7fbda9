#!/usr/bin/env bash
# Wire (or unwire) a pod network namespace with overlayd-cni, run from inside a node's network
# namespace, the way a container runtime on that node would call the plugin.
#
#   wire-pod.sh NODE_NS POD_NS IFNAME CONTAINER_ID SUBNET_FILE DATA_DIR [ADD|DEL|CHECK]
#
# NODE_NS   network namespace of the node (name under /run/netns); the bridge is created there
# POD_NS    the pod's namespace: a name under /run/netns or an absolute path
# IFNAME    interface name inside the pod, e.g. eth0
# CONTAINER_ID  any [A-Za-z0-9][A-Za-z0-9_.-]* string identifying the pod
# SUBNET_FILE   the node's subnet.env, as overlayd writes it
# DATA_DIR  IPAM root; allocations go to DATA_DIR/$NETWORK_NAME/
# Env: OVERLAYD_CNI (plugin binary; default: overlayd-cni in PATH, else this repo's
#      target/{release,debug}), NETWORK_NAME (default overlayd), BRIDGE (default cni0),
#      CNI_VERSION (default 1.0.0), PREV_RESULT (JSON, for CHECK).
# ADD prints the CNI result JSON on stdout; on failure the CNI error JSON goes to stderr and
# the exit status is non-zero.
set -euo pipefail

if [ $# -lt 6 ] || [ $# -gt 7 ]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
node_ns=$1 pod_ns=$2 ifname=$3 container_id=$4 subnet_file=$5 data_dir=$6 command=${7:-ADD}
case $pod_ns in /*) netns_path=$pod_ns ;; *) netns_path=/run/netns/$pod_ns ;; esac

plugin=${OVERLAYD_CNI:-}
if [ -z "$plugin" ]; then
  repo=$(cd "$(dirname "$0")/../.." && pwd)
  for cand in "$(command -v overlayd-cni || true)" "${CARGO_TARGET_DIR:-$repo/target}/release/overlayd-cni" \
              "${CARGO_TARGET_DIR:-$repo/target}/debug/overlayd-cni"; do
    if [ -n "$cand" ] && [ -x "$cand" ]; then plugin=$cand; break; fi
  done
fi
[ -n "$plugin" ] && [ -x "$plugin" ] || { echo "wire-pod: overlayd-cni not found: build it or set OVERLAYD_CNI" >&2; exit 2; }

conf=$(printf '{"cniVersion":"%s","name":"%s","type":"overlayd-cni","bridge":"%s","subnetFile":"%s","dataDir":"%s"%s}' \
  "${CNI_VERSION:-1.0.0}" "${NETWORK_NAME:-overlayd}" "${BRIDGE:-cni0}" "$subnet_file" "$data_dir" \
  "${PREV_RESULT:+,\"prevResult\":$PREV_RESULT}")

set +e
out=$(printf '%s' "$conf" | CNI_COMMAND=$command CNI_CONTAINERID=$container_id CNI_NETNS=$netns_path \
  CNI_IFNAME=$ifname CNI_PATH=/usr/lib/cni CNI_ARGS= ip netns exec "$node_ns" "$plugin")
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "wire-pod: $command $container_id in $netns_path failed: $out" >&2
  exit $rc
fi
[ -z "$out" ] || printf '%s\n' "$out"
