"""The decision core on IPv6 (RFC 5118 messages of the corpus): without NAT nothing is rewritten and the
pinholes map the phone's own endpoints to themselves; with IPv6 NAT it is rewritten as IPv4 is; a dual-stack
phone's media of the other family is bound at its own address; what names another host opens nothing."""

from __future__ import annotations

from nfsip.core.addresses import canonical, hostport
from nfsip.core.engine import Engine, Timeouts
from nfsip.core.model import Direction, Endpoint, Flow, Pinhole
from nfsip.core.ports import PortAllocator
from nfsip.core.sip.message import parse_message

from .corpus import CORPUS, need

PUBLIC4 = "203.0.113.7"
ROUTER6 = "2001:db8:f::1"  # the router's WAN address (IPv6 masquerade)
SERVER6 = Endpoint("2001:db8:ff::2", 5060)
RFC5118 = CORPUS / "rfc5118"


def engine() -> Engine:
    return Engine(PUBLIC4, PortAllocator(40000, 49999), Timeouts(setup=180, call=7200))


def corpus_message(name: str) -> bytes:
    """A message of the RFC 5118 archive, its Content-Length made to count the body as the file has it (the
    archive counts CRLF line ends, the files have LF)."""
    data = need(RFC5118 / name).read_bytes()
    head, sep, body = data.partition(b"\n\n")
    lines = [
        b"Content-Length: %d" % len(body) if ln.lower().startswith(b"content-length:") else ln
        for ln in head.split(b"\n")
    ]
    return b"\n".join(lines) + sep + body


def outbound(lan_ip: str, public_ip: str | None = None, port: int = 5060, **kw: object) -> Flow:
    return Flow(Direction.OUTBOUND, Endpoint(lan_ip, port), Endpoint(public_ip or lan_ip, port), SERVER6, **kw)  # type: ignore[arg-type]


def inbound(lan_ip: str, port: int = 5060, remote: Endpoint = SERVER6) -> Flow:
    return Flow(Direction.INBOUND, Endpoint(lan_ip, port), Endpoint(lan_ip, 0), remote)


def response(request: bytes, status: str, extra: bytes = b"") -> bytes:
    """A response to `request` as its server would send it: its Via, From, Call-ID, CSeq; To with a tag."""
    msg = parse_message(request)
    keep = [h for h in msg.headers if h.name in ("via", "from", "call-id", "cseq")]
    lines = [b"SIP/2.0 " + status.encode()]
    lines += [h.line_span.slice(msg.raw).rstrip(b"\r\n") for h in keep]
    to = next(h for h in msg.headers if h.name == "to")
    lines.append(to.line_span.slice(msg.raw).rstrip(b"\r\n") + b";tag=srv1")
    lines.append(extra.rstrip(b"\r\n")) if extra else None
    lines.append(b"Content-Length: 0")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def endpoints(holes: tuple[Pinhole, ...]) -> set[tuple[str, int, str, int]]:
    return {(h.lan.ip, h.lan.port, h.public.ip, h.public.port) for h in holes}


def test_ipv6_without_nat_rewrites_nothing_and_opens_identity_pinholes() -> None:
    eng = engine()
    invite = corpus_message("ipv6-in-sdp.dat")
    decision = eng.handle(outbound("2001:db8::20"), invite, 0.0)
    assert decision.payload is None and decision.outcome == "unchanged", decision
    assert not decision.refusals
    assert endpoints(decision.install) == {
        ("2001:db8::20", port, "2001:db8::20", port) for port in (6000, 6001, 6024, 6025)
    }
    assert {h.label for h in decision.install} == {"m0.rtp", "m0.rtcp", "m1.rtp", "m1.rtcp"}
    # No port of the router's range is used: the ports are the phone's.
    assert not eng.calls.ports.in_use(40000)
    # The far end's 200 (from the server the INVITE went to) confirms the call; its BYE ends it and removes
    # exactly what was installed.
    ok = eng.handle(inbound("2001:db8::20"), response(invite, "200 OK"), 1.0)
    assert ok.payload is None and endpoints(ok.recreate) == endpoints(decision.install)
    bye = invite.replace(b"INVITE sip:", b"BYE sip:", 1).replace(b"8612 INVITE", b"8613 BYE")
    bye = bye.split(b"\n\n")[0].replace(b"Content-Type: application/sdp\n", b"")
    bye = bye.replace(b"Content-Length: 242", b"Content-Length: 0") + b"\n\n"
    ended = eng.handle(inbound("2001:db8::20", remote=SERVER6), bye, 2.0)
    assert [e.why for e in ended.ended] == ["BYE (in)"]
    assert endpoints(ended.remove) == endpoints(decision.install)
    assert len(eng.calls) == 0


def test_ipv6_masquerade_is_rewritten_like_ipv4() -> None:
    eng = engine()
    invite = corpus_message("ipv6-in-sdp.dat")
    decision = eng.handle(outbound("2001:db8::20", ROUTER6, port=5060), invite, 0.0)
    assert decision.outcome == "rewritten", decision
    out = parse_message(decision.payload or b"")
    assert out.vias[0].sent_by.host == ROUTER6 and out.raw.count(b"Via: SIP/2.0/UDP [2001:db8:f::1]:5060;") == 1
    assert out.contacts[0].uri.hostport is not None and out.contacts[0].uri.hostport.host == ROUTER6
    assert out.sdp is not None and out.sdp.connection is not None and out.sdp.origin is not None
    assert (out.sdp.connection.address, out.sdp.origin.address) == (ROUTER6, ROUTER6)
    publics = [m.port for m in out.sdp.media]
    assert all(40000 <= p <= 49999 for p in publics)
    assert endpoints(decision.install) == {
        ("2001:db8::20", lan, ROUTER6, public)
        for lan, public in ((6000, publics[0]), (6001, publics[0] + 1), (6024, publics[1]), (6025, publics[1] + 1))
    }
    # The answer comes back to the router's address: its Via goes back to the phone's own text.
    answer = response(decision.payload or b"", "180 Ringing")
    back = eng.handle(inbound("2001:db8::20"), answer, 1.0)
    assert back.payload is not None and b"Via: SIP/2.0/UDP [2001:db8::20];branch=z9hG4bKas3-111" in back.payload


def test_ipv6_addresses_are_compared_in_canonical_form() -> None:
    """RFC 5118 section 4: the SDP may write the sender's address in another form; it is the same host."""
    eng = engine()
    invite = corpus_message("ipv6-in-sdp.dat").replace(b"c=IN IP6 2001:db8::20", b"c=IN IP6 2001:DB8:0:0::20")
    decision = eng.handle(outbound("2001:db8::20"), invite, 0.0)
    assert not decision.refusals and len(decision.install) == 4
    assert canonical("2001:DB8:0:0::20") == "2001:db8::20" and canonical("10.0.0.2") == "10.0.0.2"
    assert hostport("2001:db8::1", 5060) == b"[2001:db8::1]:5060"


def test_sdp_naming_another_ipv6_host_opens_nothing() -> None:
    """Without NAT a global address in the SDP may be any host's: only the sender's own addresses get pinholes."""
    eng = engine()
    invite = corpus_message("ipv6-in-sdp.dat")
    decision = eng.handle(outbound("2001:db8::21"), invite, 0.0)  # the SDP names ::20, the sender is ::21
    assert decision.install == ()
    assert decision.refusals == ("foreign-contact", "foreign-address", "foreign-address")
    low = invite.replace(b"m=audio 6000", b"m=audio 22  ").replace(b"m=video 6024", b"m=video 5060")
    refused = eng.handle(outbound("2001:db8::20"), low, 0.0)
    assert refused.install == () and set(refused.refusals) == {"media-port"}


def test_dual_stack_media_is_bound_at_each_of_the_hosts_addresses() -> None:
    """RFC 5118 4.8: audio on IPv4, video on IPv6, signalled from a third address of the same host. Each stream
    gets its pinholes at its own address: the IPv4 one NATed to the router's address (its SDP rewritten), the
    IPv6 one to itself. Addresses not known to belong to the host open nothing."""
    invite = corpus_message("mult-ip-in-sdp.dat")
    stranger = engine().handle(outbound("2001:db8::9:1"), invite, 0.0)
    assert stranger.install == () and stranger.refusals == ("foreign-address", "foreign-address")
    eng = engine()
    flow = outbound("2001:db8::9:1", host_addresses=frozenset({"192.0.2.1", "2001:db8::1"}))
    decision = eng.handle(flow, invite, 0.0)
    assert decision.outcome == "rewritten" and not decision.refusals, decision
    out = parse_message(decision.payload or b"")
    assert out.sdp is not None
    audio, video = out.sdp.media
    audio_c, video_c = out.sdp.media_connection(audio), out.sdp.media_connection(video)
    assert audio_c is not None and video_c is not None
    assert (audio_c.address, video_c.address) == (PUBLIC4, "2001:db8::1")
    assert 40000 <= audio.port <= 49999 and video.port == 6024
    assert endpoints(decision.install) == {
        ("192.0.2.1", 22334, PUBLIC4, audio.port),
        ("192.0.2.1", 22335, PUBLIC4, audio.port + 1),
        ("2001:db8::1", 6024, "2001:db8::1", 6024),
        ("2001:db8::1", 6025, "2001:db8::1", 6025),
    }
    # The call is the signalling host's: its limits count all four, and a BYE for it removes all four.
    assert eng.calls.pinholes_of["2001:db8::9:1"] == 4


def test_ipv6_registration_opens_an_identity_sip_pinhole_from_its_registrar_only() -> None:
    eng = engine()
    register = corpus_message("ipv6-good.dat").replace(b"[2001:db8::1]", b"[2001:db8::9:1]")
    sent = eng.handle(outbound("2001:db8::9:1"), register, 0.0)
    assert sent.payload is None
    ok = response(register, "200 OK", b'Contact: "Caller" <sip:caller@[2001:DB8::9:1]>;expires=600')
    forged = eng.handle(inbound("2001:db8::9:1", remote=Endpoint("2001:db8:ff::66", 5060)), ok, 1.0)
    assert forged.install == () and forged.refusals == ("not-dialog-peer",)
    accepted = eng.handle(inbound("2001:db8::9:1"), ok, 1.0)
    (hole,) = accepted.install
    assert (hole.kind, hole.lan, hole.public, hole.remote_ip) == (
        "sip",
        Endpoint("2001:db8::9:1", 5060),
        Endpoint("2001:db8::9:1", 5060),
        SERVER6.ip,
    )
    assert hole.timeout >= 600
