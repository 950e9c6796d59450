"""Who sent the first datagram of a new outbound SIP flow.

At postrouting srcnat+10 the conntrack entry of a flow's first packet is still unconfirmed (confirmation
is the last thing postrouting does), so ctnetlink answers ENOENT for it: an INVITE or REGISTER opening a
flow would go out unrewritten. The ruleset therefore queues that first datagram once more, earlier, at
postrouting priority mangle (`ct status ! confirmed`, before source NAT) where its source is still the
LAN host.
The daemon notes payload -> sender there and looks the same bytes up when the packet comes back after
NAT. Source NAT never changes the UDP payload, so the bytes identify the packet; SIP payloads of two
different hosts are never byte-identical (Via branch, Call-ID, tags).
"""

from __future__ import annotations

from collections import OrderedDict

from ..core.model import Endpoint

_SECONDS = 2.0
_LIMIT = 1024


class FirstPackets:
    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[int, int], tuple[Endpoint, float]] = OrderedDict()

    def note(self, payload: bytes, sender: Endpoint, now: float) -> None:
        key = (hash(payload), len(payload))
        self._seen.pop(key, None)
        self._seen[key] = (sender, now + _SECONDS)
        while len(self._seen) > _LIMIT:
            self._seen.popitem(last=False)

    def sender(self, payload: bytes, now: float) -> Endpoint | None:
        entry = self._seen.pop((hash(payload), len(payload)), None)
        if entry is None or entry[1] < now:
            return None
        return entry[0]
