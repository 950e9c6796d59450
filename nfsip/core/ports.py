"""Public media port allocation (pure: the clock is passed in).

RTP wants an even port and RTCP the next odd one (RFC 3550 §11), so ports are handed out in blocks that
start even. A port whose block was just released is quarantined: a flow on it may still have a conntrack
entry (the kernel keeps the NAT binding in the conntrack entry, not in our map),
and a new call on that port would inherit the old binding.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


class PortsExhausted(RuntimeError):
    pass


@dataclass
class PortAllocator:
    low: int
    high: int
    quarantine_seconds: float = 30.0
    _in_use: set[int] = field(default_factory=set)
    _quarantine: dict[int, float] = field(default_factory=dict)
    _cursor: int = -1

    def __post_init__(self) -> None:
        if self._cursor < 0:
            self._cursor = self.low + (self.low & 1)

    def in_use(self, port: int) -> bool:
        return port in self._in_use

    def _free(self, port: int, now: float) -> bool:
        if port in self._in_use:
            return False
        until = self._quarantine.get(port)
        if until is None:
            return True
        if until <= now:
            del self._quarantine[port]
            return True
        return False

    def _block_free(self, first: int, count: int, now: float) -> bool:
        in_use, quarantine = self._in_use, self._quarantine
        for port in range(first, first + count):
            if port in in_use:
                return False
            if port in quarantine and not self._free(port, now):
                return False
        return True

    def allocate(self, count: int, now: float, preferred: int | None = None) -> int:
        """Reserve `count` consecutive ports and return the first.

        `preferred` (the phone's own port) is taken when its whole block is free and lies inside the
        configured range; otherwise the next free even-aligned block of the range, round robin, so a
        released block is not handed out again sooner than necessary. Public ports never leave the range:
        nfsip's DNAT runs before the admin's, so a pinhole on an arbitrary port could shadow one of the
        admin's own port forwards or a service on the router (WireGuard, say) for the length of a call.
        """
        if preferred is not None and self.low <= preferred and preferred + count - 1 <= self.high:
            if self._block_free(preferred, count, now):
                self._in_use.update(range(preferred, preferred + count))
                return preferred
        if count == 2:
            return self._allocate_pair(now)
        span = self.high - self.low + 1
        first_even = self.low + (self.low & 1)
        candidate = self._cursor
        for _ in range(span // 2 + 1):
            if candidate + count - 1 > self.high:
                candidate = first_even
            if self._block_free(candidate, count, now):
                self._in_use.update(range(candidate, candidate + count))
                self._cursor = candidate + count + ((candidate + count) & 1)
                return candidate
            candidate += 2
        raise PortsExhausted(f"no {count} free consecutive ports in {self.low}-{self.high}")

    def _allocate_pair(self, now: float) -> int:
        """allocate(2, now) past the preferred block, the usual RTP/RTCP request: the same round robin as
        the general loop, written out for a block of two (one per stream of most messages with SDP)."""
        high = self.high
        first_even = self.low + (self.low & 1)
        in_use, quarantine = self._in_use, self._quarantine
        candidate = self._cursor
        for _ in range((high - self.low + 1) // 2 + 1):
            if candidate + 1 > high:
                candidate = first_even
            if (
                candidate not in in_use  # the checks and their side effects in _block_free's order
                and (candidate not in quarantine or self._free(candidate, now))
                and candidate + 1 not in in_use
                and (candidate + 1 not in quarantine or self._free(candidate + 1, now))
            ):
                in_use.add(candidate)
                in_use.add(candidate + 1)
                self._cursor = candidate + 2 + (candidate & 1)
                return candidate
            candidate += 2
        raise PortsExhausted(f"no 2 free consecutive ports in {self.low}-{self.high}")

    def claim(self, port: int) -> None:
        """Mark a port as taken without allocating (state rebuilt from the kernel)."""
        self._in_use.add(port)
        self._quarantine.pop(port, None)

    def release(self, first: int, count: int, now: float) -> None:
        self.release_each(range(first, first + count), now)

    def release_each(self, ports: Iterable[int], now: float) -> None:
        """release(port, 1, now) for each of `ports`."""
        in_use, quarantine = self._in_use, self._quarantine
        until = now + self.quarantine_seconds
        for port in ports:
            if port in in_use:
                in_use.discard(port)
                quarantine[port] = until
