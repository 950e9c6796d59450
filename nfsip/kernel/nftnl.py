"""nf_tables over netlink: the element changes of one transaction as one batch, and two small reads.

Writes. A pinhole is a few map elements; every SIP message with SDP changes some. A `Change` is one
element change (add, delete or destroy of one element of one set) and a list of them is the one
representation of a transaction: nfsip.kernel.nft plans it from pinholes, and this module sends it as

    NFNL_MSG_BATCH_BEGIN, one message per run of changes of one kind to one set, NFNL_MSG_BATCH_END

which the kernel commits all or nothing. Each message is what libnftables 1.0.6 sends for the same
elements, byte for byte (tests/test_nftnl.py holds captured libnftables bytes), except:
- no NFTA_SET_ELEM_LIST_SET_ID: libnftables sends the id of its cache entry, which the kernel consults
  only for a set created in the same batch; the set is found by name.
- the last element message carries NLM_F_ACK. The kernel reports a failing message whether or not it asked
  for an ack, but it aborts some malformed batches silently; the ack of the last message is the positive
  proof that the batch was committed.
Why not libnftables: it refreshes its cache (generation, tables, chains, sets) before every command, which
made element transactions several times dearer than this batch (docs/performance.md, "Netlink by hand";
bench/engine.py measures both side by side with tests/libnftables_reference.py).

Reads. Whether nfsip's table exists (GETTABLE), and what one chain's rules hold (GETRULE of one chain):
the daemon's check every 5 s that an admin's ruleset load left the table and its queue rule, and the
`sip_queue` counter of every metrics scrape. libnftables fetched every set element of the table first (its
cache), whose cost grows with the number of pinholes; pyroute2 can only dump every rule of the family
(docs/performance.md, "Netlink by hand"). Asked directly, the kernel answers with the one table or chain.

Framing, sockets and acks: nfsip.kernel.netlink.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import netlink
from .netlink import NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST

NFPROTO_INET = 1  # nfsip's table is `table inet`: IPv4 and IPv6 in one

# enum nf_tables_msg_types
NFT_MSG_GETTABLE = 1
NFT_MSG_GETRULE = 7
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
# Linux 6.3 added the DESTROY messages: a delete that is not an error when the element is already gone (the
# kernel expired it). Not in Debian 12's 6.1 headers; the value is its place in enum nf_tables_msg_types,
# and Nft.element_features() asks the running kernel whether it knows it.
NFT_MSG_DESTROYSETELEM = 30

MSG_NAMES = {
    NFT_MSG_NEWSETELEM: "NEWSETELEM",
    NFT_MSG_DELSETELEM: "DELSETELEM",
    NFT_MSG_DESTROYSETELEM: "DESTROYSETELEM",
}

# Attributes of the element messages (NFT_MSG_*SETELEM)
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_LIST_SET_ID = 4  # not sent: see the module docstring
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_TIMEOUT = 4
NFTA_SET_ELEM_USERDATA = 6
NFTA_DATA_VALUE = 1
NFTNL_UDATA_SET_ELEM_COMMENT = 0
NFTNL_UDATA_COMMENT_MAXLEN = 128  # libnftables refuses longer comments; so do we

# Attributes of the table and rule messages (NFT_MSG_GETTABLE, NFT_MSG_GETRULE and their answers)
NFTA_TABLE_NAME = 1
NFTA_RULE_TABLE = 1
NFTA_RULE_CHAIN = 2
NFTA_RULE_EXPRESSIONS = 4
NFTA_EXPR_NAME = 1
NFTA_EXPR_DATA = 2
NFTA_COUNTER_BYTES = 1
NFTA_COUNTER_PACKETS = 2
NFTA_TARGET_NAME = 1  # also NFTA_MATCH_NAME: the xt extension's name in a "target" / "match" expression

_NFGEN = netlink.nfgenmsg(NFPROTO_INET)
_MSG_TYPES = {kind: netlink.subsystem_type(NFNL_SUBSYS_NFTABLES, kind) for kind in MSG_NAMES}
_PORT = struct.Struct("!Hxx")  # inet_service in a concat: network order, padded to a 4-byte register

# -- element changes ---------------------------------------------------------------------------------------

Field = str | int  # an ipv4_addr ("10.0.0.2"), an ipv6_addr ("2001:db8::2") or an inet_service (5060)


class Change(NamedTuple):
    """One element change: add (NLM_F_CREATE without NLM_F_EXCL, so an existing element with the same value
    is refreshed, not refused) or delete the element `key` of set or map `set_name`. `value` only for a
    map add (a delete may carry it, for error messages; the kernel deletes by key); `timeout_ms` and
    `comment` only for an add. `destroy` makes a delete a DESTROYSETELEM (no error for a missing element;
    Linux >= 6.3). (A NamedTuple: built for every element of every SIP message that changes pinholes.)"""

    add: bool
    set_name: str
    key: tuple[Field, ...]
    value: tuple[Field, ...] | None = None
    timeout_ms: int | None = None
    comment: str | None = None
    destroy: bool = False


def element_text(set_name: str, key: tuple[Field, ...], value: tuple[Field, ...] | None) -> str:
    """An element as nft writes it: `media_snat { 10.0.0.2 . 6000 : 198.51.100.1 . 40000 }`."""
    text = " . ".join(str(f) for f in key)
    if value is not None:
        text += " : " + " . ".join(str(f) for f in value)
    return f"{set_name} {{ {text} }}"


_ADDRESSES: dict[str, bytes] = {}  # a daemon sees few distinct addresses (its public ones, its phones)


def _address(text: str) -> bytes:
    """An ipv4_addr (strict dotted quad, as nft parses it) or an ipv6_addr: 4 or 16 bytes, network order."""
    packed = _ADDRESSES.get(text)
    if packed is None:
        packed = socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
        if len(_ADDRESSES) < 4096:
            _ADDRESSES[text] = packed
    return packed


def concat(fields: Sequence[Field]) -> bytes:
    """A key or value of type `ipv4_addr . inet_service ...` (or ipv6_addr) as the kernel's registers hold
    it: each field in whole 4-byte registers (an IPv6 address in four), ports in network order in the first
    2 bytes of theirs (what nft's concat does)."""
    try:
        return b"".join([_PORT.pack(f) if isinstance(f, int) else _address(f) for f in fields])
    except (OSError, TypeError, struct.error) as exc:
        raise ValueError(f"not a concatenation of ipv4_addr / ipv6_addr / inet_service: {fields!r}") from exc


# Encoded attributes, kept across batches: a pinhole's key and value come back in the transaction of its
# call's answer and of its end, and its LAN key is in several maps. Bounded: emptied when full.
_MEMO_LIMIT = 16384
_KEYS: dict[tuple[Field, ...], bytes] = {}
_VALUES: dict[tuple[Field, ...], bytes] = {}
_USERDATA: dict[str, bytes] = {}
_TIMEOUTS: dict[int, bytes] = {}
_PREFIXES: dict[tuple[str, str], bytes] = {}  # (table, set) -> nfgenmsg + table + set attributes


def _remember(memo: dict[Any, bytes], key: Any, attr: bytes) -> bytes:
    """Keep `attr` under `key` in one of the memos above (emptied when full); returns it."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = attr
    return attr


def _data_attr(kind: int, fields: tuple[Field, ...], memo: dict[Any, bytes]) -> bytes:
    """NFTA_SET_ELEM_KEY / NFTA_SET_ELEM_DATA holding NFTA_DATA_VALUE with the concatenation."""
    return _remember(memo, fields, netlink.nested(kind, netlink.attr(NFTA_DATA_VALUE, concat(fields))))


def _timeout(timeout_ms: int) -> bytes:
    """NFTA_SET_ELEM_TIMEOUT (milliseconds, big endian), remembered."""
    return _remember(_TIMEOUTS, timeout_ms, netlink.be64(NFTA_SET_ELEM_TIMEOUT, timeout_ms))


def _userdata(comment: str) -> bytes:
    """NFTA_SET_ELEM_USERDATA as libnftnl writes a comment, remembered: one TLV (type u8, length u8) holding
    the text with its NUL (nftnl_udata_put_strz). Raises ValueError when too long."""
    text = comment.encode() + b"\0"
    if len(text) > NFTNL_UDATA_COMMENT_MAXLEN:
        raise ValueError(f"element comment longer than {NFTNL_UDATA_COMMENT_MAXLEN - 1} bytes: {comment!r}")
    udata = bytes((NFTNL_UDATA_SET_ELEM_COMMENT, len(text))) + text
    return _remember(_USERDATA, comment, netlink.attr(NFTA_SET_ELEM_USERDATA, udata))


def encode_element(change: Change) -> bytes:
    """The NFTA_LIST_ELEM attribute of one change. An addition in libnftables' attribute order: timeout,
    key, data, userdata (concatenations are whole 4-byte registers and the timeout 8 bytes: no padding
    anywhere inside); a deletion or destruction: the key only."""
    add, _set_name, key, value, timeout_ms, comment, _destroy = change
    # Each attribute from its memo, encoded on a miss.
    body = _KEYS.get(key) or _data_attr(NFTA_SET_ELEM_KEY, key, _KEYS)
    if add:
        if timeout_ms is not None:
            body = (_TIMEOUTS.get(timeout_ms) or _timeout(timeout_ms)) + body
        if value is not None:
            body += _VALUES.get(value) or _data_attr(NFTA_SET_ELEM_DATA, value, _VALUES)
        if comment is not None:
            body += _USERDATA.get(comment) or _userdata(comment)
    return netlink.nested(NFTA_LIST_ELEM, body)


# Elements per message. NFTA_SET_ELEM_LIST_ELEMENTS is one netlink attribute, whose length is 16 bits: a
# message of 128 elements (about 100 bytes each with a comment) stays far below 64 KiB.
RUN_MAX = 128


class Message(NamedTuple):
    """One element message of a batch: its type, its set, and its changes (in the order the kernel applies
    them). A run of changes of one kind to one set is one message, as `nft add element t s { a, b, c }`
    sends them: the table and set lookups, and most of the per-message work on both sides, are paid once
    per run."""

    kind: int  # NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM or NFT_MSG_DESTROYSETELEM
    set_name: str
    changes: list[Change]


def messages_of(changes: Sequence[Change]) -> list[Message]:
    """`changes` as messages: each run of consecutive changes of one kind to one set, cut at RUN_MAX."""
    out: list[Message] = []
    current: Message | None = None
    for change in changes:
        add, set_name, _key, _value, _timeout_ms, _comment, destroy = change
        kind = NFT_MSG_NEWSETELEM if add else NFT_MSG_DESTROYSETELEM if destroy else NFT_MSG_DELSETELEM
        if current is None or current.kind != kind or current.set_name != set_name or len(current.changes) == RUN_MAX:
            current = Message(kind, set_name, [])
            out.append(current)
        current.changes.append(change)
    return out


def _prefix(table: str, set_name: str) -> bytes:
    """nfgenmsg and the table and set attributes of an element message."""
    prefix = _PREFIXES.get((table, set_name))
    if prefix is None:
        prefix = _NFGEN + netlink.strz(NFTA_SET_ELEM_LIST_TABLE, table) + netlink.strz(NFTA_SET_ELEM_LIST_SET, set_name)
        _remember(_PREFIXES, (table, set_name), prefix)
    return prefix


def encode_message(message: Message, table: str, seq: int, ack: bool = False) -> bytes:
    """One NEWSETELEM / DELSETELEM / DESTROYSETELEM message."""
    kind, set_name, changes = message
    body = b"".join([encode_element(change) for change in changes])
    flags = NLM_F_REQUEST | NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else NLM_F_REQUEST
    if ack:
        flags |= NLM_F_ACK
    payload = _prefix(table, set_name) + netlink.nested(NFTA_SET_ELEM_LIST_ELEMENTS, body)
    return netlink.message(_MSG_TYPES[kind], flags, seq, payload)


def encode_batch(messages: Sequence[Message], table: str, seq: int, ack_last: bool = True) -> bytes:
    """BATCH_BEGIN (sequence `seq`), the messages (seq+1 ...), BATCH_END. Sequence numbers wrap at 2**32."""
    last = len(messages) - 1
    parts = [netlink.batch_begin(seq, NFNL_SUBSYS_NFTABLES)]
    for i, message in enumerate(messages):
        parts.append(encode_message(message, table, seq + 1 + i, ack_last and i == last))
    parts.append(netlink.batch_end(seq + 1 + len(messages), NFNL_SUBSYS_NFTABLES))
    return b"".join(parts)


class BatchError(OSError):
    """The kernel refused a batch: nothing of it was applied. `errno` is the kernel's, `msg_type` the
    refused message ("NEWSETELEM", "DELSETELEM"; "BATCH" when the commit as a whole failed)."""

    def __init__(self, code: int, msg_type: str, detail: str) -> None:
        super().__init__(code, f"{msg_type} {detail}: {os.strerror(code)}" if detail else os.strerror(code))
        self.msg_type = msg_type

    def __str__(self) -> str:
        return f"{self.strerror} (errno {self.errno})"


def _describe(message: Message) -> str:
    """The elements of one message, as nft would write them (the first few of a long one)."""
    changes = message.changes
    shown = [element_text(message.set_name, c.key, c.value) for c in changes[:3]]
    more = f" and {len(changes) - 3} more in this message" if len(changes) > 3 else ""
    return ", ".join(shown) + more


def check_answers(
    answers: Sequence[netlink.Ack], overrun: bool, messages: Sequence[Message], table: str, begin: int
) -> None:
    """Raise BatchError for the first refused message of the batch starting at sequence `begin`; return
    when the kernel acknowledged the last message without any error."""
    first: tuple[int, int, int] | None = None  # (position in the batch, errno, request type)
    acked = False
    for code, request_type, request_seq in answers:
        position = (request_seq - begin) & 0xFFFFFFFF
        if position > len(messages) + 1:
            continue  # not this batch's
        if code and (first is None or position < first[0]):
            first = (position, code, request_type)
        elif not code and position == len(messages):
            acked = True
    if first is not None:
        position, code, request_type = first
        if 1 <= position <= len(messages):
            name = MSG_NAMES.get(request_type & 0xFF, str(request_type))
            raise BatchError(code, name, _describe(messages[position - 1]))
        raise BatchError(code, "BATCH", f"table {table}")  # the commit as a whole (batch begin / end)
    if overrun:
        raise BatchError(errno_mod.ENOBUFS, "BATCH", f"table {table}: answers lost, the batch failed")
    if not acked:
        raise BatchError(errno_mod.EPROTO, "BATCH", f"table {table}: the kernel did not confirm the batch")


# -- reads -----------------------------------------------------------------------------------------------


class Expr(NamedTuple):
    """One expression of a rule: its name ("counter", "queue", "target", ...), the xt extension's name for
    "target" and "match" ("NFQUEUE"), and a counter's (packets, bytes)."""

    name: str
    xt_name: str | None = None
    counter: tuple[int, int] | None = None


def _expr(data: bytes, start: int, end: int) -> Expr:
    found = netlink.table(data, start, end)
    name = netlink.text(data, found[NFTA_EXPR_NAME]) if NFTA_EXPR_NAME in found else ""
    info = found.get(NFTA_EXPR_DATA)
    if info is None:
        return Expr(name)
    inner = netlink.table(data, *info)
    if name in ("target", "match"):
        xt = inner.get(NFTA_TARGET_NAME)
        return Expr(name, xt_name=netlink.text(data, xt) if xt else None)
    if name == "counter":
        packets, size = inner.get(NFTA_COUNTER_PACKETS), inner.get(NFTA_COUNTER_BYTES)
        return Expr(
            name,
            counter=(
                netlink.read_be64(data, packets) if packets else 0,
                netlink.read_be64(data, size) if size else 0,
            ),
        )
    return Expr(name)


def _rule(data: bytes, start: int, end: int) -> list[Expr]:
    expressions = netlink.table(data, start, end).get(NFTA_RULE_EXPRESSIONS)
    if expressions is None:
        return []
    return [_expr(data, a, b) for kind, a, b in netlink.walk(data, *expressions) if kind == NFTA_LIST_ELEM]


def _found(_data: bytes, _start: int, _end: int) -> bool:
    return True


# -- the socket -----------------------------------------------------------------------------------------


class NftSocket:
    """nf_tables over one netlink socket (nfsip.kernel.netlink.NetlinkSocket): element batches and reads."""

    def __init__(self) -> None:
        self._netlink = netlink.NetlinkSocket(buffer_size=netlink.NetlinkSocket.DEFAULT_BUF)

    def close(self) -> None:
        self._netlink.close()

    def send(self, changes: Sequence[Change], table: str) -> None:
        """Apply `changes` as one transaction. Raises BatchError (nothing applied), OSError (the socket)
        or ValueError (an element nft would refuse too: a bad address or port, a comment too long)."""
        messages = messages_of(changes)
        if not messages:
            return
        begin = self._netlink.next_seq(len(messages) + 2)
        batch = encode_batch(messages, table, begin)
        answers, overrun = self._netlink.send_batch(batch, len(messages))
        check_answers(answers, overrun, messages, table, begin)

    def table_exists(self, table: str) -> bool:
        """Whether `table inet <table>` exists."""
        try:
            return bool(
                self._netlink.request(
                    netlink.subsystem_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETTABLE),
                    NLM_F_REQUEST,
                    _NFGEN + netlink.strz(NFTA_TABLE_NAME, table),
                    _found,
                )
            )
        except OSError as exc:
            if exc.errno == errno_mod.ENOENT:
                return False
            raise

    def chain_rules(self, table: str, chain: str) -> list[list[Expr]]:
        """The expressions of each rule of `chain` in `table inet <table>`, in order ([] when the chain or the
        table does not exist)."""
        body = _NFGEN + netlink.strz(NFTA_RULE_TABLE, table) + netlink.strz(NFTA_RULE_CHAIN, chain)
        try:
            return self._netlink.request(
                netlink.subsystem_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_DUMP, body, _rule
            )
        except OSError as exc:
            if exc.errno == errno_mod.ENOENT:
                return []
            raise
