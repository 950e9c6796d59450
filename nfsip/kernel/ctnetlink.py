"""ctnetlink: get, filtered dump and delete of UDP conntrack entries (IPv4 and IPv6), and their accounting
counters.

nfsip asks conntrack once per uncached outbound SIP message (who sent it), dumps for every purge of a
call's media flows, and dumps with the accounting counters for the per-call media counts
(`dump_counted`, nfsip.kernel.conntrack.media_counters). Through pyroute2 a GET cost many times what this
module's does, and its dumps held SIP up until calls failed (docs/performance.md, "Netlink by hand"): so
these few requests are encoded here, over nfsip.kernel.netlink. UDP only, which is all nfsip asks.
pyroute2 stays in use for rtnetlink and the compat queue rule.

Addresses are strings both ways; the family of a request is that of the addresses given (an IPv6 address
has a colon), and the addresses read back are canonical text (inet_ntop: compressed, lowercase).
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
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
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

FAMILIES = (socket.AF_INET, socket.AF_INET6)
# A family's (source, destination) attribute types inside CTA_TUPLE_IP, and its address length.
_IP_ATTRS = {socket.AF_INET: (CTA_IP_V4_SRC, CTA_IP_V4_DST), socket.AF_INET6: (CTA_IP_V6_SRC, CTA_IP_V6_DST)}
_ADDRESS_SIZE = {socket.AF_INET: 4, socket.AF_INET6: 16}


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


def family(ip: str) -> int:
    """AF_INET6 for an IPv6 address (it has a colon), AF_INET for an IPv4 one."""
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def canonical(ip: str) -> str:
    """An address as this module reads it back from the kernel: IPv6 compressed and lowercase."""
    fam = family(ip)
    return socket.inet_ntop(fam, socket.inet_pton(fam, ip))


def family_of(*ips: str | None) -> int | None:
    """The one family of the addresses given (None: no address given); ValueError when they mix families."""
    families = {family(ip) for ip in ips if ip is not None}
    if len(families) > 1:
        raise ValueError(f"addresses of two families in one conntrack tuple: {ips}")
    return families.pop() if families else None


def tuple_attr(kind: int, src: str | None, dst: str | None, sport: int | None, dport: int | None) -> bytes:
    """CTA_TUPLE_ORIG / CTA_TUPLE_REPLY of a UDP flow, with the fields given (addresses of one family)."""
    fam = family_of(src, dst) or socket.AF_INET  # no address: no address attribute, either family's tuple
    src_type, dst_type = _IP_ATTRS[fam]
    ip = b""
    if src is not None:
        ip += netlink.attr(src_type, socket.inet_pton(fam, src))
    if dst is not None:
        ip += netlink.attr(dst_type, socket.inet_pton(fam, dst))
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
    fam = socket.AF_INET if CTA_IP_V4_SRC in ip else socket.AF_INET6
    src_type, dst_type = _IP_ATTRS[fam]
    if src_type not in ip or dst_type not in ip:
        return None
    src = socket.inet_ntop(fam, data[slice(*ip[src_type])])
    dst = socket.inet_ntop(fam, data[slice(*ip[dst_type])])
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
    # The counters come a few attributes after the tuples (status, timeout, ...): walk to them. The two
    # tuples are of one size (entry_sources checked both headers).
    counts = [0, 0, 0, 0]
    for kind, a, b in netlink.walk(data, start + 2 * netlink.ATTR.unpack_from(data, start)[0], end):
        if kind in (CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY):
            at = 0 if kind == CTA_COUNTERS_ORIG else 2
            counts[at], counts[at + 1] = _counters(data, (a, b))
            if kind == CTA_COUNTERS_REPLY:
                break
    return SourceCounts(sources[0], sources[1], *counts)


# The kernel writes a UDP entry's tuples first and always the same way (ctnetlink_fill_info), for a family
# whose addresses are n bytes long (IPv4 4, IPv6 16):
#   CTA_TUPLE_ORIG (44 + 2n bytes) { CTA_TUPLE_IP { SRC, DST }, CTA_TUPLE_PROTO { NUM, SRC_PORT, DST_PORT } }
#   CTA_TUPLE_REPLY (44 + 2n bytes), the same
# so both source addresses and ports sit at fixed offsets, checked against these attribute headers. A media
# count read walks the whole UDP table (DNS and every other flow of the router) for the entries of the
# calls' media ports: reading the sources there first, without building anything, makes an entry that is
# not wanted cost a few byte compares instead of a parse; the read of a big table takes a fraction of the
# time the general parse took (docs/performance.md, "Netlink by hand").
class _Layout(NamedTuple):
    """Where a UDP entry's sources are, for one family."""

    orig_head: bytes  # CTA_TUPLE_ORIG's attribute header
    reply_head: bytes  # CTA_TUPLE_REPLY's
    src_head: bytes  # a tuple's payload starts with CTA_TUPLE_IP's header and the source address's
    address_size: int  # n
    tuple_size: int  # one tuple attribute, header included
    proto_at: int  # where CTA_TUPLE_PROTO starts in a tuple's payload


def _layout(fam: int) -> _Layout:
    n = _ADDRESS_SIZE[fam]
    ip_size = 4 + 2 * (4 + n)  # CTA_TUPLE_IP: header, source and destination attributes
    tuple_size = 4 + ip_size + 28  # header, CTA_TUPLE_IP, CTA_TUPLE_PROTO (below)
    return _Layout(
        struct.pack("=HH", tuple_size, CTA_TUPLE_ORIG | NLA_F_NESTED),
        struct.pack("=HH", tuple_size, CTA_TUPLE_REPLY | NLA_F_NESTED),
        struct.pack("=HHHH", ip_size, CTA_TUPLE_IP | NLA_F_NESTED, 4 + n, _IP_ATTRS[fam][0]),
        n,
        tuple_size,
        ip_size,
    )


_LAYOUTS = tuple(_layout(fam) for fam in FAMILIES)  # IPv4 first: the one tried first
# CTA_TUPLE_PROTO { NUM (a byte, padded to 8), SRC_PORT (at 12), DST_PORT }: 28 bytes in either family
_PROTO_HEAD = struct.pack("=HHHH", 28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM)
_SPORT_HEAD = struct.pack("=HH", 6, CTA_PROTO_SRC_PORT)


def _tuple_source(data: bytes, at: int, layout: _Layout) -> bytes | None:
    """Address + port bytes of the source of the tuple whose payload starts at `at`, if laid out as above."""
    starts = data.startswith
    proto = at + layout.proto_at
    if starts(layout.src_head, at) and starts(_PROTO_HEAD, proto) and starts(_SPORT_HEAD, proto + 12):
        return data[at + 8 : at + 8 + layout.address_size] + data[proto + 16 : proto + 18]
    return None


def entry_sources(data: bytes, start: int) -> tuple[bytes, bytes] | None:
    """(original source, reply source) of the entry whose attributes start at `start`, as address + port
    bytes (source_key); None when the entry is not laid out as above (then it is parsed in full)."""
    for layout in _LAYOUTS:
        if data.startswith(layout.orig_head, start):
            if not data.startswith(layout.reply_head, start + layout.tuple_size):
                return None
            orig = _tuple_source(data, start + 4, layout)
            reply = _tuple_source(data, start + layout.tuple_size + 4, layout)
            return None if orig is None or reply is None else (orig, reply)
    return None


def source_key(ip: str, port: int) -> bytes:
    """An endpoint as entry_sources() gives it: 6 bytes for IPv4, 18 for IPv6. Raises OSError for an address
    of neither family, OverflowError for a port past 65535."""
    return socket.inet_pton(family(ip), ip) + port.to_bytes(2, "big")


def _key_family(key: bytes) -> int:
    """The family of a source_key()."""
    return socket.AF_INET if len(key) == 6 else socket.AF_INET6


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

    def ask(
        self,
        msg: int,
        flags: int,
        attrs: bytes,
        parse: Callable[[bytes, int, int], _T | None],
        fam: int = socket.AF_INET,
    ) -> list[_T]:
        """Send one request (IPCTNL_MSG_CT_*) about the conntrack entries of family `fam`; collect what `parse`
        makes of each entry of the answer. Raises OSError with the kernel's errno."""
        msg_type = netlink.subsystem_type(NFNL_SUBSYS_CTNETLINK, msg)
        return self._netlink.request(msg_type, flags, netlink.nfgenmsg(fam) + attrs, parse)

    def get(self, src: str, sport: int, dst: str, dport: int) -> Entry | None:
        """The entry with this exact tuple, in either direction (the kernel looks both up); None if none."""
        attrs = tuple_attr(CTA_TUPLE_ORIG, src, dst, sport, dport)
        try:
            found = self.ask(IPCTNL_MSG_CT_GET, NLM_F_REQUEST, attrs, _entry, family(src))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return found[0] if found else None

    def dump(
        self, *, src: str | None = None, dst: str | None = None, sport: int | None = None, dport: int | None = None
    ) -> list[Entry]:
        """UDP entries whose original tuple matches the given fields: of the addresses' family, of both when
        no address is given. The kernel filters (Linux 5.8+) by protocol, ports and IPv4 addresses; the
        addresses are compared here too, because Linux inverts its IPv6 address match (a dump for one IPv6
        source returns the entries of every other source: ctnetlink_filter_match_tuple tests
        !ipv6_addr_cmp()), so an IPv6 address is never sent as a filter."""
        fam = family_of(src, dst)
        if fam == socket.AF_INET:
            attrs = dump_filter(src, dst, sport, dport)
        else:
            attrs = dump_filter(None, None, sport, dport)
        want_src = None if src is None else canonical(src)
        want_dst = None if dst is None else canonical(dst)

        def parse(data: bytes, start: int, end: int) -> Entry | None:
            entry = _entry(data, start, end)
            if entry is None or want_src not in (None, entry.orig.src) or want_dst not in (None, entry.orig.dst):
                return None
            return entry

        return [e for f in ((fam,) if fam else FAMILIES) for e in self._dump(f, attrs, parse)]

    def dump_counted(self, sources: Collection[bytes] | None = None) -> list[SourceCounts]:
        """The sources and accounting counters (net.netfilter.nf_conntrack_acct) of every UDP entry; with
        `sources` (source_key()s), only of entries whose original or reply source is one of them, and only
        of the families these are of."""

        def parse(data: bytes, start: int, end: int) -> SourceCounts | None:
            found = entry_sources(data, start)
            if sources is not None and found is not None and found[0] not in sources and found[1] not in sources:
                return None
            got = source_counts(data, start, end, found)
            if got is None or sources is None or got.orig_source in sources or got.reply_source in sources:
                return got
            return None

        wanted = FAMILIES if sources is None else {_key_family(key) for key in sources}
        attrs = dump_filter(None, None, None, None)
        return [e for fam in FAMILIES if fam in wanted for e in self._dump(fam, attrs, parse)]

    def _dump(self, fam: int, attrs: bytes, parse: Callable[[bytes, int, int], _T | None]) -> list[_T]:
        """One dump of the UDP entries of one family. The kernel refuses a filtered dump of both families
        (AF_UNSPEC: EOPNOTSUPP), and one unfiltered would carry every TCP and ICMP entry of the router too:
        a dump per family asked for."""
        return self.ask(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, attrs, parse, fam)

    def delete(self, orig: Tuple) -> bool:
        """Delete the entry with this original tuple; False when it was already gone."""
        attrs = tuple_attr(CTA_TUPLE_ORIG, orig.src, orig.dst, orig.sport, orig.dport)
        try:
            self.ask(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, attrs, _entry, family(orig.src))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True
