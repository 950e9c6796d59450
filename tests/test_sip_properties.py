"""Property tests (hypothesis) for nfsip.core.sip: round trips and robustness."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nfsip.core.sip import Edit, SipParseError, apply_edits, parse_message

from .corpus import CORPUS
from .sip_support import parse_valid

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
ipv4 = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
ipv6 = st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8).map(lambda g: ":".join(f"{x:x}" for x in g))
hostnames = st.lists(labels, min_size=1, max_size=3).map(".".join).filter(lambda h: not h[0].isdigit())
hosts = st.one_of(ipv4, hostnames, ipv6)
ports = st.none() | st.integers(1, 65535)
methods = st.sampled_from(["INVITE", "ACK", "BYE", "REGISTER", "OPTIONS", "NOTIFY", "PRACK"]) | tokens.filter(
    lambda t: t.upper() != "SIP" and not t.upper().startswith("SIP/")
)


def hostport(host: str, port: int | None) -> str:
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


@dataclass
class ViaM:
    transport: str
    host: str
    port: int | None
    branch: str
    rport: bool
    received: str | None


@dataclass
class MediaM:
    kind: str
    port: int
    count: int | None
    formats: list[str]
    conn: str | None
    direction: str | None
    mux: bool
    rtcp: int | None


@dataclass
class MsgM:
    request: bool
    method: str
    ruri_host: str
    ruri_port: int | None
    status: int
    reason: str
    vias: list[ViaM]
    call_id: str
    cseq: int
    contacts: list[tuple[str | None, str, int | None]]
    media: list[MediaM] | None
    session_conn: str
    # formatting choices
    compact: bool
    fold: bool
    via_one_line: bool
    lws_colon: bool
    lf_only: bool
    name_case: str


vias_st = st.builds(
    ViaM,
    transport=st.sampled_from(["UDP", "TCP", "TLS", "SCTP", "WS"]),
    host=hosts,
    port=ports,
    branch=tokens.map(lambda t: "z9hG4bK" + t),
    rport=st.booleans(),
    received=st.none() | ipv4,
)
media_st = st.builds(
    MediaM,
    kind=st.sampled_from(["audio", "video", "image", "application", "text", "message"]),
    port=st.integers(0, 65535),
    count=st.none() | st.integers(1, 4),
    formats=st.lists(st.integers(0, 127).map(str), min_size=1, max_size=5),
    conn=st.none() | ipv4,
    direction=st.none() | st.sampled_from(["sendrecv", "sendonly", "recvonly", "inactive"]),
    mux=st.booleans(),
    rtcp=st.none() | st.integers(1, 65535),
)
msgs_st = st.builds(
    MsgM,
    request=st.booleans(),
    method=methods,
    ruri_host=hosts,
    ruri_port=ports,
    status=st.integers(100, 699),
    reason=st.text(st.characters(min_codepoint=32, max_codepoint=0x44F, exclude_characters="\x7f"), max_size=20),
    vias=st.lists(vias_st, min_size=1, max_size=4),
    call_id=st.text(TOKEN_CHARS + "@:<>/", min_size=1, max_size=30),
    cseq=st.integers(0, 2**31 - 1),
    contacts=st.lists(st.tuples(st.none() | st.text("abc XYZ", min_size=1, max_size=8), hosts, ports), max_size=3),
    media=st.none() | st.lists(media_st, min_size=1, max_size=4),
    session_conn=ipv4,
    compact=st.booleans(),
    fold=st.booleans(),
    via_one_line=st.booleans(),
    lws_colon=st.booleans(),
    lf_only=st.booleans(),
    name_case=st.sampled_from(["lower", "upper", "title"]),
)


def serialize(m: MsgM) -> bytes:
    def name(long: str, short: str) -> str:
        n = short if m.compact else long
        return {"lower": n.lower(), "upper": n.upper(), "title": n}[m.name_case]

    colon = " :  " if m.lws_colon else ": "
    fold = "\r\n   " if m.fold else " "
    lines = []
    if m.request:
        lines.append(f"{m.method} sip:u@{hostport(m.ruri_host, m.ruri_port)} SIP/2.0")
    else:
        lines.append(f"SIP/2.0 {m.status} {m.reason}")
    via_values = []
    for v in m.vias:
        s = f"SIP/2.0/{v.transport} {hostport(v.host, v.port)};branch={v.branch}"
        if v.rport:
            s += ";rport"
        if v.received:
            s += f" ;{fold}received={v.received}"
        via_values.append(s)
    if m.via_one_line:
        lines.append(name("Via", "v") + colon + ("," + fold).join(via_values))
    else:
        lines += [name("Via", "v") + colon + s for s in via_values]
    lines.append(name("From", "f") + colon + "<sip:a@example.com>;tag=1")
    lines.append(name("To", "t") + colon + "<sip:b@example.com>")
    lines.append(name("Call-ID", "i") + colon + m.call_id)
    cseq_method = m.method if m.request else "INVITE"
    lines.append(f"CSeq{colon}{m.cseq}{fold}{cseq_method}")
    if m.contacts:
        vals = []
        for dn, h, p in m.contacts:
            uri = f"<sip:c@{hostport(h, p)}>"
            vals.append(f'"{dn}" {uri}' if dn else uri)
        lines.append(name("Contact", "m") + colon + ", ".join(vals) + ";expires=60")
    body = ""
    if m.media is not None:
        sdp = ["v=0", f"o=- 1 1 IN IP4 {m.session_conn}", "s=-", f"c=IN IP4 {m.session_conn}", "t=0 0"]
        for md in m.media:
            port = f"{md.port}/{md.count}" if md.count else str(md.port)
            sdp.append(f"m={md.kind} {port} RTP/AVP {' '.join(md.formats)}")
            if md.conn:
                sdp.append(f"c=IN IP4 {md.conn}")
            if md.direction:
                sdp.append(f"a={md.direction}")
            if md.rtcp:
                sdp.append(f"a=rtcp:{md.rtcp}")
            if md.mux:
                sdp.append("a=rtcp-mux")
        body = "\r\n".join(sdp) + "\r\n"
        lines.append(name("Content-Type", "c") + colon + "application/sdp")
    eol = "\n" if m.lf_only else "\r\n"
    if m.lf_only:
        body = body.replace("\r\n", "\n")
    bbody = body.encode()
    lines.append(name("Content-Length", "l") + colon + str(len(bbody)))
    text = eol.join(lines) + eol + eol
    if m.lf_only:
        text = text.replace("\r\n", "\n")
    return text.encode() + bbody


@SETTINGS
@given(msgs_st)
def test_roundtrip_generated(m: MsgM) -> None:
    data = serialize(m)
    msg = parse_valid(data)
    assert msg.is_request == m.request
    if m.request:
        assert msg.method == m.method
        assert msg.request_uri is not None and msg.request_uri.hostport is not None
        assert (msg.request_uri.hostport.host, msg.request_uri.hostport.port) == (m.ruri_host, m.ruri_port)
    else:
        assert msg.status == m.status and msg.reason == m.reason  # reason kept as written
    assert msg.call_id == m.call_id
    assert msg.cseq == m.cseq
    assert len(msg.vias) == len(m.vias)
    for got, want in zip(msg.vias, m.vias, strict=True):
        assert got.transport == want.transport
        assert (got.sent_by.host, got.sent_by.port) == (want.host, want.port)
        assert got.branch == want.branch
        assert (got.rport is not None) == want.rport
        assert got.received == want.received
        hs = got.sent_by.host_span
        assert data[hs.start : hs.end].decode() == (f"[{want.host}]" if ":" in want.host else want.host)
    assert [
        (
            c.display_name,
            c.uri.hostport.host if c.uri.hostport else None,
            c.uri.hostport.port if c.uri.hostport else None,
        )
        for c in msg.contacts
    ] == [(dn, h, p) for dn, h, p in m.contacts]
    assert msg.content_length == len(msg.body())
    if m.media is None:
        assert msg.sdp is None
    else:
        assert msg.sdp is not None
        assert len(msg.sdp.media) == len(m.media)
        for got_m, want_m in zip(msg.sdp.media, m.media, strict=True):
            assert (got_m.kind, got_m.port, got_m.port_count) == (want_m.kind, want_m.port, want_m.count or 1)
            assert list(got_m.formats) == want_m.formats
            conn = msg.sdp.media_connection(got_m)
            assert conn is not None and conn.address == (want_m.conn or m.session_conn)
            assert got_m.direction == (want_m.direction or "sendrecv")
            assert got_m.rtcp_mux == want_m.mux
            assert (got_m.rtcp.port if got_m.rtcp else None) == want_m.rtcp
            ps = got_m.port_span
            assert data[ps.start : ps.end] == str(want_m.port).encode()
    assert apply_edits(msg, []) == data


@SETTINGS
@given(msgs_st.filter(lambda m: m.media is not None), st.data())
def test_edits_roundtrip(m: MsgM, data: st.DataObject) -> None:
    raw = serialize(m)
    msg = parse_message(raw)
    assert msg.sdp is not None
    new_ports = [data.draw(st.integers(0, 65535)) for _ in msg.sdp.media]
    edits = [Edit(md.port_span, str(p).encode()) for md, p in zip(msg.sdp.media, new_ports, strict=True)]
    edits.append(Edit(msg.vias[0].sent_by.host_span, b"203.0.113.7"))
    out = apply_edits(msg, edits)
    msg2 = parse_message(out)
    assert msg2.sdp is not None
    assert [md.port for md in msg2.sdp.media] == new_ports
    assert msg2.vias[0].sent_by.host == "203.0.113.7"
    assert msg2.content_length == len(msg2.body())
    assert (msg2.call_id, msg2.cseq, len(msg2.vias)) == (msg.call_id, msg.cseq, len(msg.vias))


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_sip_parse_error(data: bytes) -> None:
    for stream in (False, True):
        try:
            msg = parse_message(data, stream=stream)
        except SipParseError as e:
            assert e.reason
        else:
            assert apply_edits(msg, []) == msg.raw


def _seeds() -> list[bytes]:
    seeds = [
        serialize(
            MsgM(
                True,
                "INVITE",
                "10.0.0.1",
                5060,
                200,
                "OK",
                [
                    ViaM("UDP", "192.168.1.2", 5060, "z9hG4bKx", True, None),
                    ViaM("TCP", "2001:db8::1", None, "z9hG4bKy", False, "1.2.3.4"),
                ],
                "cid@host",
                1,
                [("A b", "192.168.1.2", 5062)],
                [
                    MediaM("audio", 4000, None, ["0", "8"], None, "sendonly", True, 4001),
                    MediaM("video", 4002, 2, ["31"], "10.0.0.2", None, False, None),
                ],
                "192.168.1.2",
                compact,
                fold,
                True,
                True,
                False,
                "title",
            )
        )
        for compact in (False, True)
        for fold in (False, True)
    ]
    vendors = CORPUS / "vendors"
    if vendors.exists():
        seeds += [p.read_bytes() for p in sorted(vendors.glob("*.sip"))[:20]]
    return seeds


SEEDS = _seeds()
INTERESTING = [
    b"\r\n",
    b"\n",
    b":",
    b";",
    b",",
    b"<",
    b">",
    b'"',
    b"\\",
    b" ",
    b"\t",
    b"[",
    b"]",
    b"@",
    b"=",
    b"\x00",
    b"\xff",
    b"/",
]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(SEEDS),
    st.lists(
        st.tuples(
            st.floats(0, 1),
            st.sampled_from(["insert", "delete", "replace"]),
            st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=4),
            st.integers(1, 8),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_messages_only_sip_parse_error(seed: bytes, mutations: list[tuple[float, str, bytes, int]]) -> None:
    data = bytearray(seed)
    for frac, op, chunk, n in mutations:
        pos = int(frac * len(data))
        if op == "insert":
            data[pos:pos] = chunk
        elif op == "delete":
            del data[pos : pos + n]
        else:
            data[pos : pos + len(chunk)] = chunk
    raw = bytes(data)
    assume(raw != seed)
    for stream in (False, True):
        try:
            msg = parse_message(raw, stream=stream)
        except SipParseError:
            continue
        # whatever parsed must be internally consistent
        assert msg.raw + msg.trailing == raw
        assert apply_edits(msg, []) == msg.raw
        hs = msg.top_via.sent_by.host_span
        assert 0 <= hs.start <= hs.end <= len(msg.raw)
        _ = msg.headers  # lazily built parts must not raise anything either
        for h in msg.headers:
            assert msg.raw[h.line_span.start : h.line_span.end].endswith(b"\n")
        try:
            msg.validate()
        except SipParseError:
            pass  # an error in a part parsed on first access: SipParseError, nothing else
