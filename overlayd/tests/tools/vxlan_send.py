#!/usr/bin/env python3
"""Sends crafted VXLAN datagrams (good and bad) for overlayd's integration tests.

usage: vxlan_send.py CASE COUNT DST_IP [PORT] [--src-ip IP]

Every inner frame is addressed to node 1 (VtepMAC 0a:58:0a:f4:01:00, pod 10.244.1.2) from
node 2's pod range, so only the property a case names is wrong. Plain UDP sockets only: the
outer source address is whatever the namespace it runs in owns.
"""
import socket
import struct
import sys

OWN_MAC = bytes.fromhex("0a580af40100")
PEER_MAC = bytes.fromhex("0a580af40200")


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_udp(payload, src="10.244.2.2", dst="10.244.1.2", dport=9999, df=True):
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000 if df else 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + udp


def eth(payload, dst=OWN_MAC, ethertype=0x0800):
    return dst + PEER_MAC + struct.pack("!H", ethertype) + payload


def vxlan(inner, flags=0x08, vni=1, reserved=False):
    if reserved:
        # Every reserved bit set: flags byte, the 24 bits after it, and the last byte.
        return struct.pack("!B3s3sB", flags | 0xF7, b"\xff\xff\xff", vni.to_bytes(3, "big"), 0xFF) + inner
    return struct.pack("!B3s3sB", flags, b"\0\0\0", vni.to_bytes(3, "big"), 0) + inner


def build(case, payload):
    good = eth(ipv4_udp(payload))
    return {
        "good": vxlan(good),
        "short": b"\x08\x00\x00",
        "no_i_flag": vxlan(good, flags=0x00),
        "wrong_vni": vxlan(good, vni=2),
        "truncated_inner": vxlan(good[:9]),
        "inner_vlan": vxlan(eth(struct.pack("!HH", 100, 0x0800) + ipv4_udp(payload), ethertype=0x8100)),
        "not_for_us": vxlan(eth(ipv4_udp(payload), dst=bytes.fromhex("0a580af40999"))),
        # Far above any inner MTU: a 60000-byte inner IPv4/UDP packet in one datagram.
        "oversized": vxlan(eth(ipv4_udp(payload + b"x" * 60000))),
        "reserved_bits": vxlan(good, reserved=True),
        # From node 2's VTEP but speaking for node 3's pod: a spoof the source check drops.
        "foreign_source": vxlan(eth(ipv4_udp(payload, src="10.244.3.2"))),
        # From node 2's flannel.1/TAP address (its podCIDR network address): host-network
        # processes on node 2 send from it, and it must pass.
        "vtep_own_source": vxlan(eth(ipv4_udp(payload, src="10.244.2.0"))),
    }[case]


def main():
    args = sys.argv[1:]
    if len(args) < 3:
        sys.exit(__doc__)
    case, count, dst = args[0], int(args[1]), args[2]
    port = int(args[3]) if len(args) > 3 else 8472
    data = build(case, f"overlayd-test {case}".encode())
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(count):
        s.sendto(data, (dst, port))


if __name__ == "__main__":
    main()
