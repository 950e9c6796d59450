"""The parser's shortcut accessors give exactly what the general code gives (real SIP text)."""

from __future__ import annotations

from nfsip.sip.errors import SipParseError
from nfsip.sip.message import parse_message


def message_with_to(to_value: str) -> bytes:
    return (
        "INVITE sip:bob@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
        f"From: <sip:alice@example.org>;tag=a1\r\nTo: {to_value}\r\nCall-ID: c1@10.0.0.2\r\n"
        "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_to_tag_is_found_without_parsing_only_when_it_cannot_be_there():
    cases = {
        "<sip:bob@example.org>": False,
        "<sip:bob@example.org>;tag=b1": True,
        "<sip:bob@example.org> ; TAG = b1": True,
        '"Tagged Bob" <sip:bob@example.org>': False,  # "tag" in the display name: parsed, still no tag
        "<sip:bob@example.org;tag=x>": False,  # a URI parameter, not the header's tag (RFC 3261 §19.1.1)
        "sip:bob@example.org;tag=b2": True,  # addr-spec form: the parameter belongs to the header
        "<sip:bob@example.org;tag=x": False,  # malformed (no '>'): no dialog, and no exception
    }
    for value, expected in cases.items():
        msg = parse_message(message_with_to(value))
        assert msg.to_has_tag() is expected, value
        if expected:
            assert msg.to.tag is not None


def session_expires_by_lookup(msg) -> str | None:
    header = msg.header("session-expires")
    return None if header is None else header.value


SESSION_TIMER_HEADERS = [
    "Session-Expires: 1800;refresher=uac\r\n",
    "x: 90\r\n",
    "SESSION-EXPIRES :  600 \r\n",
    "Session-Expires: 1800\r\nSession-Expires: 90\r\n",  # the first one counts, as with header()
    "X-Session-Expires: 5\r\n",  # another header: no Session-Expires at all
    "Min-SE: 90\r\n",
    "",
]


def test_session_expires_from_the_header_scan_equals_the_header_lookup():
    for extra in SESSION_TIMER_HEADERS:
        raw = message_with_to("<sip:bob@example.org>;tag=b1").replace(
            b"Content-Length", extra.encode() + b"Content-Length"
        )
        msg = parse_message(raw)
        assert msg.session_expires_value() == session_expires_by_lookup(msg), extra
    folded = parse_message(message_with_to("<sip:bob@example.org>").replace(b"CSeq", b"x:\r\n 120\r\nCSeq"))
    assert folded.session_expires_value() == "120"  # a folded block takes the generic path


def test_session_expires_on_every_captured_message():
    """All SIP in the real captures and vendor messages: the scan and the lookup agree."""
    from .corpus import corpus_dir, pcap_udp_sip, vendor_messages

    corpus_dir("vendors")
    payloads = [p.read_bytes() for p in vendor_messages()]
    for path in sorted(corpus_dir("pcap").glob("*.pcap*")):
        payloads.extend(payload for _packet, payload in pcap_udp_sip(path))
    seen = 0
    for payload in payloads:
        try:
            msg = parse_message(payload)
        except SipParseError:
            continue
        assert msg.session_expires_value() == session_expires_by_lookup(msg)
        seen += msg.session_expires_value() is not None
    assert seen > 0  # the corpus has session timers: the comparison was not vacuous
