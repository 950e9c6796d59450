"""SIP framed out of a TCP byte stream (nfsip.core.sip.stream), on the real messages of ../shared/corpus.

Every message that parse_message accepts as a stream message (RFC 4475 and RFC 5118 torture tests, vendor
messages, the UDP datagrams and TCP streams of the captures), concatenated with keepalives between them,
must come back byte for byte however the stream is cut: whole, a byte at a time, in random chunks, split
at every byte. Bad input (TLS or HTTP on the SIP port, oversized headers and messages, missing or bad
Content-Length) ends in the StreamError named for it, with the buffer bounded by the limits.
"""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsip.core.sip import SipMessage, SipParseError, parse_message
from nfsip.core.sip.stream import STREAM_ERROR_REASONS, Frame, Keepalive, Message, StreamError, StreamFramer

from .corpus import CORPUS, need
from .test_sip_corpus import read_capture, tcp_stream_bytes

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PING, PONG = b"\r\n\r\n", b"\r\n"  # RFC 5626 §4.4.1
KEEPALIVES = (PING, PONG, b"\n")
# The largest message of the corpus: the INVITE of suricata-sip-body-large (65,793 bytes, over the default).
LARGEST = 65793


# ---------------------------------------------------------------------------------------------- the corpus


def _datagrams() -> list[bytes]:
    """Every file of the torture tests and vendors, every UDP payload of the captures."""
    out: list[bytes] = []
    for sub in ("rfc4475", "rfc5118"):
        out += [p.read_bytes() for p in sorted(need(CORPUS / sub).glob("*.dat"))]
    out += [p.read_bytes() for p in sorted(need(CORPUS / "vendors").glob("*.sip"))]
    for capture in _captures():
        out += read_capture(capture).udp
    return out


def _captures() -> list[Path]:
    return sorted(p for p in need(CORPUS / "pcap").iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))


@cache
def tcp_streams() -> tuple[bytes, ...]:
    """The byte streams of the captured TCP connections (those that carry SIP)."""
    streams = []
    for capture in _captures():
        streams += [tcp_stream_bytes(segments) for segments in read_capture(capture).tcp_streams.values()]
    return tuple(s for s in streams if _stream_messages(s))


def _stream_messages(stream: bytes) -> list[SipMessage]:
    """The messages parse_message takes one after the other off a TCP stream, up to the first it refuses."""
    out = []
    while stream.strip(b"\r\n"):
        try:
            msg = parse_message(stream, stream=True)
        except SipParseError:
            break
        out.append(msg)
        stream = msg.trailing
    return out


@cache
def corpus_messages() -> tuple[bytes, ...]:
    """Every message of the corpus parse_message accepts on a stream, each once, in corpus order."""
    found: dict[bytes, None] = {}
    for data in _datagrams():
        try:
            found[parse_message(data, stream=True).raw] = None
        except SipParseError:
            pass
    for stream in tcp_streams():
        found.update((msg.raw, None) for msg in _stream_messages(stream))
    return tuple(found)


@cache
def datagrams_without_content_length() -> tuple[SipMessage, ...]:
    """The corpus messages that are whole only as a datagram: accepted on UDP, without Content-Length."""
    found: dict[bytes, SipMessage] = {}
    for data in _datagrams():
        try:
            msg = parse_message(data)
        except SipParseError:
            continue
        if msg.content_length is None:
            found.setdefault(msg.raw, msg)
    return tuple(found.values())


def corpus_message(name: str) -> bytes:
    """One file of the corpus (torture test or vendor message) as parse_message frames it."""
    return parse_message(need(CORPUS / name).read_bytes(), stream=True).raw


def capture_messages(name: str) -> list[bytes]:
    """The messages of a capture's TCP streams, stream after stream."""
    segments = read_capture(need(CORPUS / "pcap" / name)).tcp_streams.values()
    return [msg.raw for s in segments for msg in _stream_messages(tcp_stream_bytes(s))]


def with_keepalives(messages: Iterable[bytes]) -> tuple[bytes, list[Frame]]:
    """The messages with a ping, a pong or a lone LF after each in turn: the stream and the items in it."""
    data = bytearray()
    items: list[Frame] = []
    for i, raw in enumerate(messages):
        keepalive = KEEPALIVES[i % len(KEEPALIVES)]
        data += raw + keepalive
        items.append(Message(raw))
        items += [Keepalive(line) for line in re.findall(rb"\r?\n", keepalive)]
    return bytes(data), items


# ---------------------------------------------------------------------------------------------- helpers


def frames_of(chunks: Iterable[bytes], **limits: int | bool) -> tuple[list[Frame], str | None]:
    """The items one framer gives for the chunks fed in turn, and the error that ended them (or None)."""
    framer = StreamFramer(**limits)  # type: ignore[arg-type]
    out: list[Frame] = []
    for chunk in chunks:
        try:
            out += framer.feed(chunk)
        except StreamError as exc:
            return out + list(exc.frames), exc.reason
    return out, None


def drip(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def error_at(data: bytes, **limits: int | bool) -> tuple[int, str, int]:
    """Fed a byte at a time: how many bytes were fed when the error came, its reason, and the most the
    framer held before it."""
    framer = StreamFramer(**limits)  # type: ignore[arg-type]
    most = 0
    for i in range(len(data)):
        try:
            framer.feed(data[i : i + 1])
        except StreamError as exc:
            return i + 1, exc.reason, most
        most = max(most, framer.pending)
    raise AssertionError("no error")


# ------------------------------------------------------------------------------ the corpus, byte for byte


def test_corpus_holds_what_the_framer_must_handle() -> None:
    """Not vacuous: hundreds of messages, compact `l:` and `L:` headers, folding around Content-Length,
    LF-only line ends, bodies, and whole TCP streams captured from real phones and servers."""
    messages = corpus_messages()
    assert len(messages) > 500
    assert any(re.search(rb"\nl:", m) for m in messages)
    assert any(re.search(rb"\nL:", m) for m in messages)  # RFC 4475 escnull
    assert any(re.search(rb"\nContent-Length +:", m) for m in messages)  # RFC 4475 wsinv
    assert any(b"\r" not in m for m in messages)  # RFC 5118
    assert sum(len(parse_message(m, stream=True).body()) > 0 for m in messages) > 100
    assert LARGEST in map(len, messages)
    assert len(tcp_streams()) >= 5


def test_default_limits_cover_the_corpus() -> None:
    """The largest header section (zeek's long path test, 9,563 bytes) fits three times in the default; every
    message but suricata's synthetic 64 KiB body fits the default message size."""
    framer = StreamFramer()
    header_sections = [parse_message(m, stream=True).body_span.start for m in corpus_messages()]
    assert 3 * max(header_sections) < framer.max_header_size
    assert [len(m) for m in corpus_messages() if len(m) > framer.max_message_size] == [LARGEST]


def test_corpus_stream_whole() -> None:
    data, items = with_keepalives(corpus_messages())
    framer = StreamFramer(max_message_size=LARGEST)
    assert framer.feed(data) == items
    assert framer.pending == 0
    assert b"".join(item.raw for item in items) == data


def test_corpus_stream_a_byte_at_a_time() -> None:
    data, items = with_keepalives(corpus_messages())
    assert frames_of(drip(data), max_message_size=LARGEST) == (items, None)


@SETTINGS
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=400), st.randoms(use_true_random=False))
def test_corpus_stream_in_random_chunks(sizes: list[int], rnd) -> None:  # type: ignore[no-untyped-def]
    messages = list(corpus_messages())
    rnd.shuffle(messages)
    data, items = with_keepalives(messages[:200])
    chunks, pos = [], 0
    while pos < len(data):
        size = sizes[len(chunks) % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
    assert frames_of(chunks, max_message_size=LARGEST) == (items, None)


def test_captured_tcp_streams_as_they_were_sent() -> None:
    """Each captured TCP connection, fed by its own segments, gives the messages parse_message finds in it."""
    checked = 0
    for capture in _captures():
        for segments in read_capture(capture).tcp_streams.values():
            stream = tcp_stream_bytes(segments)
            messages = _stream_messages(stream)
            if not messages:
                continue
            end = sum(len(m.raw) for m in messages)
            chunks = [data for _seq, data in sorted(segments)]  # the captures hold no retransmission
            assert b"".join(chunks)[:end] == stream[:end]
            framed, error = frames_of(chunks, max_message_size=LARGEST)
            assert error is None
            assert framed[: len(messages)] == [Message(m.raw) for m in messages]
            checked += 1
    assert checked >= 5


SPLIT_MESSAGES = (
    "rfc4475/wsinv.dat",  # folding everywhere, "Content-Length   : 150", compact names
    "rfc4475/escnull.dat",  # "L:0"
    "rfc5118/ipv4-mapped-ipv6.dat",  # LF line ends, a body
    "vendors/linphone-3.6.1-exosip__REGISTER__goffinet-voip1b-f712.sip",
)


def test_split_at_every_byte() -> None:
    messages = [corpus_message(name) for name in SPLIT_MESSAGES] + capture_messages("suricata-sip-tcp.pcap")
    data, items = with_keepalives(messages)
    assert frames_of([data]) == (items, None)
    for cut in range(len(data) + 1):
        assert frames_of([data[:cut], data[cut:]]) == (items, None), cut


# ------------------------------------------------------------------------------------------ keepalives


def test_keepalives_pass_byte_for_byte() -> None:
    """A client's pings and a server's pongs around a real REGISTER and its 200: each line end one item,
    a pong given out as soon as its LF is there."""
    register, ok = capture_messages("suricata-sip-tcp.pcap")  # Zoiper to Kamailio, and its answer
    framer = StreamFramer()
    assert framer.feed(PING) == [Keepalive(b"\r\n"), Keepalive(b"\r\n")]
    assert framer.feed(b"\r") == [] and framer.pending == 1  # a CR alone waits for its LF
    assert framer.feed(b"\n" + register[:10]) == [Keepalive(b"\r\n")]
    assert framer.feed(register[10:] + PONG) == [Message(register), Keepalive(PONG)]
    assert framer.feed(b"\n" + ok + b"\n") == [Keepalive(b"\n"), Message(ok), Keepalive(b"\n")]
    assert framer.pending == 0


# ------------------------------------------------------------------------------------------- bad input


def tls_client_hello() -> bytes:
    """A real TLS ClientHello, as OpenSSL writes it for a client of sips:."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="sip.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def http_request(method: str, body: bytes | None = None) -> bytes:
    """What Python's HTTP client sends to the SIP port."""
    client_end, server_end = socket.socketpair()
    with client_end, server_end:
        client = http.client.HTTPConnection("sip.example.com", 5060)
        client.sock = client_end
        client.request(method, "/", body=body)
        return server_end.recv(65536)


def linphone_register() -> bytes:
    return corpus_message("vendors/linphone-3.6.1-exosip__REGISTER__goffinet-voip1b-f712.sip")


def test_garbage_fails_within_its_first_line() -> None:
    hello = tls_client_hello()
    assert error_at(hello) == (1, "garbage", 0)
    get = http_request("GET")
    assert error_at(get) == (len(b"GET / H"), "garbage", len(b"GET / "))
    # NAT slipstreaming: an HTTP POST whose body is a SIP REGISTER. Refused at "HTTP"; never searched.
    post = http_request("POST", linphone_register())
    assert error_at(post)[:2] == (len(b"POST / H"), "garbage")
    assert frames_of([post]) == ([], "garbage")
    # The 4-byte junk datagram of zeek-sip-junk-before-request.
    junk = read_capture(need(CORPUS / "pcap" / "zeek-sip-junk-before-request.pcap")).udp[0]
    assert error_at(junk + linphone_register()) == (1, "garbage", 0)


def test_garbage_after_messages_keeps_them() -> None:
    """The messages before the fault are handed over with the error (the relay may forward them)."""
    register = linphone_register()
    framed, error = frames_of([register + PONG + tls_client_hello()])
    assert (framed, error) == ([Message(register), Keepalive(PONG)], "garbage")
    assert frames_of([register, b"\rINVITE"]) == ([Message(register)], "garbage")  # a CR without its LF


def test_a_start_line_that_is_not_sip_is_refused_at_its_end() -> None:
    """Only when its LF comes can "HELLO sip:x" be told from a request line: then it is refused."""
    register = linphone_register()
    line_end = register.index(b"\n")
    not_sip = register[: register.index(b" SIP/2.0")] + register[line_end - 1 :]
    assert error_at(not_sip) == (line_end - len(b" SIP/2.0") + 1, "garbage", line_end - len(b" SIP/2.0"))


def test_header_too_large() -> None:
    """zeek's long path test: a 9,563-byte header section against an 8 KiB limit; the framer never held
    more than the limit."""
    long_path = max(corpus_messages(), key=lambda m: parse_message(m, stream=True).body_span.start)
    assert error_at(long_path, max_header_size=8192) == (8193, "header-too-large", 8192)
    assert frames_of([long_path], max_header_size=8192) == ([], "header-too-large")
    assert frames_of([long_path], max_header_size=9563)[1] is None


def test_unterminated_headers() -> None:
    """A real message's header lines, again and again, never ended by the empty line."""
    register = linphone_register()
    head = register[: parse_message(register, stream=True).header_end]
    lines = head[head.index(b"\n") + 1 :]
    endless = head + lines * (40000 // len(lines))
    assert error_at(endless) == (32769, "header-too-large", 32768)
    assert frames_of([endless]) == ([], "header-too-large")


def test_message_too_large_before_its_body_arrives() -> None:
    """suricata-sip-body-large's INVITE (Content-Length 65536): refused as soon as its headers are complete."""
    (invite,) = [m for m in corpus_messages() if len(m) == LARGEST]
    header_section = parse_message(invite, stream=True).body_span.start
    framer = StreamFramer()
    assert framer.feed(invite[: header_section - 1]) == []
    with pytest.raises(StreamError) as raised:
        framer.feed(invite[header_section - 1 : header_section])
    assert raised.value.reason == "message-too-large"
    assert frames_of([invite], max_message_size=LARGEST) == ([Message(invite)], None)
    assert frames_of([invite], max_message_size=LARGEST - 1) == ([], "message-too-large")


def _with_content_length(message: bytes, value: bytes) -> bytes:
    return re.sub(rb"(?m)^(Content-Length|l) *: *\d+", rb"\1: " + value, message, count=1, flags=re.IGNORECASE)


def test_huge_content_length_is_refused_at_once() -> None:
    register = linphone_register()
    assert frames_of([_with_content_length(register, b"9" * 30)]) == ([], "message-too-large")
    # More digits than int() converts (4,300): refused by their count, never converted.
    assert frames_of([_with_content_length(register, b"1" + b"0" * 20000)]) == ([], "message-too-large")


def test_content_length_larger_than_what_follows_waits() -> None:
    """A Content-Length beyond the bytes sent: the framer waits for them (the relay's idle timeout ends the
    wait), holding no more than that message, and takes the next message as its body."""
    register = linphone_register()
    framer = StreamFramer()
    long_body = _with_content_length(register, b"2000")
    assert framer.feed(long_body + register) == []
    assert framer.pending == len(long_body) + len(register)
    tail = bytes(2000 - len(register))
    assert framer.feed(tail + register) == [Message(long_body + register + tail), Message(register)]


def test_no_content_length() -> None:
    """The corpus messages without Content-Length (whole only as datagrams) are refused on a stream by
    default. Taken as empty bodies on request: the RFC 2543 INVITE of RFC 4475 inv2543 then leaves its SDP
    behind as garbage, not as a message of its own."""
    messages = datagrams_without_content_length()
    assert len(messages) >= 10
    for msg in messages:
        assert frames_of([msg.raw]) == ([], "no-content-length")
        if msg.body():
            assert frames_of([msg.raw], missing_content_length_is_zero=True) == (
                [Message(msg.raw[: msg.body_span.start])],
                "garbage",
            )
        else:
            assert frames_of([msg.raw], missing_content_length_is_zero=True) == ([Message(msg.raw)], None)
    assert any(msg.body() for msg in messages)


def test_bad_content_length() -> None:
    invalid = read_capture(need(CORPUS / "pcap" / "zeek-invalid-content-length.pcap")).udp
    assert [frames_of([d]) for d in invalid] == [([], "bad-content-length")] * 2  # "Content-Length: bad"
    for name in ("mcl01.dat", "ncl.dat"):  # two values that disagree; -999
        assert frames_of([need(CORPUS / "rfc4475" / name).read_bytes()]) == ([], "bad-content-length"), name
    # Values that agree are one length, leading zeros or not.
    register = linphone_register()
    twice = register.replace(b"\r\n\r\n", b"\r\nl: 000\r\n\r\n", 1)
    assert frames_of([twice]) == ([Message(twice)], None)


def linphone_invite() -> bytes:
    """490 bytes of header section, 333 of SDP."""
    return corpus_message("vendors/linphone-3.6.1-exosip__INVITE-sdp__goffinet-voip1b-f1.sip")


Limits = dict[str, int | bool]
BAD_INPUT: dict[str, tuple[Callable[[], bytes], Limits, str]] = {
    "tls": (tls_client_hello, {}, "garbage"),
    "header": (linphone_invite, {"max_header_size": 489, "max_message_size": 823}, "header-too-large"),
    "message": (linphone_invite, {"max_header_size": 490, "max_message_size": 822}, "message-too-large"),
    "no-length": (lambda: datagrams_without_content_length()[0].raw, {}, "no-content-length"),
    "bad-length": (lambda: need(CORPUS / "rfc4475" / "ncl.dat").read_bytes(), {}, "bad-content-length"),
}


def test_every_reason_is_a_label() -> None:
    """The reasons are a fixed set (metric labels), each one raised by some input, at the limit's edge."""
    assert sorted(reason for _data, _limits, reason in BAD_INPUT.values()) == sorted(STREAM_ERROR_REASONS)
    assert frames_of([linphone_invite()], max_header_size=490, max_message_size=823) == (
        [Message(linphone_invite())],
        None,
    )
    for name, (data, limits, reason) in BAD_INPUT.items():
        assert frames_of([data()], **limits) == ([], reason), name
        assert frames_of(drip(data()), **limits) == ([], reason), name


def test_dead_after_an_error() -> None:
    framer = StreamFramer()
    with pytest.raises(StreamError):
        framer.feed(b"GET / HTTP/1.1\r\n")
    assert framer.pending == 0
    with pytest.raises(StreamError) as raised:
        framer.feed(linphone_register())
    assert raised.value.reason == "garbage" and raised.value.frames == ()


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        StreamFramer(max_header_size=32)
    with pytest.raises(ValueError):
        StreamFramer(max_header_size=4096, max_message_size=2048)


# ---------------------------------------------------------------------------------- splits, time


PIECES = st.sampled_from(
    (
        "message",
        "truncated",
        "keepalive",
        "cr",
        "garbage",
        "no-length",
        "huge-length",
    )
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """Real messages, keepalives, and each kind of fault, in any order."""
    messages = corpus_messages()
    out = bytearray()
    for piece in draw(st.lists(PIECES, max_size=12)):
        message = messages[draw(st.integers(0, len(messages) - 1))]
        if piece == "message":
            out += message
        elif piece == "truncated":
            out += message[: draw(st.integers(0, len(message)))]
        elif piece == "keepalive":
            out += draw(st.sampled_from(KEEPALIVES))
        elif piece == "cr":
            out += b"\r"
        elif piece == "garbage":
            out += draw(st.binary(min_size=1, max_size=8))
        elif piece == "no-length":
            out += datagrams_without_content_length()[0].raw
        else:
            out += _with_content_length(message, b"70000")
    return bytes(out)


@SETTINGS
@given(streams(), st.data())
def test_feed_of_a_whole_is_the_feeds_of_its_parts(data: bytes, draw: st.DataObject) -> None:
    """feed(a + b) gives the items of feed(a) then feed(b), and the same error, wherever the cut."""
    cut = draw.draw(st.integers(0, len(data)))
    limits = draw.draw(st.sampled_from(({}, {"max_header_size": 1024, "max_message_size": 2048})))
    assert frames_of([data[:cut], data[cut:]], **limits) == frames_of([data], **limits)


def _drip_seconds_per_byte(data: bytes, max_header_size: int) -> float:
    best = float("inf")
    for _ in range(3):
        framer = StreamFramer(max_header_size=max_header_size, max_message_size=max_header_size)
        started = time.perf_counter()
        for i in range(len(data)):
            framer.feed(data[i : i + 1])
        best = min(best, time.perf_counter() - started)
    assert framer.pending == len(data)
    return best / len(data)


def test_a_slow_drip_costs_the_same_per_byte_however_long_the_wait() -> None:
    """A byte per feed into an unfinished start-line and header section: the cost per byte does not grow
    with what is already buffered. A framer that searched the whole header section again on each feed is
    more than six times slower per byte on the 16 times longer drip (tried); one that searched the start-line
    again for its LF (memchr) only about 1.5 times, which this does not catch."""
    register = linphone_register()
    head = register[: parse_message(register, stream=True).header_end]
    first_line, lines = head[: head.index(b"\n") + 1], head[head.index(b"\n") + 1 :]

    def unfinished(size: int) -> bytes:
        uri = b"sip:" + b"a" * (size // 2) + b"@example.com"
        data = first_line.replace(first_line.split(b" ")[1], uri, 1) + lines * (size // len(lines))
        return data[:size]

    short = _drip_seconds_per_byte(unfinished(16384), 1 << 20)
    long = _drip_seconds_per_byte(unfinished(16 * 16384), 1 << 20)
    assert long < 3 * short, (short, long)
