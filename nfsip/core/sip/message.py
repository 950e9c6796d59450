"""SIP messages (RFC 3261 §7), sans-I/O and byte-preserving.

:func:`parse_message` turns the bytes of one datagram (or the head of a TCP stream buffer) into a
:class:`SipMessage` whose parts carry :class:`~nfsip.core.sip.values.Span` offsets into the original bytes, so
that a NAT helper can replace an address or a port without re-serialising anything (:mod:`nfsip.core.sip.edit`).

Parsed at once, with errors raised by :func:`parse_message`: the start-line (§7.1, §7.2; SIP/2.0 only,
RFC 4475 §3.1.2.16), the syntax of every header line, the first Via value, every Contact, Call-ID, CSeq
(below 2**31, the request's method), Content-Length, Content-Type, Expires, that From and To are present
once, the body framing and the SDP lines a NAT helper rewrites (:mod:`nfsip.core.sip.sdp`). These are what a NAT
helper rewrites or decides on.

Parsed on first access: :attr:`SipMessage.from_`, :attr:`SipMessage.to`, :attr:`SipMessage.vias` (the
values after the first), the header table (:attr:`SipMessage.headers`) and the ICE candidates of the SDP. A
malformed From, To or lower Via raises :class:`SipParseError` when that attribute is read;
:meth:`SipMessage.validate` reads them all. None of them is ever rewritten or used to open anything, so a
datagram whose only fault is there goes through as if the field were well formed, and the receiving UA
answers the fault as RFC 3261 says (the helper is not the UAS that owes the 400).

Body (§7.4, §18.3, §20.14): Content-Length is authoritative; without it a datagram's body is the rest of the
datagram and a stream message is an error. Bytes after Content-Length in a datagram are not part of the
message (``trailing``; RFC 4475 §3.1.1.8 dblreq). Leading CRLFs are skipped (§7.5, RFC 5626 keep-alives),
but the first other bytes must be a SIP start-line: the parser never searches further in (NAT
slipstreaming, Samy Kamkar 2020, hid a REGISTER inside an HTTP POST body).

Tolerated: LF-only line endings (RFC 5118 archive files), a datagram without the empty line after its
headers (RFC 4475 baddn), ``?headers`` in a Request-URI (RFC 4475 escruri), and what
:mod:`nfsip.core.sip.headers` lists. Any input bytes raise :class:`SipParseError` or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nfsip.core.sip import grammar
from nfsip.core.sip.errors import SipParseError
from nfsip.core.sip.grammar import MAX_PARAMS, MAX_SEPARATORS, MAX_VALUES, canonical_header_name, user_text
from nfsip.core.sip.headers import (
    HeaderLine,
    parse_cseq,
    parse_name_addr_list,
    parse_single_name_addr,
    parse_top_via,
    parse_vias,
    split_lines,
    unfold,
)
from nfsip.core.sip.sdp import Sdp, parse_sdp
from nfsip.core.sip.uri import parse_uri
from nfsip.core.sip.values import Header, NameAddr, SipUri, Span, Via

__all__ = ["SipMessage", "SipParseError", "parse_message", "parse_name_addrs"]


@dataclass(eq=False, repr=False, slots=True)
class SipMessage:
    """A parsed SIP message; treat it as immutable. ``raw`` is a prefix of the bytes given to
    :func:`parse_message` (leading CRLFs included, ``trailing`` excluded); every span indexes it. Reading
    ``from_``, ``to`` or ``vias`` can raise :class:`SipParseError` (module docstring); nothing else does."""

    raw: bytes
    trailing: bytes  # datagram bytes after the message (never part of it)
    start_line_span: Span  # the start-line including its line terminator
    is_request: bool
    method: str | None
    request_uri: SipUri | None
    status: int | None
    reason: str | None
    header_end: int  # offset just after the last header line (the empty line follows)
    call_id: str
    cseq: int
    cseq_method: str
    top_via: Via  # the first via-parm
    contacts: tuple[NameAddr, ...]
    contact_star: bool  # "Contact: *"
    content_type: str | None  # media type, lower case, without parameters
    content_length: int | None
    content_length_spans: tuple[Span, ...]  # the digits of every Content-Length value
    expires: int | None
    body_span: Span
    sdp: Sdp | None
    _text: str  # raw[:header_end] as latin-1: one character per byte, so its offsets are offsets into raw
    _lines: list[HeaderLine]
    # The parts parsed on first access, once they have been.
    _vias: tuple[Via, ...] | None = field(default=None, init=False)
    _from: NameAddr | None = field(default=None, init=False)
    _to: NameAddr | None = field(default=None, init=False)
    _headers: tuple[Header, ...] | None = field(default=None, init=False)

    @property
    def vias(self) -> tuple[Via, ...]:
        """Every via-parm in order (the first is ``top_via``)."""
        if self._vias is None:
            t = self._text
            out: list[Via] = []
            for name, _raw_name, s, e, _start, _end in self._lines:
                if name == "via":
                    if t.count(";", s, e) > MAX_SEPARATORS:
                        raise SipParseError("too-many-params")  # before any regular expression runs
                    parse_vias(t, s, e, out)
            out[0] = self.top_via
            self._vias = tuple(out)
        return self._vias

    @property
    def from_(self) -> NameAddr:
        if self._from is None:
            self._from = self._single("from")
        return self._from

    @property
    def to(self) -> NameAddr:
        if self._to is None:
            self._to = self._single("to")
        return self._to

    def _single(self, header: str) -> NameAddr:
        for name, _raw_name, s, e, _start, _end in self._lines:
            if name == header:  # present: parse_message checked
                return parse_single_name_addr(self._text, s, e, "bad-" + header)
        raise AssertionError(header)

    def validate(self) -> SipMessage:
        """Parse every part left for first access; raise :class:`SipParseError`. Returns the message;
        afterwards no attribute of it (or of its SDP) raises."""
        self.vias  # noqa: B018 - each access parses and keeps the result
        self.from_  # noqa: B018
        self.to  # noqa: B018
        if self.sdp is not None:
            self.sdp.validate()
        return self

    @property
    def headers(self) -> tuple[Header, ...]:
        """All header fields in order."""
        if self._headers is None:
            self._headers = tuple(self._header(line) for line in self._lines)
        return self._headers

    def _header(self, line: HeaderLine) -> Header:
        name, raw_name, s, e, start, end = line
        return Header(name, user_text(raw_name), user_text(unfold(self._text[s:e])), Span(s, e), Span(start, end))

    def header(self, name: str) -> Header | None:
        """First header named ``name`` (compact or long form, any case)."""
        canon = canonical_header_name(name)
        for line in self._lines:
            if line[0] == canon:
                return self._header(line)
        return None

    def headers_named(self, name: str) -> list[Header]:
        """Every header named ``name`` in order (compact or long form, any case)."""
        canon = canonical_header_name(name)
        return [self._header(line) for line in self._lines if line[0] == canon]

    def body(self) -> bytes:
        return self.body_span.slice(self.raw)

    def __repr__(self) -> str:
        if self.request_uri is not None:
            first = f"{self.method} {self.request_uri.span.slice(self.raw).decode('latin-1')}"
        else:
            first = f"{self.status} {self.reason}"
        return f"<SipMessage {first} call-id={self.call_id!r} cseq={self.cseq} {self.cseq_method}>"


def parse_name_addrs(msg: SipMessage, name: str) -> list[NameAddr]:
    """All name-addr values of every header ``name`` (e.g. Route, Record-Route); raises
    :class:`SipParseError` on malformed values."""
    canon = canonical_header_name(name)
    out: list[NameAddr] = []
    for line_name, _raw_name, s, e, _start, _end in msg._lines:
        if line_name == canon:
            out.extend(parse_name_addr_list(msg._text, s, e, "bad-" + canon))
    return out


class _HeaderValues:
    """The header values parse_message reads, in header order: the first error in that order is raised."""

    def __init__(self, t: str, lines: list[HeaderLine]) -> None:
        self.call_id: str | None = None
        self.cseq: tuple[int, str] | None = None
        self.top_via: Via | None = None
        self.contacts: list[NameAddr] = []
        self.contact_star = False
        self.content_type: str | None = None  # as written, parameters included
        self.content_length: int | None = None
        self.content_length_spans: list[Span] = []
        self.expires: int | None = None
        seen_from = seen_to = False
        for name, _raw_name, s, e, _start, _end in lines:
            if name == "via":
                if self.top_via is None:
                    if t.count(";", s, e) > MAX_SEPARATORS:
                        raise SipParseError("too-many-params")  # before any regular expression runs
                    self.top_via = parse_top_via(t, s, e)
            elif name == "contact":
                if t.count(";", s, e) > MAX_SEPARATORS:
                    raise SipParseError("too-many-params")
                if t[s:e] == "*":
                    self.contact_star = True
                else:
                    self.contacts += parse_name_addr_list(t, s, e, "bad-contact")
                    if len(self.contacts) > MAX_VALUES:
                        raise SipParseError("too-many-values", "Contact")
            elif name == "from":
                if seen_from:
                    raise SipParseError("multiple-from")  # RFC 4475 §3.3.8 multi01
                seen_from = True
            elif name == "to":
                if seen_to:
                    raise SipParseError("multiple-to")
                seen_to = True
            elif name == "call-id":
                if self.call_id is not None:
                    raise SipParseError("multiple-call-id")
                if s == e:
                    raise SipParseError("missing-call-id", "empty Call-ID")
                self.call_id = user_text(unfold(t[s:e]))
            elif name == "cseq":
                if self.cseq is not None:
                    raise SipParseError("multiple-cseq")
                self.cseq = parse_cseq(t[s:e])
            elif name == "content-length":
                value = t[s:e]
                if not (value.isdigit() and value.isascii()):
                    raise SipParseError("bad-content-length", value)  # RFC 4475 ncl (-999)
                # More digits than any message can be long: int() refuses over 4,300 digits (ValueError).
                if len(value.lstrip("0")) > 10:
                    raise SipParseError("bad-content-length", f"{len(value)} digits")
                length = int(value)
                if self.content_length is not None and length != self.content_length:
                    raise SipParseError("bad-content-length", "disagreeing values")  # RFC 4475 mcl01
                self.content_length = length
                self.content_length_spans.append(Span(s, e))
            elif name == "content-type":
                if self.content_type is None:
                    self.content_type = t[s:e]
            elif name == "expires":
                value = t[s:e]
                if value.isdigit() and value.isascii():
                    self.expires = int(value)
        if self.call_id is None:
            raise SipParseError("missing-call-id")
        if self.cseq is None:
            raise SipParseError("missing-cseq")
        if self.top_via is None:
            raise SipParseError("missing-via")
        if not seen_from:
            raise SipParseError("missing-from")
        if not seen_to:
            raise SipParseError("missing-to")


def _header_block_end(data: bytes, nl: int, stream: bool) -> tuple[int, int]:
    """Where the header block ends (after its last line's LF) and the body starts: the first empty line
    after the start-line's LF at ``nl`` (CRLF CRLF, or LF LF as in the RFC 5118 archive files)."""
    n = len(data)
    crlf = data.find(b"\n\r\n", nl)
    lf = data.find(b"\n\n", nl, crlf + 1 if crlf >= 0 else n)  # only an LF LF before the CRLF one matters
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    if not stream and data[-1] == 10:
        # No empty line after the headers. RFC 3261 requires one, but the RFC archives themselves ship such
        # datagrams (RFC 4475 baddn.dat, RFC 5118 ipv6-*-colons.dat) and on UDP the datagram boundary ends
        # the message unambiguously: accept with an empty body.
        return n, n
    raise SipParseError("incomplete-headers")


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one SIP message from the start of ``data``.

    ``stream=False`` (UDP): ``data`` is one datagram; without Content-Length the body runs to its end;
    bytes after Content-Length go to ``trailing``. ``stream=True`` (TCP/TLS): Content-Length is mandatory
    (RFC 3261 §18.3) and ``trailing`` holds the start of the next message. Errors whose ``.incomplete`` is
    true mean "wait for more bytes".
    """
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise TypeError("parse_message() needs bytes")
        data = bytes(data)
    n = len(data)
    if n == 0:
        raise SipParseError("empty")
    pos = n - len(data.lstrip(b"\r\n"))  # RFC 3261 §7.5: CRLFs before the start-line are ignored
    if pos == n:
        raise SipParseError("keepalive")  # RFC 5626 §3.5.1

    # The start-line, checked before anything else.
    nl = data.find(b"\n", pos)
    if nl < 0:
        starts_like_sip = grammar.START_LINE_PREFIX.match(data[pos:].decode("latin-1")) is not None
        raise SipParseError("incomplete-headers" if starts_like_sip else "no-start-line")
    line = data[pos:nl].decode("latin-1")
    request = status_line = None
    if line[:4].upper() == "SIP/":
        status_line = grammar.STATUS_LINE.match(line)
        if status_line is None:
            raise SipParseError("bad-status-line", line)  # incl. RFC 4475 bigcode (4294967301)
        if status_line.group(1) != "2.0":
            raise SipParseError("bad-version", line)
        if int(status_line.group(2)) < 100:
            raise SipParseError("bad-status-line", line)
    else:
        request = grammar.REQUEST_LINE.match(line)
        if request is None:
            if grammar.ENDS_WITH_SIP_VERSION.match(line) is None:
                raise SipParseError("no-start-line", line)
            raise SipParseError("bad-request-line", line)  # RFC 4475 lwsstart, trws, lwsruri
        if request.group(3)[4:] != "2.0":
            raise SipParseError("bad-version", line)  # RFC 4475 badvers (SIP/7.0)

    header_end, body_start = _header_block_end(data, nl, stream)
    t = data[:header_end].decode("latin-1")
    request_uri = None
    if request is not None:
        if line.count(";") > MAX_PARAMS:
            raise SipParseError("too-many-params")
        request_uri = parse_uri(t, pos + request.start(2), pos + request.end(2))
    lines = split_lines(t, nl + 1, header_end)
    values = _HeaderValues(t, lines)
    cseq, cseq_method = values.cseq  # type: ignore[misc]  # present: checked by _HeaderValues
    if request is not None and cseq_method != request.group(1):
        raise SipParseError("cseq-method-mismatch")  # RFC 3261 §8.1.1.5, RFC 4475 mismatch01/02

    # The body.
    content_length = values.content_length
    if content_length is None:
        if stream:
            raise SipParseError("missing-content-length")  # RFC 3261 §18.3
        body_end = n
    else:
        body_end = body_start + content_length
        if body_end > n:
            raise SipParseError("truncated-body", f"Content-Length {content_length}, {n - body_start} bytes available")
    raw = data[:body_end]
    content_type = None
    sdp = None
    if values.content_type is not None:
        content_type = values.content_type.split(";", 1)[0].rstrip(grammar.LWS_CHARS).lower()
        if body_end > body_start:
            if content_type == "application/sdp":
                sdp = parse_sdp(raw, body_start, body_end)
            elif content_type.startswith("multipart/"):
                sdp = _multipart_sdp(raw, body_start, body_end, values.content_type)

    return SipMessage(
        raw=raw,
        trailing=data[body_end:],
        start_line_span=Span(pos, nl + 1),
        is_request=request is not None,
        method=None if request is None else request.group(1),
        request_uri=request_uri,
        status=None if status_line is None else int(status_line.group(2)),
        reason=None if status_line is None else user_text(status_line.group(3) or ""),
        header_end=header_end,
        call_id=values.call_id,  # type: ignore[arg-type]  # present: checked by _HeaderValues
        cseq=cseq,
        cseq_method=cseq_method,
        top_via=values.top_via,  # type: ignore[arg-type]
        contacts=tuple(values.contacts),
        contact_star=values.contact_star,
        content_type=content_type,
        content_length=content_length,
        content_length_spans=tuple(values.content_length_spans),
        expires=values.expires,
        body_span=Span(body_start, body_end),
        sdp=sdp,
        _text=t,
        _lines=lines,
    )


def _multipart_sdp(raw: bytes, bs: int, be: int, content_type: str) -> Sdp | None:
    """The first application/sdp part of a multipart body (RFC 5621, framing of RFC 2046 §5.1.1): a part
    starts after a ``--boundary`` line and ends before the CRLF preceding the next delimiter. Nested
    multiparts are not searched (not seen in the wild for SDP)."""
    bm = grammar.BOUNDARY.search(content_type)
    if bm is None:
        raise SipParseError("bad-multipart", "no boundary")
    delim = b"--" + (bm.group(1) or bm.group(2)).encode("latin-1")
    # the first delimiter may be at the very start of the body
    i = bs if raw.startswith(delim, bs) else raw.find(b"\n" + delim, bs, be)
    if i < 0:
        raise SipParseError("bad-multipart", "no delimiter")
    if i != bs:
        i += 1
    while True:
        after = i + len(delim)
        if raw.startswith(b"--", after):
            return None  # close-delimiter
        line_end = raw.find(b"\n", after, be)
        if line_end < 0:
            raise SipParseError("bad-multipart", "truncated")
        part_start = line_end + 1
        nxt = raw.find(b"\n" + delim, part_start - 1, be)
        if nxt < 0:
            raise SipParseError("bad-multipart", "missing close delimiter")
        part_end = nxt - 1 if nxt > part_start and raw[nxt - 1] == 13 else nxt
        # part headers end at the first empty line
        if raw.startswith(b"\r\n", part_start) or raw.startswith(b"\n", part_start):
            hdr_end = part_start
            pbody = part_start + (2 if raw[part_start] == 13 else 1)
        else:
            a = raw.find(b"\n\r\n", part_start, part_end)
            b = raw.find(b"\n\n", part_start, part_end)
            if a >= 0 and (b < 0 or a < b):
                hdr_end, pbody = a + 1, a + 3
            elif b >= 0:
                hdr_end, pbody = b + 1, b + 2
            else:
                hdr_end = pbody = part_end
        ptype = "text/plain"  # RFC 2046 §5.1 default
        for header in raw[part_start:hdr_end].decode("latin-1").split("\n"):
            name, sep, value = header.partition(":")
            if sep and name.strip().lower() in ("content-type", "c"):
                ptype = value.split(";", 1)[0].strip().lower()
        if ptype == "application/sdp" and pbody < part_end:
            return parse_sdp(raw, pbody, part_end)
        i = nxt + 1
