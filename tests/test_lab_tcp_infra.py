"""The TCP and TLS lab WITHOUT nfsip: what the SIP-over-TCP tests of nfsip stand on (issue 16), and
the breakage they fix.

sipp runs every lab scenario over TCP (``transport="t1"``: one connection, ``"tn"``: one per call),
Kamailio is registrar and proxy over TCP as well as UDP, and a TLS stand-in registrar (``nfsiplab.tls``)
takes a phone's REGISTER on 5061. Through the router's plain masquerade a TCP call breaks the way the
issue measured: the server receives the phone's private address in the SDP and none of its RTP reaches
the phone, beside a control call over the routed IPv6 path with media both ways. A phone registered
over TCP is called over its own connection while that lives (no NAT: IPv6); behind masquerade its
private Contact fails at once (477) unless Kamailio's nathelper reuses the connection; and once
Kamailio closed the idle connection (short ``tcp_connection_lifetime``) it opens a new one to the
Contact. TLS crosses the masquerade as opaque bytes: handshake, one REGISTER, its 200 OK.

Timing: about 130 s (calls play g711a.pcap for 7.05 s).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsiplab import topology as T
from nfsiplab.capture import Capture, UdpPacket, media_report, rtp_packets, sip_messages, stop_all
from nfsiplab.kamailio import TCP_CONNECTION_LIFETIME_S, Kamailio, have_kamailio
from nfsiplab.lab import Lab
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCaller, SippPhone, SippResult, SippUac, SippUas
from nfsiplab.tls import TLS_PORT, TlsPhone, TlsRegistrar

from .lab_support import require, require_lab, require_tool

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
"""A direction "works" when at least 95 % of the 236 played packets arrive."""
PHONE = T.phone_ip(1)
PHONE6 = T.phone_ip6(1)
FAR_END = "wanhost2"
"""The WAN-side UA that calls the phones and answers their calls."""
SHORT_CALL_MS = 2000
"""Pause of a call whose media is not looked at."""


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")
    require_tool("openssl", "openssl")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        lab.add_wan_host(FAR_END)
        yield lab


def make_kamailio(
    lab: Lab, tmp_path: Path, *, nat_helper: bool = False, lifetime_s: int = TCP_CONNECTION_LIFETIME_S
) -> Kamailio:
    """Kamailio on UDP and TCP; fr_timer 3 s: a branch that never answers becomes a 408 in the test's patience."""
    return Kamailio(
        lab,
        tcp=True,
        tcp_connection_lifetime_s=lifetime_s,
        nat_helper=nat_helper,
        fr_timer_ms=3000,
        fr_inv_timer_ms=30000,
        workdir=tmp_path / "kamailio",
    )


@pytest.fixture
def kamailio(lab: Lab, tmp_path: Path) -> Iterator[Kamailio]:
    k = make_kamailio(lab, tmp_path).start()
    try:
        yield k
    finally:
        k.stop()


def rtp(packets: list[UdpPacket], src: str, dst: str) -> list[UdpPacket]:
    return [p for p in rtp_packets(packets) if p.src == src and p.dst == dst]


def sdp_connection(message: str) -> list[str]:
    return [line for line in message.splitlines() if line.startswith("c=")]


def evidence(captures: dict[str, list[UdpPacket]], results: dict[str, SippResult], kamailio: Kamailio | None) -> str:
    parts = [media_report(captures)]
    parts += [f"--- {name}: {res.describe()[:2000]}" for name, res in results.items()]
    if kamailio is not None:
        parts.append("--- kamailio routed:\n" + "\n".join(kamailio.routed()[-20:]))
        parts.append("--- kamailio log tail:\n" + kamailio.log()[-2000:])
    return "\n".join(parts)


def tcp_conntrack(lab: Lab, port: int, family: str = "ipv4") -> list[str]:
    """The router's TCP conntrack entries of ``family`` ("ipv4", "ipv6") with ``port`` on either side."""
    out = lab.run(T.ROUTER, ["conntrack", "-L", "-f", family, "-p", "tcp"], check=False).stdout
    return [line for line in out.splitlines() if f"port={port} " in line]


# ----------------------------------------------------------------------------------- calls over TCP
@pytest.mark.parametrize("transport", ["t1", "tn"])
def test_tcp_call_through_masquerade_loses_the_media_to_the_phone(lab: Lab, transport: str) -> None:
    """phone1 calls the server's UAS over TCP through the admin's plain masquerade, and at the same
    time phone2 calls it over IPv6 (routed, no NAT) as the control. Both calls succeed; the IPv4 one
    delivers the phone's private address in Via, Contact and SDP, so the server's RTP goes nowhere
    (ENETUNREACH) and none reaches phone1, while phone1's RTP reaches the server. The IPv6 call has
    media both ways. No SIP travels over UDP."""
    lab.masquerade()
    phone2_6 = T.phone_ip6(2)
    caps = {
        "phone1": Capture(lab, "phone1", T.HOST_IF).start(),
        "phone2": Capture(lab, "phone2", T.HOST_IF).start(),
        "server": Capture(lab, T.SERVER, T.HOST_IF).start(),
    }
    uas = SippUas(lab, transport=transport, trace_msg=True).start()
    uas6 = SippUas(lab, ip=T.SERVER_IP6, media_port=6010, transport=transport, trace_msg=True).start()
    try:
        uac = SippUac(lab, "phone1", transport=transport).start()
        uac6 = SippUac(lab, "phone2", server=T.SERVER_IP6, transport=transport).start()
        time.sleep(1.0)
        server_peers = [peer for _local, peer in uas.tcp_connections()]
        results = {"uac": uac.wait(30), "uac6": uac6.wait(30), "uas": uas.wait(10), "uas6": uas6.wait(10)}
    finally:
        stop_all(caps.values())
        for sipp in (uas, uas6):
            if sipp.returncode is None:
                sipp.stop()
    packets = {name: cap.packets() for name, cap in caps.items()}
    report = evidence(packets, results, None) + f"\nserver's TCP peers during the call: {server_peers}"
    assert all(res.ok for res in results.values()), report

    invite = uas.received_messages("^INVITE ")
    assert len(invite) == 1, report
    assert f"Via: SIP/2.0/TCP {PHONE}:" in invite[0] and f"Contact: <sip:phone@{PHONE}:" in invite[0], invite[0]
    assert ";transport=tcp>" in invite[0], invite[0]
    assert sdp_connection(invite[0]) == [f"c=IN IP4 {PHONE}"], invite[0]
    # The server's connection comes from the router's public address (t1: from the phone's SIP port,
    # kept by the masquerade; tn: from the call's ephemeral port).
    assert server_peers and all(peer.startswith(f"{T.ROUTER_WAN_IP}:") for peer in server_peers), report
    if transport == "t1":
        assert server_peers == [f"{T.ROUTER_WAN_IP}:{T.SIP_PORT}"], report
    assert "Network is unreachable" in results["uas"].stderr, report
    assert rtp(packets["phone1"], T.SERVER_IP, PHONE) == [], report
    assert len(rtp(packets["server"], T.ROUTER_WAN_IP, T.SERVER_IP)) >= MIN_RTP, report

    invite6 = uas6.received_messages("^INVITE ")
    assert len(invite6) == 1 and sdp_connection(invite6[0]) == [f"c=IN IP6 {phone2_6}"], report
    assert len(rtp(packets["phone2"], T.SERVER_IP6, phone2_6)) >= MIN_RTP, report
    assert len(rtp(packets["server"], phone2_6, T.SERVER_IP6)) >= MIN_RTP, report
    assert all(sip_messages(pkts) == [] for pkts in packets.values()), report


CALL_KINDS = {
    "call": "answer",
    "cancel": "ring",
    "rejected": "busy",
    "nomedia": "nomedia",
    "hold": "hold",
    "video": "video",
    "late_media": "answer",
}
"""Each caller scenario with the callee scenario that answers it."""


@pytest.mark.parametrize("kind", CALL_KINDS)
def test_every_call_scenario_over_tcp_through_kamailio(lab: Lab, kamailio: Kamailio, kind: str) -> None:
    """bob on the far end registers over TCP and answers with the callee scenario; phone1 calls him
    over TCP through Kamailio with the caller scenario (IPv6: routed, no NAT, so media is not lost on
    the way). Every request reaches bob over TCP with the Contact's ``;transport=tcp``, the calls end
    as the scenarios expect, and where there is media it flows both ways."""
    far6 = T.WAN_HOST2_IP6
    with Capture(lab, FAR_END, T.HOST_IF) as at_far:
        bob = SippPhone(
            lab, FAR_END, user="bob", registrar=T.SERVER_IP6, answer=CALL_KINDS[kind], transport="t1"
        ).start()
        assert kamailio.wait_registered("bob") == [f"sip:bob@[{far6}]:5060;transport=tcp"]
        pause = 3000 if kind == "cancel" else 8000
        caller = SippCaller(lab, "phone1", "bob", kind=kind, proxy=T.SERVER_IP6, transport="t1", pause_ms=pause)
        result = caller.start().wait(60)
        bob.kill()
    packets = {FAR_END: at_far.packets()}
    report = evidence(packets, {"caller": result}, kamailio) + f"\nbob received: {bob.received()}"
    assert result.ok, report
    requests = [line for line in bob.received() if not line.startswith("SIP/2.0")]
    assert requests and requests[0] == f"INVITE sip:bob@[{far6}]:5060;transport=tcp SIP/2.0", report
    assert all(line.endswith(";transport=tcp SIP/2.0") for line in requests), report
    assert kamailio.routed(r"RQ INVITE .* pr=tcp$"), report
    assert sip_messages(packets[FAR_END]) == [], report
    if kind in ("call", "hold", "late_media"):
        assert len(rtp(packets[FAR_END], PHONE6, far6)) >= MIN_RTP, report
        assert len(rtp(packets[FAR_END], far6, PHONE6)) >= MIN_RTP, report


def test_register_refresh_over_tcp(lab: Lab, kamailio: Kamailio) -> None:
    """register_refresh.xml over TCP: REGISTER, refresh, un-REGISTER, all on the phone's one
    connection, all answered."""
    phone = SippPhone(lab, "phone1", registrar=T.SERVER_IP6, refresh=True, registered_ms=1000, transport="t1")
    result = phone.start().wait(20)
    assert result.ok, result.describe()
    registers = kamailio.routed(rf"RQ REGISTER .* from {PHONE6}:5060 .*pr=tcp$")
    assert len(registers) == 3, kamailio.routed()
    assert kamailio.contacts("alice") == []


# --------------------------------------------------------------------- registration and inbound calls
def test_inbound_call_over_the_phones_own_connection(lab: Lab, kamailio: Kamailio) -> None:
    """alice registers over TCP (IPv6, no NAT): the binding is her Contact with ``;transport=tcp`` and
    records her connection. A call from the far end reaches her over that same connection: Kamailio
    opens none, the phone accepts none, and media flows both ways."""
    with Capture(lab, "phone1", T.HOST_IF) as at_phone:
        alice = SippPhone(lab, "phone1", registrar=T.SERVER_IP6, registered_ms=30000, transport="t1").start()
        assert kamailio.wait_registered("alice") == [f"sip:alice@[{PHONE6}]:5060;transport=tcp"]
        (binding,) = kamailio.bindings("alice")
        (registered,) = kamailio.tcp_connections()
        assert registered.peer == f"[{PHONE6}]:5060" and registered.local_port == T.SIP_PORT
        assert binding["Tcpconn-Id"] == str(registered.id) and binding["Received"] == "[not set]"
        phone_connections = alice.tcp_connections()
        assert phone_connections == [(f"[{PHONE6}]:5060", f"[{T.SERVER_IP6}]:5060")]

        caller = SippCaller(lab, FAR_END, "alice", proxy=T.SERVER_IP6, transport="t1").start()
        time.sleep(1.0)
        during = alice.tcp_connections(), kamailio.tcp_connections()
        result = caller.wait(40)
        alice.kill()
    packets = {"phone1": at_phone.packets()}
    report = evidence(packets, {"caller": result}, kamailio) + f"\nduring the call: {during}"
    assert result.ok, report
    assert alice.received("^INVITE ") == [f"INVITE sip:alice@[{PHONE6}]:5060;transport=tcp SIP/2.0"], report
    assert during[0] == phone_connections, report
    assert [c.id for c in during[1] if c.peer_ip == PHONE6] == [registered.id], report
    far_media = T.WAN_HOST2_IP6
    assert len(rtp(packets["phone1"], far_media, PHONE6)) >= MIN_RTP, report
    assert len(rtp(packets["phone1"], PHONE6, far_media)) >= MIN_RTP, report


@pytest.mark.parametrize("nat_helper", [False, True], ids=["plain-kamailio", "nathelper"])
def test_inbound_call_to_a_tcp_phone_behind_masquerade(lab: Lab, tmp_path: Path, nat_helper: bool) -> None:
    """alice registers over TCP through the masquerade: her connection comes from 198.51.100.1:5060,
    her Contact names 10.0.0.2. Plain Kamailio sends the inbound call to the Contact: the new connection
    to a private address fails at once and the caller gets 477. With nathelper the binding's received
    URI is the connection's source, and the call reaches her over her own connection."""
    lab.masquerade()
    kamailio = make_kamailio(lab, tmp_path, nat_helper=nat_helper).start()
    try:
        alice = SippPhone(lab, "phone1", registrar=T.SERVER_IP, registered_ms=30000, transport="t1").start()
        assert kamailio.wait_registered("alice") == [f"sip:alice@{PHONE}:5060;transport=tcp"]
        (binding,) = kamailio.bindings("alice")
        (registered,) = kamailio.tcp_connections()
        assert registered.peer == f"{T.ROUTER_WAN_IP}:5060"
        tracked = tcp_conntrack(lab, T.SIP_PORT)
        caller = SippCaller(lab, FAR_END, "alice", proxy=T.SERVER_IP, transport="t1", pause_ms=SHORT_CALL_MS)
        result = caller.start().wait(40)
        after = kamailio.tcp_connections()
        alice.kill()
    finally:
        kamailio.stop()
    report = evidence({}, {"caller": result}, kamailio) + f"\nbinding: {binding}\nconnections after: {after}"
    assert len(tracked) == 1 and f"src={PHONE} dst={T.SERVER_IP} sport=5060 dport=5060" in tracked[0], tracked
    if not nat_helper:
        assert binding["Received"] == "[not set]", report
        assert not result.ok and caller.received("^SIP/2.0 477"), report
        assert alice.received("^INVITE ") == [], report
        assert f"connect {PHONE}:5060 failed (unreachable) Network is unreachable" in kamailio.log(), report
        return
    assert binding["Received"] == f"sip:{T.ROUTER_WAN_IP}:5060;transport=tcp", report
    assert result.ok, report
    assert alice.received("^INVITE ") == [f"INVITE sip:alice@{PHONE}:5060;transport=tcp SIP/2.0"], report
    assert [c.id for c in after if c.peer_ip == T.ROUTER_WAN_IP] == [registered.id], report


def test_registrar_opens_a_new_connection_once_it_closed_the_phones(lab: Lab, tmp_path: Path) -> None:
    """Kamailio with a 2 s ``tcp_connection_lifetime`` closes alice's idle connection; the phone stays
    and listens. The next inbound call makes Kamailio open a NEW connection to her Contact, which she
    accepts and answers on: the case where a router must let the registrar's connection in."""
    kamailio = make_kamailio(lab, tmp_path, lifetime_s=2).start()
    try:
        alice = SippPhone(lab, "phone1", registrar=T.SERVER_IP6, registered_ms=40000, transport="t1").start()
        kamailio.wait_registered("alice")
        (registered,) = kamailio.tcp_connections()
        registered_at = time.monotonic()
        kamailio.wait_tcp_closed(registered.id, timeout=30)
        closed_after = time.monotonic() - registered_at
        deadline = time.monotonic() + 5
        while alice.tcp_connections() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alice.returncode is None and alice.tcp_connections() == []
        caller = SippCaller(lab, FAR_END, "alice", proxy=T.SERVER_IP6, transport="t1", pause_ms=SHORT_CALL_MS)
        caller.start()
        time.sleep(1.0)
        during = alice.tcp_connections(), kamailio.tcp_connections()
        result = caller.wait(40)
        alice.kill()
    finally:
        kamailio.stop()
    report = evidence({}, {"caller": result}, kamailio) + f"\nclosed after {closed_after:.1f}s; during: {during}"
    assert result.ok, report
    assert alice.received("^INVITE ") == [f"INVITE sip:alice@[{PHONE6}]:5060;transport=tcp SIP/2.0"], report
    # The phone's one connection is one it accepted: its SIP port, a peer port Kamailio chose.
    ((local, peer),) = during[0]
    assert local == f"[{PHONE6}]:5060" and peer.startswith(f"[{T.SERVER_IP6}]:") and peer != f"[{T.SERVER_IP6}]:5060"
    (opened,) = [c for c in during[1] if c.peer_ip == PHONE6]
    assert opened.id != registered.id and opened.peer_port == T.SIP_PORT and opened.local_port == 0, report


# ---------------------------------------------------------------------------------------------- TLS
@pytest.mark.parametrize("family", ["ipv4-masquerade", "ipv6-firewall"])
def test_tls_register_crosses_the_router(lab: Lab, tmp_path: Path, family: str) -> None:
    """A phone registers over TLS with the stand-in registrar on the server (5061): the handshake
    verifies the self-signed certificate, the registrar reads the REGISTER exactly as sent and the phone
    gets its 200 OK. Through the masquerade the registrar sees the router's address; over IPv6 (the
    admin firewall, which makes the router track IPv6 too) the phone's. The router tracks one TCP flow on
    5061 while the phone holds the connection. No SIP text is visible on the wire."""
    ipv6 = family.startswith("ipv6")
    if ipv6:
        lab.admin_firewall()
    else:
        lab.masquerade()
    registrar = TlsRegistrar(lab, ip=T.SERVER_IP6 if ipv6 else T.SERVER_IP, workdir=tmp_path / "tls").start()
    wire = Capture(lab, T.ROUTER, T.ROUTER_WAN_IF, tmp_path / "wan.pcap").start()
    try:
        phone = TlsPhone(lab, "phone1", registrar, hold_s=1.5).start()
        time.sleep(0.75)
        tracked = tcp_conntrack(lab, TLS_PORT, "ipv6" if ipv6 else "ipv4")
        result = phone.wait(20)
        time.sleep(0.2)
    finally:
        wire.stop()
        registrar.stop()
    events = registrar.events()
    report = f"{result}\nconntrack: {tracked}\nevents: {events}\n{registrar.stderr()}"
    phone_ip = PHONE6 if ipv6 else PHONE
    assert result.local == T.hostport(phone_ip, TLS_PORT), report
    assert result.version in ("TLSv1.2", "TLSv1.3"), report
    assert result.reply is not None and result.reply.startswith("SIP/2.0 200 OK\r\n"), report
    assert "Call-ID: 1-tls@" in result.reply, report
    seen_from = PHONE6 if ipv6 else T.ROUTER_WAN_IP
    assert [(e["event"], e["peer_ip"]) for e in events] == [
        ("handshake", seen_from),
        ("message", seen_from),
        ("closed", seen_from),
    ], report
    assert events[1]["message"].encode("latin-1") == result.sent, report
    assert result.sent.startswith(b"REGISTER sip:") and b"Via: SIP/2.0/TLS " in result.sent
    assert len(tracked) == 1 and f"src={phone_ip} " in tracked[0] and "ESTABLISHED" in tracked[0], report
    on_wire = wire.path.read_bytes()
    assert len(on_wire) > len(result.sent), report  # the encrypted exchange was captured
    assert b"REGISTER" not in on_wire and b"SIP/2.0" not in on_wire, report
