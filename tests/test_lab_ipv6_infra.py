"""The dual-stack lab WITHOUT nfsip: what the IPv6 tests of nfsip stand on, and the breakage they fix.

IPv6 in the lab is routed without NAT (LAN 2001:db8:1::/64 behind the router, the WAN hosts reach it
via the router's WAN address), SIP runs over it through Kamailio and sipp plays RTP over it. With no
firewall a phone's IPv6 call has media both ways. The router admin's firewall (``Lab.admin_firewall``,
RFC 6092's default: forward policy drop, replies and LAN to WAN accepted) then breaks it the way issue
15 describes: the far end's media is dropped until the phone has sent some, and a registered phone's
inbound INVITE is dropped once the router's conntrack state of its REGISTER expired. Each breakage is
shown beside its control (no firewall, or state still alive), so neither assertion holds by accident.

Timing: about 70 s (calls play g711a.pcap for 7.05 s).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import Capture, UdpPacket, iter_sip, media_report, rtp_packets, sip_messages, stop_all
from nfsiplab.kamailio import Kamailio, have_kamailio
from nfsiplab.lab import Lab
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCaller, SippPhone, SippResult

from .lab_support import require, require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
"""A direction "works" when at least 95 % of the 236 played packets arrive."""
RTP_RATE = PCAP_RTP_PACKETS / 7.05
"""Packets per second of one g711a.pcap playback (about 33.5)."""
MEDIA_DELAY_MS = 3000
"""How long the late-media caller waits after the ACK before its own RTP."""
PHONE6 = T.phone_ip6(1)
FAR_END = "wanhost2"
"""The WAN-side UA: signalling from 2001:db8:f::3, media from 2001:db8:f::103 (as gateways do)."""


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=1) as lab:
        lab.add_wan_host(FAR_END)
        yield lab


@pytest.fixture
def kamailio(lab: Lab, tmp_path: Path) -> Iterator[Kamailio]:
    # fr_timer 3 s: an INVITE the firewall drops turns into a 408 within the test's patience.
    k = Kamailio(lab, fr_timer_ms=3000, fr_inv_timer_ms=30000, workdir=tmp_path / "kamailio").start()
    try:
        yield k
    finally:
        k.stop()


def far_end_phone(lab: Lab, user: str = "bob") -> SippPhone:
    """The WAN-side UA, registered over IPv6, answering at once and playing RTP from its media address."""
    return SippPhone(
        lab,
        FAR_END,
        user=user,
        registrar=T.SERVER_IP6,
        media_ip=lab.media_ip6_of(FAR_END),
        registered_ms=40000,
    )


def sip_flow(packets: list[UdpPacket]) -> str:
    return "\n".join(f"  {ts:.3f} {who} {line}" for ts, who, line in iter_sip(packets))


def evidence(captures: dict[str, list[UdpPacket]], results: dict[str, SippResult], kamailio: Kamailio) -> str:
    parts = [media_report(captures)]
    parts += [f"SIP at {name}:\n{sip_flow(pkts)}" for name, pkts in captures.items()]
    parts += [f"--- {name}: {res.describe()[:2000]}" for name, res in results.items()]
    parts.append("--- kamailio routed:\n" + "\n".join(kamailio.routed()[-20:]))
    return "\n".join(parts)


def rtp(packets: list[UdpPacket], src: str, dst: str) -> list[UdpPacket]:
    return [p for p in rtp_packets(packets) if p.src == src and p.dst == dst]


def sdp_connection(packets: list[UdpPacket], start_line: str) -> list[str]:
    """The SDP c= lines of the SIP messages whose start line begins with ``start_line``."""
    out = []
    for p in sip_messages(packets):
        if p.first_line.startswith(start_line):
            body = parse_message(p.payload).body()
            out += [ln for ln in body.decode().splitlines() if ln.startswith("c=")]
    return out


# --------------------------------------------------------------------------- addresses and rules
def test_dual_stack_routed_without_nat_and_the_admin_firewall(lab: Lab) -> None:
    assert lab.ip6_of("phone1") == PHONE6 == "2001:db8:1::11"
    assert lab.ip6_of(T.ROUTER) == T.ROUTER_LAN_IP6 and lab.ip6_of(FAR_END) == T.WAN_HOST2_IP6
    addrs = lab.run("phone1", ["ip", "-6", "addr", "show", "dev", T.HOST_IF]).stdout
    assert f"{PHONE6}/64" in addrs and "tentative" not in addrs, addrs  # no DAD: usable at once
    assert lab.read_sysctl(T.ROUTER, "net.ipv6.conf.all.forwarding") == "1"
    # IPv6 is routed both ways without NAT; IPv4 is as before (the server has no route to 10/8).
    assert lab.ping("phone1", T.SERVER_IP6) and lab.ping(T.SERVER, PHONE6)
    assert lab.ping(FAR_END, PHONE6) and lab.ping("phone1", lab.media_ip6_of(FAR_END))
    assert not lab.ping(T.SERVER, T.phone_ip(1))

    lab.admin_firewall()
    lab.admin_firewall()  # idempotent
    rules = lab.run(T.ROUTER, ["nft", "list", "table", "inet", "filter"]).stdout
    assert "policy drop" in rules and "ct mark" not in rules, rules
    assert lab.ping("phone1", T.SERVER_IP6)  # LAN to WAN, and the reply
    assert not lab.ping(T.SERVER, PHONE6)  # unsolicited from the WAN
    assert lab.admin_firewall_dropped() == 1

    lab.admin_firewall(nfsip_rule=True)
    rules = lab.run(T.ROUTER, ["nft", "list", "table", "inet", "filter"]).stdout
    assert rules.count("ct mark & 0x00100000 == 0x00100000 accept") == 1, rules
    assert lab.admin_firewall_dropped() == 0  # a fresh table
    assert not lab.ping(T.SERVER, PHONE6)  # the mark rule alone lets nothing in

    lab.remove_admin_firewall()
    lab.remove_admin_firewall()  # no error when absent
    assert lab.ping(T.SERVER, PHONE6)

    lab.conntrack_udp_timeouts(3, 4)
    assert lab.read_sysctl(T.ROUTER, "net.netfilter.nf_conntrack_udp_timeout") == "3"
    assert lab.read_sysctl(T.ROUTER, "net.netfilter.nf_conntrack_udp_timeout_stream") == "4"
    # Per namespace: the server keeps the defaults.
    assert lab.read_sysctl(T.SERVER, "net.netfilter.nf_conntrack_udp_timeout_stream") == "120"


def test_ipv6_datagrams_are_read_from_captures_reassembled_and_checked(lab: Lab) -> None:
    big = bytes(range(256)) * 12  # 3072 bytes: three IPv6 fragments on a 1500-byte link
    send = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.sendto({big!r}, ('{T.SERVER_IP6}', 7000))\n"
        f"s.sendto(b'small', ('{T.SERVER_IP6}', 7000))\n"
    )
    with Capture(lab, T.SERVER, T.HOST_IF) as cap:
        lab.run("phone1", [sys.executable, "-c", send])
    got = [(p.src, p.dst, p.dport, p.payload, p.checksum_ok) for p in cap.packets()]
    assert got == [(PHONE6, T.SERVER_IP6, 7000, big, True), (PHONE6, T.SERVER_IP6, 7000, b"small", True)]


# ------------------------------------------------------------------------------- calls over IPv6
def test_ipv6_call_through_kamailio_media_both_ways_without_firewall(lab: Lab, kamailio: Kamailio) -> None:
    """phone1 calls bob on the WAN over IPv6 through Kamailio; no NAT, no firewall: the SDP arrives
    as the phone wrote it and media flows both ways, bob's from its second address."""
    far_media = lab.media_ip6_of(FAR_END)
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = far_end_phone(lab).start()
        assert kamailio.wait_registered("bob") == [f"sip:bob@[{T.WAN_HOST2_IP6}]:5060"]
        caller = SippCaller(lab, "phone1", "bob", proxy=T.SERVER_IP6).start()
        assert caller.ip == PHONE6  # the local address follows the proxy's family
        result = caller.wait(40)
        bob.kill()
    caps = {"phone1": at_phone.packets(), FAR_END: at_far.packets()}
    report = evidence(caps, {"caller": result}, kamailio)
    assert result.ok, report
    assert len(rtp(caps["phone1"], far_media, PHONE6)) >= MIN_RTP, report
    assert len(rtp(caps[FAR_END], PHONE6, far_media)) >= MIN_RTP, report
    assert sdp_connection(caps[FAR_END], "INVITE ") == [f"c=IN IP6 {PHONE6}"], report
    assert sdp_connection(caps["phone1"], "SIP/2.0 200") == [f"c=IN IP6 {far_media}"], report
    assert all(p.src in (PHONE6, T.SERVER_IP6) for p in sip_messages(caps["phone1"])), report
    assert kamailio.routed(rf"RQ INVITE .* from {PHONE6}:5060"), report


def test_dual_stack_phone_ipv4_signalling_ipv6_media(lab: Lab, kamailio: Kamailio) -> None:
    """A dual-stack phone: its SIP goes over IPv4 (masqueraded), its SDP offers c=IN IP6. Kamailio
    relays the INVITE to bob over IPv6; the media runs over IPv6 both ways, routed, not NATed."""
    lab.masquerade()
    far_media = lab.media_ip6_of(FAR_END)
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = far_end_phone(lab).start()
        kamailio.wait_registered("bob")
        caller = SippCaller(lab, "phone1", "bob", proxy=T.SERVER_IP, media_ip=PHONE6).start()
        result = caller.wait(40)
        bob.kill()
    caps = {"phone1": at_phone.packets(), FAR_END: at_far.packets()}
    report = evidence(caps, {"caller": result}, kamailio)
    assert result.ok, report
    invites_sent = [p for p in sip_messages(caps["phone1"]) if p.first_line.startswith("INVITE ")]
    assert invites_sent and all(p.src == T.phone_ip(1) for p in invites_sent), report
    assert sdp_connection(caps[FAR_END], "INVITE ") == [f"c=IN IP6 {PHONE6}"], report
    assert len(rtp(caps["phone1"], far_media, PHONE6)) >= MIN_RTP, report
    assert len(rtp(caps[FAR_END], PHONE6, far_media)) >= MIN_RTP, report


@pytest.mark.parametrize("firewall", [False, True], ids=["no-firewall", "admin-firewall"])
def test_far_end_media_waits_for_the_phone_to_send_first(lab: Lab, kamailio: Kamailio, firewall: bool) -> None:
    """bob answers and plays RTP at once; phone1 starts its own RTP 3 s after the ACK. Without a
    firewall bob's media reaches the phone from the start. With the admin firewall none of it does
    until the phone's first packet made a conntrack entry whose reply bob's media then is: the
    breakage of issue 15 (a phone that listens before it talks hears nothing)."""
    if firewall:
        lab.admin_firewall()
    far_media = lab.media_ip6_of(FAR_END)
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = far_end_phone(lab).start()
        kamailio.wait_registered("bob")
        caller = SippCaller(
            lab, "phone1", "bob", proxy=T.SERVER_IP6, kind="late_media", media_delay_ms=MEDIA_DELAY_MS
        ).start()
        result = caller.wait(40)
        bob.kill()
    caps = {"phone1": at_phone.packets(), FAR_END: at_far.packets()}
    report = evidence(caps, {"caller": result}, kamailio)
    assert result.ok, report
    phone_sent = rtp(caps["phone1"], PHONE6, far_media)
    assert len(phone_sent) >= MIN_RTP, report
    first_sent = phone_sent[0].ts
    bob_sent_before = [p for p in rtp(caps[FAR_END], far_media, PHONE6) if p.ts < first_sent]
    received = rtp(caps["phone1"], far_media, PHONE6)
    received_before = [p for p in received if p.ts < first_sent]
    early = int(MEDIA_DELAY_MS / 1000 * RTP_RATE * 0.8)
    assert len(bob_sent_before) >= early, report  # bob did talk first
    if not firewall:
        assert len(received_before) >= early and len(received) >= MIN_RTP, report
        return
    assert received_before == [], report
    # Once the phone has sent, the rest of bob's playback comes in.
    assert len(received) >= int((7.05 - MEDIA_DELAY_MS / 1000 - 0.5) * RTP_RATE * 0.9), report
    assert lab.admin_firewall_dropped() >= len(bob_sent_before), report


def test_inbound_invite_dropped_once_the_registration_state_expired(lab: Lab, kamailio: Kamailio) -> None:
    """alice registers over IPv6 behind the admin firewall. While the router still has the REGISTER's
    conntrack entry, Kamailio's INVITE to her is its reply and gets through; once the entry expired
    (short UDP timeouts in the router), the same INVITE is unsolicited and dropped. Without the
    firewall it reaches her again: the firewall, not the registration, is what broke the call."""
    lab.admin_firewall()
    lab.conntrack_udp_timeouts(2, 4)
    at_phone = Capture(lab, "phone1", T.HOST_IF).start()
    at_wan = Capture(lab, T.ROUTER, T.ROUTER_WAN_IF).start()
    results: dict[str, SippResult] = {}

    def call(name: str) -> SippResult:
        caller = SippCaller(lab, FAR_END, "alice", proxy=T.SERVER_IP6, pause_ms=1000)
        results[name] = caller.start().wait(40)
        return results[name]

    try:
        alice = SippPhone(lab, "phone1", user="alice", registrar=T.SERVER_IP6, registered_ms=60000).start()
        assert kamailio.wait_registered("alice") == [f"sip:alice@[{PHONE6}]:5060"]
        assert call("while the state lives").ok
        left = lab.wait_conntrack_udp_gone(PHONE6, T.SIP_PORT, timeout=20)
        assert left == [], f"precondition: the SIP flow's conntrack entry did not expire: {left}"
        dropped = lab.admin_firewall_dropped()
        expired_at = time.time()
        assert not call("after the state expired").ok
        firewall_removed_at = time.time()
        assert lab.admin_firewall_dropped() > dropped
        lab.remove_admin_firewall()
        assert call("without the firewall").ok
        assert len(alice.received("^INVITE ")) == 2
        alice.kill()
    finally:
        stop_all([at_phone, at_wan])
    caps = {"phone1": at_phone.packets(), "router wan0": at_wan.packets()}
    report = evidence(caps, results, kamailio)
    # The dropped INVITE (with Kamailio's retransmissions) came to the router, never to the phone.
    dropped_calls = {
        call_id(p) for p in invites(caps["router wan0"], PHONE6) if expired_at < p.ts < firewall_removed_at
    }
    reached_phone = {call_id(p) for p in invites(caps["phone1"], PHONE6)}
    assert len(dropped_calls) == 1 and len(reached_phone) == 2, report
    assert not dropped_calls & reached_phone, report


def invites(packets: list[UdpPacket], dst: str) -> list[UdpPacket]:
    return [p for p in sip_messages(packets) if p.first_line.startswith("INVITE ") and p.dst == dst]


def call_id(packet: UdpPacket) -> str:
    header = parse_message(packet.payload).header("call-id")
    assert header is not None, packet.payload
    return header.value
