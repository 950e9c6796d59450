"""Two small reads of nfsip's own table over raw nfnetlink: does the table exist, and what do one chain's
rules hold.

The daemon asks both every 5 s (is the table, and the queue rule in `sip_queue`, still there: an admin's
`nft -f /etc/nftables.conf` can remove them), and every Prometheus scrape reads `sip_queue`'s counter.
Through libnftables each of these fetched every set of the table with its elements first (its cache):
0.7 s of CPU at 20,000 pinholes (bench/scale.py, "table check"). Asked directly, the kernel answers with
the one table or the one chain's few rules: microseconds, whatever the size of the maps. Only socket and
struct; everything else stays with libnftables (nfsip.kernel.nft) and nfsip.kernel.nftnl.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import NamedTuple

# The netlink framing and attribute encoding are nftnl's (the element batches).
from .nftnl import (
    _ATTR,
    _BE64,
    _HDR,
    NETLINK_NETFILTER,
    NFNL_SUBSYS_NFTABLES,
    NFPROTO_IPV4,
    NFTA_LIST_ELEM,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    _strz,
)

NFT_MSG_GETTABLE = 1
NFT_MSG_GETRULE = 7
NLM_F_DUMP = 0x300

NFTA_TABLE_NAME = 1
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTA_TARGET_NAME = 1  # also NFTA_MATCH_NAME: the xt extension's name in a "target" / "match" expression


class Expr(NamedTuple):
    """One expression of a rule: its name ("counter", "queue", "target", ...), the xt extension's name for
    "target" and "match" ("NFQUEUE"), and a counter's (packets, bytes)."""

    name: str
    xt_name: str | None = None
    counter: tuple[int, int] | None = None


def _attrs(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each attribute of one level."""
    out = []
    while start + 4 <= end:
        size, kind = _ATTR.unpack_from(data, start)
        if size < 4:
            break
        out.append((kind & 0x3FFF, start + 4, start + size))
        start += (size + 3) & ~3
    return out


def _text(data: bytes, a: int, b: int) -> str:
    return data[a:b].split(b"\0", 1)[0].decode(errors="replace")


def _expr(data: bytes, start: int, end: int) -> Expr:
    name, info = "", None
    for kind, a, b in _attrs(data, start, end):
        if kind == NFTA_EXPR_NAME:
            name = _text(data, a, b)
        elif kind == NFTA_EXPR_DATA:
            info = (a, b)
    if info is None:
        return Expr(name)
    if name in ("target", "match"):
        found = {k: (a, b) for k, a, b in _attrs(data, *info)}
        xt = found.get(NFTA_TARGET_NAME)
        return Expr(name, xt_name=_text(data, *xt) if xt else None)
    if name == "counter":
        values = {k: _BE64.unpack_from(data, a)[0] for k, a, b in _attrs(data, *info) if b - a == 8}
        return Expr(name, counter=(values.get(NFTA_COUNTER_PACKETS, 0), values.get(NFTA_COUNTER_BYTES, 0)))
    return Expr(name)


def _rule(data: bytes, start: int, end: int) -> list[Expr]:
    for kind, a, b in _attrs(data, start, end):
        if kind == NFTA_RULE_EXPRESSIONS:
            return [_expr(data, x, y) for k, x, y in _attrs(data, a, b) if k == NFTA_LIST_ELEM]
    return []


def _ask(msg_type: int, flags: int, attrs: bytes) -> list[tuple[bytes, int, int]]:
    """One request in this process's network namespace; the (buffer, start, end) of the attributes of each
    message of the answer. Raises OSError with the kernel's errno."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        sock.settimeout(5.0)
        seq = int.from_bytes(os.urandom(4), "big")
        body = struct.pack("=BBH", NFPROTO_IPV4, 0, 0) + attrs
        sock.send(_HDR.pack(16 + len(body), NFNL_SUBSYS_NFTABLES << 8 | msg_type, flags, seq, 0) + body)
        out: list[tuple[bytes, int, int]] = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                size, kind, _flags, msg_seq, _pid = _HDR.unpack_from(data, offset)
                if size < 16:
                    raise OSError(errno.EPROTO, "malformed netlink message")
                if msg_seq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + 16)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return out
                    out.append((data, offset + 20, offset + size))  # after nlmsghdr + nfgenmsg
                    if not flags & NLM_F_DUMP:
                        return out
                offset += (size + 3) & ~3
    finally:
        sock.close()


def table_exists(table: str) -> bool:
    """Whether `table ip <table>` exists."""
    try:
        return bool(_ask(NFT_MSG_GETTABLE, NLM_F_REQUEST, _strz(NFTA_TABLE_NAME, table)))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise


def chain_rules(table: str, chain: str) -> list[list[Expr]]:
    """The expressions of each rule of `chain` in `table ip <table>`, in order ([] when the chain or the
    table does not exist)."""
    attrs = _strz(NFTA_RULE_TABLE, table) + _strz(NFTA_RULE_CHAIN, chain)
    try:
        answers = _ask(NFT_MSG_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, attrs)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
    return [_rule(data, a, b) for data, a, b in answers]
