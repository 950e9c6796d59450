"""IPv4 and IPv6 UDP decode/encode: lengths and checksums must be what a receiving kernel accepts."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfsip.core.packet import PacketError, decode_ipv4_udp, decode_udp, encode_ipv4_udp, encode_udp, internet_checksum


def make_packet(payload: bytes, src="10.0.0.2", dst="198.51.100.2", sport=5060, dport=5060, options=b"") -> bytes:
    ihl = (20 + len(options)) // 4
    total = ihl * 4 + 8 + len(payload)
    header = (
        struct.pack(
            "!BBHHHBBH4s4s",
            0x40 | ihl,
            0,
            total,
            0x1234,
            0x4000,
            64,
            17,
            0,
            socket.inet_aton(src),
            socket.inet_aton(dst),
        )
        + options
    )
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    pseudo = header[12:20] + struct.pack("!BBH", 0, 17, 8 + len(payload))
    csum = internet_checksum(pseudo + udp + payload) or 0xFFFF
    return header + udp[:6] + struct.pack("!H", csum) + payload


def verify(packet: bytes) -> None:
    ihl = (packet[0] & 0x0F) * 4
    assert struct.unpack_from("!H", packet, 2)[0] == len(packet)
    assert internet_checksum(packet[:ihl]) == 0, "IP header checksum"
    udp_len = struct.unpack_from("!H", packet, ihl + 4)[0]
    assert udp_len == len(packet) - ihl
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, udp_len)
    assert internet_checksum(pseudo + packet[ihl:]) == 0, "UDP checksum"


def test_decode_fields():
    pkt = make_packet(b"OPTIONS sip:x SIP/2.0\r\n\r\n", sport=1234, dport=5060)
    d = decode_ipv4_udp(pkt)
    assert (d.src, d.sport, d.dst, d.dport) == ("10.0.0.2", 1234, "198.51.100.2", 5060)
    assert d.payload == b"OPTIONS sip:x SIP/2.0\r\n\r\n"


@given(st.binary(max_size=1400), st.binary(max_size=1400))
def test_encode_fixes_lengths_and_checksums(old: bytes, new: bytes):
    pkt = make_packet(old)
    verify(pkt)
    out = encode_ipv4_udp(pkt, new)
    verify(out)
    assert decode_ipv4_udp(out).payload == new
    assert out[:2] == pkt[:2] and out[4:10] == pkt[4:10] and out[12:20] == pkt[12:20]


def test_ip_options_are_kept():
    pkt = make_packet(b"x" * 10, options=b"\x01\x01\x01\x00")
    out = encode_ipv4_udp(pkt, b"y" * 30)
    verify(out)
    assert out[20:24] == b"\x01\x01\x01\x00"
    assert decode_ipv4_udp(out).payload == b"y" * 30


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: p[:27], "short-packet"),
        (lambda p: bytes([0x60]) + p[1:], "not-ipv4"),
        (lambda p: p[:9] + b"\x06" + p[10:], "not-udp"),
        (lambda p: p[:-5], "truncated-copy"),  # what a queue copy of a too-long packet looks like
        (lambda p: p[:6] + b"\x20\x00" + p[8:], "fragment"),
    ],
)
def test_decode_rejects(mutate, reason):
    with pytest.raises(PacketError) as exc:
        decode_ipv4_udp(mutate(make_packet(b"hello world, a sip message")))
    assert exc.value.reason == reason


@given(st.binary(max_size=200))
def test_decode_never_raises_anything_else(data: bytes):
    try:
        decode_ipv4_udp(data)
    except PacketError:
        pass


def rfc1071(data: bytes) -> int:
    """The textbook loop, as a reference for the fast implementation."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@given(st.binary(max_size=3000))
def test_checksum_matches_the_rfc1071_loop(data: bytes):
    assert internet_checksum(data) == rfc1071(data)


@pytest.mark.parametrize("data", [b"", b"\0\0\0\0", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00\x01\xff\xfe", b"\x80"])
def test_checksum_edge_cases(data: bytes):
    assert internet_checksum(data) == rfc1071(data)


@pytest.mark.parametrize("size", [511, 512, 513, 2968, 4096, 65507])
@pytest.mark.parametrize("byte", [0x00, 0xFF, 0x80, 0x01])
def test_checksum_of_large_uniform_buffers(size: int, byte: int):
    data = bytes([byte]) * size
    assert internet_checksum(data) == rfc1071(data)


# -- IPv6 ---------------------------------------------------------------------------------------------------
def make_packet6(
    payload: bytes, src="2001:db8:1::10", dst="2001:db8:f::2", sport=5060, dport=5060, options: bytes = b""
) -> bytes:
    """An IPv6 UDP packet, optionally behind one hop-by-hop options header (`options`: its bytes after the
    next-header and length fields, padded by the caller to (n + 1) * 8 - 2 bytes)."""
    udp_len = 8 + len(payload)
    first = 0 if options else 17
    ext = bytes((17, (len(options) + 2) // 8 - 1)) + options if options else b""
    header = struct.pack("!IHBB", 6 << 28, len(ext) + udp_len, first, 64)
    addresses = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0)
    pseudo = addresses + struct.pack("!I3xB", udp_len, 17)
    csum = internet_checksum(pseudo + udp + payload) or 0xFFFF
    return header + addresses + ext + udp[:6] + struct.pack("!H", csum) + payload


def verify6(packet: bytes, udp_at: int = 40) -> None:
    assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    udp_len = struct.unpack_from("!H", packet, udp_at + 4)[0]
    assert udp_len == len(packet) - udp_at
    pseudo = packet[8:40] + struct.pack("!I3xB", udp_len, 17)
    assert internet_checksum(pseudo + packet[udp_at:]) == 0, "UDP checksum"


def test_decode_ipv6_fields():
    pkt = make_packet6(b"OPTIONS sip:x SIP/2.0\r\n\r\n", src="2001:DB8:1:0::10", sport=1234)
    d = decode_udp(pkt)
    assert (d.src, d.sport, d.dst, d.dport) == ("2001:db8:1::10", 1234, "2001:db8:f::2", 5060)
    assert d.payload == b"OPTIONS sip:x SIP/2.0\r\n\r\n" and d.family == "ipv6" and d.header_len == 48
    assert decode_udp(make_packet(b"x")).family == "ipv4"


@given(st.binary(max_size=1400), st.binary(max_size=1400))
def test_encode_ipv6_fixes_lengths_and_checksum(old: bytes, new: bytes):
    pkt = make_packet6(old)
    verify6(pkt)
    out = encode_udp(pkt, new)
    verify6(out)
    assert decode_udp(out).payload == new
    assert out[:4] == pkt[:4] and out[6:40] == pkt[6:40]


def test_ipv6_options_header_is_stepped_over_and_kept():
    options = b"\x01\x04\x00\x00\x00\x00"  # one PadN option: 6 bytes, so the header is 8
    pkt = make_packet6(b"x" * 10, options=options)
    verify6(pkt, udp_at=48)
    assert decode_udp(pkt).payload == b"x" * 10
    out = encode_udp(pkt, b"y" * 30)
    verify6(out, udp_at=48)
    assert out[40:48] == pkt[40:48] and decode_udp(out).payload == b"y" * 30


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda p: p[:47], "short-packet"),
        (lambda p: p[:6] + b"\x06" + p[7:], "not-udp"),
        (lambda p: p[:6] + b"\x2c" + p[7:], "fragment"),
        (lambda p: p[:6] + b"\x2b" + p[7:], "not-udp"),  # a routing header: not stepped over
        (lambda p: p[:-5], "truncated-copy"),
        (lambda p: p[:44] + b"\x00\x04" + p[46:], "bad-udp-length"),
    ],
)
def test_decode_ipv6_rejects(mutate, reason):
    with pytest.raises(PacketError) as exc:
        decode_udp(mutate(make_packet6(b"hello world, a sip message")))
    assert exc.value.reason == reason


@given(st.binary(max_size=200))
def test_decode_udp_never_raises_anything_else(data: bytes):
    try:
        decode_udp(bytes([0x60]) + data)
    except PacketError:
        pass


_KERNEL_RECEIVES = """
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
rx.bind(("::1", 5060))
rx.settimeout(2)
tx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)  # the header is ours (IPV6_HDRINCL)
tx.sendto(bytes.fromhex(sys.argv[1]), ("::1", 0))
print(rx.recv(65535).hex())
"""


def test_the_kernel_accepts_a_rewritten_ipv6_datagram():
    """The checksum's oracle is a real receiver: Linux drops an IPv6 UDP datagram whose checksum is wrong."""
    from .lab_support import require, require_tool

    require(os.geteuid() == 0, "needs root (a network namespace of its own)")
    require_tool("unshare", "util-linux")
    pkt = make_packet6(b"short", src="::1", dst="::1", sport=40000)
    out = encode_udp(pkt, b"INVITE sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n" * 3)
    argv = ["unshare", "--net", sys.executable, "-c", _KERNEL_RECEIVES]
    got = subprocess.run([*argv, out.hex()], capture_output=True, text=True, timeout=20)
    assert got.returncode == 0 and bytes.fromhex(got.stdout.strip()) == decode_udp(out).payload, got.stderr
    bad = out[:46] + bytes([out[46] ^ 0xFF]) + out[47:]  # the same with a wrong checksum: never delivered
    got = subprocess.run([*argv, bad.hex()], capture_output=True, text=True, timeout=20)
    assert got.returncode != 0 and "timed out" in got.stderr, (got.stdout, got.stderr)
