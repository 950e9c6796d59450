"""ctnetlink's encoding and parsing of UDP conntrack entries, IPv4 and IPv6, without a kernel: entries as
a Linux 6.18 kernel sent them (captured from a dump with accounting on), and entries built here."""

from __future__ import annotations

import socket
import struct

import pytest

from nfsip.core.model import Endpoint
from nfsip.kernel import ctnetlink, netlink
from nfsip.kernel.conntrack import media_counters
from nfsip.kernel.ctnetlink import Entry, SourceCounts, Tuple, source_key

# The attributes of one dump answer each (after nlmsghdr and nfgenmsg): UDP 2001:db8:0:1::a:6000 ->
# 2001:db8:0:2::b:6001, 5 datagrams of 100 bytes out and 3 of 10 back; and the same over IPv4 (127.0.0.1
# -> 127.0.0.2). Tuples, then CTA_STATUS, CTA_TIMEOUT, CTA_MARK, CTA_USE, CTA_ID, counters.
CAPTURED_V6 = bytes.fromhex(
    "4c0001802c0001801400030020010db800000001000000000000000a1400040020010db800000002000000000000000b"
    "1c0002800500010011000000060002001770000006000300177100004c0002802c0001801400030020010db800000002"
    "000000000000000b1400040020010db800000001000000000000000a1c00028005000100110000000600020017710000"
    "0600030017700000080003000000000a080008000000000008000c005f1ed9c308000b0000000001080007000000001d"
    "1c0009800c00010000000000000000050c00020000000000000002e41c000a800c00010000000000000000030c000200"
    "00000000000000ae"
)
CAPTURED_V4 = bytes.fromhex(
    "3400018014000180080001007f000001080002007f0000021c0002800500010011000000060002001770000006000300"
    "177100003400028014000180080001007f000002080002007f0000011c00028005000100110000000600020017710000"
    "0600030017700000080003000000000a080008000000000008000c004a04814a08000b0000000001080007000000001d"
    "1c0009800c00010000000000000000050c00020000000000000002801c000a800c00010000000000000000030c000200"
    "0000000000000072"
)
A6, B6 = "2001:db8:0:1::a", "2001:db8:0:2::b"


@pytest.mark.parametrize(
    ("data", "a", "b", "sizes"),
    [(CAPTURED_V6, A6, B6, (740, 174)), (CAPTURED_V4, "127.0.0.1", "127.0.0.2", (640, 114))],
    ids=["ipv6", "ipv4"],
)
def test_captured_entry_parses_the_same_by_fast_read_and_full_parse(data, a, b, sizes):
    want = SourceCounts(source_key(a, 6000), source_key(b, 6001), 5, sizes[0], 3, sizes[1])
    assert ctnetlink.entry_sources(data, 0) == (want.orig_source, want.reply_source)  # the fast read applies
    assert ctnetlink.source_counts(data, 0, len(data), ctnetlink.entry_sources(data, 0)) == want
    assert ctnetlink.source_counts(data, 0, len(data), None) == want
    assert ctnetlink._entry(data, 0, len(data)) == Entry(Tuple(a, 6000, b, 6001), Tuple(b, 6001, a, 6000))


def test_ipv6_source_keys_are_address_and_port():
    assert source_key(A6, 6000) == socket.inet_pton(socket.AF_INET6, A6) + b"\x17\x70"
    assert len(source_key(A6, 6000)) == 18 and len(source_key("10.0.0.2", 6000)) == 6
    assert source_key("2001:DB8:0:1:0:0:0:A", 6000) == source_key(A6, 6000)  # the address, not its spelling
    with pytest.raises(OSError):
        source_key("2001:db8::zz", 6000)
    with pytest.raises(OSError):
        source_key("10.0.0", 6000)  # not even IPv4 shorthand (inet_aton took it)
    with pytest.raises(OverflowError):
        source_key(A6, 65536)


def _entry_bytes(orig: tuple[str, int, str, int], reply: tuple[str, int, str, int], between: bytes = b"") -> bytes:
    """An entry's attributes as the kernel lays them out: tuples, status, counters (50/8600 orig, 40/6880
    reply); `between`: an attribute between the two tuples, which the kernel never writes."""

    def counters(kind: int, packets: int, size: int) -> bytes:
        body = netlink.be64(ctnetlink.CTA_COUNTERS_PACKETS, packets)
        return netlink.nested(kind, body + netlink.be64(ctnetlink.CTA_COUNTERS_BYTES, size))

    return (
        ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_ORIG, orig[0], orig[2], orig[1], orig[3])
        + between
        + ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_REPLY, reply[0], reply[2], reply[1], reply[3])
        + netlink.be32(3, 0x1BE)  # CTA_STATUS
        + counters(ctnetlink.CTA_COUNTERS_ORIG, 50, 8600)
        + counters(ctnetlink.CTA_COUNTERS_REPLY, 40, 6880)
    )


def test_encoded_ipv6_tuples_are_the_kernels_layout_and_read_back_canonical():
    """tuple_attr writes an IPv6 tuple as the kernel does (CAPTURED_V6's, byte for byte), from any spelling
    of the addresses; read back, they are canonical text."""
    orig, reply = ("2001:DB8:0:1:0:0:0:a", 6000, B6, 6001), (B6, 6001, "2001:db8:0:1::A", 6000)
    built = _entry_bytes(orig, reply)
    assert built[:152] == CAPTURED_V6[:152]  # both tuples
    assert ctnetlink._entry(built, 0, len(built)) == Entry(Tuple(A6, 6000, B6, 6001), Tuple(B6, 6001, A6, 6000))


def test_an_ipv6_dump_filter_names_the_address_in_its_family():
    data = ctnetlink.dump_filter(None, A6, None, 6000)
    top = netlink.table(data, 0, len(data))
    tuple_ = netlink.table(data, *top[ctnetlink.CTA_TUPLE_ORIG])
    ip = netlink.table(data, *tuple_[ctnetlink.CTA_TUPLE_IP])
    assert list(ip) == [ctnetlink.CTA_IP_V6_DST]
    assert data[slice(*ip[ctnetlink.CTA_IP_V6_DST])] == socket.inet_pton(socket.AF_INET6, A6)
    (flags,) = struct.unpack_from("=I", data, netlink.table(data, *top[ctnetlink.CTA_FILTER])[1][0])
    assert flags == ctnetlink.FILTER_IP_DST | ctnetlink.FILTER_PROTO_NUM | ctnetlink.FILTER_PROTO_DST_PORT


def test_an_unusual_ipv6_layout_falls_back_to_the_full_parse():
    orig, reply = (A6, 6000, B6, 7000), (B6, 7000, A6, 6000)
    want = SourceCounts(source_key(A6, 6000), source_key(B6, 7000), 50, 8600, 40, 6880)
    usual = _entry_bytes(orig, reply)
    assert ctnetlink.source_counts(usual, 0, len(usual), ctnetlink.entry_sources(usual, 0)) == want
    unusual = _entry_bytes(orig, reply, between=netlink.attr(18, b"\0\0\0\0"))  # e.g. a CTA_ZONE
    assert ctnetlink.entry_sources(unusual, 0) is None
    assert ctnetlink.source_counts(unusual, 0, len(unusual), None) == want


def test_the_family_is_that_of_the_addresses():
    assert ctnetlink.family(A6) == socket.AF_INET6 and ctnetlink.family("10.0.0.2") == socket.AF_INET
    assert ctnetlink.family_of(None, A6) == socket.AF_INET6
    assert ctnetlink.family_of("10.0.0.2", "198.51.100.2") == socket.AF_INET
    assert ctnetlink.family_of(None, None) is None
    with pytest.raises(ValueError):
        ctnetlink.family_of("10.0.0.2", A6)  # no conntrack tuple mixes them
    with pytest.raises(ValueError):
        ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_ORIG, "10.0.0.2", A6, 1, 2)


PHONE6 = Endpoint("2001:db8:1::2", 6000)
FAR6 = "2001:db8:2::2"


def test_ipv6_media_counts_without_nat():
    """An IPv6 phone's media without NAT: its public endpoint is its own; a flow it started has it as the
    original source, a flow the far end started (through the pinhole) as the reply source. An IPv4 phone's
    endpoint with the same port is another endpoint."""
    phone_started = SourceCounts(source_key(PHONE6.ip, 6000), source_key(FAR6, 7000), 50, 8600, 40, 6880)
    far_started = SourceCounts(source_key(FAR6, 7002), source_key(PHONE6.ip, 6002), 30, 5160, 20, 3440)
    v4 = SourceCounts(source_key("10.0.0.2", 6000), source_key("198.51.100.2", 7000), 7, 700, 9, 900)
    other = Endpoint(PHONE6.ip, 6002)
    lan = {PHONE6, other, Endpoint("10.0.0.2", 6000), Endpoint("2001:db8::zz", 6000)}
    got = media_counters([phone_started, far_started, v4], lan)
    assert got == {
        PHONE6: (40, 6880, 50, 8600),
        other: (30, 5160, 20, 3440),
        Endpoint("10.0.0.2", 6000): (9, 900, 7, 700),
    }
    assert got.refused == (Endpoint("2001:db8::zz", 6000),)
