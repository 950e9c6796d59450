"""The security policy on real decisions: what a message may open, and what passes unchanged."""

from __future__ import annotations

import ipaddress

from nfsip.core.engine import Engine
from nfsip.core.model import Direction, Endpoint, Flow
from nfsip.core.policy import Limits, Policy
from nfsip.core.ports import PortAllocator

from .test_engine import PUBLIC, REGISTER, inbound, invite, outbound, register_ok, response

SERVER_NET = ipaddress.IPv4Network("198.51.100.0/24")


def engine(**policy) -> Engine:
    return Engine(PUBLIC, PortAllocator(40000, 49999), policy=Policy(**policy))


def test_allowlist_other_servers_pass_unchanged_and_open_nothing():
    eng = engine(sip_servers=(SERVER_NET,))
    elsewhere = Flow(
        Direction.OUTBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 5060), Endpoint("192.0.2.66", 5060)
    )
    d = eng.handle(elsewhere, invite(), 0.0)
    assert (d.payload, d.install, d.refusals) == (None, (), ("server-not-allowed",))
    assert eng.handle(outbound("10.0.0.2"), invite(), 0.0).install  # the allowed server still works


def test_privileged_and_sip_ports_are_never_pinhole_targets():
    for port in (22, 1023, 5060):
        d = engine().handle(outbound("10.0.0.2"), invite(port=port), 0.0)
        assert d.install == () and d.refusals == ("media-port",)
        assert b"m=audio %d " % port in d.payload  # that stream is left as the phone wrote it


def test_sdp_or_contact_naming_another_lan_host_opens_nothing():
    d = engine().handle(outbound("10.0.0.2"), invite(conn="10.0.0.99"), 0.0)
    assert d.install == () and "foreign-address" in d.refusals
    reg = REGISTER.format(branch="x", cseq=1, expires=60).replace(
        "<sip:alice@10.0.0.2:5060>", "<sip:alice@10.0.0.99:5060>"
    )
    eng = engine()
    out = eng.handle(outbound("10.0.0.2"), reg.encode(), 0.0)
    assert "foreign-contact" in out.refusals
    ok = eng.handle(inbound("10.0.0.2"), register_ok("x", 1, "Contact: <sip:alice@10.0.0.99:5060>;expires=60\r\n"), 0.1)
    assert ok.install == () and len(eng.registrations) == 0


def test_per_host_limits_pass_the_message_unchanged():
    eng = engine(limits=Limits(calls_per_host=2))
    assert eng.handle(outbound("10.0.0.2"), invite(callid="a"), 0.0).install
    assert eng.handle(outbound("10.0.0.2"), invite(callid="b", port=7000), 0.0).install
    third = eng.handle(outbound("10.0.0.2"), invite(callid="c", port=8000), 0.0)
    assert (third.payload, third.install, third.refusals) == (None, (), ("calls-per-host",))
    assert eng.handle(outbound("10.0.0.3"), invite(ip="10.0.0.3", callid="d"), 0.0).install  # other hosts unaffected


def test_pinhole_limits_and_rate():
    eng = engine(limits=Limits(pinholes_per_host=4))
    assert eng.handle(outbound("10.0.0.2"), invite(callid="a"), 0.0).install
    assert eng.handle(outbound("10.0.0.2"), invite(callid="b", port=7000), 0.0).install
    assert eng.handle(outbound("10.0.0.2"), invite(callid="c", port=8000), 0.0).refusals == ("pinholes-per-host",)
    eng = engine(limits=Limits(pinhole_rate_per_host=1.0, pinhole_burst_per_host=4))
    assert eng.handle(outbound("10.0.0.2"), invite(callid="a"), 0.0).install
    assert eng.handle(outbound("10.0.0.2"), invite(callid="b", port=7000), 0.0).install
    assert eng.handle(outbound("10.0.0.2"), invite(callid="c", port=8000), 0.5).refusals == ("pinhole-rate",)
    assert eng.handle(outbound("10.0.0.2"), invite(callid="c", port=8000), 2.5).install  # tokens refilled


def test_registration_limit_per_host():
    eng = engine(limits=Limits(registrations_per_host=1))
    for port, branch in ((5060, "a"), (5062, "b")):
        reg = REGISTER.format(branch=branch, cseq=1, expires=60).replace("10.0.0.2:5060>", f"10.0.0.2:{port}>")
        eng.handle(
            Flow(
                Direction.OUTBOUND, Endpoint("10.0.0.2", port), Endpoint(PUBLIC, port), Endpoint("198.51.100.2", 5060)
            ),
            reg.encode(),
            0.0,
        )
        ok = eng.handle(
            inbound("10.0.0.2", port),
            register_ok(branch, 1, f"Contact: <sip:alice@{PUBLIC}:{port}>;expires=60\r\n"),
            0.1,
        )
        if branch == "a":
            assert ok.install
        else:
            assert ok.install == () and ok.refusals == ("registrations-per-host",)


def test_strict_media_from_sdp_opens_inbound_only_for_the_far_end_address():
    eng = Engine(PUBLIC, PortAllocator(40000, 49999), media_from_sdp=True)
    offer = eng.handle(outbound("10.0.0.2"), invite(), 0.0)
    assert {h.kind for h in offer.install} == {"media-out"}  # far end unknown: outgoing only
    sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\n"
    answer = response(200, extra="Content-Type: application/sdp\r\n").replace(
        b"Content-Length: 0\r\n\r\n", f"Content-Length: {len(sdp)}\r\n\r\n{sdp}".encode()
    )
    d = eng.handle(inbound("10.0.0.2"), answer, 1.0)
    assert d.remove == ()
    assert {(h.kind, h.remote_ip) for h in d.install + d.recreate} == {("media", "198.51.100.2")}
    # The far end moves its media (a re-INVITE with a new address): the old address loses access.
    moved = answer.replace(b"198.51.100.2\r\nt=", b"198.51.100.7\r\nt=").replace(b"CSeq: 1 INVITE", b"CSeq: 2 INVITE")
    d2 = eng.handle(inbound("10.0.0.2"), moved, 2.0)
    assert {h.remote_ip for h in d2.remove} == {"198.51.100.2"}
    assert {h.remote_ip for h in d2.install} == {"198.51.100.7"}


def test_strict_mode_learns_the_far_end_from_an_inbound_offer():
    """Inbound call: the far end's SDP (in the INVITE) comes before the phone's answer creates the call."""
    eng = Engine(PUBLIC, PortAllocator(40000, 49999), media_from_sdp=True)
    offer = invite(ip="198.51.100.2", callid="in1").replace(
        b"Via: SIP/2.0/UDP 198.51.100.2", b"Via: SIP/2.0/UDP 198.51.100.2"
    )
    eng.handle(inbound("10.0.0.2"), offer, 0.0)
    sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n"
    answer = response(200, callid="in1", extra="Content-Type: application/sdp\r\n").replace(
        b"Content-Length: 0\r\n\r\n", f"Content-Length: {len(sdp)}\r\n\r\n{sdp}".encode()
    )
    d = eng.handle(outbound("10.0.0.2"), answer, 1.0)
    assert {(h.kind, h.remote_ip) for h in d.install + d.recreate} == {("media", "198.51.100.2")}
