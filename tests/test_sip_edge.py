"""Hand-written edge cases for nfsip.core.sip (no corpus needed)."""

from __future__ import annotations

import pytest

from nfsip.core.sip import Edit, SipParseError, Span, apply_edits, parse_message, parse_name_addrs, parse_sdp

from .sip_support import assert_rejected, parse_valid

SDP = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 192.168.1.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=sendonly\r\n"
    b"m=video 51372/2 RTP/AVP 31\r\n"
    b"c=IN IP4 10.0.0.5/127\r\n"
    b"a=rtcp:53020 IN IP4 10.0.0.6\r\n"
    b"a=rtcp-mux\r\n"
)


def invite(
    body: bytes = SDP, *, ctype: bytes = b"application/sdp", clen: bytes | None = None, extra: bytes = b""
) -> bytes:
    head = (
        b"INVITE sip:bob@203.0.113.9 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n'
        b"To: <sip:bob@example.com>\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"Contact: <sip:alice@192.168.1.10:5060;transport=udp>;expires=60\r\n" + extra
    )
    if ctype:
        head += b"Content-Type: " + ctype + b"\r\n"
    if clen is None:
        clen = str(len(body)).encode()
    if clen != b"-":
        head += b"Content-Length: " + clen + b"\r\n"
    return head + b"\r\n" + body


def test_basic_invite() -> None:
    data = invite()
    m = parse_valid(data)
    assert m.is_request and m.method == "INVITE" and m.status is None
    assert m.request_uri is not None and m.request_uri.user == "bob"
    v = m.vias[0]
    assert v.protocol == "SIP/2.0/UDP" and v.transport == "UDP"
    assert (v.sent_by.host, v.sent_by.port) == ("192.168.1.10", 5060)
    assert data[v.sent_by.span.start : v.sent_by.span.end] == b"192.168.1.10:5060"
    assert v.sent_by.port_span is not None
    assert data[v.sent_by.port_span.start : v.sent_by.port_span.end] == b"5060"
    assert v.branch == "z9hG4bK776asdhds"
    assert v.rport is not None and v.rport.value is None and v.received is None
    c = m.contacts[0]
    assert c.uri.hostport is not None and c.uri.hostport.port == 5060
    assert c.uri.param("transport") is not None and c.param("expires") is not None
    assert m.content_type == "application/sdp"
    assert m.content_length == len(SDP) and m.body() == SDP
    assert m.from_.display_name == "Alice" and m.from_.tag == "1928301774"
    assert m.to.tag is None
    sdp = m.sdp
    assert sdp is not None
    assert sdp.origin is not None and sdp.origin.address == "192.168.1.10"
    assert sdp.connection is not None and sdp.connection.address == "192.168.1.10"
    a, vid = sdp.media
    assert (a.kind, a.port, a.port_count, a.proto, a.formats) == ("audio", 49170, 1, "RTP/AVP", ("0", "8", "101"))
    assert a.direction == "sendonly" and a.connection is None and a.rtcp is None and not a.rtcp_mux
    assert sdp.media_connection(a) is sdp.connection
    assert (vid.port, vid.port_count) == (51372, 2)
    assert data[vid.port_span.start : vid.port_span.end] == b"51372"
    assert vid.connection is not None and vid.connection.address == "10.0.0.5"  # TTL stripped
    assert data[vid.connection.address_span.start : vid.connection.address_span.end] == b"10.0.0.5"
    assert vid.rtcp is not None and vid.rtcp.port == 53020
    assert vid.rtcp.address is not None and vid.rtcp.address.address == "10.0.0.6"
    assert data[vid.rtcp.port_span.start : vid.rtcp.port_span.end] == b"53020"
    assert vid.rtcp_mux and vid.direction == "sendrecv"
    assert data[a.span.start : a.span.end].startswith(b"m=audio") and a.span.end == vid.span.start
    assert vid.span.end == len(data)


def test_content_length_absent_udp_and_tcp() -> None:
    data = invite(clen=b"-")
    m = parse_message(data)
    assert m.content_length is None and m.body() == SDP and m.content_length_spans == ()
    with pytest.raises(SipParseError) as ei:
        parse_message(data, stream=True)
    assert ei.value.reason == "missing-content-length"
    # edits change the body length: nothing to fix up without Content-Length
    sp = m.sdp.media[0].port_span  # type: ignore[union-attr]
    out = apply_edits(m, [Edit(sp, b"1")])
    assert parse_message(out).sdp.media[0].port == 1  # type: ignore[union-attr]


def test_trailing_junk_and_stream_framing() -> None:
    data = invite() + b"JUNK\x00\xff"
    m = parse_message(data)
    assert m.trailing == b"JUNK\x00\xff" and m.raw == invite()
    assert apply_edits(m, []) == invite()  # trailing bytes not re-attached
    two = invite() + invite()
    m1 = parse_message(two, stream=True)
    m2 = parse_message(m1.trailing, stream=True)
    assert m2.trailing == b"" and m2.call_id == m1.call_id


@pytest.mark.parametrize(
    ("clen", "reason"),
    [
        (b"-5", "bad-content-length"),
        (b"abc", "bad-content-length"),
        (b"99999", "truncated-body"),
        (b"", "bad-content-length"),
    ],
)
def test_bad_content_length(clen: bytes, reason: str) -> None:
    assert_rejected(invite(clen=clen), reason)


def test_multiple_content_length() -> None:
    n = str(len(SDP)).encode()
    m = parse_message(invite(extra=b"l: " + n + b"\r\n"))
    assert len(m.content_length_spans) == 2
    out = apply_edits(m, [Edit(m.sdp.media[0].port_span, b"1")])  # type: ignore[union-attr]
    m2 = parse_message(out)
    assert m2.content_length == len(SDP) - 4 and len(m2.content_length_spans) == 2
    with pytest.raises(SipParseError):
        parse_message(invite(extra=b"l: 3\r\n"))


def test_keepalives_and_leading_crlf() -> None:
    for ka in (b"\r\n\r\n", b"\r\n", b"\n"):
        with pytest.raises(SipParseError) as ei:
            parse_message(ka)
        assert ei.value.reason == "keepalive"
    with pytest.raises(SipParseError) as ei:
        parse_message(b"")
    assert ei.value.reason == "empty"
    data = b"\r\n\r\n" + invite()
    m = parse_message(data)
    assert m.start_line_span.start == 4 and m.raw == data
    assert data[m.vias[0].sent_by.host_span.start : m.vias[0].sent_by.host_span.end] == b"192.168.1.10"


def test_lf_only_line_endings() -> None:
    data = invite(body=SDP.replace(b"\r\n", b"\n")).replace(b"\r\n", b"\n")
    m = parse_message(data)
    assert m.call_id == "a84b4c76e66710@pc33.example.com"
    assert m.sdp is not None and len(m.sdp.media) == 2
    assert m.content_length == len(m.body())


def test_slipstreaming_http_post_refused() -> None:
    """NAT slipstreaming (2020): a REGISTER hidden inside an HTTP POST body."""
    inner = invite()
    http = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(inner) + inner
    with pytest.raises(SipParseError) as ei:
        parse_message(http)
    assert ei.value.reason == "no-start-line"
    with pytest.raises(SipParseError):
        parse_message(b"xx" + inner)
    with pytest.raises(SipParseError):
        parse_message(b" " + inner)


def test_incomplete_stream_prefixes() -> None:
    data = invite()
    for cut in range(1, len(data)):
        with pytest.raises(SipParseError) as ei:
            parse_message(data[:cut], stream=True)
        assert ei.value.incomplete, (cut, ei.value.reason)


def test_compact_forms_folding_multi_values() -> None:
    data = (
        b"OPTIONS sip:x@example.com SIP/2.0\r\n"
        b"v: SIP/2.0/TCP 10.1.1.1:5070;branch=z9hG4bKa ,\r\n"
        b"   SIP / 2.0 / udp [2001:db8::5]:5062 ;received=192.0.2.1;rport=5063;maddr=239.1.1.1\r\n"
        b"Via: SIP/2.0/TLS host.example.com;branch=z9hG4bKc\r\n"
        b"f: sip:a@example.com;tag=x\r\n"
        b"t: <sip:b@example.com>\r\n"
        b"i: cid-1\r\n"
        b"CSeq: 1 OPTIONS\r\n"
        b'm: <sip:a@10.1.1.1>;q=0.5, "Bob \\"B\\"" <sips:b@[2001:db8::7]:5061>,\r\n sip:c@10.1.1.3\r\n'
        b"k: path\r\n"
        b"o: presence\r\n"
        b"u: talk\r\n"
        b"x: 1800\r\n"
        b"l: 0\r\n\r\n"
    )
    m = parse_message(data)
    assert [(v.transport, v.sent_by.host, v.sent_by.port) for v in m.vias] == [
        ("TCP", "10.1.1.1", 5070),
        ("UDP", "2001:db8::5", 5062),
        ("TLS", "host.example.com", None),
    ]
    v6 = m.vias[1]
    assert data[v6.sent_by.host_span.start : v6.sent_by.host_span.end] == b"[2001:db8::5]"
    assert v6.received == "192.0.2.1" and v6.rport is not None and v6.rport.value == "5063"
    assert v6.maddr == "239.1.1.1" and v6.protocol == "SIP/2.0/UDP"
    rp = v6.rport.value_span
    assert rp is not None and data[rp.start : rp.end] == b"5063"
    assert [c.uri.hostport.host for c in m.contacts if c.uri.hostport] == ["10.1.1.1", "2001:db8::7", "10.1.1.3"]
    assert m.contacts[1].display_name == 'Bob "B"' and m.contacts[1].uri.scheme == "sips"
    names = [h.name for h in m.headers]
    assert names[:2] == ["via", "via"]
    assert {"supported", "event", "allow-events", "session-expires", "content-length"} <= set(names)
    assert m.header("Session-Expires").raw_name == "x"  # type: ignore[union-attr]
    assert m.header("v").value.startswith("SIP/2.0/TCP 10.1.1.1:5070;branch=z9hG4bKa , SIP / 2.0")  # type: ignore[union-attr]
    assert m.header("i").line_span == Span(data.index(b"i: "), data.index(b"CSeq"))  # type: ignore[union-attr]


def test_contact_star_and_expires() -> None:
    data = (
        b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nFrom: <sip:a@example.com>;tag=1\r\n"
        b"To: <sip:a@example.com>\r\nCall-ID: r1\r\nCSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    m = parse_message(data)
    assert m.contact_star and m.contacts == () and m.expires == 0


def test_response_and_routes() -> None:
    data = (
        b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.168.0.2:5060;branch=z9hG4bK1;received=198.51.100.1;rport=1024\r\n"
        b"Record-Route: <sip:p1.example.com;lr>, <sip:10.0.0.1;lr>\r\nRecord-Route: <sip:p3.example.com;lr>\r\n"
        b"From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    m = parse_message(data)
    assert not m.is_request and m.status == 180 and m.reason == "Ringing" and m.method is None
    rr = parse_name_addrs(m, "record-route")
    assert [r.uri.hostport.host for r in rr if r.uri.hostport] == ["p1.example.com", "10.0.0.1", "p3.example.com"]
    assert m.vias[0].rport is not None and m.vias[0].rport.value == "1024"


def test_tel_and_unknown_uris() -> None:
    data = invite().replace(b"To: <sip:bob@example.com>", b"To: <tel:+1-201-555-0123;phone-context=example.com>")
    m = parse_message(data)
    assert m.to.uri.scheme == "tel" and m.to.uri.hostport is None
    assert m.to.uri.param("phone-context") is not None


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [
        ((b"Call-ID: a84b4c76e66710@pc33.example.com\r\n", b""), "missing-call-id"),
        ((b"CSeq: 314159 INVITE\r\n", b""), "missing-cseq"),
        ((b"To: <sip:bob@example.com>\r\n", b""), "missing-to"),
        ((b'From: "Alice" <sip:alice@example.com>;tag=1928301774\r\n', b""), "missing-from"),
        ((b"Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK776asdhds;rport\r\n", b""), "missing-via"),
        ((b"CSeq: 314159 INVITE", b"CSeq: 314159 BYE"), "cseq-method-mismatch"),
        ((b"CSeq: 314159 INVITE", b"CSeq: 4294967296 INVITE"), "bad-cseq"),
        ((b"Via: SIP/2.0/UDP", b"Via: SIP/3.0/UDP"), "bad-via-version"),
        ((b"Via: SIP/2.0/UDP 192.168.1.10:5060", b"Via: SIP/2.0/UDP 192.168.1.10:99999"), "bad-via"),
        ((b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), "bad-header-line"),
        ((b"SIP/2.0\r\nVia", b"SIP/2.0\r\n folded-first\r\nVia"), "bad-header-line"),
        ((b"INVITE sip:bob@203.0.113.9 SIP/2.0", b"INVITE sip:bob@203.0.113.9 SIP/2.1"), "bad-version"),
        ((b"INVITE sip:bob@203.0.113.9 SIP/2.0", b"INVITE  sip:bob@203.0.113.9 SIP/2.0"), "bad-request-line"),
        ((b"INVITE sip:bob@203.0.113.9", b"INVITE sip:bob@[2001:db8::1"), "bad-uri"),
        ((b"m=video 51372/2", b"m=video 5x"), "bad-sdp-media"),
        ((b"c=IN IP4 10.0.0.5/127", b"c=IN"), "bad-sdp-connection"),
        ((b"o=- 1 1 IN IP4 192.168.1.10", b"o=- 1"), "bad-sdp-origin"),
        ((b"a=rtcp:53020 IN IP4 10.0.0.6", b"a=rtcp:x"), "bad-sdp-rtcp"),
        ((b"t=0 0\r\n", b"garbage line\r\n"), "bad-sdp-line"),
        ((b"v=0\r\n", b"x=0\r\n"), "bad-sdp"),
    ],
)
def test_rejections(mutation: tuple[bytes, bytes], reason: str) -> None:
    old, new = mutation
    data = invite()
    assert old in data
    data = data.replace(old, new, 1)
    if b"Content-Length" in data and old in SDP:  # keep Content-Length right for SDP mutations
        body = data.split(b"\r\n\r\n", 1)[1]
        data = data.replace(b"Content-Length: %d" % len(SDP), b"Content-Length: %d" % len(body))
    assert_rejected(data, reason)


def test_multipart_sdp_and_edit() -> None:
    sdp = SDP
    body = (
        b"--unique-boundary-1\r\n"
        b"Content-Type: application/sdp\r\n\r\n" + sdp + b"\r\n"
        b"--unique-boundary-1\r\n"
        b"Content-Type: application/isup; version=itu-t92+\r\n\r\n"
        b"\x01\x00\x49\x00\x00\x03\x02\x00\x07\x04\x10\x00\x33\x63\x21\x43\x00\x00\r\n"
        b"--unique-boundary-1--\r\n"
    )
    data = invite(body=body, ctype=b'multipart/mixed; boundary="unique-boundary-1"')
    m = parse_message(data)
    assert m.content_type == "multipart/mixed"
    assert m.sdp is not None and len(m.sdp.media) == 2
    assert data[m.sdp.span.start : m.sdp.span.end] == sdp
    edits = [Edit(m.sdp.media[0].port_span, b"1049"), Edit(m.sdp.connection.address_span, b"203.0.113.7")]  # type: ignore[union-attr]
    out = apply_edits(m, edits)
    m2 = parse_message(out)
    assert m2.sdp is not None and m2.sdp.media[0].port == 1049
    assert m2.content_length == len(m2.body())
    assert m2.sdp.connection is not None and m2.sdp.connection.address == "203.0.113.7"  # type: ignore[union-attr]
    assert m2.body().endswith(b"--unique-boundary-1--\r\n")


def test_multipart_without_sdp_and_bad_boundary() -> None:
    body = b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n"
    m = parse_message(invite(body=body, ctype=b"multipart/mixed;boundary=b"))
    assert m.sdp is None
    with pytest.raises(SipParseError) as ei:
        parse_message(invite(body=body, ctype=b"multipart/mixed"))
    assert ei.value.reason == "bad-multipart"


def test_apply_edits_rules() -> None:
    data = invite()
    m = parse_message(data)
    host = m.vias[0].sent_by.host_span
    assert apply_edits(m, []) == data
    assert apply_edits(m, [Edit(host, b"192.168.1.10")]) == data  # no-op edit
    with pytest.raises(ValueError):
        apply_edits(m, [Edit(host, b"a"), Edit(Span(host.start + 1, host.end + 1), b"b")])
    with pytest.raises(ValueError):
        apply_edits(m, [Edit(Span(m.body_span.start - 2, m.body_span.start + 2), b"")])
    with pytest.raises(ValueError):
        apply_edits(m, [Edit(Span(0, len(data) + 1), b"")])
    cl = m.content_length_spans[0]
    with pytest.raises(ValueError):  # Content-Length must be rewritten but is edited too
        apply_edits(m, [Edit(cl, b"7"), Edit(m.sdp.media[0].port_span, b"1")])  # type: ignore[union-attr]
    # header-only edit keeps Content-Length; body edit rewrites only its digits
    out = apply_edits(m, [Edit(host, b"203.0.113.7")])
    assert out == data.replace(b"192.168.1.10:5060;branch", b"203.0.113.7:5060;branch")
    sp = m.sdp.media[0].port_span  # type: ignore[union-attr]
    out = apply_edits(m, [Edit(sp, b"7")])
    assert out == data.replace(b"m=audio 49170", b"m=audio 7").replace(
        b"Content-Length: %d" % len(SDP), b"Content-Length: %d" % (len(SDP) - 4)
    )
    # adjacent edits and insertions are fine
    out = apply_edits(m, [Edit(Span(host.start, host.start), b"x"), Edit(host, b"y")])
    assert b"Via: SIP/2.0/UDP xy:5060" in out


def test_sdp_standalone_features() -> None:
    body = (
        b"v=0\n"
        b"o=jdoe 2890844526 2890842807 IN IP6 2001:db8::1 \n"
        b"s=-\n"
        b"c=IN IP4 0.0.0.0\n"
        b"t=0 0\n"
        b"a=recvonly\n"
        b"m=audio 0 RTP/AVP 0\n"
        b"m=audio 5004 RTP/SAVPF 111\n"
        b"a=inactive\n"
        b"a=candidate:1 1 UDP 2130706431 192.168.1.5 5004 typ host\n"
        b"a=candidate:2 1 UDP 1694498815 198.51.100.3 40000 typ srflx raddr 192.168.1.5 rport 5004\n"
        b"a=rtcp-fb:111 nack\n"
        b"m=image 6000 udptl t38\n"
        b"y=unknown type, ignored\n"
    )
    pre = b"PREFIX"
    raw = pre + body
    sdp = parse_sdp(raw, len(pre), len(raw))
    assert sdp.origin is not None and sdp.origin.addrtype == "IP6" and sdp.origin.address == "2001:db8::1"
    assert sdp.connection is not None and sdp.connection.address == "0.0.0.0"  # hold
    m0, m1, m2 = sdp.media
    assert m0.port == 0 and m0.disabled and m0.direction == "recvonly"
    assert m1.direction == "inactive" and m1.rtcp is None and not m1.rtcp_mux
    c1, c2 = m1.candidates
    assert (c1.address, c1.port, c1.typ, c1.raddr) == ("192.168.1.5", 5004, "host", None)
    assert (c2.address, c2.port, c2.typ, c2.raddr, c2.rport) == ("198.51.100.3", 40000, "srflx", "192.168.1.5", 5004)
    assert c2.raddr_span is not None and raw[c2.raddr_span.start : c2.raddr_span.end] == b"192.168.1.5"
    assert c2.rport_span is not None and raw[c2.rport_span.start : c2.rport_span.end] == b"5004"
    assert raw[c1.address_span.start : c1.address_span.end] == b"192.168.1.5"
    assert (m2.kind, m2.proto, m2.formats, m2.direction) == ("image", "udptl", ("t38",), "recvonly")
    assert sdp.direction == "recvonly"
    with pytest.raises(SipParseError) as ei:
        parse_sdp(body + b"x-not-a-type-line\n", 0, len(body) + 18)
    assert ei.value.reason == "bad-sdp-line"


def test_bytes_like_inputs() -> None:
    data = invite()
    assert parse_message(bytearray(data)).call_id == parse_message(memoryview(data)).call_id
    with pytest.raises(TypeError):
        parse_message("INVITE")  # type: ignore[arg-type]


def test_utf8_and_binary_robustness() -> None:
    data = invite().replace(b'"Alice"', '"Алиса"'.encode())
    m = parse_message(data)
    assert m.from_.display_name == "Алиса"
    data = invite().replace(b'"Alice"', b'"\xff\xfe"')
    assert parse_message(data).from_.display_name == "\udcff\udcfe"  # surrogateescape


def test_ipv6_via_host_replaced_by_ipv4() -> None:
    data = invite().replace(b"192.168.1.10:5060;branch", b"[2001:db8::10]:5060;branch")
    m = parse_message(data)
    hp = m.vias[0].sent_by
    assert hp.host == "2001:db8::10" and hp.is_ipv6
    assert data[hp.host_span.start : hp.host_span.end] == b"[2001:db8::10]"
    out = apply_edits(m, [Edit(hp.host_span, b"198.51.100.1")])
    m2 = parse_message(out)
    assert (m2.vias[0].sent_by.host, m2.vias[0].sent_by.port) == ("198.51.100.1", 5060)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (invite().replace(b";rport", b";rport" + b";x" * 600), "too-many-params"),
        (invite().replace(b";rport", b";rport" + b";x" * 70), "too-many-params"),
        (invite().replace(b"sip:bob@203.0.113.9", b"sip:bob@203.0.113.9" + b";" * 70), "too-many-params"),
        (invite(extra=b"Via: SIP/2.0/UDP h\r\n" * 130), "too-many-values"),
        (invite(extra=b"Contact: <sip:a@b>\r\n" * 130), "too-many-values"),
        (invite(body=b"v=0\r\n" + b"m=audio 1 RTP/AVP 0\r\n" * 65), "too-many-media"),
    ],
)
def test_resource_limits(data: bytes, reason: str) -> None:
    """Bounded work per packet: pathological repetition is refused early (a lazy
    parse refuses it when it parses the part, e.g. Via values after the first)."""
    assert_rejected(data, reason)


def test_just_below_limits_parse() -> None:
    m = parse_valid(invite(extra=b"Via: SIP/2.0/UDP h\r\n" * 120))
    assert len(m.vias) == 121
    m = parse_message(invite(body=b"v=0\r\n" + b"m=audio 1 RTP/AVP 0\r\n" * 64))
    assert m.sdp is not None and len(m.sdp.media) == 64


def test_a_content_length_of_thousands_of_digits_is_a_parse_error() -> None:
    """int() refuses a string of more than 4,300 digits with a ValueError: the parser must say
    bad-content-length first (one datagram can carry such a header)."""
    from nfsip.core.sip.errors import SipParseError

    raw = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    with pytest.raises(SipParseError) as exc:
        parse_message(raw)
    assert exc.value.reason == "bad-content-length"
    zeros = (
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: a\r\nCSeq: 1 OPTIONS\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
        b"From: <sip:a@h>;tag=1\r\nTo: <sip:x>\r\nMax-Forwards: 70\r\n"
    )
    assert parse_message(zeros + b"Content-Length: 00000000000000\r\n\r\n").content_length == 0
