"""Netlink for nfsip's kernel adapters: socket, nfnetlink message framing, attributes, requests, batches.

Every netlink message nfsip writes by hand goes through this module; its users hold only their own
message types, attribute numbers and what the messages mean:

- nfsip.kernel.nftnl: nf_tables element batches (the pinhole transactions) and reads of one table or chain;
- nfsip.kernel.ctnetlink: conntrack GET, filtered dumps, DELETE;
- nfsip.kernel.queue: the NFQUEUE configuration message on netfilterqueue's own socket.

Why by hand: the libraries measured slow on the paths that run per SIP message. libnftables refreshes its
cache before every command, and pyroute2's generic codec took far longer per element insert and per
conntrack lookup than these few struct calls (docs/performance.md, "Netlink by hand"). The rest of the
kernel work stays with the libraries: libnftables installs and lists the table, pyroute2 speaks rtnetlink
and adds the xt queue rule (nfsip.kernel.netinfo, nfsip.kernel.divert).

Layout (linux/netlink.h, linux/netfilter/nfnetlink.h): every message is a struct nlmsghdr, a struct
nfgenmsg (family, version, resource id), then attributes; an attribute is a struct nlattr (length, type)
and its payload, padded to 4 bytes; a nested attribute's payload is attributes. Integers in nfnetlink
payloads are big-endian; the headers are in host order.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple, TypeVar

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # error acks without the echoed request payload: its header (seq) is all we read
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # an attribute's type without NLA_F_NESTED / NLA_F_NET_BYTEORDER

NFNL_SUBSYS_CTNETLINK = 1
NFNL_SUBSYS_QUEUE = 3
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, port id
ATTR = struct.Struct("=HH")  # struct nlattr: length, type
ERROR = struct.Struct("=iIHHII")  # struct nlmsgerr: -errno, then the request's nlmsghdr
BE16 = struct.Struct("!H")
BE32 = struct.Struct("!I")
BE64 = struct.Struct("!Q")
_NFGENMSG = struct.Struct("!BBH")  # struct nfgenmsg: family, version, resource id (big-endian)
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


def subsystem_type(subsystem: int, message: int) -> int:
    """nlmsg_type of an nfnetlink message: the subsystem in the high byte."""
    return subsystem << 8 | message


def nfgenmsg(family: int, res_id: int = 0) -> bytes:
    """struct nfgenmsg: family, version 0, resource id (big-endian: a queue number, a subsystem)."""
    return _NFGENMSG.pack(family, 0, res_id)


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """nlmsghdr + body (the body's length a multiple of 4: attributes are padded)."""
    return HEADER.pack(16 + len(body), msg_type, flags, seq & 0xFFFFFFFF, 0) + body


# -- attributes, encoding ------------------------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    size = 4 + len(payload)
    return ATTR.pack(size, kind) + payload + _PAD[size & 3]


def nested(kind: int, payload: bytes) -> bytes:
    """A nested attribute around `payload` (attributes, so already padded)."""
    return ATTR.pack(4 + len(payload), kind | NLA_F_NESTED) + payload


def strz(kind: int, text: str) -> bytes:
    """A NUL-terminated string attribute."""
    return attr(kind, text.encode() + b"\0")


def u8(kind: int, value: int) -> bytes:
    return attr(kind, bytes((value,)))


def be16(kind: int, value: int) -> bytes:
    return attr(kind, BE16.pack(value))


def be32(kind: int, value: int) -> bytes:
    return attr(kind, BE32.pack(value))


def be64(kind: int, value: int) -> bytes:
    return attr(kind, BE64.pack(value))


# -- attributes, decoding ------------------------------------------------------------------------------

Span = tuple[int, int]  # (start, end) of a payload in the received buffer: decoding copies nothing


def walk(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type without flags, payload start, payload end) of each attribute of one level, in order (a level
    may repeat a type: the elements of a list)."""
    while start + 4 <= end:
        size, kind = ATTR.unpack_from(data, start)
        if size < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + size
        start += (size + 3) & ~3


def table(data: bytes, start: int, end: int) -> dict[int, Span]:
    """The attribute table of one level: type -> payload span (the last of a repeated type)."""
    return {kind: (a, b) for kind, a, b in walk(data, start, end)}


def text(data: bytes, span: Span) -> str:
    """A string attribute's payload, up to its NUL."""
    return data[span[0] : span[1]].split(b"\0", 1)[0].decode(errors="replace")


def read_be16(data: bytes, span: Span) -> int:
    return BE16.unpack_from(data, span[0])[0]


def read_be64(data: bytes, span: Span) -> int:
    return BE64.unpack_from(data, span[0])[0]


# -- messages, decoding --------------------------------------------------------------------------------


class Ack(NamedTuple):
    """One NLMSG_ERROR: the kernel's errno (0: an ack) and the type and sequence number of the request."""

    errno: int
    request_type: int
    request_seq: int


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, offset, end) of each message in one received datagram. Raises OSError(EPROTO) on a
    malformed header."""
    offset = 0
    while offset + 16 <= len(data):
        size, kind, _flags, seq, _port = HEADER.unpack_from(data, offset)
        if size < 16:
            raise OSError(errno_mod.EPROTO, "malformed netlink message")
        yield kind, seq, offset, offset + size
        offset += (size + 3) & ~3


def acks(data: bytes) -> list[Ack]:
    """Every NLMSG_ERROR in one received datagram."""
    out = []
    for kind, _seq, offset, end in messages(data):
        if kind == NLMSG_ERROR and end - offset >= 16 + ERROR.size:
            code, _len, request_type, _flags, request_seq, _port = ERROR.unpack_from(data, offset + 16)
            out.append(Ack(-code, request_type, request_seq))
    return out


_T = TypeVar("_T")
Parse = Callable[[bytes, int, int], _T | None]  # (buffer, attributes start, end) -> an item, or None


def request(
    sock: socket.socket,
    seq: int,
    msg_type: int,
    flags: int,
    body: bytes,
    parse: Parse[_T] | None = None,
    timeout: float = 5.0,
) -> list[_T]:
    """Send one request (nlmsghdr + `body`) on a blocking socket and read its answer: what
    `parse(data, start, end)` makes of the attributes of each answering message (None: left out), until
    NLMSG_DONE of a dump, the ack asked for with NLM_F_ACK, or the one message of a plain GET. Messages of
    other sequence numbers are skipped. Raises OSError with the kernel's errno, TimeoutError when no answer
    came within `timeout` seconds."""
    sock.send(message(msg_type, flags, seq, body))
    dump = flags & NLM_F_DUMP == NLM_F_DUMP
    out: list[_T] = []
    while True:
        if not select.select([sock], [], [], timeout)[0]:
            raise TimeoutError(errno_mod.ETIMEDOUT, f"no netlink answer within {timeout} s")
        data = sock.recv(1 << 16)
        for kind, msg_seq, offset, end in messages(data):
            if msg_seq != seq & 0xFFFFFFFF:
                continue
            if kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                if code:
                    raise OSError(-code, os.strerror(-code))
                return out
            if kind == NLMSG_DONE:
                return out
            if parse is not None:
                item = parse(data, offset + 20, end)  # after nlmsghdr and nfgenmsg
                if item is not None:
                    out.append(item)
            if not dump and not flags & NLM_F_ACK:
                return out


class NetlinkSocket:
    """One NETLINK_NETFILTER socket, opened in the network namespace of its first use and again after a
    fork (parent and child would otherwise read each other's answers)."""

    DEFAULT_BUF = 1 << 20
    ANSWER_WAIT = 1.0  # seconds; the kernel answers a batch inside send(), this bounds a missing answer

    def __init__(self, timeout: float = 5.0, buffer_size: int = 0) -> None:
        """`timeout`: how long request() waits for an answer; `buffer_size`: send and receive buffers to ask
        for when the socket opens (0: the system's)."""
        self._timeout = timeout
        self._buffer_size = buffer_size
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
            if self._buffer_size:
                self.size_buffers(self._buffer_size, self._buffer_size)
        return self._sock

    def next_seq(self, count: int = 1) -> int:
        """The first of `count` fresh sequence numbers."""
        seq = self._seq
        self._seq = (seq + count) & 0xFFFFFFFF
        return seq

    def request(self, msg_type: int, flags: int, body: bytes, parse: Parse[_T] | None = None) -> list[_T]:
        """One request and its answer (see request())."""
        return request(self._socket(), self.next_seq(), msg_type, flags, body, parse, self._timeout)

    def size_buffers(self, sndbuf: int, rcvbuf: int) -> None:
        """Grow the send and receive buffers to at least these sizes: a batch goes to the kernel in one
        send() (refused beyond the send buffer), and a failed one may answer with an error per message."""
        sock = self._socket()
        if sndbuf > self._sndbuf:
            _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
            self._sndbuf = sndbuf
        if rcvbuf > self._rcvbuf:
            _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
            self._rcvbuf = rcvbuf

    def send_batch(self, batch: bytes, answers_at_most: int) -> tuple[list[Ack], bool]:
        """Send an nfnetlink batch (batch_begin() ... batch_end()) in one send() and collect the answers the
        kernel gave while processing it: the errors, and the acks asked for. Returns them, and whether the
        kernel dropped some (receive buffer full). `answers_at_most`: messages in the batch, for the
        receive buffer."""
        sock = self._socket()
        if len(batch) + 4096 > self._sndbuf or answers_at_most * 1024 > self._rcvbuf:
            self.size_buffers(len(batch) + 65536, answers_at_most * 1024 + 65536)
        _drain(sock)  # nothing of an earlier batch may be taken for an answer to this one
        sock.send(batch)
        answers, overrun = _drain(sock)
        if not answers and not overrun and select.select([sock], [], [], self.ANSWER_WAIT)[0]:
            answers, overrun = _drain(sock)
        return answers, overrun


def batch_begin(seq: int, subsystem: int) -> bytes:
    """NFNL_MSG_BATCH_BEGIN: the messages up to batch_end() are one transaction of `subsystem`."""
    return message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq, nfgenmsg(socket.AF_UNSPEC, subsystem))


def batch_end(seq: int, subsystem: int) -> bytes:
    return message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, nfgenmsg(socket.AF_UNSPEC, subsystem))


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)  # with CAP_NET_ADMIN: beyond net.core.[rw]mem_max
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def _drain(sock: socket.socket) -> tuple[list[Ack], bool]:
    """Every answer waiting on the socket, and whether the kernel dropped some (receive buffer full)."""
    answers: list[Ack] = []
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
        answers.extend(acks(data))
