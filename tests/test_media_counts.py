"""Per-call media counts from conntrack entries (nfsip.kernel.conntrack.media_counters): which direction of
an entry is towards the phone, for each way a media flow can start. Entries as ctnetlink reports them for
the lab's addresses (phone 10.0.0.2, router 198.51.100.1, far end 198.51.100.2)."""

from __future__ import annotations

from nfsip.core.model import Endpoint
from nfsip.kernel import ctnetlink, netlink
from nfsip.kernel.conntrack import accounting_enabled, media_counters
from nfsip.kernel.ctnetlink import SourceCounts, source_key

PHONE = Endpoint("10.0.0.2", 6000)
OTHER_PHONE = Endpoint("10.0.0.3", 6000)


def entry(orig: tuple[str, int, str, int], reply: tuple[str, int, str, int], counts: tuple[int, ...]) -> SourceCounts:
    """An entry as ctnetlink gives it: original and reply tuple (src, sport, dst, dport), counters."""
    return SourceCounts(source_key(orig[0], orig[1]), source_key(reply[0], reply[1]), *counts)


# (orig packets, orig bytes, reply packets, reply bytes)
PHONE_STARTED = entry(  # the phone sent first: SNAT by media_snat to public port 40000
    ("10.0.0.2", 6000, "198.51.100.2", 7000), ("198.51.100.2", 7000, "198.51.100.1", 40000), (50, 8600, 40, 6880)
)
FAR_END_STARTED = entry(  # the far end sent first: DNAT by media_dnat from public port 40002
    ("198.51.100.2", 7002, "198.51.100.1", 40002), ("10.0.0.2", 6002, "198.51.100.2", 7002), (30, 5160, 20, 3440)
)
# Two LAN phones through their public ports (a hairpin call through an outside softswitch): phone 10.0.0.2
# sent to 10.0.0.3's public port; DNAT to 10.0.0.3, hairpin SNAT to 10.0.0.2's public port.
HAIRPIN = entry(("10.0.0.2", 6000, "198.51.100.1", 40010), ("10.0.0.3", 6000, "198.51.100.1", 40000), (7, 700, 9, 900))
UNRELATED = entry(  # the phone's DNS lookup, and another host's flow
    ("10.0.0.2", 5353, "198.51.100.53", 53), ("198.51.100.53", 53, "198.51.100.1", 5353), (1, 60, 1, 120)
)


def test_phone_started_flow_counts_its_original_direction_as_from_the_phone():
    assert media_counters([PHONE_STARTED], {PHONE}) == {PHONE: (40, 6880, 50, 8600)}


def test_far_end_started_flow_counts_its_original_direction_as_to_the_phone():
    lan = Endpoint("10.0.0.2", 6002)
    assert media_counters([FAR_END_STARTED], {lan}) == {lan: (30, 5160, 20, 3440)}


def test_hairpin_entry_counts_for_both_phones():
    assert media_counters([HAIRPIN], {PHONE, OTHER_PHONE}) == {
        PHONE: (9, 900, 7, 700),
        OTHER_PHONE: (7, 700, 9, 900),
    }


def test_only_asked_endpoints_and_several_flows_summed():
    # A phone whose media port also talks to a second address (a STUN server, a far end that moved): both
    # flows are its media port's traffic.
    second = entry(
        ("10.0.0.2", 6000, "198.51.100.9", 3478), ("198.51.100.9", 3478, "198.51.100.1", 40000), (2, 40, 2, 60)
    )
    got = media_counters([PHONE_STARTED, second, FAR_END_STARTED, UNRELATED], {PHONE})
    assert got == {PHONE: (42, 6940, 52, 8640)}
    assert media_counters([UNRELATED, FAR_END_STARTED], {PHONE}) == {}
    assert media_counters([], {PHONE}) == {}


def test_accounting_state_is_read_from_its_sysctl(tmp_path):
    sysctl = tmp_path / "nf_conntrack_acct"
    sysctl.write_text("0\n")
    assert accounting_enabled(sysctl) is False
    sysctl.write_text("1\n")
    assert accounting_enabled(sysctl) is True
    assert accounting_enabled(tmp_path / "absent") is None


def _message(orig: tuple[str, int, str, int], reply: tuple[str, int, str, int], extra: bytes = b"") -> bytes:
    """A conntrack entry's attributes as the kernel writes them for a UDP/IPv4 flow: tuples, status,
    timeout, then the accounting counters (packets, bytes) of each direction."""
    a = netlink.attr

    def counters(kind: int, packets: int, size: int) -> bytes:
        body = netlink.be64(ctnetlink.CTA_COUNTERS_PACKETS, packets)
        return netlink.nested(kind, body + netlink.be64(ctnetlink.CTA_COUNTERS_BYTES, size))

    src, sport, dst, dport = orig
    rsrc, rsport, rdst, rdport = reply
    return (
        ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_ORIG, src, dst, sport, dport)
        + extra
        + ctnetlink.tuple_attr(ctnetlink.CTA_TUPLE_REPLY, rsrc, rdst, rsport, rdport)
        + a(3, (0x1BE).to_bytes(4, "big"))  # CTA_STATUS
        + a(7, (30).to_bytes(4, "big"))  # CTA_TIMEOUT
        + counters(ctnetlink.CTA_COUNTERS_ORIG, 50, 8600)
        + counters(ctnetlink.CTA_COUNTERS_REPLY, 40, 6880)
    )


def test_fast_read_of_the_usual_layout_is_the_full_parse():
    """The fixed-offset read of the sources (ctnetlink.entry_sources) gives what the attribute walk gives, and
    an entry laid out otherwise (here an attribute between the tuples) falls back to the walk."""
    orig, reply = ("10.0.0.2", 6000, "198.51.100.2", 7000), ("198.51.100.2", 7000, "198.51.100.1", 40000)
    want = SourceCounts(source_key("10.0.0.2", 6000), source_key("198.51.100.2", 7000), 50, 8600, 40, 6880)
    usual = _message(orig, reply)
    assert ctnetlink.entry_sources(usual, 0) == (want.orig_source, want.reply_source)
    assert ctnetlink.source_counts(usual, 0, len(usual), ctnetlink.entry_sources(usual, 0)) == want
    assert ctnetlink.source_counts(usual, 0, len(usual), None) == want
    unusual = _message(orig, reply, extra=netlink.attr(18, b"\0\0\0\0"))  # e.g. a CTA_ZONE
    assert ctnetlink.entry_sources(unusual, 0) is None
    assert ctnetlink.source_counts(unusual, 0, len(unusual), None) == want
