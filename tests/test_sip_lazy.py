"""The parts of a message parsed on first access (nfsip.core.sip.message module docstring).

parse_message defers From, To, the Via values after the first and the ICE candidates to their first access.
Checked here: an error there surfaces as SipParseError (and only that) when the part is read and from
validate(), while the rest of the message stays usable; errors in what a NAT helper acts upon raise from
parse_message itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from nfsip.core.sip import SipParseError, apply_edits, parse_message, parse_name_addrs, parse_sdp
from nfsip.core.sip.grammar import MAX_SEPARATORS, MAX_VALUES
from nfsip.core.sip.sdp import MAX_CANDIDATES

from .sip_support import assert_rejected, parse_valid

# Every attribute of a message; reading one of the first three may raise.
DEFERRED = ("from_", "to", "vias")
ATTRIBUTES = (
    "raw",
    "trailing",
    "is_request",
    "method",
    "request_uri",
    "status",
    "reason",
    "call_id",
    "cseq",
    "cseq_method",
    "top_via",
    "contacts",
    "contact_star",
    "content_type",
    "content_length",
    "content_length_spans",
    "body_span",
    "expires",
    "start_line_span",
    "header_end",
    "headers",
    "sdp",
)

SDP = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 192.168.1.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.10\r\n"
    b"t=0 0\r\n"
    b"a=recvonly\r\n"
    b"m=audio 49170 RTP/AVP 0 8\r\n"
    b"a=sendonly\r\n"
    b"a=candidate:1 1 UDP 2130706431 192.168.1.10 49170 typ host\r\n"
    b"m=video 51372 RTP/AVP 31\r\n"
    b"a=rtcp:51373 IN IP4 192.168.1.10\r\n"
)


TOP_VIA = b"SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK776asdhds;rport"


def invite(
    *,
    from_: bytes = b'"Alice" <sip:alice@example.com>;tag=1928301774',
    to: bytes = b"<sip:bob@example.com>",
    vias: tuple[bytes, ...] = (TOP_VIA,),
    body: bytes = SDP,
    extra: bytes = b"",
) -> bytes:
    head = b"INVITE sip:bob@203.0.113.9 SIP/2.0\r\n"
    head += b"".join(b"Via: " + v + b"\r\n" for v in vias)
    head += (
        b"Max-Forwards: 70\r\nFrom: " + from_ + b"\r\nTo: " + to + b"\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.com\r\nCSeq: 314159 INVITE\r\n"
        b"Contact: <sip:alice@192.168.1.10:5060;transport=udp>;expires=60\r\n" + extra
    )
    return head + b"Content-Type: application/sdp\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def test_valid_message() -> None:
    msg = parse_valid(invite())
    assert msg.top_via is msg.vias[0]
    assert msg.top_via.branch == "z9hG4bK776asdhds"
    assert msg.from_.tag == "1928301774" and msg.to.tag is None
    assert [m.direction for m in msg.sdp.media] == ["sendonly", "recvonly"]  # type: ignore[union-attr]
    assert msg.sdp is not None and msg.sdp.direction == "recvonly"
    (cand,) = msg.sdp.media[0].candidates
    assert cand.address == "192.168.1.10" and msg.sdp.media[1].candidates == ()


@pytest.mark.parametrize(
    ("kwargs", "attribute", "reason"),
    [
        ({"from_": b'"Alice <sip:alice@example.com>;tag=1'}, "from_", "unterminated-quote"),
        ({"from_": b"<sip:alice@example.com;tag=1"}, "from_", "bad-from"),
        ({"from_": b"<sip:alice@[2001:db8::1>;tag=1"}, "from_", "bad-uri"),
        ({"from_": b"<sip:alice@example.com:99999>"}, "from_", "bad-uri"),
        ({"from_": b"<sip:a@b>" + b";x" * 70}, "from_", "too-many-params"),
        ({"from_": b"<sip:a@b>" + b";" * (MAX_SEPARATORS + 1)}, "from_", "too-many-params"),
        ({"to": b"<sip:bob@example.com> junk"}, "to", "bad-to"),
        ({"to": b'"Bob <sip:bob@example.com>'}, "to", "unterminated-quote"),
        ({"vias": (b"SIP/2.0/UDP 192.168.1.10;branch=z9hG4bK1", b"SIP/3.0/UDP proxy")}, "vias", "bad-via-version"),
        ({"vias": (b"SIP/2.0/UDP 192.168.1.10;branch=z9hG4bK1, SIP/2.0/UDP p:70000",)}, "vias", "bad-via"),
        (
            {"vias": (b"SIP/2.0/UDP 192.168.1.10;branch=z9hG4bK1",) + (b"SIP/2.0/UDP h",) * MAX_VALUES},
            "vias",
            "too-many-values",
        ),
        ({"vias": (b"SIP/2.0/UDP a;branch=z9hG4bK1", b"SIP/2.0/UDP h" + b";x" * 70)}, "vias", "too-many-params"),
    ],
)
def test_deferred_header_errors_surface_on_access(kwargs: dict[str, Any], attribute: str, reason: str) -> None:
    data = invite(**kwargs)
    assert_rejected(data, reason)
    msg = parse_message(data)  # the message is usable
    assert msg.top_via.sent_by.host in ("192.168.1.10", "a")
    assert msg.contacts[0].uri.hostport is not None and msg.sdp is not None
    for _ in range(2):  # not kept as a success
        with pytest.raises(SipParseError) as ei:
            getattr(msg, attribute)
        assert ei.value.reason == reason
    for name in ATTRIBUTES + tuple(a for a in DEFERRED if a != attribute):
        try:
            getattr(msg, name)
        except SipParseError:
            assert name in DEFERRED  # another deferred part may be broken by the same bytes
    assert apply_edits(msg, []) == data


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (SDP.replace(b"a=candidate:1 1 UDP", b"a=candidate:1 x UDP"), "bad-sdp-candidate"),
        (SDP.replace(b"49170 typ host", b"70000 typ host"), "bad-sdp-candidate"),
        (SDP + b"a=candidate:1 1 UDP 1 10.0.0.1 1 typ host\r\n" * (MAX_CANDIDATES + 1), "too-many-candidates"),
    ],
)
def test_deferred_candidate_errors(body: bytes, reason: str) -> None:
    data = invite(body=body)
    assert_rejected(data, reason)
    msg = parse_message(data)
    assert msg.sdp is not None
    bad = [m for m in msg.sdp.media if m.span.slice(msg.raw).count(b"a=candidate:")][-1]
    with pytest.raises(SipParseError) as ei:
        bad.candidates  # noqa: B018
    assert ei.value.reason == reason
    assert [m.port for m in msg.sdp.media] and msg.sdp.media[0].direction == "sendonly"
    with pytest.raises(SipParseError):
        parse_sdp(msg.raw, msg.body_span.start, msg.body_span.end).validate()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # what the NAT helper acts upon
        (invite(vias=(b"SIP/2.0/UDP 192.168.1.10:99999;branch=x",)), "bad-via"),
        (invite(vias=(b"SIP/2.0/UDP 192.168.1.10;branch=x garbage",)), "bad-via"),
        (invite(vias=(b"SIP/2.0/UDP a" + b";x" * 70,)), "too-many-params"),
        (invite(extra=b"Contact: <sip:a@[::1>\r\n"), "bad-uri"),
        (invite(extra=b"Contact: <sip:a@b>" + b";x" * 70 + b"\r\n"), "too-many-params"),
        (invite(extra=b"From: <sip:x@y>\r\n"), "multiple-from"),
        (invite(extra=b"t: <sip:x@y>\r\n"), "multiple-to"),
        (invite(body=SDP.replace(b"m=video 51372", b"m=video 70000")), "bad-sdp-media"),
        (invite(body=SDP.replace(b"a=rtcp:51373", b"a=rtcp:x")), "bad-sdp-rtcp"),
        (invite(body=SDP + b" indented=line\r\n"), "bad-sdp-line"),
        (invite().replace(b"INVITE sip:bob@203.0.113.9", b"INVITE sip:bob@203.0.113.9:99999"), "bad-uri"),
        (invite().replace(b"INVITE sip:bob@203.0.113.9", b"INVITE sip:bob@203.0.113.9" + b";" * 70), "too-many-params"),
        (invite().replace(b"Max-Forwards: 70", b"Max-Forwards 70"), "bad-header-line"),
    ],
)
def test_errors_in_what_is_acted_upon_raise_from_parse_message(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError) as ei:
        parse_message(data)
    assert ei.value.reason == reason


def test_bad_header_line_reported_before_a_value_error() -> None:
    """A malformed header line anywhere wins over a bad value."""
    data = invite(extra=b"CSeq: 1 INVITE\r\nBroken line\r\n")
    with pytest.raises(SipParseError) as ei:
        parse_message(data)
    assert ei.value.reason == "bad-header-line"


def test_errors_at_once_before_errors_on_first_access() -> None:
    data = invite(from_=b'"unterminated <sip:a@b>', extra=b"CSeq: 2 INVITE\r\n")
    with pytest.raises(SipParseError) as ei:
        parse_message(data)
    assert ei.value.reason == "multiple-cseq"  # From is read on first access


def test_unusual_forms_parse_to_the_same_values() -> None:
    """Folding, LF-only lines, compact names, LWS, quoted parameters, several values per line."""
    plain_msg = parse_valid(invite())
    variants = [
        invite()
        .replace(b"\r\n", b"\n")
        .replace(b"Content-Length: %d" % len(SDP), b"Content-Length: %d" % (len(SDP) - 11)),
        invite(vias=(b"SIP / 2.0 / UDP 192.168.1.10:5060 ;branch=z9hG4bK776asdhds ; rport",)),
        invite(vias=(b"SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK776asdhds;rport,\r\n SIP/2.0/TCP p;branch=y",)),
        invite(vias=(b"SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK776asdhds;rport, SIP/2.0/TCP p;branch=y",)),
        invite().replace(
            b"Contact: <sip:alice@192.168.1.10:5060;transport=udp>;expires=60",
            b'm: "A \\"x\\"" <sip:alice@192.168.1.10:5060;transport=udp>;expires=60;q="0.5"',
        ),
        invite().replace(b"From: ", b"f:\t"),
        invite(extra=b"Contact: *\r\nExpires: 0\r\nl: %d\r\n" % len(SDP)),
        invite(to=b"Bob <sip:bob;x=y@example.com;user=phone?Subject=hi>;tag=a"),
        invite(from_=b"sip:alice@example.com;tag=1"),
    ]
    for data in variants:
        msg = parse_valid(data)
        assert msg.top_via.sent_by.host == "192.168.1.10"
        assert msg.top_via.branch == "z9hG4bK776asdhds"
        assert msg.contacts[0].uri.hostport is not None
        assert msg.contacts[0].uri.hostport.host == "192.168.1.10"
        assert (msg.sdp is not None) and [m.port for m in msg.sdp.media] == [
            m.port
            for m in plain_msg.sdp.media  # type: ignore[union-attr]
        ]


def test_top_via_and_the_vias_below() -> None:
    data = invite(vias=(b"SIP/2.0/UDP 192.168.1.10;branch=z9hG4bK1, SIP/2.0/TCP p1;branch=a", b"SIP/2.0/TLS p2"))
    msg = parse_message(data)
    assert msg.top_via.branch == "z9hG4bK1"
    assert [v.transport for v in msg.vias] == ["UDP", "TCP", "TLS"]
    assert msg.vias[0] is msg.top_via


def test_validate_and_helpers() -> None:
    msg = parse_message(invite(extra=b"Record-Route: <sip:p1;lr>, <sip:p2;lr>\r\nSession-Expires: 1800\r\n"))
    assert msg.validate() is msg
    assert [r.uri.hostport.host for r in parse_name_addrs(msg, "record-route") if r.uri.hostport] == ["p1", "p2"]
    assert msg.header("x") is not None and msg.header("session-expires").value == "1800"  # type: ignore[union-attr]
    assert msg.header_end == msg.raw.index(b"\r\n\r\n") + 2
    assert repr(msg).startswith("<SipMessage INVITE sip:bob@203.0.113.9 ")


@pytest.mark.parametrize(
    ("to", "tag"),
    [
        (b"<sip:bob@example.org>", None),
        (b"<sip:bob@example.org>;tag=b1", "b1"),
        (b"<sip:bob@example.org> ; TAG = b1", "b1"),
        (b'"Tagged Bob" <sip:bob@example.org>', None),  # "tag" in the display name
        (b"<sip:bob@example.org;tag=x>", None),  # a URI parameter, not the header's tag (RFC 3261 §19.1.1)
        (b"sip:bob@example.org;tag=b2", "b2"),  # addr-spec form: the parameter belongs to the header
    ],
)
def test_to_tag(to: bytes, tag: str | None) -> None:
    assert parse_message(invite(to=to)).to.tag == tag
