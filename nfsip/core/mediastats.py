"""Per-call media statistics from the kernel's per-flow packet counters (pure bookkeeping).

The daemon samples the conntrack accounting counters of the calls' media flows
(nfsip.kernel.conntrack.read_media_counters, per LAN media endpoint) every few seconds; this module sums
them per call and direction and spots one-way audio: an established call whose packets in one direction
have not moved for `one_way_seconds` (the classic NAT symptom: the far end sends to an address nobody
forwards). Sampling, not per-packet work: Python never sees a media packet.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULTS
from .calls import Call
from .model import Endpoint


@dataclass
class CallMedia:
    call_id: str
    lan_ip: str
    to_lan_packets: int = 0
    to_lan_bytes: int = 0
    from_lan_packets: int = 0
    from_lan_bytes: int = 0
    to_lan_moved: float = 0.0  # when the count last changed (or the call was established)
    from_lan_moved: float = 0.0
    one_way: str = ""  # "" or the silent direction: "to-lan" / "from-lan"


class MediaStats:
    def __init__(self, one_way_seconds: float = DEFAULTS.one_way_seconds) -> None:
        self.one_way_seconds = one_way_seconds
        self.calls: dict[tuple[str, str], CallMedia] = {}

    def update(
        self, calls: list[Call], counters: dict[Endpoint, tuple[int, int, int, int]], now: float
    ) -> list[CallMedia]:
        """Fold a counter sample in; returns the calls that just became one-way."""
        newly_one_way = []
        live = {}
        for call in calls:
            key = (call.call_id, call.lan_ip)
            stats = self.calls.get(key) or CallMedia(call.call_id, call.lan_ip, to_lan_moved=now, from_lan_moved=now)
            totals = [0, 0, 0, 0]
            for binding in call.streams.values():
                for port in binding.lan_ports:
                    sample = counters.get(Endpoint(binding.lan_ip, port))
                    if sample is not None:
                        totals = [a + b for a, b in zip(totals, sample, strict=True)]
            if totals[0] != stats.to_lan_packets:
                stats.to_lan_moved = now
            if totals[2] != stats.from_lan_packets:
                stats.from_lan_moved = now
            stats.to_lan_packets, stats.to_lan_bytes, stats.from_lan_packets, stats.from_lan_bytes = totals
            if not call.confirmed:
                # Ringing is silent by nature; the clock starts when the call is answered.
                stats.to_lan_moved = stats.from_lan_moved = now
            to_silent = now - stats.to_lan_moved >= self.one_way_seconds
            from_silent = now - stats.from_lan_moved >= self.one_way_seconds
            # Both directions silent is a held or idle call, not one-way audio.
            silent = "to-lan" if to_silent and not from_silent else "from-lan" if from_silent and not to_silent else ""
            if silent and not stats.one_way:
                newly_one_way.append(stats)
            stats.one_way = silent
            live[key] = stats
        self.calls = live
        return newly_one_way

    def forget(self, keys: set[tuple[str, str]]) -> None:
        for key in keys:
            self.calls.pop(key, None)

    def get(self, call_id: str, lan_ip: str) -> CallMedia | None:
        return self.calls.get((call_id, lan_ip))
