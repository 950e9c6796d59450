"""SDP (RFC 8866) parsing for NAT rewriting, sans-I/O, with byte spans.

Only what a NAT helper rewrites or needs to understand is structured:

* ``o=`` origin address (RFC 8866 §5.2), ``c=`` connection data (§5.7), session level and media level
  (media level overrides session level, §5.7);
* ``m=`` media descriptions (§5.14) with ``<port>/<number of ports>``; port 0 means the stream is
  disabled/rejected (RFC 3264 §5.1, §6);
* ``a=rtcp:`` (RFC 3605 §2.1), ``a=rtcp-mux`` (RFC 5761 §5.1.1);
* direction attributes ``a=sendrecv/sendonly/recvonly/inactive`` (RFC 8866 §6.7, RFC 3264 §5.1), media
  level, else session level, else ``sendrecv``;
* ICE ``a=candidate:`` lines (RFC 8839 §5.1) with ``raddr``/``rport``, parsed when
  :attr:`SdpMedia.candidates` is read (or by :meth:`Sdp.validate`): a NAT helper never reads them (a
  pinhole only ever targets the host that sent the SDP), so a malformed one raises only then.

Every span is an absolute byte offset into the buffer handed to :func:`parse_sdp` (in practice
``SipMessage.raw``), so the same :class:`~nfsip.core.sip.edit.Edit` machinery rewrites SIP headers and SDP alike.

Tolerance (RFC 8866 §5 requires CRLF but says parsers SHOULD accept LF): lines may end in LF alone,
trailing whitespace is ignored, empty lines are skipped and unknown ``<type>=`` lines are ignored; real
stacks occasionally double the SP between fields. Anything that is not a ``<letter>=<value>`` line, a first
line other than ``v=``, or a malformed ``o=``/``c=``/``m=``/``a=rtcp:`` raises ``SipParseError("bad-sdp-...")``:
a NAT helper that cannot find an address must not silently forward a half-rewritten description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from nfsip.core.sip.errors import SipParseError
from nfsip.core.sip.values import Span

__all__ = ["MAX_CANDIDATES", "MAX_MEDIA", "Sdp", "SdpAddress", "SdpCandidate", "SdpMedia", "SdpRtcp", "parse_sdp"]

MAX_MEDIA: Final = 64  # m= sections per description (real offers carry a handful)
MAX_CANDIDATES: Final = 64  # a=candidate lines per m= section

# The lines parse_sdp reads, found after their LF (the text is LF + body): m=, c=, o= and the attributes
# below. Each is then checked by the pattern of its kind, up to the end of the line.
_LINE_OF_INTEREST = re.compile(r"\n([mco]=[^\n]*|a=(?:rtcp|sendrecv|sendonly|recvonly|inactive)[^\n]*)")
# m=<media> <port>[/<number of ports>] <proto> <fmt> ... (§5.14)
_MEDIA = re.compile(r"m=(\S+) +(\d+)(?:/(\d+))? +(\S+)([ \S]*)[ \t\r]*", re.ASCII)
# c=<nettype> <addrtype> <connection-address> (§5.7); a multicast "/ttl/count" suffix is not the address
_CONNECTION = re.compile(r"c=(\S+) +(\S+) +([^/\s]+)\S*[ \t\r]*", re.ASCII)
# o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address> (§5.2)
_ORIGIN = re.compile(r"o=\S+ +\S+ +\S+ +(\S+) +(\S+) +([^/\s]+)(\S*)[ \t\r]*", re.ASCII)
# a=rtcp:<port> [<nettype> <addrtype> <connection-address>] (RFC 3605 §2.1)
_RTCP = re.compile(r"a=rtcp: *(\d+)(?: +(\S+) +(\S+) +([^/\s]+)\S*)?$", re.ASCII)
# a=candidate:<foundation> <component-id> <transport> <priority> <address> <port> typ <type> ... (RFC 8839)
_CANDIDATE = re.compile(r"a=candidate: *(\S+) +(\d+) +(\S+) +(\d+) +(\S+) +(\d+) +typ +(\S+)(.*)$", re.ASCII)
_CANDIDATE_LINE = re.compile(r"\n(a=candidate:[^\n]*)", re.ASCII)
_RADDR = re.compile(r" raddr +(\S+)", re.ASCII)
_RPORT = re.compile(r" rport +(\d+)", re.ASCII)
# A line with content that is not "<letter>=..." (leading whitespace included).
_NOT_A_TYPE_LINE = re.compile(r"\n(?![A-Za-z]=)[ \t\r]*[^ \t\r\n][^\n]*", re.ASCII)
_DIRECTIONS: Final = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})


@dataclass(frozen=True, slots=True)
class SdpAddress:
    """``<nettype> <addrtype> <address>`` of ``c=``, ``o=`` or ``a=rtcp:``."""

    nettype: str  # "IN"
    addrtype: str  # "IP4" / "IP6"
    address: str  # without the multicast "/ttl/count" suffix
    address_span: Span


@dataclass(frozen=True, slots=True)
class SdpRtcp:
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605)."""

    port: int
    port_span: Span
    address: SdpAddress | None


@dataclass(frozen=True, slots=True)
class SdpCandidate:
    """``a=candidate:`` (RFC 8839 §5.1)."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    address_span: Span
    port: int
    port_span: Span
    typ: str  # host / srflx / prflx / relay
    raddr: str | None
    raddr_span: Span | None
    rport: int | None
    rport_span: Span | None
    span: Span  # the attribute value after "a=candidate:"


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One ``m=`` section (RFC 8866 §5.14) and the attributes NAT cares about."""

    kind: str  # audio / video / image / application / text / message
    port: int
    port_span: Span
    port_count: int  # "m=audio 49170/2 RTP/AVP 0" -> 2
    proto: str
    formats: tuple[str, ...]
    connection: SdpAddress | None  # first media-level c=
    connections: tuple[SdpAddress, ...]  # every media-level c= (RFC 8866 allows several)
    rtcp: SdpRtcp | None
    rtcp_mux: bool
    direction: str  # sendrecv / sendonly / recvonly / inactive: media level, else session level, else sendrecv
    span: Span  # from "m=" to the start of the next m= line (or the end of the SDP)
    text: str = field(repr=False, compare=False)  # the section as latin-1 (one character per byte)

    @property
    def candidates(self) -> tuple[SdpCandidate, ...]:
        """ICE candidates, parsed when read (``SipParseError`` if malformed)."""
        out: list[SdpCandidate] = []
        for cm in _CANDIDATE_LINE.finditer(self.text):
            line = cm.group(1).rstrip(" \t\r")
            if len(out) >= MAX_CANDIDATES:
                raise SipParseError("too-many-candidates", line)
            out.append(_candidate(line, self.span.start + cm.start(1)))
        return tuple(out)

    @property
    def disabled(self) -> bool:
        """Port 0: stream rejected or disabled (RFC 3264 §6)."""
        return self.port == 0


@dataclass(frozen=True, slots=True)
class Sdp:
    """A parsed session description; spans index the caller's buffer."""

    origin: SdpAddress | None
    origin_span: Span | None  # the whole o= line value
    connection: SdpAddress | None  # session-level c=
    media: tuple[SdpMedia, ...]
    span: Span  # the whole SDP body
    direction: str | None  # the session-level direction attribute, if any

    def media_connection(self, m: SdpMedia) -> SdpAddress | None:
        """Media-level ``c=``, else session-level ``c=`` (RFC 8866 §5.7)."""
        return m.connection if m.connection is not None else self.connection

    def validate(self) -> Sdp:
        """Parse what :func:`parse_sdp` left until read (candidates); raise ``SipParseError``."""
        for m in self.media:
            m.candidates  # noqa: B018 - parses and keeps the result
        return self


@dataclass
class _Section:
    """An m= section while its lines are read."""

    start: int  # text offset of its "m="
    media: re.Match[str]  # its m= line
    connections: list[SdpAddress] = field(default_factory=list)
    rtcp: SdpRtcp | None = None
    rtcp_mux: bool = False
    direction: str | None = None


def parse_sdp(raw: bytes, start: int, end: int) -> Sdp:
    """Parse the SDP in ``raw[start:end]``; spans are offsets into ``raw``. Errors are raised in line order,
    except that a line that is not ``<letter>=...`` anywhere is the one reported."""
    # The text is LF + body: every line then follows an LF, and text offset + base is an offset into raw.
    text = "\n" + raw[start:end].decode("latin-1")
    base = start - 1
    if not text.startswith("v=", 1):
        head = text.lstrip(" \t\r\n")
        if not head:
            raise SipParseError("bad-sdp", "empty")
        if not head.startswith("v="):
            raise SipParseError("bad-sdp", "first line is not v=")
    garbage = _NOT_A_TYPE_LINE.search(text)
    if garbage is not None:
        raise SipParseError("bad-sdp-line", garbage.group()[1:])

    origin: SdpAddress | None = None
    origin_span: Span | None = None
    session_connection: SdpAddress | None = None
    session_direction: str | None = None
    sections: list[_Section] = []
    cur: _Section | None = None
    for lm in _LINE_OF_INTEREST.finditer(text):
        line = lm.group(1)
        at = base + lm.start(1)  # offset of the line in raw
        kind = line[0]
        if kind == "m":
            m = _MEDIA.fullmatch(line)
            if m is None:
                raise SipParseError("bad-sdp-media", line)
            if len(sections) == MAX_MEDIA:
                raise SipParseError("too-many-media", line)  # a resource limit, as grammar.MAX_PARAMS
            cur = _Section(lm.start(1), m)
            sections.append(cur)
        elif kind == "c":
            m = _CONNECTION.fullmatch(line)
            if m is None:
                raise SipParseError("bad-sdp-connection", line)
            address = SdpAddress(m.group(1), m.group(2), m.group(3), Span(at + m.start(3), at + m.end(3)))
            if cur is not None:
                cur.connections.append(address)
            elif session_connection is None:
                session_connection = address
        elif kind == "o":
            m = _ORIGIN.fullmatch(line)
            if m is None:
                raise SipParseError("bad-sdp-origin", line)
            origin = SdpAddress(m.group(1), m.group(2), m.group(3), Span(at + m.start(3), at + m.end(3)))
            origin_span = Span(at + 2, at + m.end(4))
        else:
            attribute = line[2:].rstrip(" \t\r")
            if attribute in _DIRECTIONS:
                if cur is None:
                    session_direction = attribute
                else:
                    cur.direction = attribute
            elif cur is None:
                continue  # session-level a=rtcp and a=rtcp-mux mean nothing
            elif attribute == "rtcp-mux":
                cur.rtcp_mux = True
            elif attribute.startswith("rtcp:"):
                cur.rtcp = _rtcp(line.rstrip(" \t\r"), at)
            # other a=rtcp* (rtcp-fb, rtcp-rsize, ...) and a=<direction>x are ignored
    for section in sections:
        port = int(section.media.group(2))
        if port > 65535:
            raise SipParseError("bad-sdp-media", f"port {port}")
    media = []
    for i, section in enumerate(sections):
        section_end = sections[i + 1].start if i + 1 < len(sections) else len(text)
        media.append(_media(section, text, base, section_end, session_direction))
    return Sdp(origin, origin_span, session_connection, tuple(media), Span(start, end), session_direction)


def _media(section: _Section, text: str, base: int, section_end: int, session_direction: str | None) -> SdpMedia:
    m = section.media
    at = base + section.start
    count = m.group(3)
    return SdpMedia(
        kind=m.group(1),
        port=int(m.group(2)),
        port_span=Span(at + m.start(2), at + m.end(2)),
        port_count=int(count) if count else 1,
        proto=m.group(4),
        formats=tuple(filter(None, m.group(5).split(" "))),
        connection=section.connections[0] if section.connections else None,
        connections=tuple(section.connections),
        rtcp=section.rtcp,
        rtcp_mux=section.rtcp_mux,
        direction=section.direction or session_direction or "sendrecv",
        span=Span(at, base + section_end),
        text=text[section.start : section_end],
    )


def _rtcp(line: str, at: int) -> SdpRtcp:
    rm = _RTCP.match(line)
    if rm is None or int(rm[1]) > 65535:
        raise SipParseError("bad-sdp-rtcp", line)
    address = None
    if rm[2] is not None:
        address = SdpAddress(rm[2], rm[3], rm[4], Span(at + rm.start(4), at + rm.end(4)))
    return SdpRtcp(int(rm[1]), Span(at + rm.start(1), at + rm.end(1)), address)


def _candidate(line: str, at: int) -> SdpCandidate:
    cm = _CANDIDATE.match(line)
    if cm is None or int(cm.group(6)) > 65535:
        raise SipParseError("bad-sdp-candidate", line)
    rest_at = at + cm.start(8)
    rest = cm.group(8)
    raddr = raddr_span = rport = rport_span = None
    ra = _RADDR.search(rest)
    if ra is not None:
        raddr = ra.group(1)
        raddr_span = Span(rest_at + ra.start(1), rest_at + ra.end(1))
    rp = _RPORT.search(rest)
    if rp is not None:
        rport = int(rp.group(1))
        rport_span = Span(rest_at + rp.start(1), rest_at + rp.end(1))
    return SdpCandidate(
        foundation=cm.group(1),
        component=int(cm.group(2)),
        transport=cm.group(3),
        priority=int(cm.group(4)),
        address=cm.group(5),
        address_span=Span(at + cm.start(5), at + cm.end(5)),
        port=int(cm.group(6)),
        port_span=Span(at + cm.start(6), at + cm.end(6)),
        typ=cm.group(7),
        raddr=raddr,
        raddr_span=raddr_span,
        rport=rport,
        rport_span=rport_span,
        span=Span(at + 12, at + len(line)),
    )
