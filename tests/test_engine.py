"""The decision core on real messages: what is rewritten, what is not, and which pinholes follow."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from nfsip.core.engine import Engine, Timeouts
from nfsip.core.model import Direction, Endpoint, Flow, comment_call_id
from nfsip.core.ports import PortAllocator
from nfsip.core.sip.message import SipMessage, parse_message

from .corpus import CORPUS, case, cases, corpus_dir, pcap_udp_sip, vendor_messages

PUBLIC = "203.0.113.7"
SERVER = Endpoint("198.51.100.2", 5060)


def engine() -> Engine:
    return Engine(PUBLIC, PortAllocator(40000, 49999), Timeouts(setup=180, call=7200))


def private(address: str) -> bool:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return ip.is_private and not ip.is_unspecified


def lan_host_of(msg: SipMessage) -> str | None:
    """The LAN host that sent a message: its SDP connection address, when private."""
    if msg.sdp is None:
        return None
    for media in msg.sdp.media:
        conn = msg.sdp.media_connection(media)
        if conn is not None and private(conn.address):
            return conn.address
    return None


def outbound(lan_ip: str, sip_port: int = 5060, public_port: int = 5060) -> Flow:
    return Flow(Direction.OUTBOUND, Endpoint(lan_ip, sip_port), Endpoint(PUBLIC, public_port), SERVER)


def inbound(lan_ip: str, sip_port: int = 5060) -> Flow:
    return Flow(Direction.INBOUND, Endpoint(lan_ip, sip_port), Endpoint(PUBLIC, 0), SERVER)


def sdp_lines(msg: SipMessage) -> list[bytes]:
    return msg.body().split(b"\n")


def check_rewrite(original: bytes, lan_ip: str) -> None:
    """Rewrite `original` as if `lan_ip` sent it, and check that exactly the intended parts changed."""
    eng = engine()
    before = parse_message(original)
    decision = eng.handle(outbound(lan_ip), original, 0.0)
    assert decision.outcome == "rewritten", decision
    after = parse_message(decision.payload)
    # Still a valid message with the same identity.
    assert (after.method, after.status, after.call_id, after.cseq) == (
        before.method,
        before.status,
        before.call_id,
        before.cseq,
    )
    assert after.content_length is None or after.content_length == len(after.body())
    # Headers: same names in the same order; values differ only in Via / Contact / Content-Length.
    assert [h.name for h in after.headers] == [h.name for h in before.headers]
    for h_before, h_after in zip(before.headers, after.headers, strict=True):
        if h_before.name not in ("via", "contact", "content-length"):
            assert h_before.value == h_after.value, h_before.name
    if before.is_request and before.vias[0].sent_by.host == lan_ip:
        assert after.vias[0].sent_by.host == PUBLIC
    assert [v.params for v in after.vias[1:]] == [v.params for v in before.vias[1:]]
    for c_before, c_after in zip(before.contacts, after.contacts, strict=True):
        host = c_before.uri.hostport.host if c_before.uri.hostport else None
        expected = PUBLIC if host == lan_ip else host
        assert (c_after.uri.hostport.host if c_after.uri.hostport else None) == expected
    # SDP: every m= stream from the LAN host now names a public port with a pinhole to its LAN port.
    holes = {(h.public.port, h.lan.port) for h in decision.install}
    assert holes, "an SDP from the LAN host must open pinholes"
    assert all(h.lan.ip == lan_ip and h.public.ip == PUBLIC for h in decision.install)
    for m_before, m_after in zip(before.sdp.media, after.sdp.media, strict=True):
        assert m_after.formats == m_before.formats and m_after.proto == m_before.proto
        conn = before.sdp.media_connection(m_before)
        if m_before.port and conn is not None and conn.address == lan_ip:
            assert (m_after.port, m_before.port) in holes
            assert after.sdp.media_connection(m_after).address == PUBLIC
        else:
            assert m_after.port == m_before.port
    assert lan_ip.encode() not in b"".join(line for line in sdp_lines(after) if line.startswith((b"c=", b"o=", b"m=")))
    # Lines other than o= c= m= a=rtcp: are byte-identical.
    kept = (b"c=", b"o=", b"m=", b"a=rtcp:")
    assert [x for x in sdp_lines(after) if not x.startswith(kept)] == [
        x for x in sdp_lines(before) if not x.startswith(kept)
    ]


VENDOR_SDP = [p for p in vendor_messages() if "-sdp" in p.name]


@pytest.mark.parametrize("path", cases(VENDOR_SDP, CORPUS / "vendors"), ids=lambda p: p.name)
def test_vendor_messages_with_sdp(path: Path):
    raw = case(path).read_bytes()
    msg = parse_message(raw)
    lan_ip = lan_host_of(msg)
    if lan_ip is None:
        # The SDP names no private address: from a LAN host it does not name, nothing is rewritten or opened.
        decision = engine().handle(outbound("10.0.0.2"), raw, 0.0)
        assert decision.payload is None and decision.install == (), decision
        return
    check_rewrite(raw, lan_ip)


def test_vendor_corpus_present():
    corpus_dir("vendors")
    assert len(VENDOR_SDP) >= 20


def _pcap_sdp_messages() -> list[tuple[str, bytes]]:
    found = []
    if not (CORPUS / "pcap").is_dir():
        return found
    for path in sorted((CORPUS / "pcap").glob("*.pcap*")):
        for _packet, payload in pcap_udp_sip(path):
            try:
                msg = parse_message(payload)
            except Exception:
                continue
            if msg.sdp is not None and lan_host_of(msg) and (msg.method == "INVITE" or msg.status == 200):
                found.append((f"{path.name}#{len(found)}", payload))
    return found


PCAP_SDP = _pcap_sdp_messages()


@pytest.mark.parametrize("payload", cases([pytest.param(p, id=n) for n, p in PCAP_SDP], CORPUS / "pcap"))
def test_pcap_invites_and_200s(payload: bytes):
    payload = case(payload)
    check_rewrite(payload, lan_host_of(parse_message(payload)))


def test_pcap_corpus_has_private_sdp_messages():
    corpus_dir("pcap")
    assert len(PCAP_SDP) >= 10


INVITE = (
    "INVITE sip:bob@198.51.100.2 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK{branch};rport\r\n"
    "From: <sip:alice@example.org>;tag=1\r\n"
    "To: <sip:bob@example.org>\r\n"
    "Call-ID: {callid}\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@{ip}:5060>\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
SDP = "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {conn}\r\nt=0 0\r\nm=audio {port} RTP/AVP 8\r\n"


def invite(ip="10.0.0.2", port=6000, callid="c1", conn=None, branch="1", extra_media="") -> bytes:
    sdp = SDP.format(ip=ip, conn=conn or ip, port=port) + extra_media
    return INVITE.format(ip=ip, callid=callid, branch=branch, length=len(sdp), sdp=sdp).encode()


def response(status: int, callid="c1", method="INVITE", via_host=PUBLIC, branch="1", extra="") -> bytes:
    reason = {100: "Trying", 200: "OK", 486: "Busy Here", 487: "Request Terminated"}[status]
    return (
        f"SIP/2.0 {status} {reason}\r\n"
        f"Via: SIP/2.0/UDP {via_host}:5060;branch=z9hG4bK{branch};received={PUBLIC};rport=5060\r\n"
        f"From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>;tag=2\r\n"
        f"Call-ID: {callid}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def bye(callid="c1", host=PUBLIC) -> bytes:
    return (
        f"BYE sip:alice@{host}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bKb\r\n"
        f"From: <sip:bob@example.org>;tag=2\r\nTo: <sip:alice@example.org>;tag=1\r\n"
        f"Call-ID: {callid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_keeps_the_phone_port_when_free_and_allocates_otherwise():
    eng = engine()
    d1 = eng.handle(outbound("10.0.0.2"), invite("10.0.0.2", port=41000, callid="a"), 0.0)
    d2 = eng.handle(outbound("10.0.0.3", public_port=1024), invite("10.0.0.3", port=41000, callid="b"), 0.0)
    assert {(h.public.port, h.lan.port) for h in d1.install} == {(41000, 41000), (41001, 41001)}
    ports2 = sorted(h.public.port for h in d2.install)
    assert ports2[0] % 2 == 0 and ports2[1] == ports2[0] + 1 and 40000 <= ports2[0] <= 49999
    assert ports2[0] != 41000 and b"m=audio %d RTP/AVP" % ports2[0] in d2.payload
    assert b"Via: SIP/2.0/UDP 203.0.113.7:1024;" in d2.payload
    assert b"Contact: <sip:alice@203.0.113.7:1024>" in d2.payload


def test_failed_attempt_tears_down_and_2xx_confirms():
    eng = engine()
    d = eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    assert all(h.timeout == 180 for h in d.install)
    fail = eng.handle(inbound("10.0.0.2"), response(486), 1.0)
    assert {h.public for h in fail.remove} == {h.public for h in d.install}
    assert len(eng.calls) == 0

    d = eng.handle(outbound("10.0.0.2"), invite(callid="c2"), 2.0)
    ok = eng.handle(inbound("10.0.0.2"), response(200, callid="c2"), 3.0)
    assert ok.remove == () and eng.calls.get("c2", "10.0.0.2").confirmed
    reinvite = eng.handle(outbound("10.0.0.2"), invite(callid="c2", branch="2"), 4.0)
    assert all(h.timeout == 7200 for h in reinvite.install) and reinvite.opened == ()
    gone = eng.handle(inbound("10.0.0.2"), bye("c2"), 5.0)
    assert {h.public for h in gone.remove} == {h.public for h in d.install}
    assert [e.why for e in gone.ended] == ["BYE (in)"] and gone.ended[0].duration == 3.0


def test_rtcp_port_below_the_rtp_port_keeps_each_port_its_own_mapping():
    """RFC 3605 lets a=rtcp name any port: with RTCP below RTP, the m= line must still carry the public port
    that leads to the RTP port (the binding lists the lower, RTCP, port first)."""
    eng = engine()
    d = eng.handle(outbound("10.0.0.2"), invite(port=6004, extra_media="a=rtcp:5999\r\n"), 0.0)
    public_of = {h.lan.port: h.public.port for h in d.install}
    assert set(public_of) == {5999, 6004}
    body = parse_message(d.payload).body()
    assert b"m=audio %d RTP/AVP 8" % public_of[6004] in body
    assert b"a=rtcp:%d" % public_of[5999] in body


def test_stream_ports_and_labels_of_the_usual_media_lines():
    """RTP on the m= port, RTCP on port+1 (RFC 3550), where a=rtcp says (RFC 3605), on the RTP port with
    rtcp-mux (RFC 5761); each pinhole labelled with its stream and role."""
    extra = (
        "m=audio 6002 RTP/AVP 0\r\na=rtcp:7001\r\n"
        "m=video 6004 RTP/AVP 96\r\na=rtcp:5999 IN IP4 10.0.0.2\r\n"
        "m=audio 6006 RTP/AVP 0\r\na=rtcp-mux\r\n"
    )
    d = engine().handle(outbound("10.0.0.2"), invite(port=6000, extra_media=extra), 0.0)
    assert sorted((h.label, h.lan.port) for h in d.install) == [
        ("m0.rtcp", 6001),
        ("m0.rtp", 6000),
        ("m1.rtcp", 7001),
        ("m1.rtp", 6002),
        ("m2.rtcp", 5999),
        ("m2.rtp", 6004),
        ("m3.rtp", 6006),
    ]


def test_changed_media_port_replaces_the_pinhole_in_one_decision():
    eng = engine()
    eng.handle(outbound("10.0.0.2"), invite(port=6000), 0.0)
    d = eng.handle(outbound("10.0.0.2"), invite(port=7000, branch="2"), 1.0)
    assert {h.lan.port for h in d.remove} == {6000, 6001}
    assert {h.lan.port for h in d.install} == {7000, 7001}


def test_inbound_response_gets_the_phones_own_via_back():
    eng = engine()
    eng.handle(outbound("10.0.0.2", public_port=1024), invite(), 0.0)
    d = eng.handle(inbound("10.0.0.2"), response(100), 0.5)
    via = parse_message(d.payload).vias[0]
    assert (via.sent_by.host, via.sent_by.port) == ("10.0.0.2", 5060)
    assert via.received == "10.0.0.2" and via.rport.value == "5060"


def test_inbound_request_uri_goes_back_to_the_phone():
    eng = engine()
    d = eng.handle(inbound("10.0.0.2", 5062), bye("nocall"), 0.0)
    assert parse_message(d.payload).request_uri.hostport.span is not None
    assert d.payload.startswith(b"BYE sip:alice@10.0.0.2:5062 SIP/2.0\r\n")


def test_sdp_naming_another_lan_host_opens_nothing():
    eng = engine()
    d = eng.handle(outbound("10.0.0.2"), invite("10.0.0.2", conn="10.0.0.9"), 0.0)
    assert d.install == () and "10.0.0.9" in d.detail
    assert b"c=IN IP4 10.0.0.9" in d.payload  # untouched


def test_unparseable_datagram_passes_unchanged():
    d = engine().handle(outbound("10.0.0.2"), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert d.payload is None and d.outcome == "parse-error" and d.detail


def test_rfc4475_invalid_messages_pass_unchanged():
    folder = corpus_dir("rfc4475")
    invalid = [
        line.split("\t")[0]
        for line in (folder / "index.tsv").read_text().splitlines()[1:]
        if line.split("\t")[1] == "invalid"
    ]
    rejected = 0
    for name in invalid:
        d = engine().handle(outbound("10.0.0.2"), (folder / name).read_bytes(), 0.0)
        if d.outcome == "parse-error":
            rejected += 1
            assert d.payload is None and d.install == ()
    assert rejected >= 10


def test_attempt_without_any_response_ends_after_timer_b():
    eng = engine()
    eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    assert eng.expire(31.0) == []
    assert len(eng.expire(32.5)) == 2 and len(eng.calls) == 0


def test_attempt_with_provisional_responses_lives_for_the_setup_timeout():
    eng = engine()
    eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    eng.handle(inbound("10.0.0.2"), response(100), 0.1)
    assert eng.expire(100.0) == []
    assert len(eng.expire(181.0)) == 2 and len(eng.calls) == 0


def test_established_call_is_refreshed_by_in_dialog_requests_and_capped():
    eng = Engine(PUBLIC, PortAllocator(40000, 49999), Timeouts(setup=180, call=600, max_call=1000))
    eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    ok = eng.handle(inbound("10.0.0.2"), response(200), 1.0)
    # Confirmed: the call lifetime, pushed to the kernel.
    assert {h.timeout for h in (ok.install + ok.recreate)} == {600}
    info = bye("c1").replace(b"BYE ", b"INFO ", 1).replace(b"2 BYE", b"3 INFO")
    early = eng.handle(inbound("10.0.0.2"), info, 100.0)
    assert early.install == ()  # kernel timeout barely used: no transaction for this refresh
    late = eng.handle(inbound("10.0.0.2"), info, 400.0)
    assert {h.timeout for h in late.install} == {600}
    assert eng.expire(999.0) == [] and len(eng.calls) == 1
    assert len(eng.expire(1000.5)) == 2  # max_call reached despite refreshes


def test_session_expires_sets_the_call_lifetime():
    eng = engine()
    eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    ok = eng.handle(inbound("10.0.0.2"), response(200, extra="Session-Expires: 90;refresher=uac\r\n"), 1.0)
    assert {h.timeout for h in (ok.install + ok.recreate)} == {90 + 32}
    assert eng.expire(100.0) == []
    assert len(eng.expire(124.0)) == 2


def test_stream_disabled_by_port_zero_closes_its_pinholes():
    eng = engine()
    two = invite(extra_media="m=video 6002 RTP/AVP 96\r\n")
    first = eng.handle(outbound("10.0.0.2"), two, 0.0)
    assert {h.lan.port for h in first.install} == {6000, 6001, 6002, 6003}
    eng.handle(inbound("10.0.0.2"), response(200), 1.0)
    off = invite(extra_media="m=video 0 RTP/AVP 96\r\n", branch="2").replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
    d = eng.handle(
        outbound("10.0.0.2"), off.replace(b"To: <sip:bob@example.org>", b"To: <sip:bob@example.org>;tag=2"), 2.0
    )
    assert {h.lan.port for h in d.remove} == {6002, 6003}
    assert {h.lan.port for h in d.install} == {6000, 6001}


def test_late_offer_answer_in_ack_opens_pinholes_of_an_established_call():
    eng = engine()
    sdp = SDP.format(ip="10.0.0.2", conn="10.0.0.2", port=6000)
    ack = (
        "ACK sip:bob@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKack\r\n"
        "From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>;tag=2\r\nCall-ID: late\r\n"
        f"CSeq: 1 ACK\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()
    d = eng.handle(outbound("10.0.0.2"), ack, 0.0)
    assert {h.timeout for h in d.install} == {7200}
    assert eng.calls.get("late", "10.0.0.2").confirmed


REGISTER = (
    "REGISTER sip:example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{branch};rport\r\n"
    "From: <sip:alice@example.org>;tag=r1\r\nTo: <sip:alice@example.org>\r\nCall-ID: reg1\r\n"
    "CSeq: {cseq} REGISTER\r\nContact: <sip:alice@10.0.0.2:5060>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
)


def register_ok(branch: str, cseq: int, contacts: str) -> bytes:
    return (
        f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {PUBLIC}:1024;branch=z9hG4bK{branch};rport=1024;received={PUBLIC}\r\n"
        "From: <sip:alice@example.org>;tag=r1\r\nTo: <sip:alice@example.org>;tag=x\r\nCall-ID: reg1\r\n"
        f"CSeq: {cseq} REGISTER\r\n{contacts}Content-Length: 0\r\n\r\n"
    ).encode()


def test_registration_keeps_the_phone_reachable_from_the_registrar_for_the_granted_expiry():
    eng = engine()
    out = eng.handle(
        outbound("10.0.0.2", public_port=1024), REGISTER.format(branch="a", cseq=1, expires=3600).encode(), 0
    )
    assert b"Contact: <sip:alice@203.0.113.7:1024>" in out.payload
    # The 200 lists this phone's binding (granted 600 s) and another phone's for the same AOR.
    contacts = f"Contact: <sip:alice@{PUBLIC}:1024>;expires=600, <sip:alice@{PUBLIC}:2048>;expires=3600\r\n"
    ok = eng.handle(inbound("10.0.0.2"), register_ok("a", 1, contacts), 0.2)
    (hole,) = ok.install + ok.recreate
    assert (hole.kind, hole.public, hole.lan, hole.remote_ip) == (
        "sip",
        Endpoint(PUBLIC, 1024),
        Endpoint("10.0.0.2", 5060),
        SERVER.ip,
    )
    assert hole.timeout == 600 + 30
    # Re-REGISTER refreshes; un-REGISTER (no contact of ours in the 200) removes.
    eng.handle(outbound("10.0.0.2", public_port=1024), REGISTER.format(branch="b", cseq=2, expires=3600).encode(), 300)
    again = eng.handle(inbound("10.0.0.2"), register_ok("b", 2, contacts), 300.1)
    assert again.remove == () and again.install[0].timeout == 630
    eng.handle(outbound("10.0.0.2", public_port=1024), REGISTER.format(branch="c", cseq=3, expires=0).encode(), 400)
    gone = eng.handle(inbound("10.0.0.2"), register_ok("c", 3, ""), 400.1)
    assert gone.install == () and [h.kind for h in gone.remove] == ["sip"]
    assert len(eng.registrations) == 0


def test_registration_expires_without_refresh():
    eng = engine()
    eng.handle(outbound("10.0.0.2", public_port=1024), REGISTER.format(branch="a", cseq=1, expires=60).encode(), 0)
    eng.handle(inbound("10.0.0.2"), register_ok("a", 1, f"Contact: <sip:alice@{PUBLIC}:1024>;expires=60\r\n"), 0)
    assert eng.expire(89.0) == []
    assert [h.kind for h in eng.expire(90.5)] == ["sip"]


def test_state_rebuilt_from_kernel_pinholes_still_tears_down_on_bye():
    """A restarted daemon adopts the pinholes the kernel kept (nfsip.daemon.Daemon.install)."""
    first = engine()
    first.handle(outbound("10.0.0.2"), invite(callid="x" * 150), 0.0)  # a Call-ID too long for a comment
    ok = first.handle(inbound("10.0.0.2"), response(200, callid="x" * 150), 1.0)
    kernel = [
        replace(h, call_id=comment_call_id(h.call_id), timeout=h.timeout - 60) for h in (ok.install + ok.recreate)
    ]
    assert all(h.established for h in kernel)
    second = engine()
    second.adopt(kernel, 100.0)
    assert all(second.calls.ports.in_use(h.public.port) for h in kernel)
    gone = second.handle(inbound("10.0.0.2"), bye("x" * 150), 101.0)
    assert {(h.public, h.lan) for h in gone.remove} == {(h.public, h.lan) for h in (ok.install + ok.recreate)}


def test_public_ports_never_leave_the_configured_range():
    """A phone's own port outside the range (51820 here: WireGuard's) is never opened on the public side."""
    eng = engine()
    d = eng.handle(outbound("10.0.0.2"), invite(port=51820), 0.0)
    assert all(40000 <= h.public.port <= 49999 for h in d.install), d.install


def test_hold_with_zero_address_keeps_the_public_port():
    """RFC 3264 §8.4 old-style hold (c=0.0.0.0): the m= port still names the stream's public port."""
    eng = engine()
    first = eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    public = min(h.public.port for h in first.install)
    eng.handle(inbound("10.0.0.2"), response(200), 1.0)
    hold = invite(conn="0.0.0.0", branch="h").replace(b"To: <sip:bob@example.org>", b"To: <sip:bob@example.org>;tag=2")
    d = eng.handle(outbound("10.0.0.2"), hold.replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE"), 2.0)
    assert b"m=audio %d RTP/AVP" % public in d.payload and b"c=IN IP4 0.0.0.0" in d.payload
    assert d.remove == ()


def test_one_phone_with_two_accounts_stays_reachable_until_both_are_gone():
    eng = engine()
    for branch, user in (("a", "alice"), ("b", "bob")):
        reg = REGISTER.format(branch=branch, cseq=1, expires=600).replace("alice@", f"{user}@")
        eng.handle(outbound("10.0.0.2", public_port=1024), reg.encode(), 0)
        ok = register_ok(branch, 1, f"Contact: <sip:{user}@{PUBLIC}:1024>;expires=600\r\n").replace(
            b"alice@", f"{user}@".encode()
        )
        eng.handle(inbound("10.0.0.2"), ok, 0.1)
    assert len(eng.registrations) == 1  # one endpoint, one pinhole
    unreg = REGISTER.format(branch="c", cseq=2, expires=0).replace("alice@", "bob@")
    eng.handle(outbound("10.0.0.2", public_port=1024), unreg.encode(), 10)
    gone = eng.handle(inbound("10.0.0.2"), register_ok("c", 2, "").replace(b"alice@", b"bob@"), 10.1)
    assert gone.remove == () and len(eng.registrations) == 1  # alice still registered
    unreg = REGISTER.format(branch="d", cseq=2, expires=0)
    eng.handle(outbound("10.0.0.2", public_port=1024), unreg.encode(), 20)
    last = eng.handle(inbound("10.0.0.2"), register_ok("d", 2, ""), 20.1)
    assert [h.kind for h in last.remove] == ["sip"] and len(eng.registrations) == 0


def test_live_pinhole_count_is_kept_exactly():
    """The daemon's gauges read CallTable.pinholes_total instead of recounting every call per message."""
    eng = engine()
    steps = [
        (outbound("10.0.0.2"), invite(callid="a")),
        (outbound("10.0.0.2"), invite(callid="b", port=7000, extra_media="m=video 7002 RTP/AVP 96\r\n")),
        (outbound("10.0.0.2"), invite(callid="b", port=7100, branch="2")),  # port change, video gone
        (inbound("10.0.0.2"), response(486, callid="b")),
        (inbound("10.0.0.2"), bye("a")),
    ]
    for i, (flow, message) in enumerate(steps):
        eng.handle(flow, message, float(i))
        assert eng.calls.pinholes_total == sum(len(c.pinholes()) for c in eng.calls.calls.values())
    assert eng.calls.pinholes_total == 0


# -- only the call's signalling path changes the call (issue 13: a BYE forged from outside) ---------------

ATTACKER = Endpoint("192.0.2.66", 5060)


def from_host(lan_ip: str, remote: Endpoint, sip_port: int = 5060) -> Flow:
    return Flow(Direction.INBOUND, Endpoint(lan_ip, sip_port), Endpoint(PUBLIC, 0), remote)


def established(eng: Engine, callid: str = "c1", lan_ip: str = "10.0.0.2") -> set[Endpoint]:
    d = eng.handle(outbound(lan_ip), invite(lan_ip, callid=callid), 0.0)
    eng.handle(inbound(lan_ip), response(200, callid=callid), 1.0)
    return {h.public for h in d.install}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(bye(), id="BYE"),
        pytest.param(response(200, method="BYE"), id="200-to-BYE"),
        pytest.param(response(487), id="487-to-INVITE"),
        pytest.param(bye().replace(b"BYE ", b"CANCEL ", 1).replace(b"2 BYE", b"1 CANCEL"), id="CANCEL"),
    ],
)
def test_a_host_that_is_not_the_calls_peer_cannot_end_it(message: bytes):
    eng = engine()
    established(eng)
    forged = eng.handle(from_host("10.0.0.2", ATTACKER), message, 2.0)
    assert forged.remove == () and forged.ended == () and "not-dialog-peer" in forged.refusals
    assert eng.calls.get("c1", "10.0.0.2") is not None
    # The real peer still can.
    assert eng.handle(inbound("10.0.0.2"), bye(), 3.0).ended


def test_the_peer_itself_cannot_end_a_call_through_another_port_of_the_phone():
    """What arrives at a phone's media port (through a media pinhole) is not the call's signalling path."""
    eng = engine()
    established(eng)
    through_media = eng.handle(from_host("10.0.0.2", SERVER, sip_port=6000), bye(), 2.0)
    assert through_media.ended == () and "not-dialog-peer" in through_media.refusals


def test_the_phones_own_answer_to_a_forged_bye_ends_the_call():
    """The phone is the judge of its call: when it accepts a BYE (from anyone), its 200 ends the call."""
    eng = engine()
    established(eng)
    eng.handle(from_host("10.0.0.2", ATTACKER), bye(), 2.0)
    ok = response(200, method="BYE", via_host="192.0.2.66").replace(b"1 BYE", b"2 BYE")
    to_attacker = Flow(Direction.OUTBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 5060), ATTACKER)
    assert eng.handle(to_attacker, ok, 3.0).ended


def test_a_forged_reinvite_does_not_move_the_media_of_a_strict_call():
    eng = Engine(PUBLIC, PortAllocator(40000, 49999), Timeouts(setup=180, call=7200), media_from_sdp=True)
    eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    answer = response(200, extra="Content-Type: application/sdp\r\n").replace(b"Content-Length: 0\r\n\r\n", b"")
    sdp = SDP.format(ip="198.51.100.9", conn="198.51.100.9", port=7000).encode()
    eng.handle(inbound("10.0.0.2"), answer + b"Content-Length: %d\r\n\r\n" % len(sdp) + sdp, 1.0)
    assert eng.calls.get("c1", "10.0.0.2").far_media == {0: "198.51.100.9"}
    moved = invite("192.0.2.66", callid="c1", branch="9")
    d = eng.handle(from_host("10.0.0.2", ATTACKER), moved, 2.0)
    assert d.install == () and d.remove == () and "not-dialog-peer" in d.refusals
    assert eng.calls.get("c1", "10.0.0.2").far_media == {0: "198.51.100.9"}


def test_in_dialog_requests_with_another_phones_call_id_touch_nothing():
    eng = engine()
    established(eng, "c1", "10.0.0.2")
    d = eng.handle(inbound("10.0.0.3"), bye("c1"), 2.0)  # delivered to another phone
    assert d.ended == () and eng.calls.get("c1", "10.0.0.2") is not None
    d = eng.handle(
        Flow(Direction.OUTBOUND, Endpoint("10.0.0.3", 5060), Endpoint(PUBLIC, 5060), SERVER),
        bye("c1").replace(b"Via: SIP/2.0/UDP 198.51.100.2", b"Via: SIP/2.0/UDP 10.0.0.3"),
        2.0,
    )
    assert d.ended == () and eng.calls.get("c1", "10.0.0.2") is not None


def test_only_the_registrar_the_register_went_to_can_answer_it():
    eng = engine()
    eng.handle(outbound("10.0.0.2", public_port=1024), REGISTER.format(branch="a", cseq=1, expires=3600).encode(), 0)
    contacts = f"Contact: <sip:alice@{PUBLIC}:1024>;expires=600\r\n"
    forged = eng.handle(from_host("10.0.0.2", ATTACKER), register_ok("a", 1, contacts), 0.1)
    assert forged.install == () and "not-dialog-peer" in forged.refusals and len(eng.registrations) == 0
    ok = eng.handle(inbound("10.0.0.2"), register_ok("a", 1, contacts), 0.2)
    assert [h.remote_ip for h in ok.install + ok.recreate] == [SERVER.ip]
