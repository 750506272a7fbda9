#!/usr/bin/env bash
# End-to-end test on a real Kubernetes cluster in kind (needs docker, kind and kubectl; it
# cannot run on machines without a docker engine):
#   1. creates a 3-node kind cluster without its default CNI (deploy/kind/kind-config.yaml),
#   2. builds the overlayd image (deploy/Dockerfile, BuildKit) for the nodes' platform only and
#      loads it as an archive (`kind load docker-image` of a multi-platform image fails with
#      Docker's containerd image store),
#   3. applies deploy/kubernetes/overlayd.yaml (privileged only where runc 1.2.0-1.2.3 denies
#      /dev/net/tun to other containers) and waits for the DaemonSet and all nodes,
#   4. checks, retrying, that every node published Flannel's annotations and NetworkUnavailable=False,
#   5. runs ping and iperf3 between pods on different nodes and prints the results,
#   6. deletes the cluster (KEEP=1 keeps it for inspection); on failure it first runs
#      `kind export logs` and prints the cluster's events.
# IP_FAMILY=dual makes the cluster dual-stack (kind's ipFamily dual, pod CIDRs 10.244.0.0/16 and
# fd00:10:244::/56, net-conf EnableIPv6 with that IPv6Network) and adds IPv6 pings and an IPv6
# iperf3 between the pods.
# IP_FAMILY=ipv6 makes it IPv6-only (kind's ipFamily ipv6, pod CIDR fd00:10:244::/56 only,
# service CIDR fd00:10:96::/112, net-conf EnableIPv4 false, EnableIPv6 with that IPv6Network):
# every node must carry backend-v6-data and public-ipv6 and neither backend-data nor public-ip
# (what flanneld publishes without IPv4), and the pings and iperf3 runs are all over IPv6. kind
# then needs a docker engine that can make IPv6 networks (kind creates its network with an
# IPv6 subnet itself; the host needs IPv6 enabled and ip6tables).
#
#   deploy/kind/e2e.sh            # or: CLUSTER=name IMAGE=overlayd:dev KEEP=1 IP_FAMILY=dual deploy/kind/e2e.sh
set -euo pipefail

CLUSTER=${CLUSTER:-overlayd-e2e}
IMAGE=${IMAGE:-overlayd:dev}
# Test pods need ping and iperf3; netshoot has both.
TOOLS_IMAGE=${TOOLS_IMAGE:-nicolaka/netshoot:v0.13}
KEEP=${KEEP:-0}
IP_FAMILY=${IP_FAMILY:-ipv4}
case "$IP_FAMILY" in ipv4|dual|ipv6) ;; *) echo "e2e: IP_FAMILY must be ipv4, dual or ipv6, not $IP_FAMILY" >&2; exit 1 ;; esac
IPV6_NETWORK=fd00:10:244::/56
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
KUBECTL=(kubectl --context "kind-$CLUSTER")

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "e2e: '$1' not found: install it (docker: https://docs.docker.com/engine/install/, kind: https://kind.sigs.k8s.io/docs/user/quick-start/#installation, kubectl: https://kubernetes.io/docs/tasks/tools/)" >&2
    exit 1
  }
}
need docker
need kind
need kubectl
docker info >/dev/null 2>&1 || { echo "e2e: cannot talk to the docker engine: start it or check permissions" >&2; exit 1; }
# deploy/Dockerfile uses BuildKit cache mounts.
docker buildx version >/dev/null 2>&1 || {
  echo "e2e: docker buildx (BuildKit) not found: install the docker-buildx plugin (https://docs.docker.com/build/install-buildx/)" >&2
  exit 1
}
case "$(uname -m)" in
  x86_64) PLATFORM=linux/amd64 ;;
  aarch64|arm64) PLATFORM=linux/arm64 ;;
  *) echo "e2e: unsupported architecture $(uname -m)" >&2; exit 1 ;;
esac
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '\n== %s\n' "$*"; }

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    log "FAILED (exit $rc); state for diagnosis:"
    "${KUBECTL[@]}" get nodes -o wide || true
    "${KUBECTL[@]}" get pods -A -o wide || true
    "${KUBECTL[@]}" get events -A --sort-by=.lastTimestamp || true
    "${KUBECTL[@]}" -n kube-overlayd logs -l k8s-app=overlayd --tail=50 --prefix || true
    local logs="${LOGS_DIR:-$ROOT/e2e-logs-$CLUSTER}"
    kind export logs "$logs" --name "$CLUSTER" || true
    echo "kind logs exported to $logs"
  fi
  rm -rf "$WORK"
  if [ "$KEEP" = 1 ]; then
    echo "KEEP=1: cluster $CLUSTER kept; delete with: kind delete cluster --name $CLUSTER"
  else
    kind delete cluster --name "$CLUSTER" || true
  fi
  exit "$rc"
}

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "e2e: a kind cluster named $CLUSTER exists already: delete it (kind delete cluster --name $CLUSTER) or set CLUSTER" >&2
  exit 1
fi

KIND_CONFIG=$ROOT/deploy/kind/kind-config.yaml
if [ "$IP_FAMILY" = dual ]; then
  # The same cluster with kind's dual-stack networking and an IPv6 pod CIDR beside the IPv4 one.
  KIND_CONFIG=$WORK/kind-config.yaml
  sed -e "s#^  podSubnet: .*#  ipFamily: dual\n  podSubnet: \"10.244.0.0/16,$IPV6_NETWORK\"\n  serviceSubnet: \"10.96.0.0/16,fd00:10:96::/112\"#" \
    "$ROOT/deploy/kind/kind-config.yaml" > "$KIND_CONFIG"
elif [ "$IP_FAMILY" = ipv6 ]; then
  # IPv6 only: kind's ipFamily ipv6 with the IPv6 pod CIDR alone (kube-controller-manager gives
  # each node a /64 of it, its default IPv6 node mask) and an IPv6 service CIDR.
  KIND_CONFIG=$WORK/kind-config.yaml
  sed -e "s#^  podSubnet: .*#  ipFamily: ipv6\n  podSubnet: \"$IPV6_NETWORK\"\n  serviceSubnet: \"fd00:10:96::/112\"#" \
    "$ROOT/deploy/kind/kind-config.yaml" > "$KIND_CONFIG"
fi
log "creating kind cluster $CLUSTER (no default CNI, $IP_FAMILY, 3 nodes)"
kind create cluster --name "$CLUSTER" --config "$KIND_CONFIG"
trap cleanup EXIT

log "building $IMAGE for $PLATFORM"
# One platform, no provenance attestation: the archive then holds exactly one image manifest,
# which `kind load image-archive` imports whatever image store Docker uses.
docker buildx build -f "$ROOT/deploy/Dockerfile" --platform "$PLATFORM" --provenance=false \
  --load -t "$IMAGE" "$ROOT"
docker save "$IMAGE" -o "$WORK/image.tar"
kind load image-archive "$WORK/image.tar" --name "$CLUSTER"
# The tools image is not preloaded: the nodes pull it themselves.

# runc 1.2.0-1.2.3 lost the default device rule for /dev/net/tun: there only a privileged
# container can open it (see the comment in overlayd.yaml).
RUNC=$(docker exec "$CLUSTER-control-plane" runc --version 2>/dev/null | sed -n 's/^runc version //p' || true)
PRIVILEGED=0
case "$RUNC" in 1.2.0|1.2.1|1.2.2|1.2.3) PRIVILEGED=1 ;; esac
log "applying deploy/kubernetes/overlayd.yaml (runc ${RUNC:-unknown}, privileged=$PRIVILEGED)"
MANIFEST_SED=(-e "s#image: overlayd:dev#image: $IMAGE#")
if [ "$IP_FAMILY" = dual ]; then
  MANIFEST_SED+=(-e "s#\"EnableIPv6\": false,#\"EnableIPv6\": true, \"IPv6Network\": \"$IPV6_NETWORK\",#")
elif [ "$IP_FAMILY" = ipv6 ]; then
  # Flannel's ipv6 stack: EnableIPv4 false in place of Network (which it would only ignore).
  MANIFEST_SED+=(-e "s#\"Network\": \"10.244.0.0/16\",#\"EnableIPv4\": false,#"
    -e "s#\"EnableIPv6\": false,#\"EnableIPv6\": true, \"IPv6Network\": \"$IPV6_NETWORK\",#")
fi
sed "${MANIFEST_SED[@]}" "$ROOT/deploy/kubernetes/overlayd.yaml" | "${KUBECTL[@]}" apply -f -
if [ "$PRIVILEGED" = 1 ]; then
  "${KUBECTL[@]}" -n kube-overlayd patch daemonset overlayd --type=json -p \
    '[{"op":"replace","path":"/spec/template/spec/containers/0/securityContext","value":{"privileged":true,"readOnlyRootFilesystem":true}}]'
fi
"${KUBECTL[@]}" -n kube-overlayd rollout status daemonset/overlayd --timeout=300s
"${KUBECTL[@]}" wait --for=condition=Ready nodes --all --timeout=300s
"${KUBECTL[@]}" get nodes -o wide

log "Flannel annotations and NetworkUnavailable (retrying up to 60 s: the patches are asynchronous)"
jp() { "${KUBECTL[@]}" get "$1" -o jsonpath="$2"; }
for n in $("${KUBECTL[@]}" get nodes -o name); do
  ok=0
  for _ in $(seq 1 30); do
    bt=$(jp "$n" '{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-type}')
    nu=$(jp "$n" '{.status.conditions[?(@.type=="NetworkUnavailable")].reason}')
    if [ "$bt" = vxlan ] && [ "$nu" = FlannelIsUp ]; then ok=1; break; fi
    sleep 2
  done
  bd=$(jp "$n" '{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-data}')
  ip=$(jp "$n" '{.metadata.annotations.flannel\.alpha\.coreos\.com/public-ip}')
  cidr=$(jp "$n" '{.spec.podCIDR}')
  echo "$n podCIDR=$cidr backend-type=$bt public-ip=$ip backend-data=$bd NetworkUnavailable=$nu"
  [ "$ok" = 1 ] || { echo "e2e: $n has no backend-type=vxlan annotation or NetworkUnavailable=False/FlannelIsUp after 60 s" >&2; exit 1; }
  if [ "$IP_FAMILY" != ipv4 ]; then
    bd6=$(jp "$n" '{.metadata.annotations.flannel\.alpha\.coreos\.com/backend-v6-data}')
    ip6=$(jp "$n" '{.metadata.annotations.flannel\.alpha\.coreos\.com/public-ipv6}')
    cidrs=$(jp "$n" '{.spec.podCIDRs}')
    echo "$n podCIDRs=$cidrs public-ipv6=$ip6 backend-v6-data=$bd6"
    if [ -z "$bd6" ] || [ -z "$ip6" ]; then
      echo "e2e: $n has no backend-v6-data/public-ipv6 annotation ($IP_FAMILY cluster)" >&2
      exit 1
    fi
    case "$ip6" in *:*) ;; *) echo "e2e: $n public-ipv6=$ip6 is no IPv6 address" >&2; exit 1 ;; esac
  fi
  if [ "$IP_FAMILY" = ipv6 ]; then
    # flanneld without IPv4 publishes neither (its BackendData is null): overlayd neither.
    if [ -n "$bd" ] || [ -n "$ip" ]; then
      echo "e2e: $n has backend-data=$bd public-ip=$ip in an IPv6-only cluster (expected neither)" >&2
      exit 1
    fi
    case "$cidr" in *:*) ;; *) echo "e2e: $n podCIDR=$cidr is not IPv6 in an IPv6-only cluster" >&2; exit 1 ;; esac
  fi
done

log "routes programmed by overlayd on $CLUSTER-worker"
[ "$IP_FAMILY" = ipv6 ] || docker exec "$CLUSTER-worker" ip route show dev ovl.1
if [ "$IP_FAMILY" != ipv4 ]; then docker exec "$CLUSTER-worker" ip -6 route show dev ovl.1; fi

# One pod per node: a server on worker, clients on worker2 and the control plane.
pod() {
  local name=$1 node=$2; shift 2
  "${KUBECTL[@]}" apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $name
  labels: {app: overlayd-e2e}
spec:
  nodeName: $node
  tolerations: [{operator: Exists}]
  terminationGracePeriodSeconds: 1
  containers:
  - name: tools
    image: $TOOLS_IMAGE
    imagePullPolicy: IfNotPresent
    command: ["$1"]
    args: [$(printf '"%s",' "${@:2}" | sed 's/,$//')]
YAML
}
log "starting test pods"
pod e2e-server "$CLUSTER-worker" iperf3 -s
pod e2e-client "$CLUSTER-worker2" sleep infinity
pod e2e-client-cp "$CLUSTER-control-plane" sleep infinity
"${KUBECTL[@]}" wait --for=condition=Ready pod -l app=overlayd-e2e --timeout=180s
"${KUBECTL[@]}" get pods -l app=overlayd-e2e -o wide
if [ "$IP_FAMILY" != ipv6 ]; then
  SERVER_IP=$("${KUBECTL[@]}" get pod e2e-server -o jsonpath='{.status.podIP}')
  CLIENT_IP=$("${KUBECTL[@]}" get pod e2e-client -o jsonpath='{.status.podIP}')

  log "ping worker2 -> worker ($SERVER_IP)"
  "${KUBECTL[@]}" exec e2e-client -- ping -c 5 -W 2 "$SERVER_IP"
  log "ping control-plane -> worker2 ($CLIENT_IP)"
  "${KUBECTL[@]}" exec e2e-client-cp -- ping -c 5 -W 2 "$CLIENT_IP"

  log "iperf3 TCP worker2 -> worker, 10 s"
  "${KUBECTL[@]}" exec e2e-client -- iperf3 -c "$SERVER_IP" -t 10
  log "iperf3 TCP worker -> worker2 (reverse), 10 s"
  "${KUBECTL[@]}" exec e2e-client -- iperf3 -c "$SERVER_IP" -t 10 -R
fi

if [ "$IP_FAMILY" != ipv4 ]; then
  # Dual stack: the IPv6 address is podIPs[1] (kind's ipFamily dual lists IPv4 first);
  # IPv6-only: the one address, podIPs[0].
  idx=1
  [ "$IP_FAMILY" = ipv6 ] && idx=0
  SERVER_IP6=$("${KUBECTL[@]}" get pod e2e-server -o jsonpath="{.status.podIPs[$idx].ip}")
  CLIENT_IP6=$("${KUBECTL[@]}" get pod e2e-client -o jsonpath="{.status.podIPs[$idx].ip}")
  case "$SERVER_IP6" in *:*) ;; *) echo "e2e: e2e-server has no IPv6 address (podIPs[$idx]: $SERVER_IP6)" >&2; exit 1 ;; esac
  case "$CLIENT_IP6" in *:*) ;; *) echo "e2e: e2e-client has no IPv6 address (podIPs[$idx]: $CLIENT_IP6)" >&2; exit 1 ;; esac
  log "IPv6 ping worker2 -> worker ($SERVER_IP6)"
  "${KUBECTL[@]}" exec e2e-client -- ping -6 -c 5 -W 2 "$SERVER_IP6"
  log "IPv6 ping control-plane -> worker2 ($CLIENT_IP6)"
  "${KUBECTL[@]}" exec e2e-client-cp -- ping -6 -c 5 -W 2 "$CLIENT_IP6"
  log "iperf3 TCP over IPv6 worker2 -> worker, 10 s"
  "${KUBECTL[@]}" exec e2e-client -- iperf3 -6 -c "$SERVER_IP6" -t 10
  if [ "$IP_FAMILY" = ipv6 ]; then
    log "iperf3 TCP over IPv6 worker -> worker2 (reverse), 10 s"
    "${KUBECTL[@]}" exec e2e-client -- iperf3 -6 -c "$SERVER_IP6" -t 10 -R
  fi
fi

log "PASS: pods on different nodes reach each other over overlayd ($IP_FAMILY)"
