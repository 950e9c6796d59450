"""A minimal ctnetlink client: get, filtered dump and delete of UDP/IPv4 conntrack entries.

Why not pyroute2 here (measured on this VM, pyroute2 0.9.7, see docs/performance.md):
- a GET by tuple costs about 0.7 ms, a kernel-filtered dump about 10 ms, and decoding costs about
  0.25 ms per entry: its asyncio socket layer and generic attribute codec dominate;
- nfsip asks conntrack once per uncached outbound SIP message and dumps twice per call teardown and
  per new pinhole set; at 50 calls/s py-spy put 90 % of the daemon's time in pyroute2's dump, and SIP
  latency through the queue reached 900 ms (INVITE retransmissions, failed calls).
This module encodes the few attributes nfsip needs with struct and reads the answers on a plain blocking
netlink socket: tens of microseconds per request. It knows UDP over IPv4 only, which is all nfsip asks.
pyroute2 stays in use for everything else (rtnetlink, the compat queue rule).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NLM_F_REQUEST = 0x01
NLM_F_ACK = 0x04
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_FILTER = 25
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_FILTER_ORIG_FLAGS = 1
# Kernel-internal filter flags (net/netfilter/nf_conntrack_netlink.c): which tuple fields must match.
FILTER_IP_SRC = 1 << 0
FILTER_IP_DST = 1 << 1
FILTER_PROTO_NUM = 1 << 3
FILTER_PROTO_SRC_PORT = 1 << 4
FILTER_PROTO_DST_PORT = 1 << 5
IPPROTO_UDP = 17


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


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _tuple_attr(kind: int, src: str | None, dst: str | None, sport: int | None, dport: int | None) -> bytes:
    ip = b""
    if src is not None:
        ip += _attr(CTA_IP_V4_SRC, socket.inet_aton(src))
    if dst is not None:
        ip += _attr(CTA_IP_V4_DST, socket.inet_aton(dst))
    proto = _attr(CTA_PROTO_NUM, bytes([IPPROTO_UDP]))
    if sport is not None:
        proto += _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
    if dport is not None:
        proto += _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    body = _attr(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto)
    return _attr(kind | NLA_F_NESTED, body)


def _attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type (nested flag stripped) -> (payload start, payload end)."""
    found = {}
    off = start
    while off + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        found[kind & 0x3FFF] = (off + 4, off + length)
        off += (length + 3) & ~3
    return found


def _parse_tuple(data: bytes, span: tuple[int, int]) -> Tuple | None:
    top = _attrs(data, *span)
    if CTA_TUPLE_IP not in top or CTA_TUPLE_PROTO not in top:
        return None
    ip = _attrs(data, *top[CTA_TUPLE_IP])
    proto = _attrs(data, *top[CTA_TUPLE_PROTO])
    try:
        src = socket.inet_ntoa(data[ip[CTA_IP_V4_SRC][0] : ip[CTA_IP_V4_SRC][0] + 4])
        dst = socket.inet_ntoa(data[ip[CTA_IP_V4_DST][0] : ip[CTA_IP_V4_DST][0] + 4])
    except KeyError:
        return None  # not IPv4
    sport = struct.unpack_from("!H", data, proto[CTA_PROTO_SRC_PORT][0])[0] if CTA_PROTO_SRC_PORT in proto else 0
    dport = struct.unpack_from("!H", data, proto[CTA_PROTO_DST_PORT][0])[0] if CTA_PROTO_DST_PORT in proto else 0
    return Tuple(src, sport, dst, dport)


class CtNetlink:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(2.0)
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _request(self, msg_type: int, flags: int, attrs: bytes) -> list[Entry]:
        """Send one request; collect the entries it answers with. Raises OSError with the kernel's errno."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        seq = self._seq
        body = struct.pack("!BBH", socket.AF_INET, 0, 0) + attrs
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | msg_type, flags, seq, 0)
        self._sock.send(header + body)
        entries: list[Entry] = []
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        while True:
            data = self._sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, rseq, _pid = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    break
                if rseq == seq:
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, off + 16)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return entries
                    if kind == NLMSG_DONE:
                        return entries
                    if kind & 0xFF == IPCTNL_MSG_CT_NEW:
                        found = _attrs(data, off + 20, off + length)
                        if CTA_TUPLE_ORIG in found and CTA_TUPLE_REPLY in found:
                            orig = _parse_tuple(data, found[CTA_TUPLE_ORIG])
                            reply = _parse_tuple(data, found[CTA_TUPLE_REPLY])
                            if orig is not None and reply is not None:
                                entries.append(Entry(orig, reply))
                        if not dump:
                            return entries  # a GET answers with one message (the ACK follows only if asked)
                off += (length + 3) & ~3

    def get(self, src: str, sport: int, dst: str, dport: int) -> Entry | None:
        """The entry with this exact tuple, in either direction (the kernel looks both up); None if none."""
        try:
            found = self._request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST, _tuple_attr(CTA_TUPLE_ORIG, src, dst, sport, dport))
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return found[0] if found else None

    def dump(
        self, *, src: str | None = None, dst: str | None = None, sport: int | None = None, dport: int | None = None
    ) -> list[Entry]:
        """UDP entries whose original tuple matches the given fields, filtered in the kernel (Linux 5.8+)."""
        flags = FILTER_PROTO_NUM
        flags |= FILTER_IP_SRC if src is not None else 0
        flags |= FILTER_IP_DST if dst is not None else 0
        flags |= FILTER_PROTO_SRC_PORT if sport is not None else 0
        flags |= FILTER_PROTO_DST_PORT if dport is not None else 0
        attrs = _tuple_attr(CTA_TUPLE_ORIG, src, dst, sport, dport)
        attrs += _attr(CTA_FILTER | NLA_F_NESTED, _attr(CTA_FILTER_ORIG_FLAGS, struct.pack("=I", flags)))
        return self._request(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, attrs)

    def delete(self, orig: Tuple) -> bool:
        """Delete the entry with this original tuple; False when it was already gone."""
        try:
            self._request(
                IPCTNL_MSG_CT_DELETE,
                NLM_F_REQUEST | NLM_F_ACK,
                _tuple_attr(CTA_TUPLE_ORIG, orig.src, orig.dst, orig.sport, orig.dport),
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True
