"""The NFQUEUE adapter: netfilterqueue, with its 4016-byte copy limit lifted.

netfilterqueue 1.1.0 caps the copy range at 4016 bytes (a compile-time 4096-byte receive buffer minus
metadata) and reads with that buffer: a longer SIP datagram (a 3 KB INVITE with ICE candidates plus
headers grows past it; an IP-reassembled one may be up to 64 KiB) arrives truncated, and a
`set_payload()` on the truncated copy would truncate the packet on the wire (docs/architecture.md, "Known
limits").

The fix uses the library's own extension points instead of a fork: after `bind()`, one NFQNL_MSG_CONFIG
message on the queue's own netlink socket sets the copy range to 65535 (and the queue flags, see below),
and packets are read through `run_socket()`, which accepts any object with a `recv()` method: ours reads
up to 64 KiB + netlink overhead. libnetfilter_queue parses and answers the rest as before.

Queue flags set here:
- NFQA_CFG_F_FAIL_OPEN: when the queue is full (a stalled daemon), the kernel accepts packets instead
  of dropping them: SIP keeps flowing unchanged rather than being lost.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from . import netlink
from .netlink import NETLINK_NETFILTER, NFNL_SUBSYS_QUEUE, NLM_F_ACK, NLM_F_REQUEST

NFQNL_MSG_CONFIG = 2
NFQA_CFG_PARAMS = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_COPY_PACKET = 2
NFQA_CFG_F_FAIL_OPEN = 0x01

COPY_RANGE = 0xFFFF
# A whole 64 KiB datagram plus the netlink, nfgenmsg and attribute headers of the queue message.
RECV_BUFFER = 0xFFFF + 4096


def config_body(queue_num: int, copy_range: int = COPY_RANGE, flags: int = NFQA_CFG_F_FAIL_OPEN) -> bytes:
    """The body of NFQNL_MSG_CONFIG for `queue_num`: copy whole packets up to copy_range bytes, set `flags`."""
    params = struct.pack("!IB", copy_range, NFQNL_COPY_PACKET)  # struct nfqnl_msg_config_params (packed)
    return (
        netlink.nfgenmsg(socket.AF_UNSPEC, queue_num)  # the resource id is the queue
        + netlink.attr(NFQA_CFG_PARAMS, params)
        + netlink.be32(NFQA_CFG_MASK, flags)
        + netlink.be32(NFQA_CFG_FLAGS, flags)
    )


def configure(fd: int, queue_num: int) -> None:
    """Send the config on the queue's socket (a dup of `fd`: same netlink port) and check the ACK.

    Must run before any packet can be queued (before the divert rules exist): the ACK is read here, so
    nothing else may arrive on the socket in between."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd))
    try:
        seq = 0x4E465350  # arbitrary, recognisable in an strace
        msg_type = netlink.subsystem_type(NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG)
        netlink.request(sock, seq, msg_type, NLM_F_REQUEST | NLM_F_ACK, config_body(queue_num), timeout=2.0)
    except OSError as exc:
        raise OSError(exc.errno, f"NFQUEUE config for queue {queue_num}: {exc.strerror}") from exc
    finally:
        sock.close()


class _LargeReader:
    """What `NetfilterQueue.run_socket()` reads from: recv() ignores the library's 4096 and takes up to
    RECV_BUFFER bytes. Non-blocking, so run_socket() returns when the queue is drained (EAGAIN)."""

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd))
        self._sock.setblocking(False)

    def recv(self, _size: int) -> bytes:
        return self._sock.recv(RECV_BUFFER)

    def close(self) -> None:
        self._sock.close()


class Queue:
    def __init__(self, queue_num: int, callback: Callable[[Any], None], max_len: int = 4096) -> None:
        from netfilterqueue import NetfilterQueue

        self._nfq = NetfilterQueue()
        self._nfq.bind(queue_num, callback, max_len=max_len)
        self.fd = self._nfq.get_fd()
        configure(self.fd, queue_num)
        self._reader = _LargeReader(self.fd)

    def drain(self) -> None:
        """Handle every packet waiting on the queue, then return."""
        try:
            self._nfq.run_socket(self._reader)
        except OSError as exc:
            # ENOBUFS: the kernel dropped messages for us (counted by the kernel); keep going.
            if exc.errno not in (errno.ENOBUFS, errno.EINTR):
                raise

    def close(self) -> None:
        self._reader.close()
        self._nfq.unbind()


PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"


def queue_stats(queue_nums: Iterable[int], path: str = PROC_QUEUES) -> dict[str, int] | None:
    """The kernel's counters of these queues in this network namespace, summed: `enqueued` (packets put on
    the queue: its id_sequence), `queue_dropped` (dropped for a full queue without fail-open) and
    `user_dropped` (dropped on the way to the socket). None when no such queue is bound.

    Packets that fail open (a full queue with NFQA_CFG_F_FAIL_OPEN) or find no listener (`bypass`) are in
    none of these: they are the difference between the divert chain's counter and `enqueued`."""
    wanted = set(queue_nums)
    totals = {"enqueued": 0, "queue_dropped": 0, "user_dropped": 0}
    found = False
    try:
        with open(path) as proc:
            for line in proc:
                fields = line.split()
                # queue_number peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
                if len(fields) >= 8 and fields[0].isdigit() and int(fields[0]) in wanted:
                    found = True
                    totals["queue_dropped"] += int(fields[5])
                    totals["user_dropped"] += int(fields[6])
                    totals["enqueued"] += int(fields[7])
    except OSError:
        return None
    return totals if found else None
