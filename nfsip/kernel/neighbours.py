"""The LAN hosts' addresses by link-layer address, from the router's neighbour table (ARP and NDP, through
pyroute2): which other addresses a phone has, so that its SDP may name them for its own media (a dual-stack
phone signalling over IPv4 with IPv6 media, an IPv6 phone with a temporary and a stable address).

The table is read again every `max_age` seconds in a thread of its own (a dump costs in proportion to the
whole neighbour table: not on the packet path), and on a miss at once, at most every `retry` seconds: a
phone whose other address the router has not met yet (no IPv6 traffic through the router so far) is found
once it has; until then that address opens nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ..core.addresses import canonical

log = logging.getLogger(__name__)


class Neighbours:
    def __init__(self, clock: Callable[[], float] = time.monotonic, max_age: float = 10.0, retry: float = 1.0) -> None:
        self._clock = clock
        self._max_age = max_age
        self._retry = retry
        # Replaced whole by each read (one reference assignment), so the packet path never sees it half built.
        self._by_ip: dict[str, frozenset[str]] = {}
        self._read_at = float("-inf")
        self._reader: threading.Thread | None = None
        # pyroute2's first import takes about 90 ms (measured in the lab): at start, not on a SIP message.
        import pyroute2  # noqa: F401

    def addresses_of(self, ip: str) -> frozenset[str]:
        """Every address of the host that has `ip` (itself included), or none when the table does not know it."""
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_periodically, name="nfsip-neighbours", daemon=True)
            self._reader.start()
        found = self._by_ip.get(ip)
        if found is None and self._clock() - self._read_at >= self._retry:
            self.refresh()
            found = self._by_ip.get(ip)
        return found or frozenset()

    def _read_periodically(self) -> None:
        while True:
            time.sleep(self._max_age)
            self.refresh()

    def refresh(self) -> None:
        self._read_at = self._clock()
        try:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                entries = ipr.get_neighbours()
        except OSError as exc:
            log.warning("cannot read the neighbour table: %s", exc)
            return
        self._by_ip = group_by_link(
            (entry["ifindex"], entry.get_attr("NDA_LLADDR"), entry.get_attr("NDA_DST")) for entry in entries
        )


def group_by_link(entries: Iterable[tuple[int, str | None, str | None]]) -> dict[str, frozenset[str]]:
    """address -> all addresses with the same link-layer address on the same interface, from (interface
    index, link-layer address, address) triples; entries without a link-layer address (incomplete, failed)
    are left out. A link-layer address with several IPv4 addresses is not one host but several behind one
    interface (a MAC-NAT Wi-Fi extender, a bridge of another router): each of its addresses stands alone."""
    groups: dict[tuple[int, str], set[str]] = {}
    for ifindex, lladdr, address in entries:
        if not lladdr or not address or lladdr == "00:00:00:00:00:00":
            continue
        groups.setdefault((ifindex, lladdr), set()).add(canonical(address))
    by_ip: dict[str, frozenset[str]] = {}
    for addresses in groups.values():
        if sum(1 for a in addresses if ":" not in a) > 1:
            for address in addresses:
                by_ip[address] = frozenset((address,))
            continue
        frozen = frozenset(addresses)
        for address in addresses:
            by_ip[address] = frozen
    return by_ip
