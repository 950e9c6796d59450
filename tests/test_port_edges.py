"""Port edges (issue 13, item 4): SDP whose RTP/RTCP arithmetic leaves 1-65535 opens nothing and says why;
every pinhole the engine emits has 16-bit ports; one bad LAN endpoint never spoils a media sample. Real
INVITEs, a real engine."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.core.engine import Engine, Timeouts
from nfsip.core.model import Decision, Direction, Endpoint, Flow
from nfsip.core.policy import Limits, Policy
from nfsip.core.ports import PortAllocator
from nfsip.core.sip.message import parse_message
from nfsip.kernel.conntrack import media_counters
from nfsip.kernel.ctnetlink import SourceCounts, source_key

PUBLIC, PHONE = "203.0.113.7", "10.0.0.2"
SERVER = Endpoint("198.51.100.2", 5060)
OUT = Flow(Direction.OUTBOUND, Endpoint(PHONE, 5060), Endpoint(PUBLIC, 5060), SERVER)
IN = Flow(Direction.INBOUND, Endpoint(PHONE, 5060), Endpoint(PUBLIC, 0), SERVER)


def engine(**limits: int) -> Engine:
    return Engine(PUBLIC, PortAllocator(40000, 49999), Timeouts(), policy=Policy(limits=Limits(**limits)))


def invite(media: str, callid: str = "c1", branch: str = "1", to_tag: str = "") -> bytes:
    """An INVITE as a phone sends it (tests/test_engine.py), with `media` as its m= section(s)."""
    sdp = f"v=0\r\no=- 1 1 IN IP4 {PHONE}\r\ns=-\r\nc=IN IP4 {PHONE}\r\nt=0 0\r\n{media}"
    return (
        "INVITE sip:bob@198.51.100.2 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bK{branch};rport\r\n"
        "From: <sip:alice@example.org>;tag=1\r\n"
        f"To: <sip:bob@example.org>{to_tag}\r\n"
        f"Call-ID: {callid}\r\n"
        f"CSeq: {branch} INVITE\r\n"
        f"Contact: <sip:alice@{PHONE}:5060>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def ok(callid: str = "c1", branch: str = "1") -> bytes:
    return (
        "SIP/2.0 200 OK\r\n"
        f"Via: SIP/2.0/UDP {PUBLIC}:5060;branch=z9hG4bK{branch};received={PUBLIC};rport=5060\r\n"
        "From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>;tag=2\r\n"
        f"Call-ID: {callid}\r\nCSeq: {branch} INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def bye(callid: str = "c1") -> bytes:
    return (
        f"BYE sip:alice@{PUBLIC}:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.2:5060;branch=z9hG4bKb\r\n"
        "From: <sip:bob@example.org>;tag=2\r\nTo: <sip:alice@example.org>;tag=1\r\n"
        f"Call-ID: {callid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def holes(d: Decision) -> list:
    return [*d.install, *d.recreate, *d.opened, *d.remove]


def test_rtcp_port_65536_opens_nothing_and_says_why():
    eng = engine()
    d = eng.handle(OUT, invite("m=audio 65535 RTP/AVP 0\r\n"), 0.0)
    assert d.refusals == ("media-port-range",)
    assert "65536" in d.detail and "outside 1-65535" in d.detail
    assert holes(d) == [] and len(eng.calls) == 0
    # As for any refused stream: Via and Contact are rewritten, the SDP (no stream of it opened) is not.
    msg = parse_message(d.payload)
    assert msg.top_via.sent_by.host == PUBLIC
    assert f"c=IN IP4 {PHONE}".encode() in msg.body() and b"m=audio 65535 RTP/AVP 0" in msg.body()


def test_port_count_past_65535_opens_nothing():
    eng = engine()
    d = eng.handle(OUT, invite("m=audio 65534/2 RTP/AVP 0\r\n"), 0.0)  # RTP 65534, 65536; RTCP 65535, 65537
    assert d.refusals == ("media-port-range",) and "65537" in d.detail
    assert holes(d) == [] and len(eng.calls) == 0


def test_only_the_bad_stream_is_refused():
    eng = engine()
    d = eng.handle(OUT, invite("m=audio 65535 RTP/AVP 0\r\nm=video 6002 RTP/AVP 96\r\n"), 0.0)
    assert d.refusals == ("media-port-range",)
    assert sorted(h.lan.port for h in d.install) == [6002, 6003]


def test_rtcp_mux_on_65535_needs_no_rtcp_port():
    d = engine().handle(OUT, invite("m=audio 65535 RTP/AVP 0\r\na=rtcp-mux\r\n"), 0.0)
    assert d.refusals == () and [h.lan.port for h in d.install] == [65535]


def test_explicit_rtcp_port_keeps_65535_in_range():
    d = engine().handle(OUT, invite("m=audio 65535 RTP/AVP 0\r\na=rtcp:65533\r\n"), 0.0)
    assert d.refusals == () and sorted(h.lan.port for h in d.install) == [65533, 65535]


def test_rtcp_attribute_65536_is_a_parse_error_that_opens_nothing():
    """a=rtcp names its port literally: beyond 16 bits the SDP is malformed (RFC 3605 §2.1), and a message
    nfsip cannot read passes unchanged, counted by reason."""
    eng = engine()
    d = eng.handle(OUT, invite("m=audio 6000 RTP/AVP 0\r\na=rtcp:65536\r\n"), 0.0)
    assert (d.outcome, d.detail, d.payload) == ("parse-error", "bad-sdp-rtcp", None)
    assert holes(d) == [] and len(eng.calls) == 0


def test_rtcp_attribute_0_opens_nothing():
    d = engine().handle(OUT, invite("m=audio 6000 RTP/AVP 0\r\na=rtcp:0\r\n"), 0.0)
    assert d.refusals == ("media-port-range",) and "port 0" in d.detail and holes(d) == []


def test_port_0_is_a_rejected_stream_not_a_refusal():
    """RFC 3264 §6: port 0 rejects the stream; it opens nothing and closes what the stream had."""
    eng = engine()
    first = eng.handle(OUT, invite("m=audio 6000 RTP/AVP 0\r\n"), 0.0)
    assert sorted(h.lan.port for h in first.install) == [6000, 6001]
    d = eng.handle(OUT, invite("m=audio 0 RTP/AVP 0\r\n", branch="2"), 1.0)
    assert d.refusals == () and d.install == () and d.opened == ()
    assert sorted(h.lan.port for h in d.remove) == [6000, 6001]
    fresh = engine().handle(OUT, invite("m=audio 0 RTP/AVP 0\r\n"), 0.0)
    assert fresh.refusals == () and holes(fresh) == []


def test_a_huge_port_count_is_refused_before_its_ports_are_listed():
    """The count comes from the network: `m=audio 1024/30000` once took 6.5 s of CPU (a quadratic membership
    test), one datagram stalling every phone's SIP. A count beyond the host's pinhole limit is refused before
    any port is listed (the detail says so; listing them first would end in the same limit, later); one
    beyond the address space, under a limit that high, as out of range."""
    d = engine().handle(OUT, invite("m=audio 1024/30000 RTP/AVP 0\r\n"), 0.0)
    assert d.refusals == ("pinholes-per-host",) and d.install == ()
    assert d.detail == "SDP m=1024/30000 of 10.0.0.2 asks for too many ports"
    d = engine(pinholes_per_host=10**9).handle(OUT, invite("m=audio 1024/99999999 RTP/AVP 0\r\n"), 0.0)
    assert d.refusals == ("media-port-range",) and d.install == ()


_port = st.one_of(st.integers(0, 65535), st.sampled_from([0, 1, 1023, 1024, 5060, 65533, 65534, 65535]))
_media = st.tuples(
    _port,
    st.one_of(st.none(), st.integers(0, 4), st.sampled_from([32767, 32768, 40000])),  # /<number of ports>
    st.one_of(st.none(), _port),  # a=rtcp
    st.booleans(),  # a=rtcp-mux
)


def _m_lines(streams: list[tuple[int, int | None, int | None, bool]]) -> str:
    text = ""
    for port, count, rtcp, mux in streams:
        text += f"m=audio {port}{'' if count is None else f'/{count}'} RTP/AVP 0\r\n"
        text += "" if rtcp is None else f"a=rtcp:{rtcp}\r\n"
        text += "a=rtcp-mux\r\n" if mux else ""
    return text


@settings(max_examples=400, deadline=None)
@given(offer=st.lists(_media, min_size=1, max_size=3), answer=st.lists(_media, min_size=1, max_size=3))
def test_every_pinhole_the_engine_emits_has_16_bit_ports(offer, answer):
    eng = engine(pinholes_per_host=100_000, pinholes_total=100_000, pinhole_burst_per_host=100_000)
    decisions = [
        eng.handle(OUT, invite(_m_lines(offer)), 0.0),
        eng.handle(IN, ok(), 1.0),
        eng.handle(OUT, invite(_m_lines(answer), branch="2", to_tag=";tag=2"), 2.0),  # a re-INVITE
        eng.handle(IN, bye(), 3.0),
    ]
    decisions += [
        Decision(None, "", install=tuple(eng.live_pinholes(3.0))),
        Decision(None, "", remove=tuple(eng.expire(1e9))),
    ]
    for d in decisions:
        for hole in holes(d):
            assert 0 < hole.lan.port <= 65535 and 0 < hole.public.port <= 65535, (d, hole)


def _entry(orig: tuple[str, int], reply: tuple[str, int], *counts: int) -> SourceCounts:
    return SourceCounts(source_key(*orig), source_key(*reply), *counts)


def test_one_bad_endpoint_does_not_spoil_the_sample():
    """A LAN endpoint with port 65536 made the whole sample fail ("int too big to convert"): every call's
    media counts, for as long as that call lived. It is left out and reported; the others are counted."""
    phone, bad, odd = Endpoint(PHONE, 6000), Endpoint(PHONE, 65536), Endpoint("not-an-address", 6000)
    flow = _entry((PHONE, 6000), ("198.51.100.2", 7000), 50, 8600, 40, 6880)
    got = media_counters([flow], [phone, bad, odd])
    assert got == {phone: (40, 6880, 50, 8600)}
    assert set(got.refused) == {bad, odd}
    assert media_counters([flow], [phone]).refused == ()
