#!/usr/bin/env bash
# Builds (and removes) a local cluster of "nodes" in network namespaces: an underlay switch,
# N nodes with eth0 on it, and pods behind a cni0 bridge on every node. It only builds the
# topology and writes the NodeList; the caller starts overlayd (or programs kernel vxlan with
# `kernel-node`). Every name starts with PREFIX so parallel clusters never collide.
#
#   cluster.sh up PREFIX DIR NODES PODS_PER_NODE   topology + DIR/nodes.yaml + DIR/net-conf.json
#   cluster.sh wire PREFIX DIR I PODS_PER_NODE     wire node I's pods with overlayd-cni (after
#                                                  DIR/subnet<I>.env exists)
#   cluster.sh kernel-node PREFIX I NODES DIR [VNI [PORT]]
#                                                  program node I as flanneld does for kernel
#                                                  vxlan (device flannel.VNI, default VNI 1,
#                                                  port 8472), write its subnet.env and annotations
#   cluster.sh flannel-node PREFIX I NODES DIR PODS  node I as a whole Flannel node: kernel-node,
#                                                  flanneld's --ip-masq chains (iptables-nft,
#                                                  iptables-legacy) and nftables tables, and
#                                                  its pods wired by Flannel's delegate (bridge
#                                                  cni0 + host-local, network cbr0)
#   cluster.sh stranger PREFIX IP                  a host PREFIXx on the underlay that is no node
#   cluster.sh attach PREFIX I                     give remote node I a second leg (eth1,
#                                                  198.18.0.I/24) on the switch's subnet
#   cluster.sh down PREFIX                         delete every namespace of PREFIX
#
# Addresses: node i has underlay 198.18.0.i/24 and podCIDR 10.244.i.0/24; pod j of node i is
# 10.244.i.(j+1) in namespace PREFIXp<i>-<j>, wired by the overlayd-cni plugin
# (cni-shim/scripts/wire-pod.sh; set OVERLAYD_CNI to pick the binary).
#
# Dual stack (env DUALSTACK=1, for `up` and `kernel-node`): the underlay gets IPv6 too (node i
# fd00:18::i/64, the switch fd00:18::fe as IPv6 default gateway), node i's podCIDRs are
# 10.244.i.0/24 and fd00:10:244:i::/64 (IPv6Network fd00:10:244::/56, EnableIPv6 in
# net-conf.json), the NodeList lists the IPv6 InternalIP, and a kernel node gets Flannel's
# flannel-v6.VNI (its own VtepMAC 02:00:00:00:06:0i, annotated in backend-v6-data/public-ipv6).
# Pod j of node i then also has fd00:10:244:i::(j+1). Not combined with REMOTE_NODES.
#
# IPv6-only (env IPV6ONLY=1, for `up` and `kernel-node`): as dual stack without IPv4 on the
# underlay (the nodes' eth0 and the switch have only fd00:18::i/64 and fd00:18::fe/64, the IPv6
# default route is the only one), node i's one podCIDR is fd00:10:244:i::/64, the NodeList lists
# only the IPv6 InternalIP, and net-conf.json has EnableIPv4 false (Flannel's ipv6 stack). Pod j
# of node i has only fd00:10:244:i::(j+1). A kernel node gets only flannel-v6.VNI and is
# annotated as flanneld annotates an IPv6-only node (backend-type, backend-v6-data,
# public-ipv6; no backend-data, no public-ip); a peer's IPv6 VtepMAC is then the one overlayd
# derives from an IPv6 podCIDR, 0a:58:02:44:00:0<o>, unless it is listed in KERNEL_NODES.
# Not combined with DUALSTACK or REMOTE_NODES.
#
# Remote nodes (env REMOTE_NODES="3 4", for `up`): those nodes sit on another subnet,
# 198.19.0.i/24, behind a router namespace PREFIXr. The switch namespace then routes too: it
# reaches 198.19.0.0/24 over a link to the router (198.18.255.1/30 - .2/30) whose MTU is RMTU
# (default UMTU) on both ends, so a smaller RMTU makes a path MTU below the nodes' interface
# MTU (both routers answer with ICMP "fragmentation needed"). kernel-node and stranger assume
# nodes on the switch's subnet.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
UMTU=${UMTU:-1500}
MTU=$((UMTU - 50))
RMTU=${RMTU:-$UMTU}
REMOTE_NODES=${REMOTE_NODES:-}
DUALSTACK=${DUALSTACK:-}
IPV6ONLY=${IPV6ONLY:-}
if [ -n "$IPV6ONLY" ] && [ -n "$DUALSTACK$REMOTE_NODES" ]; then
  echo "cluster.sh: IPV6ONLY=1 cannot be combined with DUALSTACK or REMOTE_NODES (an IPv6-only cluster has one IPv6 underlay subnet)" >&2
  exit 2
fi

is_remote() { case " $REMOTE_NODES " in *" $1 "*) return 0 ;; esac; return 1; }
node_ip() { if is_remote "$1"; then echo "198.19.0.$1"; else echo "198.18.0.$1"; fi; }

# The router namespace PREFIXr and the switch's link to it (see "Remote nodes" above).
router() {
  local P=$1 sw="${1}sw" r="${1}r"
  ip netns add "$r"
  ip -n "$r" link set lo up
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$sw" sysctl -qw net.ipv4.ip_forward=1
  ip link add wan netns "$sw" type veth peer name wan netns "$r"
  ip -n "$sw" link set wan mtu "$RMTU" up
  ip -n "$r" link set wan mtu "$RMTU" up
  ip -n "$sw" addr add 198.18.255.1/30 dev wan
  ip -n "$r" addr add 198.18.255.2/30 dev wan
  ip -n "$sw" route add 198.19.0.0/24 via 198.18.255.2
  ip -n "$r" link add br1 type bridge
  ip -n "$r" link set br1 up
  ip -n "$r" addr add 198.19.0.254/24 dev br1
  ip -n "$r" route add default via 198.18.255.1
}

ns_node() { echo "${1}n$2"; }
ns_pod() { echo "${1}p$2-$3"; }

up() {
  local P=$1 DIR=$2 N=$3 PODS=$4
  mkdir -p "$DIR"
  local sw; sw="${P}sw"
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  # The nodes' default gateway; tests bind a fake Kubernetes API server here.
  [ -n "$IPV6ONLY" ] || ip -n "$sw" addr add 198.18.0.254/24 dev br0
  if [ -n "$DUALSTACK$IPV6ONLY" ]; then ip -n "$sw" addr add fd00:18::fe/64 dev br0 nodad; fi
  if [ -n "$REMOTE_NODES" ]; then router "$P"; fi
  {
    echo "apiVersion: v1"
    echo "kind: NodeList"
    echo "items:"
  } > "$DIR/nodes.yaml"
  for i in $(seq 1 "$N"); do
    local n; n=$(ns_node "$P" "$i")
    ip netns add "$n"
    ip -n "$n" link set lo up
    ip netns exec "$n" sysctl -qw net.ipv4.ip_forward=1
    local ns_sw=$sw bridge=br0 gw=198.18.0.254
    if is_remote "$i"; then ns_sw="${P}r" bridge=br1 gw=198.19.0.254; fi
    ip link add "${P}u$i" netns "$n" type veth peer name "u$i" netns "$ns_sw"
    ip -n "$ns_sw" link set "u$i" master "$bridge" mtu "$UMTU" up
    ip -n "$n" link set "${P}u$i" name eth0
    ip -n "$n" link set eth0 mtu "$UMTU" up
    if [ -n "$IPV6ONLY" ]; then
      ip netns exec "$n" sysctl -qw net.ipv6.conf.all.forwarding=1
      ip -n "$n" addr add "fd00:18::$i/64" dev eth0 nodad
      # The only default route: the underlay is found from it, as flanneld's ipv6 stack does.
      ip -n "$n" -6 route add default via fd00:18::fe dev eth0
      cat >> "$DIR/nodes.yaml" <<YAML
- apiVersion: v1
  kind: Node
  metadata:
    name: node$i
  spec:
    podCIDR: fd00:10:244:$i::/64
    podCIDRs:
    - fd00:10:244:$i::/64
  status:
    addresses:
    - type: InternalIP
      address: fd00:18::$i
YAML
      for j in $(seq 1 "$PODS"); do pod "$P" "$i" "$j"; done
      continue
    fi
    ip -n "$n" addr add "$(node_ip "$i")/24" dev eth0
    # A default route makes the underlay discoverable without --iface, as on a real host.
    ip -n "$n" route add default via "$gw" dev eth0 onlink
    # The NodeList entry; dual stack adds the IPv6 podCIDR and InternalIP.
    local cidrs="" addrs=""
    if [ -n "$DUALSTACK" ]; then
      ip netns exec "$n" sysctl -qw net.ipv6.conf.all.forwarding=1
      ip -n "$n" addr add "fd00:18::$i/64" dev eth0 nodad
      ip -n "$n" -6 route add default via fd00:18::fe dev eth0
      cidrs=$(printf '\n    podCIDRs:\n    - 10.244.%s.0/24\n    - fd00:10:244:%s::/64' "$i" "$i")
      addrs=$(printf '\n    - type: InternalIP\n      address: fd00:18::%s' "$i")
    fi
    cat >> "$DIR/nodes.yaml" <<YAML
- apiVersion: v1
  kind: Node
  metadata:
    name: node$i
  spec:
    podCIDR: 10.244.$i.0/24$cidrs
  status:
    addresses:
    - type: InternalIP
      address: $(node_ip "$i")$addrs
YAML
    for j in $(seq 1 "$PODS"); do pod "$P" "$i" "$j"; done
  done
  if [ -n "$IPV6ONLY" ]; then
    echo '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}' > "$DIR/net-conf.json"
  elif [ -n "$DUALSTACK" ]; then
    echo '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}' > "$DIR/net-conf.json"
  else
    echo '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}' > "$DIR/net-conf.json"
  fi
}

# Creates pod j of node i: an empty network namespace, wired later by `wire`.
pod() {
  local P=$1 i=$2 j=$3
  local p; p=$(ns_pod "$P" "$i" "$j")
  ip netns add "$p"
  ip -n "$p" link set lo up
}

# Wires every pod of node i with the overlayd-cni plugin, as a container runtime would, from
# the node's subnet.env (written by overlayd, or by kernel-node for a Flannel node). With the
# plugin's sequential IPAM, pod j gets 10.244.i.(j+1). The plugin caps the pod end's TSO size
# (gso_max_size, cni-shim plan::pod_gso_limits) whatever the node runs, so an overlayd cluster
# and a kernel-vxlan cluster wired here have identical pods (benches/rig relies on it).
# flannel-node's pods are wired by Flannel's own delegate and keep the kernel default, as on a
# real Flannel node.
wire() {
  local P=$1 DIR=$2 i=$3 PODS=$4
  local n; n=$(ns_node "$P" "$i")
  for j in $(seq 1 "$PODS"); do
    bash "$ROOT/cni-shim/scripts/wire-pod.sh" "$n" "$(ns_pod "$P" "$i" "$j")" eth0 "pod$i-$j" \
      "$DIR/subnet$i.env" "$DIR/ipam$i" >/dev/null
  done
}

# Node i runs Flannel's kernel vxlan backend as flanneld programs it (see
# shared/reference/kernel-vxlan-baseline.sh): flannel.1 with a MAC published in backend-data,
# and for every other node a route, a permanent neighbour and an FDB entry. A peer's MAC is
# 02:00:00:00:00:0<o> when it is listed in KERNEL_NODES (another kernel node), else the one
# overlayd derives (0a:58 + podCIDR), as an unannotated NodeList implies.
kernel_node() {
  local P=$1 i=$2 N=$3 DIR=$4 VNI=${5:-1} PORT=${6:-8472}
  local n; n=$(ns_node "$P" "$i")
  if [ -n "$IPV6ONLY" ]; then
    # flanneld's WriteSubnetFile without IPv4: no FLANNEL_NETWORK/FLANNEL_SUBNET; FLANNEL_MTU
    # is still its Backend MTU - 50 (vxlan_network.go MTU()), whatever the kernel clamps
    # flannel-v6.VNI to.
    printf 'FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:%s::1/64\nFLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' \
      "$i" "$MTU" > "$DIR/subnet$i.env"
    kernel_node_v6 "$P" "$i" "$N" "$VNI" "$PORT"
    return 0
  fi
  local dev="flannel.$VNI"
  printf 'FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.%s.1/24\nFLANNEL_MTU=%s\nFLANNEL_IPMASQ=false\n' \
    "$i" "$MTU" > "$DIR/subnet$i.env"
  ip -n "$n" link add "$dev" type vxlan id "$VNI" dstport "$PORT" local "198.18.0.$i" dev eth0 nolearning
  ip -n "$n" link set "$dev" address "02:00:00:00:00:0$i" mtu "$MTU" up
  ip -n "$n" addr add "10.244.$i.0/32" dev "$dev"
  for o in $(seq 1 "$N"); do
    [ "$o" = "$i" ] && continue
    local mac; mac=$(printf '0a:58:0a:f4:%02x:00' "$o")
    case " ${KERNEL_NODES:-} " in *" $o "*) mac="02:00:00:00:00:0$o" ;; esac
    ip -n "$n" neigh add "10.244.$o.0" lladdr "$mac" dev "$dev" nud permanent
    ip -n "$n" route add "10.244.$o.0/24" via "10.244.$o.0" dev "$dev" onlink
    bridge -n "$n" fdb append "$mac" dev "$dev" dst "198.18.0.$o" self permanent
  done
  [ -n "$DUALSTACK" ] || return 0
  # flannel-v6.VNI as flanneld programs it (pkg/backend/vxlan: flanneld asks for the same MTU
  # as flannel.VNI, underlay - 50, and the kernel clamps an IPv6 VTEP's device to
  # underlay - 70; the IPv6 subnet's network address /128; per peer route, permanent
  # neighbour and FDB entry to its IPv6 VtepMAC). A peer's IPv6 MAC is 02:00:00:00:06:0<o>
  # for another kernel node, else overlayd's one device MAC (the derived one).
  printf 'FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:%s::1/64\n' "$i" >> "$DIR/subnet$i.env"
  kernel_node_v6 "$P" "$i" "$N" "$VNI" "$PORT"
}

# flannel-v6.VNI of kernel node i (see kernel_node).
kernel_node_v6() {
  local P=$1 i=$2 N=$3 VNI=$4 PORT=$5
  local n; n=$(ns_node "$P" "$i")
  local dev6="flannel-v6.$VNI"
  ip -n "$n" link add "$dev6" type vxlan id "$VNI" dstport "$PORT" local "fd00:18::$i" dev eth0 nolearning
  ip -n "$n" link set "$dev6" address "02:00:00:00:06:0$i" mtu $((UMTU - 70)) up
  ip -n "$n" addr add "fd00:10:244:$i::/128" dev "$dev6" nodad
  for o in $(seq 1 "$N"); do
    [ "$o" = "$i" ] && continue
    local mac; mac=$(printf '0a:58:0a:f4:%02x:00' "$o")
    # IPv6-only overlayd nodes derive their MAC from the IPv6 podCIDR's subnet index.
    if [ -n "$IPV6ONLY" ]; then mac=$(printf '0a:58:02:44:00:%02x' "$o"); fi
    case " ${KERNEL_NODES:-} " in *" $o "*) mac="02:00:00:00:06:0$o" ;; esac
    ip -n "$n" -6 neigh add "fd00:10:244:$o::" lladdr "$mac" dev "$dev6" nud permanent
    ip -n "$n" -6 route add "fd00:10:244:$o::/64" via "fd00:10:244:$o::" dev "$dev6" onlink
    bridge -n "$n" fdb append "$mac" dev "$dev6" dst "fd00:18::$o" self permanent
  done
}

# Adds the kernel node's annotations to the NodeList, as a Flannel node publishes them.
annotate_kernel_node() {
  local DIR=$1 i=$2 VNI=${3:-1}
  python3 - "$DIR/nodes.yaml" "$i" "$VNI" <<'PY'
import os, sys
path, i, vni = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
ann = (f"    name: node{i}\n    annotations:\n"
       f"      flannel.alpha.coreos.com/backend-type: vxlan\n")
# IPv6-only: flanneld writes neither backend-data nor public-ip (its BackendData is null).
if not os.environ.get("IPV6ONLY"):
    ann += (f"      flannel.alpha.coreos.com/backend-data: '{{\"VNI\":{vni},\"VtepMAC\":\"02:00:00:00:00:0{i}\"}}'\n"
            f"      flannel.alpha.coreos.com/public-ip: 198.18.0.{i}\n")
if os.environ.get("DUALSTACK") or os.environ.get("IPV6ONLY"):
    ann += (f"      flannel.alpha.coreos.com/backend-v6-data: '{{\"VNI\":{vni},\"VtepMAC\":\"02:00:00:00:06:0{i}\"}}'\n"
            f"      flannel.alpha.coreos.com/public-ipv6: fd00:18::{i}\n")
text = text.replace(f"    name: node{i}\n", ann, 1)
open(path, "w").write(text)
PY
}

# flanneld's masquerade and forward rules as it installs them with --ip-masq (iptables mode,
# pkg/trafficmngr/iptables; both iptables backends, as either may hold them on a real host) and
# its nftables tables (EnableNFTables, pkg/trafficmngr/nftables), inside node i's namespace.
flannel_rules() {
  local P=$1 i=$2
  local n; n=$(ns_node "$P" "$i")
  local N=10.244.0.0/16 S="10.244.$i.0/24" ipt
  for ipt in iptables-nft iptables-legacy; do
    command -v "$ipt" >/dev/null || continue
    ip netns exec "$n" "$ipt" -w -t nat -N FLANNEL-POSTRTG
    ip netns exec "$n" "$ipt" -w -t nat -A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG -s "$S" -d "$N" -m comment --comment "flanneld masq" -j RETURN
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG -s "$N" -d "$S" -m comment --comment "flanneld masq" -j RETURN
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG ! -s "$N" -d "$S" -m comment --comment "flanneld masq" -j RETURN
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG -s "$N" ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
    ip netns exec "$n" "$ipt" -w -t nat -A FLANNEL-POSTRTG ! -s "$N" -d "$N" -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
    ip netns exec "$n" "$ipt" -w -t filter -N FLANNEL-FWD
    ip netns exec "$n" "$ipt" -w -t filter -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
    ip netns exec "$n" "$ipt" -w -t filter -A FLANNEL-FWD -s "$N" -m comment --comment "flanneld forward" -j ACCEPT
    ip netns exec "$n" "$ipt" -w -t filter -A FLANNEL-FWD -d "$N" -m comment --comment "flanneld forward" -j ACCEPT
  done
  ip netns exec "$n" nft -f - <<NFT
table ip flannel-ipv4 {
  comment "rules for flannel-ipv4"
  chain forward { type filter hook forward priority filter; ip saddr $N accept; ip daddr $N accept; }
  chain postrtg { type nat hook postrouting priority srcnat; ip saddr $S ip daddr $N return; }
}
table ip6 flannel-ipv6 { comment "rules for flannel-ipv6"; }
NFT
}

# Wires node i's pods as Flannel's CNI plugin does: it delegates to the reference bridge plugin
# (bridge cni0, gateway, hairpin) with host-local IPAM for the network cbr0, so allocations land
# in DIR/ipam<i>/cbr0/ as on a Flannel node (/var/lib/cni/networks/cbr0).
wire_flannel() {
  local P=$1 DIR=$2 i=$3 PODS=$4
  local n; n=$(ns_node "$P" "$i")
  local conf
  conf=$(printf '{"cniVersion":"0.3.1","name":"cbr0","type":"bridge","bridge":"cni0","mtu":%s,"isGateway":true,"isDefaultGateway":true,"hairpinMode":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"10.244.%s.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}]}}'     "$MTU" "$DIR/ipam$i" "$i")
  for j in $(seq 1 "$PODS"); do
    printf '%s' "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="pod$i-$j" CNI_NETNS="/run/netns/$(ns_pod "$P" "$i" "$j")"       CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni CNI_ARGS='' ip netns exec "$n" /usr/lib/cni/bridge >/dev/null
  done
}

# A host on the underlay switch that is not in the NodeList (for spoofed-sender tests).
stranger() {
  local P=$1 IP=$2
  local x="${P}x"
  ip netns add "$x"
  ip -n "$x" link set lo up
  ip link add "${P}ux" netns "$x" type veth peer name ux netns "${P}sw"
  ip -n "${P}sw" link set ux master br0 mtu "$UMTU" up
  ip -n "$x" link set "${P}ux" name eth0
  ip -n "$x" link set eth0 mtu "$UMTU" up
  ip -n "$x" addr add "$IP/24" dev eth0
}

# Gives remote node i a second interface eth1 on the switch's subnet (198.18.0.i/24): the
# node becomes directly connected to the others without losing its first address.
attach() {
  local P=$1 i=$2
  local n; n=$(ns_node "$P" "$i")
  ip link add "${P}v$i" netns "$n" type veth peer name "v$i" netns "${P}sw"
  ip -n "${P}sw" link set "v$i" master br0 mtu "$UMTU" up
  ip -n "$n" link set "${P}v$i" name eth1
  ip -n "$n" link set eth1 mtu "$UMTU" up
  ip -n "$n" addr add "198.18.0.$i/24" dev eth1
}

# PREFIX's namespaces: PREFIX then a non-digit (sw, n1, p1-1, x, r, ...), so that `down o12`
# leaves the namespaces of a lab o123 running beside it alone.
own_namespaces() { ip netns list | awk '{print $1}' | grep "^${1}[^0-9]" || true; }

down() {
  local P=$1 termed=""
  for ns in $(own_namespaces "$P"); do
    # Stop anything still running inside (overlayd, iperf3) before deleting the namespace.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
      kill -TERM "$pid" 2>/dev/null && termed="$termed $pid"
    done
  done
  # Up to 0.2 s for them to exit (no wait when nothing ran), then SIGKILL what is left.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local alive=""
    for pid in $termed; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    termed=$alive
    [ -z "$termed" ] && break
    sleep 0.02
  done
  for ns in $(own_namespaces "$P"); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) up "$@" ;;
  kernel-node) kernel_node "$@"; annotate_kernel_node "$4" "$2" "${5:-1}" ;;
  flannel-node)
    kernel_node "$1" "$2" "$3" "$4"; annotate_kernel_node "$4" "$2"
    flannel_rules "$1" "$2"; wire_flannel "$1" "$4" "$2" "$5" ;;
  wire) wire "$@" ;;
  stranger) stranger "$@" ;;
  attach) attach "$@" ;;
  down) down "$@" ;;
  *) echo "usage: $0 up PREFIX DIR NODES PODS | wire PREFIX DIR I PODS | kernel-node PREFIX I NODES DIR [VNI [PORT]] | flannel-node PREFIX I NODES DIR PODS | stranger PREFIX IP | attach PREFIX I | down PREFIX" >&2; exit 2 ;;
esac
