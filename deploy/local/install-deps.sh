#!/usr/bin/env bash
# Installs the system packages overlayd's demo, tests and benchmarks use (Debian/Ubuntu, root).
set -euo pipefail
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v ping >/dev/null || need+=(iputils-ping)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v tshark >/dev/null || need+=(tshark)
command -v python3 >/dev/null || need+=(python3)
command -v iptables >/dev/null || need+=(iptables)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
command -v shellcheck >/dev/null || need+=(shellcheck)
command -v strace >/dev/null || need+=(strace)
[ -x /usr/lib/cni/portmap ] || need+=(containernetworking-plugins)
# etcd mode: etcd-client's build compiles etcd's protos (protoc + the well-known types), the
# tests and the demo run a real etcd, and the TLS test makes its certificates with openssl.
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null || need+=(etcd-server)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
