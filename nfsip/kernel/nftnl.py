"""Raw nfnetlink batches for map and set ELEMENTS: the per-message hot path of nfsip.kernel.nft.

libnftables spends 0.24-0.36 ms on the 8 elements of an audio stream, mostly refreshing its cache (a
generation, table, chain and set dump) before every command; the kernel work is a few µs per element
(LAB.md). This module builds the same NFT_MSG_NEWSETELEM / NFT_MSG_DELSETELEM messages libnftables 1.0.6
sends, byte for byte (tests/test_nftnl.py holds captured libnftables bytes), in ONE batch per call:

    NFNL_MSG_BATCH_BEGIN, one message per set and kind of change (Message), NFNL_MSG_BATCH_END

The kernel runs the batch as one transaction: all changes or none. Only socket and struct; the ruleset
itself, the reads and the dry runs stay with libnftables.

Differences from libnftables, both deliberate:
- no NFTA_SET_ELEM_LIST_SET_ID: libnftables sends the id of its cache entry, which the kernel consults
  only for a set created in the same batch; the set is found by name.
- the last element message carries NLM_F_ACK. The kernel reports a failing message whether or not it asked
  for an ack, but it aborts some malformed batches silently; the ack of the last message is the positive
  proof that the batch was committed.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import socket
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error acks without the echoed request payload: the header (seq) is all we need
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000

NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DELSETELEM = 14
# Linux 6.3 added the DESTROY messages: a delete that is not an error when the element is already gone (the
# kernel expired it). Not in Debian 12's 6.1 headers; the value is its place in enum nf_tables_msg_types,
# and Nft.element_features() asks the running kernel whether it knows it.
NFT_MSG_DESTROYSETELEM = 30
NFPROTO_IPV4 = 2

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

MSG_NAMES = {
    NFT_MSG_NEWSETELEM: "NEWSETELEM",
    NFT_MSG_DELSETELEM: "DELSETELEM",
    NFT_MSG_DESTROYSETELEM: "DESTROYSETELEM",
}

_HDR = struct.Struct("=IHHII")  # struct nlmsghdr
_ATTR = struct.Struct("=HH")  # struct nlattr
_ERR = struct.Struct("=iIHHII")  # struct nlmsgerr: error, then the request's nlmsghdr
_BE64 = struct.Struct("!Q")
_PORT = struct.Struct("!Hxx")  # inet_service in a concat: network order, padded to a 4-byte register
_NFGEN_ELEM = struct.pack("=BBH", NFPROTO_IPV4, 0, 0)
_NFGEN_BATCH = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack("!H", NFNL_SUBSYS_NFTABLES)
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _ATTR.pack(size, kind) + payload + _PAD[size & 3]


def _nested(kind: int, payload: bytes) -> bytes:
    return _ATTR.pack(4 + len(payload), kind | NLA_F_NESTED) + payload  # nested payloads are aligned already


def _strz(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


Field = str | int  # an ipv4_addr ("10.0.0.2") or an inet_service (5060)

_IPV4: dict[str, bytes] = {}  # a daemon sees few distinct addresses (its public one, its phones)


def _ipv4(text: str) -> bytes:
    packed = _IPV4.get(text)
    if packed is None:
        packed = socket.inet_pton(socket.AF_INET, text)  # strict dotted quad, as nft parses it
        if len(_IPV4) < 4096:
            _IPV4[text] = packed
    return packed


def concat(fields: Sequence[Field]) -> bytes:
    """A key or value of type `ipv4_addr . inet_service ...` as the kernel's registers hold it: each field
    in its own 4-byte register, ports in network order in the first 2 bytes (what nft's concat does)."""
    try:
        return b"".join([_PORT.pack(f) if isinstance(f, int) else _ipv4(f) for f in fields])
    except (OSError, TypeError, struct.error) as exc:
        raise ValueError(f"not a concatenation of ipv4_addr / inet_service: {fields!r}") from exc


class Change(NamedTuple):
    """One element change, one message of the batch (as libnftables sends one command per element): add
    (NLM_F_CREATE without NLM_F_EXCL, so an existing element with the same value is refreshed, not refused)
    or delete the element `key` of set or map `set_name`. `value` only for a map add; `timeout_ms` and
    `comment` only for an add. `destroy` makes a delete a DESTROYSETELEM (no error for a missing element;
    Linux >= 6.3). (A NamedTuple: built 8 times per SIP message; a frozen dataclass is slower.)"""

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


_ELEMENTS = NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED
_LIST_ELEM = NFTA_LIST_ELEM | NLA_F_NESTED
_KEY = NFTA_SET_ELEM_KEY | NLA_F_NESTED
_VALUE = NFTA_SET_ELEM_DATA | NLA_F_NESTED


def _userdata(comment: str) -> bytes:
    """NFTA_SET_ELEM_USERDATA as libnftnl writes a comment: one TLV (type u8, length u8) holding the text
    with its NUL (nftnl_udata_put_strz)."""
    text = comment.encode() + b"\0"
    if len(text) > NFTNL_UDATA_COMMENT_MAXLEN:
        raise ValueError(f"element comment longer than {NFTNL_UDATA_COMMENT_MAXLEN - 1} bytes: {comment!r}")
    return _attr(NFTA_SET_ELEM_USERDATA, bytes((NFTNL_UDATA_SET_ELEM_COMMENT, len(text))) + text)


# Elements per message. NFTA_SET_ELEM_LIST_ELEMENTS is one netlink attribute, whose length is 16 bits: a
# message of 128 elements (about 100 bytes each with a comment) stays far below 64 KiB.
RUN_MAX = 128

Shown = tuple[tuple[Field, ...], tuple[Field, ...] | None]  # an element's key and value, for error messages


class Message(NamedTuple):
    """One element message of a batch: its type, its set, its elements (NFTA_LIST_ELEM attributes, in the
    order the kernel applies them) and, for an error message, each element's key and value. All of a run
    of changes of one kind to one set go in one message, as `nft add element t s { a, b, c }` sends them:
    the table and set lookups, and most of the per-message work on both sides, are paid once per run."""

    kind: int  # NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM or NFT_MSG_DESTROYSETELEM
    set_name: str
    elements: list[bytes]
    shown: list[Shown]


def messages_of(changes: Sequence[Change]) -> list[Message]:
    """`changes` as messages: each run of consecutive changes of one kind (add, delete, destroy) to one set
    is one message."""
    out: list[Message] = []
    current: Message | None = None
    for change in changes:
        add, set_name, key, value, timeout_ms, comment, destroy = change
        kind = NFT_MSG_NEWSETELEM if add else NFT_MSG_DESTROYSETELEM if destroy else NFT_MSG_DELSETELEM
        if current is None or current.kind != kind or current.set_name != set_name:
            current = Message(kind, set_name, [], [])
            out.append(current)
        if add:
            timeout = None if timeout_ms is None else timeout_attr(timeout_ms)
            userdata = None if comment is None else userdata_attr(comment)
            current.elements.append(add_element(key, value, timeout, userdata))
        else:
            current.elements.append(delete_element(key))
        current.shown.append((key, value))
    return out


# Encoded attributes, kept across batches: a pinhole's key and value come back in the transaction of its
# call's answer and of its end, and its LAN key is in 3 sets. Bounded: emptied when full.
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
    packed = concat(fields)
    return _remember(
        memo, fields, _ATTR.pack(8 + len(packed), kind) + _ATTR.pack(4 + len(packed), NFTA_DATA_VALUE) + packed
    )


def timeout_attr(timeout_ms: int) -> bytes:
    """NFTA_SET_ELEM_TIMEOUT (milliseconds, big endian)."""
    attr = _TIMEOUTS.get(timeout_ms)
    return (
        attr
        if attr is not None
        else _remember(_TIMEOUTS, timeout_ms, _attr(NFTA_SET_ELEM_TIMEOUT, _BE64.pack(timeout_ms)))
    )


def userdata_attr(comment: str) -> bytes:
    """NFTA_SET_ELEM_USERDATA holding the comment (see _userdata). Raises ValueError when too long."""
    attr = _USERDATA.get(comment)
    return attr if attr is not None else _remember(_USERDATA, comment, _userdata(comment))


def add_element(
    key: tuple[Field, ...], value: tuple[Field, ...] | None, timeout: bytes | None, userdata: bytes | None
) -> bytes:
    """The NFTA_LIST_ELEM attribute of an addition, in libnftables' attribute order: timeout, key, data,
    userdata (`timeout` and `userdata` as timeout_attr() and userdata_attr() give them). Concatenations are
    whole 4-byte registers and the timeout 8 bytes: no padding anywhere inside."""
    body = _KEYS.get(key) or _data_attr(_KEY, key, _KEYS)
    if timeout is not None:
        body = timeout + body
    if value is not None:
        body += _VALUES.get(value) or _data_attr(_VALUE, value, _VALUES)
    if userdata is not None:
        body += userdata
    return _ATTR.pack(4 + len(body), _LIST_ELEM) + body


def delete_element(key: tuple[Field, ...]) -> bytes:
    """The NFTA_LIST_ELEM attribute of a deletion or destruction: the key only."""
    body = _KEYS.get(key) or _data_attr(_KEY, key, _KEYS)
    return _ATTR.pack(4 + len(body), _LIST_ELEM) + body


def _prefix(table: str, set_name: str) -> bytes:
    prefix = _PREFIXES.get((table, set_name))
    if prefix is None:
        prefix = _NFGEN_ELEM + _strz(NFTA_SET_ELEM_LIST_TABLE, table) + _strz(NFTA_SET_ELEM_LIST_SET, set_name)
        _remember(_PREFIXES, (table, set_name), prefix)
    return prefix


_MSG_TYPES = {kind: NFNL_SUBSYS_NFTABLES << 8 | kind for kind in MSG_NAMES}


def _encode_message(message: Message, table: str, seq: int, ack: bool) -> bytes:
    """nlmsghdr, nfgenmsg, table, set, the elements."""
    kind, set_name, elements, _shown = message
    prefix = _prefix(table, set_name)
    body = b"".join(elements)
    flags = NLM_F_REQUEST | NLM_F_CREATE if kind == NFT_MSG_NEWSETELEM else NLM_F_REQUEST
    if ack:
        flags |= NLM_F_ACK
    return (
        _HDR.pack(20 + len(prefix) + len(body), _MSG_TYPES[kind], flags, seq, 0)
        + prefix
        + _ATTR.pack(4 + len(body), _ELEMENTS)
        + body
    )


def _split(messages: Sequence[Message]) -> list[Message]:
    """Messages of at most RUN_MAX elements."""
    if all(len(m.elements) <= RUN_MAX for m in messages):
        return list(messages)
    out = []
    for kind, set_name, elements, shown in messages:
        for start in range(0, len(elements), RUN_MAX):
            out.append(Message(kind, set_name, elements[start : start + RUN_MAX], shown[start : start + RUN_MAX]))
    return out


def encode_message(change: Change, table: str, seq: int, ack: bool = False) -> bytes:
    """One NEWSETELEM / DELSETELEM / DESTROYSETELEM holding one element."""
    return _encode_message(messages_of([change])[0], table, seq, ack)


def encode_element(change: Change) -> bytes:
    """The NFTA_LIST_ELEM attribute of `change` alone (for tests: the element as the kernel parses it)."""
    return messages_of([change])[0].elements[0]


def encode_batch(changes: Sequence[Change], table: str, seq: int, ack_last: bool = True) -> bytes:
    """BATCH_BEGIN (sequence `seq`), one message per run of `changes` (seq+1 ...), BATCH_END. Sequence
    numbers wrap at 2**32."""
    return encode_messages(_split(messages_of(changes)), table, seq, ack_last)


def encode_messages(messages: Sequence[Message], table: str, seq: int, ack_last: bool = True) -> bytes:
    """BATCH_BEGIN (sequence `seq`), the messages (seq+1 ...), BATCH_END."""
    last = len(messages) - 1
    parts = [_HDR.pack(20, NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq & 0xFFFFFFFF, 0), _NFGEN_BATCH]
    for i, message in enumerate(messages):
        parts.append(_encode_message(message, table, (seq + 1 + i) & 0xFFFFFFFF, ack_last and i == last))
    parts.append(_HDR.pack(20, NFNL_MSG_BATCH_END, NLM_F_REQUEST, (seq + 1 + len(messages)) & 0xFFFFFFFF, 0))
    parts.append(_NFGEN_BATCH)
    return b"".join(parts)


def parse_acks(data: bytes) -> list[tuple[int, int, int]]:
    """(errno, request type, request seq) of every NLMSG_ERROR in one datagram (errno 0: an ack)."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        size, kind, _flags, _seq, _pid = _HDR.unpack_from(data, offset)
        if size < 16:
            break
        if kind == NLMSG_ERROR and size >= 16 + _ERR.size:
            err, _len, req_type, _req_flags, req_seq, _req_pid = _ERR.unpack_from(data, offset + 16)
            out.append((-err, req_type, req_seq))
        offset += (size + 3) & ~3
    return out


class BatchError(OSError):
    """The kernel refused a batch: nothing of it was applied. `errno` is the kernel's, `msg_type` the
    refused message ("NEWSETELEM", "DELSETELEM"; "BATCH" when the commit as a whole failed)."""

    def __init__(self, code: int, msg_type: str, detail: str) -> None:
        super().__init__(code, f"{msg_type} {detail}: {os.strerror(code)}" if detail else os.strerror(code))
        self.msg_type = msg_type

    def __str__(self) -> str:
        return f"{self.strerror} (errno {self.errno})"


class NfnlSocket:
    """One NETLINK_NETFILTER socket, opened in the network namespace of its first use."""

    DEFAULT_BUF = 1 << 20
    ANSWER_WAIT = 1.0  # seconds; the kernel answers inside sendmsg(), this only bounds a missing answer

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._pid = 0
        self._seq = int.from_bytes(os.urandom(2), "big") << 8  # apart from other sockets' numbers in traces
        self._sndbuf = 0
        self._rcvbuf = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is not None and self._pid != os.getpid():
            # Inherited through fork(): parent and child would read each other's answers. Use our own.
            self._sock.close()
            self._sock = None
        if self._sock is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
            try:
                sock.bind((0, 0))
                sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            except OSError:
                sock.close()
                raise
            self._sock = sock
            self._pid = os.getpid()
            self._sndbuf = self._rcvbuf = 0
            self._size_buffers(self.DEFAULT_BUF, self.DEFAULT_BUF)
        return self._sock

    def _size_buffers(self, sndbuf: int, rcvbuf: int) -> None:
        """A batch goes to the kernel in one sendmsg() (refused beyond the send buffer), and a batch that
        fails may answer with one error per message: size both buffers for the batch, as nft does."""
        assert self._sock is not None
        if sndbuf > self._sndbuf:
            _set_buffer(self._sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
            self._sndbuf = sndbuf
        if rcvbuf > self._rcvbuf:
            _set_buffer(self._sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            self._rcvbuf = rcvbuf

    def send(self, changes: Sequence[Change], table: str) -> None:
        """Apply `changes` as one transaction. Raises BatchError (nothing applied) or OSError (socket)."""
        self.send_messages(messages_of(changes), table)

    def send_messages(self, messages: Sequence[Message], table: str) -> None:
        """Apply `messages` as one transaction. Raises BatchError (nothing applied) or OSError (socket)."""
        messages = _split([m for m in messages if m.elements])
        if not messages:
            return
        sock = self._socket()
        begin = self._seq
        self._seq = (begin + len(messages) + 2) & 0xFFFFFFFF
        batch = encode_messages(messages, table, begin, True)
        if len(batch) + 4096 > self._sndbuf or len(messages) * 1024 > self._rcvbuf:
            self._size_buffers(len(batch) + 65536, len(messages) * 1024 + 65536)
        _drain(sock)  # nothing of an earlier batch may be taken for an answer to this one
        sock.send(batch)
        answers, overrun = _drain(sock)
        if not answers and not overrun and select.select([sock], [], [], self.ANSWER_WAIT)[0]:
            answers, overrun = _drain(sock)
        _check(answers, overrun, messages, table, begin)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # with CAP_NET_ADMIN: beyond net.core.[rw]mem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _drain(sock: socket.socket) -> tuple[list[tuple[int, int, int]], bool]:
    """Every answer waiting on the socket, and whether the kernel dropped some (receive buffer full)."""
    answers: list[tuple[int, int, int]] = []
    overrun = False
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return answers, overrun
        except OSError as exc:
            if exc.errno != errno_mod.ENOBUFS:
                raise
            overrun = True  # reported once; what is still queued is read on
            continue
        answers.extend(parse_acks(data))


def _describe(message: Message) -> str:
    """The elements of one message, as nft would write them (the first few of a long one)."""
    shown = [element_text(message.set_name, key, value) for key, value in message.shown[:3]]
    more = f" and {len(message.shown) - 3} more in this message" if len(message.shown) > 3 else ""
    return ", ".join(shown) + more


def _check(
    answers: list[tuple[int, int, int]],
    overrun: bool,
    messages: Sequence[Message],
    table: str,
    begin: int,
) -> None:
    """Raise for the first refused message of the batch starting at sequence `begin`; return when the
    kernel acknowledged the last message without any error."""
    first: tuple[int, int, int] | None = None  # (position in the batch, errno, request type)
    acked = False
    for code, req_type, req_seq in answers:
        position = (req_seq - begin) & 0xFFFFFFFF
        if position > len(messages) + 1:
            continue  # not this batch's
        if code and (first is None or position < first[0]):
            first = (position, code, req_type)
        elif not code and position == len(messages):
            acked = True
    if first is not None:
        position, code, req_type = first
        if 1 <= position <= len(messages):
            raise BatchError(code, MSG_NAMES.get(req_type & 0xFF, str(req_type)), _describe(messages[position - 1]))
        raise BatchError(code, "BATCH", f"table {table}")  # the commit as a whole (batch begin / end)
    if overrun:
        raise BatchError(errno_mod.ENOBUFS, "BATCH", f"table {table}: answers lost, the batch failed")
    if not acked:
        raise BatchError(errno_mod.EPROTO, "BATCH", f"table {table}: the kernel did not confirm the batch")
