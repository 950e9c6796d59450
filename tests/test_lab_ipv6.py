"""nfsip on IPv6, through the real kernel path: the lab's dual-stack router (IPv6 routed without NAT) with the
admin's firewall of RFC 6092 (forward policy drop, replies and LAN to WAN accepted) and the one rule nfsip
asks of it (`ct mark & 0x00100000 == 0x00100000 accept`, nfsip admin-rule).

What tests/test_lab_ipv6_infra.py shows breaks there without nfsip (media the far end sends before the
phone does, an inbound call once the registration's conntrack state expired) works here, and what must not
open does not: a hostile SDP, the ports of a call that ended.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import Capture, UdpPacket, media_report, rtp_packets, sip_messages, stop_all
from nfsiplab.kamailio import Kamailio, have_kamailio
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCaller, SippPhone, SippResult

from .corpus import CORPUS, need
from .lab_support import require, require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
RTP_RATE = PCAP_RTP_PACKETS / 7.05
MEDIA_DELAY_MS = 3000
PHONE6 = T.phone_ip6(1)
PHONE6_2 = T.phone_ip6(2)
FAR_END = "wanhost2"  # signals from its first IPv6 address, sends media from its second


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        lab.add_wan_host(FAR_END)
        lab.admin_firewall(nfsip_rule=True)
        yield lab


@pytest.fixture
def kamailio(lab: Lab, tmp_path: Path) -> Iterator[Kamailio]:
    k = Kamailio(lab, fr_timer_ms=3000, fr_inv_timer_ms=30000, workdir=tmp_path / "kamailio").start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def nfsip(lab: Lab) -> Iterator[NfsipDaemon]:
    with NfsipDaemon(lab, log_level="debug") as daemon:
        yield daemon


def far_end_phone(lab: Lab, user: str = "bob") -> SippPhone:
    return SippPhone(
        lab, FAR_END, user=user, registrar=T.SERVER_IP6, media_ip=lab.media_ip6_of(FAR_END), registered_ms=40000
    )


def rtp(packets: list[UdpPacket], src: str, dst: str) -> list[UdpPacket]:
    return [p for p in rtp_packets(packets) if p.src == src and p.dst == dst]


def evidence(captures: dict[str, list[UdpPacket]], results: dict[str, SippResult], daemon: NfsipDaemon) -> str:
    parts = [media_report(captures)]
    parts += [f"--- {name}: {res.describe()[:1500]}" for name, res in results.items()]
    parts.append("--- nfsip log (tail):\n" + daemon.log()[-4000:])
    return "\n".join(parts)


def media_ports(packets: list[UdpPacket], start_line: str) -> list[int]:
    """The m= ports of the SDP of the first SIP message whose start line begins with `start_line`."""
    for p in sip_messages(packets):
        if p.first_line.startswith(start_line):
            msg = parse_message(p.payload)
            assert msg.sdp is not None, p.payload
            return [m.port for m in msg.sdp.media]
    raise AssertionError(f"no {start_line!r} with SDP captured")


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def send_udp6(lab: Lab, node: str, src: str, dst: str, dport: int, payloads: list[bytes], sport: int = 0) -> None:
    code = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        f"s.bind(({src!r}, {sport}))\n"
        f"for p in {payloads!r}:\n"
        f"    s.sendto(p, ({dst!r}, {dport}))\n"
    )
    lab.run(node, [sys.executable, "-c", code])


# ------------------------------------------------------------------------------------------------ calls
def test_ipv6_call_media_both_ways_and_nothing_left_after_bye(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """phone1 calls bob over IPv6 and starts its own RTP only 3 s after the ACK; bob plays RTP at once, from
    another address than his signalling. Through nfsip's pinholes bob's media reaches the phone from the
    first packet (without nfsip the admin's firewall drops it until the phone has sent: the infra test).
    Nothing is rewritten. After the BYE a datagram from outside to the call's media port reaches nothing."""
    far_media = lab.media_ip6_of(FAR_END)
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = far_end_phone(lab).start()
        kamailio.wait_registered("bob")
        caller = SippCaller(
            lab, "phone1", "bob", proxy=T.SERVER_IP6, kind="late_media", media_delay_ms=MEDIA_DELAY_MS
        ).start()
        seen_pinholes = wait_for(lambda: nfsip.status()["pinholes"] == 2, 15)
        result = caller.wait(40)
        bob.kill()
    caps = {"phone1": at_phone.packets(), FAR_END: at_far.packets()}
    report = evidence(caps, {"caller": result}, nfsip)
    assert result.ok and seen_pinholes, report
    phone_sent = rtp(caps["phone1"], PHONE6, far_media)
    received = rtp(caps["phone1"], far_media, PHONE6)
    assert len(phone_sent) >= MIN_RTP and len(received) >= MIN_RTP, report
    early = [p for p in received if p.ts < phone_sent[0].ts]
    assert len(early) >= int(MEDIA_DELAY_MS / 1000 * RTP_RATE * 0.8), report  # the pinhole, not the reply
    # IPv6 without NAT: the INVITE arrives as the phone wrote it.
    sent = next(p for p in sip_messages(caps["phone1"]) if p.first_line.startswith("INVITE "))
    arrived = next(p for p in sip_messages(caps[FAR_END]) if p.first_line.startswith("INVITE "))
    assert parse_message(arrived.payload).body() == parse_message(sent.payload).body(), report
    assert nfsip.metric("nfsip_verdicts_total", outcome="rewritten") == 0, report
    # After the BYE: no pinhole, no conntrack entry of the media, and a probe to the former port is dropped.
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0), report
    (port,) = media_ports(caps["phone1"], "INVITE ")
    assert lab.wait_conntrack_udp_gone(PHONE6, port, timeout=10) == [], report
    with Capture(lab, "phone1", T.HOST_IF) as probe:
        send_udp6(lab, FAR_END, far_media, PHONE6, port, [b"probe"] * 3, sport=40000)
        time.sleep(0.5)
    assert [p for p in probe.packets() if p.payload == b"probe"] == [], report
    assert "call " in nfsip.log() and "ended" in nfsip.log()


def test_registered_ipv6_phone_is_called_after_its_conntrack_state_expired(
    lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon
):
    """alice registers over IPv6; the router's UDP conntrack state of her REGISTER expires (short timeouts
    in the lab's router); bob's INVITE still reaches her through the registration's pinhole, and the call
    has media both ways."""
    lab.conntrack_udp_timeouts(2, 4)
    far_media = lab.media_ip6_of(FAR_END)
    at_phone = Capture(lab, "phone1", T.HOST_IF).start()
    results: dict[str, SippResult] = {}
    try:
        alice = SippPhone(lab, "phone1", user="alice", registrar=T.SERVER_IP6, registered_ms=60000).start()
        assert kamailio.wait_registered("alice") == [f"sip:alice@[{PHONE6}]:5060"]
        assert wait_for(lambda: len(nfsip.status()["registrations"]) == 1, 5), nfsip.log()
        left = lab.wait_conntrack_udp_gone(PHONE6, T.SIP_PORT, timeout=20)
        assert left == [], f"precondition: the SIP flow's conntrack entry did not expire: {left}"
        caller = SippCaller(lab, FAR_END, "alice", proxy=T.SERVER_IP6, media_ip=far_media)
        results["bob calls alice"] = caller.start().wait(40)
        alice.kill()
    finally:
        stop_all([at_phone])
    caps = {"phone1": at_phone.packets()}
    report = evidence(caps, results, nfsip)
    assert results["bob calls alice"].ok, report
    assert len(rtp(caps["phone1"], far_media, PHONE6)) >= MIN_RTP, report
    assert len(rtp(caps["phone1"], PHONE6, far_media)) >= MIN_RTP, report


def test_two_ipv6_phones_on_the_same_ports(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """Two phones, each calling from port 5060 with media on the same port: without NAT each pinhole is
    keyed by its phone's own address, so both calls get their media."""
    far_media = lab.media_ip6_of(FAR_END)
    bob = far_end_phone(lab).start()
    kamailio.wait_registered("bob")
    with Capture(lab, "phone1", T.HOST_IF) as at1, Capture(lab, "phone2", T.HOST_IF) as at2:
        callers = [
            SippCaller(lab, node, "bob", proxy=T.SERVER_IP6, kind="late_media", media_delay_ms=MEDIA_DELAY_MS)
            for node in ("phone1", "phone2")
        ]
        for caller in callers:
            caller.start()
        results = {f"phone{i + 1}": c.wait(40) for i, c in enumerate(callers)}
    bob.kill()
    caps = {"phone1": at1.packets(), "phone2": at2.packets()}
    report = evidence(caps, results, nfsip)
    assert all(r.ok for r in results.values()), report
    for node, ip in (("phone1", PHONE6), ("phone2", PHONE6_2)):
        sent, received = rtp(caps[node], ip, far_media), rtp(caps[node], far_media, ip)
        assert len(sent) >= MIN_RTP and len(received) >= MIN_RTP, report
        assert [p for p in received if p.ts < sent[0].ts], report  # through the pinhole
    assert media_ports(caps["phone1"], "INVITE ") == media_ports(caps["phone2"], "INVITE "), report


def test_dual_stack_phone_ipv4_signalling_ipv6_media(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """The phone's SIP goes over IPv4 (masqueraded, rewritten), its SDP offers its IPv6 address: the media
    pinholes are made at that address (the router knows it is the same host: one link-layer address in its
    neighbour table, learned from the phone's IPv6 traffic), so bob's media gets in before the phone sends."""
    lab.masquerade()
    assert lab.ping("phone1", T.SERVER_IP6)  # the phone's IPv6 traffic: the router meets its address
    far_media = lab.media_ip6_of(FAR_END)
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = far_end_phone(lab).start()
        kamailio.wait_registered("bob")
        caller = SippCaller(
            lab,
            "phone1",
            "bob",
            proxy=T.SERVER_IP,
            media_ip=PHONE6,
            kind="late_media",
            media_delay_ms=MEDIA_DELAY_MS,
        ).start()
        result = caller.wait(40)
        bob.kill()
    caps = {"phone1": at_phone.packets(), FAR_END: at_far.packets()}
    report = evidence(caps, {"caller": result}, nfsip)
    assert result.ok, report
    sent, received = rtp(caps["phone1"], PHONE6, far_media), rtp(caps["phone1"], far_media, PHONE6)
    assert len(sent) >= MIN_RTP and len(received) >= MIN_RTP, report
    assert [p for p in received if p.ts < sent[0].ts], report
    # The SIP was rewritten for IPv4 NAT; the IPv6 media address and port were left as the phone wrote them.
    invite = next(p for p in sip_messages(caps[FAR_END]) if p.first_line.startswith("INVITE "))
    assert f"c=IN IP6 {PHONE6}".encode() in invite.payload, report
    assert media_ports(caps[FAR_END], "INVITE ") == media_ports(caps["phone1"], "INVITE "), report
    assert nfsip.metric("nfsip_verdicts_total", outcome="rewritten") > 0, report


# ------------------------------------------------------------------------------- what must not open
HOSTILE_SDP = "v=0\r\no=- 1 1 IN IP6 {addr}\r\ns=-\r\nc=IN IP6 {addr}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"


def hostile_invite(n: int, addr: str, port: int) -> bytes:
    sdp = HOSTILE_SDP.format(addr=addr, port=port).encode()
    head = (
        f"INVITE sip:bob@[{T.SERVER_IP6}] SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP [{PHONE6}]:5060;branch=z9hG4bK-hostile{n}\r\n"
        f"From: <sip:alice@[{PHONE6}]>;tag=h{n}\r\nTo: <sip:bob@[{T.SERVER_IP6}]>\r\n"
        f"Call-ID: hostile-{n}@x\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@[{PHONE6}]:5060>\r\n"
        f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    )
    return head.encode() + sdp


def test_hostile_ipv6_sdp_opens_nothing(lab: Lab, nfsip: NfsipDaemon):
    """phone1 sends SDP naming phone2's address, the router's own, and its own address with a low port and
    a SIP port: every one passes (SIP is never dropped), none opens a pinhole, each refusal is counted."""
    targets = [(PHONE6_2, 7078), (T.ROUTER_LAN_IP6, 7078), (PHONE6, 22), (PHONE6, 5060)]
    invites = [hostile_invite(n, addr, port) for n, (addr, port) in enumerate(targets)]
    with Capture(lab, T.SERVER, T.HOST_IF) as at_server:
        send_udp6(lab, "phone1", PHONE6, T.SERVER_IP6, 5060, invites, sport=5060)
        time.sleep(1)
    arrived = [p.payload for p in sip_messages(at_server.packets())]
    assert arrived == invites, nfsip.log()  # byte for byte
    assert nfsip.status()["pinholes"] == 0
    assert nfsip.metric("nfsip_policy_refusals_total", reason="foreign-address") == 2, nfsip.metrics()
    assert nfsip.metric("nfsip_policy_refusals_total", reason="media-port") == 2, nfsip.metrics()


# ------------------------------------------------------------------------------------------------- corpus
def corpus_ipv6_messages() -> list[Path]:
    return sorted(p for p in need(CORPUS / "rfc5118").glob("*.dat"))


def test_corpus_ipv6_messages_cross_the_router_both_ways(lab: Lab, nfsip: NfsipDaemon):
    """Every RFC 5118 message (valid, invalid, tolerated), sent over IPv6 from a phone to the server and from
    the server to a phone: each arrives, and byte for byte (without NAT nfsip rewrites nothing)."""
    messages = [p.read_bytes() for p in corpus_ipv6_messages()]
    assert len(messages) >= 10
    lab.remove_admin_firewall()  # inbound messages not answering anything: the firewall would drop them
    with Capture(lab, T.SERVER, T.HOST_IF) as at_server, Capture(lab, "phone1", T.HOST_IF) as at_phone:
        send_udp6(lab, "phone1", PHONE6, T.SERVER_IP6, 5060, messages, sport=5060)
        send_udp6(lab, T.SERVER, T.SERVER_IP6, PHONE6, 5062, messages, sport=5060)
        time.sleep(1)
    out = [p.payload for p in at_server.packets() if p.dport == 5060]
    back = [p.payload for p in at_phone.packets() if p.dport == 5062]
    assert out == messages and back == messages, nfsip.log()[-3000:]
    verdicts = nfsip.verdicts()
    assert sum(verdicts.values()) >= 2 * len(messages), verdicts  # queued, each of them
    assert verdicts.get("rewritten", 0) == 0 and verdicts.get("internal-error", 0) == 0, verdicts


# ----------------------------------------------------------------------------------------------- IPv6 NAT
NPT_PREFIX = "2001:db8:e::/64"  # the LAN prefix 2001:db8:1::/64 as the WAN sees it under NPTv6


def ipv6_nat(lab: Lab, kind: str) -> str:
    """The admin NATs IPv6 too: masquerade to the router's WAN address, or NPTv6 (prefix translation) to
    NPT_PREFIX, routed to the router by the WAN hosts. Returns the phone's public address."""
    if kind == "masquerade":
        rule = f'oifname "{T.ROUTER_WAN_IF}" masquerade'
        public = T.ROUTER_WAN_IP6
    else:
        rule = f'oifname "{T.ROUTER_WAN_IF}" ip6 saddr {T.LAN_NET6} snat ip6 prefix to {NPT_PREFIX}'
        public = PHONE6.replace("2001:db8:1::", "2001:db8:e::")
        for node in (T.SERVER, FAR_END):
            lab.run(node, ["ip", "-6", "route", "add", NPT_PREFIX, "via", T.ROUTER_WAN_IP6])
    lab.nft(
        T.ROUTER,
        "add table ip6 lab_nat6\ndelete table ip6 lab_nat6\n"
        "table ip6 lab_nat6 {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n"
        f"  {rule}\n }}\n}}\n",
    )
    return public


@pytest.mark.parametrize("nat", ["masquerade", "npt"])
def test_ipv6_nat_is_rewritten_like_ipv4(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon, nat: str):
    """Where the admin NATs IPv6, a phone's SIP and SDP are rewritten to its public address and the media
    gets public ports from the range, as for IPv4; the far end's media (from its second address, before
    the phone sends any) reaches the phone."""
    public = ipv6_nat(lab, nat)
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
    report = evidence(caps, {"caller": result}, nfsip)
    assert result.ok, report
    invite = next(p for p in sip_messages(caps[FAR_END]) if p.first_line.startswith("INVITE "))
    msg = parse_message(invite.payload)
    assert msg.sdp is not None and msg.sdp.connection is not None, report
    assert msg.sdp.connection.address == public, report
    (port,) = [m.port for m in msg.sdp.media]
    assert 40000 <= port <= 49999, report
    assert PHONE6.encode() not in msg.body(), report  # the LAN address is gone from the SDP ...
    contact = msg.contacts[0].uri.hostport
    assert contact is not None and contact.host == public, report  # ... and from the Contact
    assert any(v.sent_by.host == public for v in msg.vias), report  # the phone's Via, below Kamailio's
    sent, received = rtp(caps["phone1"], PHONE6, far_media), rtp(caps["phone1"], far_media, PHONE6)
    assert len(sent) >= MIN_RTP and len(received) >= MIN_RTP, report
    assert [p for p in received if p.ts < sent[0].ts], report
    assert [p for p in rtp(caps[FAR_END], public, far_media) if p.sport == port], report
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0), report


def test_ipv6_calls_with_two_workers(lab: Lab, kamailio: Kamailio):
    """workers = 2: the kernel's fanout sends each IPv6 phone's SIP to the worker of its address (::11 to
    worker 1, ::12 to worker 0; nfsip.kernel.fanout), both directions, so each worker sees its phone's whole
    call: both calls get their pinholes and media both ways, the far end's before the phone's."""
    far_media = lab.media_ip6_of(FAR_END)
    bob = far_end_phone(lab).start()
    kamailio.wait_registered("bob")
    with (
        NfsipDaemon(lab, workers=2, log_level="debug") as daemon,
        Capture(lab, "phone1", T.HOST_IF) as at1,
        Capture(lab, "phone2", T.HOST_IF) as at2,
    ):
        callers = [
            SippCaller(lab, node, "bob", proxy=T.SERVER_IP6, kind="late_media", media_delay_ms=MEDIA_DELAY_MS)
            for node in ("phone1", "phone2")
        ]
        for caller in callers:
            caller.start()
        results = {f"phone{i + 1}": c.wait(40) for i, c in enumerate(callers)}
        ended = wait_for(lambda: daemon.status()["pinholes"] == 0, 5)
        log = daemon.log()
    bob.kill()
    caps = {"phone1": at1.packets(), "phone2": at2.packets()}
    report = evidence(caps, results, daemon)
    assert all(r.ok for r in results.values()) and ended, report
    for node, ip in (("phone1", PHONE6), ("phone2", PHONE6_2)):
        sent, received = rtp(caps[node], ip, far_media), rtp(caps[node], far_media, ip)
        assert len(sent) >= MIN_RTP and len(received) >= MIN_RTP, report
        assert [p for p in received if p.ts < sent[0].ts], report
        assert f"phone {ip}; ports 6000->6000,6001->6001" in log, log
