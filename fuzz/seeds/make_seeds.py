#!/usr/bin/env python3
"""Writes the fuzz seed corpus (fuzz/seeds/<target>/) from real captures plus crafted cases.

usage: make_seeds.py UNDERLAY.pcap TAP.pcap

UNDERLAY.pcap: `tcpdump -i eth0 udp port 8472` on a lab node while ping, iperf3 TCP and UDP
run between pods (VXLAN datagrams as overlayd receives them). TAP.pcap: `tcpdump -i ovl.1` on
the same node (inner frames as the TAP hands them up, TSO super-frames included). The crafted
bad datagrams come from overlayd/tests/tools/vxlan_send.py. Seeds are named by content hash,
so re-running only adds.
"""
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "overlayd", "tests", "tools"))
import vxlan_send  # noqa: E402


def pcap_frames(path):
    b = open(path, "rb").read()
    at = 24
    while at + 16 <= len(b):
        incl = struct.unpack_from("<I", b, at + 8)[0]
        at += 16
        yield b[at:at + incl]
        at += incl


def vxlan_payloads(path):
    for f in pcap_frames(path):
        if len(f) < 14 + 20 + 8 or f[12:14] != b"\x08\x00":
            continue
        ihl = (f[14] & 0x0F) * 4
        if f[14 + 9] != 17:
            continue
        yield f[14 + ihl + 8:]


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def pick(frames, n):
    """Up to n frames of distinct (length class, protocol, TCP flags) kinds."""
    seen, out = set(), []
    for f in frames:
        proto = f[23] if len(f) > 23 else None
        flags = f[47] if len(f) > 47 else None
        key = (min(len(f) // 200, 10), f[12:14], proto, flags)
        if key not in seen:
            seen.add(key)
            out.append(f)
        if len(out) >= n:
            break
    return out


def write(target, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    underlay, tap = sys.argv[1], sys.argv[2]
    datagrams = pick(list(vxlan_payloads(underlay)), 24)
    inner = [d[8:] for d in datagrams]
    tap_frames = pick(list(pcap_frames(tap)), 24)

    # decap: [selector][datagram]; known sender, unknown sender, allow-any.
    for i, d in enumerate(datagrams):
        write("decap", bytes([i % 8]) + d)
    for case in ["good", "short", "no_i_flag", "wrong_vni", "truncated_inner", "inner_vlan",
                 "not_for_us", "reserved_bits", "oversized"]:
        write("decap", b"\x00" + vxlan_send.build(case, b"seed"))
        write("decap", b"\x01" + vxlan_send.build(case, b"seed"))

    # encap: [vnet][frame] as the TAP reads it; plain and checksum-offloaded.
    for f in tap_frames:
        if len(f) <= 1514:
            write("encap", vnet() + f)
            write("encap", vnet(flags=1, csum_start=34, csum_offset=16) + f)
    write("encap", vnet() + bytes.fromhex("ffffffffffff") + f[6:])  # broadcast

    # ingress_offload: [mtu][frame]
    for f in inner + tap_frames:
        write("ingress_offload", struct.pack(">H", 1450) + f)
    for f in tap_frames:
        if len(f) > 1514:
            write("ingress_offload", struct.pack(">H", 1450) + f)

    # tso_split: TSO super-frames with the header the TAP gives them (and one bogus size).
    for f in tap_frames:
        if len(f) > 1514 and f[12:14] == b"\x08\x00" and f[23] == 6:
            thl = (f[14 + 20 + 12] >> 4) * 4
            hdr = 14 + 20 + thl
            write("tso_split", vnet(1, 1, hdr, 1448 - (thl - 20), 34, 16) + f)
            write("tso_split", vnet(1, 1, hdr, 1, 34, 16) + f)
            write("tso_split", vnet(1, 0x81, hdr, 536, 34, 16) + f)

    # egress_plan: [n][n send results][TAP read] with the frame sent to node2's or node3's VtepMAC, each
    # read once with no errors and once with a script of errnos (see fuzz_targets::egress_plan).
    write_egress_plan_seeds()

    # gro_coalesce: consecutive inner frames of one receive, length-prefixed.
    tcp_inner = [f for f in (d[8:] for d in vxlan_payloads(underlay))
                 if len(f) > 54 and f[12:14] == b"\x08\x00" and f[23] == 6]
    for start, count in [(0, 2), (10, 4), (20, 8), (40, 16)]:
        run = tcp_inner[start:start + count]
        if run:
            write("gro_coalesce", b"".join(struct.pack(">H", len(f)) + bytes([i % 2]) + f
                                           for i, f in enumerate(run)))

    # nodes_file: the lab's NodeList, Flannel-annotated nodes, JSON, dual stack.
    node = lambda i, extra="": (
        f"- apiVersion: v1\n  kind: Node\n  metadata:\n    name: node{i}\n{extra}"
        f"  spec:\n    podCIDR: 10.244.{i}.0/24\n  status:\n    addresses:\n"
        f"    - type: InternalIP\n      address: 198.18.0.{i}\n")
    ann = ("    annotations:\n      flannel.alpha.coreos.com/backend-type: vxlan\n"
           "      flannel.alpha.coreos.com/backend-data: '{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:02\"}'\n"
           "      flannel.alpha.coreos.com/public-ip: 198.18.0.2\n")
    head = "apiVersion: v1\nkind: NodeList\nitems:\n"
    write("nodes_file", (head + node(1) + node(2) + node(3)).encode())
    write("nodes_file", (head + node(1) + node(2, ann)).encode())
    write("nodes_file", (head + node(1) + node(2).replace(
        "    podCIDR: 10.244.2.0/24\n", "    podCIDR: 10.244.2.0/24\n    podCIDRs:\n    - 10.244.2.0/24\n    - fd00:10:244:2::/64\n")).encode())
    write("nodes_file", b'{"apiVersion":"v1","kind":"NodeList","items":[{"metadata":{"name":"node1"},'
          b'"spec":{"podCIDR":"10.244.1.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"198.18.0.1"}]}},'
          b'{"metadata":{"name":"node2","annotations":{"flannel.alpha.coreos.com/public-ip-overwrite":"198.18.0.22"}},'
          b'"spec":{"podCIDR":"10.244.2.0/24"},"status":{"addresses":[{"type":"InternalIP","address":"198.18.0.2"}]}}]}')

    # net_conf
    for text in [
        '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}',
        '{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}',
        '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56",'
        '"Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":false}}',
        '{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}',
    ]:
        write("net_conf", text.encode())

    # cni: [KEY=VALUE lines]\0[stdin]
    conf = (b'{"cniVersion":"1.0.0","name":"overlayd","type":"overlayd-cni","bridge":"cni0",'
            b'"subnetFile":"/run/flannel/subnet.env","dataDir":"/var/lib/cni/networks",'
            b'"hairpinMode":true,"isDefaultGateway":true}')
    env = (b"CNI_COMMAND=ADD\nCNI_CONTAINERID=abc123\nCNI_NETNS=/var/run/netns/p1\n"
           b"CNI_IFNAME=eth0\nCNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.244.1.9\n")
    write("cni", env + b"\0" + conf)
    write("cni", b"CNI_COMMAND=VERSION\n\0" + conf.replace(b"1.0.0", b"0.3.1"))
    write("cni", b"CNI_COMMAND=DEL\nCNI_CONTAINERID=x\nCNI_IFNAME=eth0\n\0" + conf.replace(
        b"1.0.0", b"1.1.0").replace(b"}", b',"prevResult":{"cniVersion":"1.1.0","ips":[]}}'))
    write("cni", b"\0FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
          b"FLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n")


def write_egress_plan_seeds():
    """From the encap and tso_split seeds (TAP reads), to node2 (0a:58:0a:f4:02:00, IPv4 only)
    and to node3 (0a:58:0a:f4:03:00, dual-stack: its inner IPv6 frames plan to its IPv6 VTEP)."""
    scripts = [b"", bytes([1, 2, 0, 3, 0, 5, 0, 6, 0, 7, 9, 0, 11])]
    for src in ("encap", "tso_split"):
        d = os.path.join(HERE, src)
        for name in sorted(os.listdir(d)):
            read = open(os.path.join(d, name), "rb").read()
            if len(read) < 10 + 14:
                continue
            for node in (2, 3):
                to = read[:10] + bytes([0x0A, 0x58, 10, 244, node, 0]) + read[16:]
                for sc in scripts:
                    write("egress_plan", bytes([len(sc)]) + sc + to)
    # Crafted inner IPv6 TCP to node3 (the captures are IPv4 only): plain, plain with a partial
    # checksum, and a GSO_TCPV6 super-frame (MSS 1407: 44 segments of 1,489 bytes, 65,516 bytes,
    # fit one IPv6 send but not one IPv4 send).
    for payload_len, hdr in [
        (100, vnet()),
        (100, vnet(1, 0, 0, 0, 54, 16)),
        (44 * 1407, vnet(1, 4, 74, 1407, 54, 16)),
    ]:
        frame = ipv6_tcp_frame(bytes([0x0A, 0x58, 10, 244, 3, 0]), payload_len)
        for sc in scripts:
            write("egress_plan", bytes([len(sc)]) + sc + hdr + frame)


def ipv6_tcp_frame(dst_mac, payload_len):
    """Ethernet + IPv6 (ECT(0)) + TCP (ACK|PSH, checksum left zero) + payload, fd00:10:244:1::2
    to fd00:10:244:3::2."""
    payload = bytes(i * 7 % 253 for i in range(payload_len))
    tcp = struct.pack(">HHIIBBHHH", 40000, 5201, 4000, 9, 5 << 4, 0x18, 512, 0, 0)
    src = bytes.fromhex("fd000010024400010000000000000002")
    dst = bytes.fromhex("fd000010024400030000000000000002")
    ip = struct.pack(">IHBB", (6 << 28) | (2 << 20), len(tcp) + payload_len, 6, 64) + src + dst
    return dst_mac + bytes([2, 0, 0, 0, 0, 1]) + b"\x86\xdd" + ip + tcp + payload


if __name__ == "__main__":
    main()
