"""Tiny stdlib-only tools that the lab runs *inside* a namespace (``ip netns exec NS python FILE ...``).

Why a script instead of binaries: the lab VM has neither ``ping`` (iputils) nor ``ethtool``, and
changing the network namespace of the test process itself (setns) would be unsafe in a threaded
pytest process. The file is executed by path, so it must import nothing outside the standard library.

Subcommands::

    ping DST [COUNT [TIMEOUT]]      ICMP (IPv4) or ICMPv6 echo; prints the number of replies; exit 0 iff all answered
    txcsum-off IFNAME...            switch off TX checksum offload (legacy ETHTOOL_STXCSUM ioctl)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import time

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x00000017
IFNAMSIZ = 16
SIZEOF_IFREQ = 40


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(dst: str, count: int = 1, timeout: float = 1.0) -> int:
    """Send ``count`` ICMP echo requests to ``dst``; return how many were answered.

    A send error (ENETUNREACH when the namespace has no route) counts as unanswered: that is
    exactly what the routing sanity test wants to see from the server towards a private address.
    For an IPv6 ``dst`` the kernel fills in the ICMPv6 checksum (it covers the pseudo header) and
    hands the reply over without its IP header.
    """
    ident = os.getpid() & 0xFFFF
    answered = 0
    v6 = ":" in dst
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    request, reply = (128, 129) if v6 else (8, 0)
    if v6:
        dst = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, dst))
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        for seq in range(count):
            body = b"nfsip-lab-ping" + struct.pack("!d", time.time())
            header = struct.pack("!BBHHH", request, 0, 0, ident, seq)
            csum = 0 if v6 else _inet_checksum(header + body)
            packet = struct.pack("!BBHHH", request, 0, csum, ident, seq) + body
            try:
                sock.sendto(packet, (dst, 0))
            except OSError as exc:
                print(f"send to {dst}: {exc}", file=sys.stderr)
                continue
            deadline = time.monotonic() + timeout
            while (remaining := deadline - time.monotonic()) > 0:
                sock.settimeout(remaining)
                try:
                    data, addr = sock.recvfrom(2048)
                except TimeoutError:
                    break
                ihl = 0 if v6 else (data[0] & 0x0F) * 4
                icmp_type, _code, _sum, r_ident, r_seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
                if addr[0] == dst and icmp_type == reply and r_ident == ident and r_seq == seq:
                    answered += 1
                    break
    return answered


def txcsum_off(ifname: str) -> None:
    """Disable TX checksum offload on ``ifname`` in the current namespace.

    Why: veth defaults to CHECKSUM_PARTIAL on transmit, so a capture taken in the sending
    namespace (and anything that looks at the packet before the stack completes it) sees an
    invalid UDP checksum. Receivers don't care, but tshark reports "bad checksum" and a checksum
    check in a test would be meaningless. With offload off the sender computes it in software.
    """
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack(f"{IFNAMSIZ}sP", ifname.encode(), ctypes.addressof(value))
    ifreq += b"\0" * (SIZEOF_IFREQ - len(ifreq))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "ping":
        count = int(argv[2]) if len(argv) > 2 else 1
        timeout = float(argv[3]) if len(argv) > 3 else 1.0
        answered = ping(argv[1], count, timeout)
        print(answered)
        return 0 if answered == count else 1
    if len(argv) >= 2 and argv[0] == "txcsum-off":
        for ifname in argv[1:]:
            txcsum_off(ifname)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
