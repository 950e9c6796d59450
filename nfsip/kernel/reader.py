"""Kernel reads that can be slow when the tables are big, off the queue's thread.

With tens of thousands of pinholes, checking that the table and its queue rule are still in place took
about a second through libnftables (which fetched every set with its elements first; now nfsip.kernel.nftnl
asks for the one table and chain), and reading the media counters nearly as long, every 5 s, in the packet
loop's thread: SIP waited behind them, or failed open past a full queue (docs/performance.md, "Netlink by
hand"). Here a thread of its own, with its own netlink
sockets, does those reads when asked; the packet loop asks from its housekeeping and picks the answers up
there. One SimpleQueue each way: nothing the packet path touches, no lock. (The conntrack dump is walked by
the kernel inside recv(), with the GIL released; parsing the answer holds it, so a read of a big conntrack
table still takes a little time from the packet loop.)
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from ..core.model import Endpoint
from .conntrack import read_media_counters
from .nft import Nft

log = logging.getLogger(__name__)

TABLE = "table"  # answer: table_state()
COUNTERS = "counters"  # answer: conntrack.read_media_counters() of the LAN media endpoints asked about

# What table_state() finds.
INSTALLED = "installed"
NO_TABLE = "no-table"
NO_QUEUE_RULE = "no-queue-rule"


def table_state(nft: Nft) -> str:
    """Whether nfsip's table and its queue rule are in place (INSTALLED), or which of them is gone."""
    if not nft.table_exists():
        return NO_TABLE
    return INSTALLED if nft.has_queue_rule() else NO_QUEUE_RULE


class KernelReader:
    def __init__(self, table: str) -> None:
        self._table = table
        self._requests: queue.SimpleQueue[tuple[str, frozenset[Endpoint]] | None] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._asked: set[str] = set()  # the asking thread's own bookkeeping: one request of a kind at a time

    def ask(self, what: str, endpoints: frozenset[Endpoint] = frozenset()) -> None:
        """Request a read (TABLE, or COUNTERS of these LAN media endpoints) unless one of that kind is still
        under way."""
        if what in self._asked:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="nfsip-kernel-reader", daemon=True)
            self._thread.start()
        self._asked.add(what)
        self._requests.put((what, endpoints))

    def answers(self) -> list[tuple[str, Any]]:
        """The reads done since the last call: (kind, value or the exception the read raised)."""
        out = []
        while True:
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                return out
            self._asked.discard(answer[0])
            out.append(answer)

    def close(self) -> None:
        if self._thread is not None:
            self._requests.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def _serve(self) -> None:
        # One for the thread's life: its table reads go through nftnl, so no libnftables cache builds up.
        nft = Nft(self._table)
        while (request := self._requests.get()) is not None:
            what, endpoints = request
            try:
                value: Any = table_state(nft) if what == TABLE else read_media_counters(endpoints)
            except Exception as exc:  # handed to the asking thread, which logs it
                value = exc
            self._answers.put((what, value))
