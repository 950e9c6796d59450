"""One-way audio detection from sampled per-pinhole counters (pure bookkeeping)."""

from __future__ import annotations

from nfsip.core.calls import Call, StreamBinding
from nfsip.core.callstate import CallState
from nfsip.core.mediastats import MediaStats
from nfsip.core.model import Endpoint


def call(confirmed: bool = True) -> Call:
    state = CallState.CONFIRMED if confirmed else CallState.EARLY
    c = Call("c1", "10.0.0.2", "198.51.100.1", created=0.0, state=state)
    c.streams[0] = StreamBinding((6000, 6001), (40000, 40001), ("m0.rtp", "m0.rtcp"), "10.0.0.2", "198.51.100.1")
    return c


def sample(to_lan: int, from_lan: int) -> dict[Endpoint, tuple[int, int, int, int]]:
    return {Endpoint("10.0.0.2", 6000): (to_lan, to_lan * 172, from_lan, from_lan * 172)}


def test_silence_in_one_direction_is_flagged_once():
    stats = MediaStats(one_way_seconds=10)
    c = call()
    assert stats.update([c], sample(0, 0), 0.0) == []
    assert stats.update([c], sample(0, 50), 5.0) == []
    flagged = stats.update([c], sample(0, 100), 10.0)
    assert [s.one_way for s in flagged] == ["to-lan"]
    assert stats.update([c], sample(0, 150), 15.0) == []  # already flagged: not again
    assert stats.get("c1", "10.0.0.2").from_lan_bytes == 150 * 172
    stats.update([c], sample(40, 200), 20.0)
    assert stats.get("c1", "10.0.0.2").one_way == ""  # media came back


def test_hold_and_ringing_are_not_one_way():
    stats = MediaStats(one_way_seconds=10)
    held = call()
    ringing = call(confirmed=False)
    ringing.call_id = "c2"
    for t in (0.0, 20.0, 40.0):
        assert stats.update([held, ringing], sample(0, 0), t) == []
