"""ctnetlink: get, filtered dump and delete of UDP/IPv4 conntrack entries, and their accounting counters.

nfsip asks conntrack once per uncached outbound SIP message (who sent it), dumps for every purge of a
call's media flows, and dumps with the accounting counters for the per-call media counts
(`dump_counted`, nfsip.kernel.conntrack.media_counters). Through pyroute2 a GET cost many times what this
module's does, and its dumps held SIP up until calls failed (docs/performance.md, "Netlink by hand"): so
these few requests are encoded here, over nfsip.kernel.netlink. UDP over IPv4 only, which is all nfsip
asks. pyroute2 stays in use for rtnetlink and the compat queue rule.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from . import netlink
from .netlink import NFNL_SUBSYS_CTNETLINK, NLA_F_NESTED, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST

# enum cntl_msg_types
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2

# enum ctattr_type: one entry
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_FILTER = 25
# enum ctattr_tuple, ctattr_ip, ctattr_l4proto: inside a tuple
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
# enum ctattr_counters: inside CTA_COUNTERS_*
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
# enum ctattr_filter: inside CTA_FILTER
CTA_FILTER_ORIG_FLAGS = 1
# Kernel-internal filter flags (net/netfilter/nf_conntrack_netlink.c): which tuple fields must match.
FILTER_IP_SRC = 1 << 0
FILTER_IP_DST = 1 << 1
FILTER_PROTO_NUM = 1 << 3
FILTER_PROTO_SRC_PORT = 1 << 4
FILTER_PROTO_DST_PORT = 1 << 5
IPPROTO_UDP = 17

_NFGEN = netlink.nfgenmsg(socket.AF_INET)


@dataclass(frozen=True, slots=True)
class Tuple:
    src: str
    sport: int
    dst: str
    dport: int


@dataclass(frozen=True, slots=True)
class Entry:
    orig: Tuple
    reply: Tuple


class SourceCounts(NamedTuple):
    """An entry's two sources (source_key bytes: who sent in each direction) and its accounting counters
    (all 0 when it has none: accounting was off when the entry was created)."""

    orig_source: bytes
    reply_source: bytes
    orig_packets: int
    orig_bytes: int
    reply_packets: int
    reply_bytes: int


_T = TypeVar("_T")


def tuple_attr(kind: int, src: str | None, dst: str | None, sport: int | None, dport: int | None) -> bytes:
    """CTA_TUPLE_ORIG / CTA_TUPLE_REPLY of a UDP flow, with the fields given."""
    ip = b""
    if src is not None:
        ip += netlink.attr(CTA_IP_V4_SRC, socket.inet_aton(src))
    if dst is not None:
        ip += netlink.attr(CTA_IP_V4_DST, socket.inet_aton(dst))
    proto = netlink.u8(CTA_PROTO_NUM, IPPROTO_UDP)
    if sport is not None:
        proto += netlink.be16(CTA_PROTO_SRC_PORT, sport)
    if dport is not None:
        proto += netlink.be16(CTA_PROTO_DST_PORT, dport)
    return netlink.nested(kind, netlink.nested(CTA_TUPLE_IP, ip) + netlink.nested(CTA_TUPLE_PROTO, proto))


def _parse_tuple(data: bytes, span: netlink.Span) -> Tuple | None:
    top = netlink.table(data, *span)
    if CTA_TUPLE_IP not in top or CTA_TUPLE_PROTO not in top:
        return None
    ip = netlink.table(data, *top[CTA_TUPLE_IP])
    proto = netlink.table(data, *top[CTA_TUPLE_PROTO])
    if CTA_IP_V4_SRC not in ip or CTA_IP_V4_DST not in ip:
        return None  # not IPv4
    src = socket.inet_ntoa(data[ip[CTA_IP_V4_SRC][0] : ip[CTA_IP_V4_SRC][0] + 4])
    dst = socket.inet_ntoa(data[ip[CTA_IP_V4_DST][0] : ip[CTA_IP_V4_DST][0] + 4])
    sport = netlink.read_be16(data, proto[CTA_PROTO_SRC_PORT]) if CTA_PROTO_SRC_PORT in proto else 0
    dport = netlink.read_be16(data, proto[CTA_PROTO_DST_PORT]) if CTA_PROTO_DST_PORT in proto else 0
    return Tuple(src, sport, dst, dport)


def _counters(data: bytes, span: netlink.Span | None) -> tuple[int, int]:
    """(packets, bytes) of a CTA_COUNTERS_ORIG/REPLY attribute's payload span; (0, 0) if absent."""
    if span is None:
        return 0, 0
    inner = netlink.table(data, *span)
    packets = inner.get(CTA_COUNTERS_PACKETS)
    size = inner.get(CTA_COUNTERS_BYTES)
    return (netlink.read_be64(data, packets) if packets else 0, netlink.read_be64(data, size) if size else 0)


def _entry(data: bytes, start: int, end: int) -> Entry | None:
    return _entry_of(data, netlink.table(data, start, end))


def _entry_of(data: bytes, found: dict[int, netlink.Span]) -> Entry | None:
    if CTA_TUPLE_ORIG not in found or CTA_TUPLE_REPLY not in found:
        return None
    orig = _parse_tuple(data, found[CTA_TUPLE_ORIG])
    reply = _parse_tuple(data, found[CTA_TUPLE_REPLY])
    return None if orig is None or reply is None else Entry(orig, reply)


def source_counts(data: bytes, start: int, end: int, sources: tuple[bytes, bytes] | None) -> SourceCounts | None:
    """The entry's SourceCounts; `sources` when entry_sources() read them already."""
    if sources is None:  # not the usual layout: the general parse
        found = netlink.table(data, start, end)
        entry = _entry_of(data, found)
        if entry is None:
            return None
        return SourceCounts(
            source_key(entry.orig.src, entry.orig.sport),
            source_key(entry.reply.src, entry.reply.sport),
            *_counters(data, found.get(CTA_COUNTERS_ORIG)),
            *_counters(data, found.get(CTA_COUNTERS_REPLY)),
        )
    # The counters come a few attributes after the tuples (status, timeout, ...): walk to them.
    counts = [0, 0, 0, 0]
    for kind, a, b in netlink.walk(data, start + 104, end):
        if kind in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            at = 0 if kind == CTA_COUNTERS_ORIG else 2
            counts[at], counts[at + 1] = _counters(data, (a, b))
            if kind == CTA_COUNTERS_REPLY:
                break
    return SourceCounts(sources[0], sources[1], *counts)


# The kernel writes a UDP/IPv4 entry's tuples first and always the same way (ctnetlink_fill_info):
#   CTA_TUPLE_ORIG (52 bytes) { CTA_TUPLE_IP { V4_SRC, V4_DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT } }
#   CTA_TUPLE_REPLY (52 bytes), the same
# so both source addresses and ports sit at fixed offsets, checked against these attribute headers. A media
# count read walks the whole UDP table (DNS and every other flow of the router) for the entries of the
# calls' media ports: reading the sources there first, without building anything, makes an entry that is
# not wanted cost a few byte compares instead of a parse; the read of a big table takes a fraction of the
# time the general parse took (docs/performance.md, "Netlink by hand").
_ORIG_HEAD = struct.pack("=HH", 52, CTA_TUPLE_ORIG | NLA_F_NESTED)
_REPLY_HEAD = struct.pack("=HH", 52, CTA_TUPLE_REPLY | NLA_F_NESTED)
_SRC_HEAD = struct.pack("=HHHH", 20, CTA_TUPLE_IP | NLA_F_NESTED, 8, CTA_IP_V4_SRC)
_PROTO_HEAD = struct.pack("=HHHH", 28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM)
_SPORT_HEAD = struct.pack("=HH", 6, CTA_PROTO_SRC_PORT)


def _tuple_source(data: bytes, at: int) -> bytes | None:
    """Address + port bytes of the source of the tuple whose payload starts at `at`, if laid out as above."""
    starts = data.startswith
    if starts(_SRC_HEAD, at) and starts(_PROTO_HEAD, at + 20) and starts(_SPORT_HEAD, at + 32):
        return data[at + 8 : at + 12] + data[at + 36 : at + 38]
    return None


def entry_sources(data: bytes, start: int) -> tuple[bytes, bytes] | None:
    """(original source, reply source) of the entry whose attributes start at `start`, as address + port
    bytes; None when the entry is not laid out as above (then it is parsed in full)."""
    if not (data.startswith(_ORIG_HEAD, start) and data.startswith(_REPLY_HEAD, start + 52)):
        return None
    orig = _tuple_source(data, start + 4)
    reply = _tuple_source(data, start + 56)
    return None if orig is None or reply is None else (orig, reply)


def source_key(ip: str, port: int) -> bytes:
    """An endpoint as entry_sources() gives it."""
    return socket.inet_aton(ip) + port.to_bytes(2, "big")


def dump_filter(src: str | None, dst: str | None, sport: int | None, dport: int | None) -> bytes:
    """A dump request's attributes: UDP only, and the original tuple's given fields (the kernel filters)."""
    flags = FILTER_PROTO_NUM
    flags |= FILTER_IP_SRC if src is not None else 0
    flags |= FILTER_IP_DST if dst is not None else 0
    flags |= FILTER_PROTO_SRC_PORT if sport is not None else 0
    flags |= FILTER_PROTO_DST_PORT if dport is not None else 0
    attrs = tuple_attr(CTA_TUPLE_ORIG, src, dst, sport, dport)
    return attrs + netlink.nested(CTA_FILTER, netlink.attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)))


class CtNetlink:
    def __init__(self) -> None:
        self._netlink = netlink.NetlinkSocket(timeout=2.0)

    def close(self) -> None:
        self._netlink.close()

    def ask(self, msg: int, flags: int, attrs: bytes, parse: Callable[[bytes, int, int], _T | None]) -> list[_T]:
        """Send one request (IPCTNL_MSG_CT_*); collect what `parse` makes of each conntrack entry of the
        answer. Raises OSError with the kernel's errno."""
        msg_type = netlink.subsystem_type(NFNL_SUBSYS_CTNETLINK, msg)
        return self._netlink.request(msg_type, flags, _NFGEN + attrs, parse)

    def get(self, src: str, sport: int, dst: str, dport: int) -> Entry | None:
        """The entry with this exact tuple, in either direction (the kernel looks both up); None if none."""
        try:
            found = self.ask(
                IPCTNL_MSG_CT_GET, NLM_F_REQUEST, tuple_attr(CTA_TUPLE_ORIG, src, dst, sport, dport), _entry
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return found[0] if found else None

    def dump(
        self, *, src: str | None = None, dst: str | None = None, sport: int | None = None, dport: int | None = None
    ) -> list[Entry]:
        """UDP entries whose original tuple matches the given fields, filtered in the kernel (Linux 5.8+)."""
        return self.ask(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, dump_filter(src, dst, sport, dport), _entry)

    def dump_counted(self, sources: Collection[bytes] | None = None) -> list[SourceCounts]:
        """The sources and accounting counters (net.netfilter.nf_conntrack_acct) of every UDP entry; with
        `sources` (source_key()s), only of entries whose original or reply source is one of them."""

        def parse(data: bytes, start: int, end: int) -> SourceCounts | None:
            found = entry_sources(data, start)
            if sources is not None and found is not None and found[0] not in sources and found[1] not in sources:
                return None
            got = source_counts(data, start, end, found)
            if got is None or sources is None or got.orig_source in sources or got.reply_source in sources:
                return got
            return None

        return self.ask(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, dump_filter(None, None, None, None), parse)

    def delete(self, orig: Tuple) -> bool:
        """Delete the entry with this original tuple; False when it was already gone."""
        try:
            self.ask(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                tuple_attr(CTA_TUPLE_ORIG, orig.src, orig.dst, orig.sport, orig.dport),
                _entry,
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True
