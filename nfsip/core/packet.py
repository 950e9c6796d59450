"""UDP datagrams over IPv4 or IPv6 as the queue hands them over: decode, and re-encode after the payload
changed.

Sans-I/O: bytes in, bytes out. The kernel's `set_payload()` copies our bytes into the skb and fixes
*nothing*: after a length change the IP total length (IPv6: payload length), the IPv4 header checksum, the
UDP length and the UDP checksum must all be recomputed here, or receivers drop the datagram
(UdpInCsumErrors, IpExtInTruncatedPkts).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

IPPROTO_UDP = 17


class PacketError(ValueError):
    """The bytes are not a whole, unfragmented IPv4 or IPv6 UDP datagram nfsip can rewrite."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    src: str
    sport: int
    dst: str
    dport: int
    header_len: int  # IP header length (with options or extension headers) + 8 bytes of UDP header
    payload: bytes

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.src else "ipv4"


_PORTS = struct.Struct("!HH")
_PROTO_UDP = bytes((0, IPPROTO_UDP))
_inet_ntoa = socket.inet_ntoa
# IPv6 extension headers a UDP datagram may carry before its UDP header and that nfsip steps over (RFC 8200
# section 4: hop-by-hop and destination options, both (length + 1) * 8 bytes). A routing header could change
# the destination the UDP checksum covers, and a fragment header means a fragment: refused, like the rest.
_IPV6_OPTIONS = (0, 60)
_IPV6_FRAGMENT = 44


def decode_udp(packet: bytes) -> UdpDatagram:
    """Split a queued IPv4 or IPv6 packet into addresses, ports and UDP payload (see decode_ipv4_udp)."""
    if packet[:1] and packet[0] >> 4 == 6:
        return decode_ipv6_udp(packet)
    return decode_ipv4_udp(packet)


def encode_udp(original: bytes, payload: bytes) -> bytes:
    """`original` (IPv4 or IPv6) with its UDP payload replaced, lengths and checksums recomputed."""
    if original[0] >> 4 == 6:
        return encode_ipv6_udp(original, payload)
    return encode_ipv4_udp(original, payload)


def _ipv6_udp_offset(packet: bytes) -> int:
    """Where the UDP header of an IPv6 packet starts, after the options headers nfsip steps over."""
    next_header, offset = packet[6], 40
    while next_header in _IPV6_OPTIONS:
        if len(packet) < offset + 8:
            raise PacketError("bad-ip-header")
        next_header, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
    if next_header == _IPV6_FRAGMENT:
        raise PacketError("fragment")
    if next_header != IPPROTO_UDP:
        raise PacketError("not-udp")
    return offset


def decode_ipv6_udp(packet: bytes) -> UdpDatagram:
    """Split a queued IPv6 packet into addresses, ports and UDP payload. Refuses what decode_ipv4_udp
    refuses, and a routing header (it may change the destination the UDP checksum covers)."""
    if len(packet) < 48:
        raise PacketError("short-packet")
    if packet[0] >> 4 != 6:
        raise PacketError("not-ipv6")
    total_len = 40 + ((packet[4] << 8) | packet[5])
    if total_len > len(packet):
        raise PacketError("truncated-copy")
    offset = _ipv6_udp_offset(packet)
    if total_len < offset + 8:
        raise PacketError("bad-ip-header")
    udp_len = (packet[offset + 4] << 8) | packet[offset + 5]
    if udp_len < 8 or offset + udp_len > total_len:
        raise PacketError("bad-udp-length")
    sport, dport = _PORTS.unpack_from(packet, offset)
    return UdpDatagram(
        socket.inet_ntop(socket.AF_INET6, packet[8:24]),
        sport,
        socket.inet_ntop(socket.AF_INET6, packet[24:40]),
        dport,
        offset + 8,
        packet[offset + 8 : offset + udp_len],
    )


def encode_ipv6_udp(original: bytes, payload: bytes) -> bytes:
    """`original` with its UDP payload replaced: the IPv6 payload length, the UDP length and the UDP checksum
    (mandatory over IPv6, RFC 8200 section 8.1) recomputed; options headers kept."""
    offset = _ipv6_udp_offset(original)
    udp_len = 8 + len(payload)
    payload_len = offset - 40 + udp_len
    if payload_len > 0xFFFF:
        raise PacketError("too-large")
    header = original[:4] + payload_len.to_bytes(2, "big") + original[6:offset]
    ports_len = original[offset : offset + 4] + udp_len.to_bytes(2, "big")
    # Pseudo-header (RFC 8200 section 8.1): source, destination, upper-layer length (32 bits), three zero
    # bytes and the next header value 17.
    checksum = internet_checksum(
        original[8:40] + udp_len.to_bytes(4, "big") + b"\0\0\0" + bytes((IPPROTO_UDP,)) + ports_len + b"\0\0" + payload
    )
    return header + ports_len + (checksum or 0xFFFF).to_bytes(2, "big") + payload


def decode_ipv4_udp(packet: bytes) -> UdpDatagram:
    """Split a queued IPv4 packet into addresses, ports and UDP payload.

    Raises PacketError when the packet is not IPv4/UDP, is a fragment, or is shorter than its own
    total length says (the queue copies at most a bounded prefix of large packets: such a copy must never be
    rewritten, or the packet on the wire would be truncated).
    """
    if len(packet) < 28:
        raise PacketError("short-packet")
    version_ihl = packet[0]
    if version_ihl >> 4 != 4:
        raise PacketError("not-ipv4")
    ihl = (version_ihl & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + 8:
        raise PacketError("bad-ip-header")
    if packet[9] != IPPROTO_UDP:
        raise PacketError("not-udp")
    total_len = (packet[2] << 8) | packet[3]
    if total_len > len(packet):
        raise PacketError("truncated-copy")
    flags_frag = (packet[6] << 8) | packet[7]
    if flags_frag & 0x3FFF:  # MF set or fragment offset != 0
        raise PacketError("fragment")
    udp_len = (packet[ihl + 4] << 8) | packet[ihl + 5]
    if udp_len < 8 or ihl + udp_len > total_len:
        raise PacketError("bad-udp-length")
    sport, dport = _PORTS.unpack_from(packet, ihl)
    return UdpDatagram(
        _inet_ntoa(packet[12:16]), sport, _inet_ntoa(packet[16:20]), dport, ihl + 8, packet[ihl + 8 : ihl + udp_len]
    )


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words, complemented.

    Computed as the whole buffer read as one big integer modulo 0xFFFF: 2**16 = 1 (mod 0xFFFF), so that is
    the end-around-carry sum of the words, in one C-level operation instead of a Python loop. The
    one's-complement sum is 0 only when every word is 0; a nonzero buffer whose sum is a multiple of 0xFFFF
    sums to 0xFFFF ("negative zero").
    """
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    if total == 0 and any(data):
        total = 0xFFFF
    return ~total & 0xFFFF


def encode_ipv4_udp(original: bytes, payload: bytes) -> bytes:
    """Return `original` with its UDP payload replaced, lengths and both checksums recomputed.

    IP options and every other header field are kept. Anything after the IP total length in `original`
    (there is nothing in a queued packet) is dropped.
    """
    ihl = (original[0] & 0x0F) * 4
    udp_len = 8 + len(payload)
    total_len = ihl + udp_len
    if total_len > 0xFFFF:
        raise PacketError("too-large")
    # The IP header with the new total length and a zero checksum, then its checksum filled in.
    ip_header = original[:2] + total_len.to_bytes(2, "big") + original[4:10] + b"\0\0" + original[12:ihl]
    ip_header = ip_header[:10] + internet_checksum(ip_header).to_bytes(2, "big") + ip_header[12:]
    ports_len = original[ihl : ihl + 4] + udp_len.to_bytes(2, "big")
    # UDP checksum over the pseudo-header (addresses, zero, protocol, UDP length), the header with a zero
    # checksum, and the payload (RFC 768).
    checksum = internet_checksum(
        ip_header[12:20] + _PROTO_UDP + udp_len.to_bytes(2, "big") + ports_len + b"\0\0" + payload
    )
    # RFC 768: a computed checksum of zero is transmitted as all ones (zero means "no checksum").
    return ip_header + ports_len + (checksum or 0xFFFF).to_bytes(2, "big") + payload
