"""SDP (RFC 8866) parsing for NAT rewriting, sans-I/O, with byte spans.

Only what a NAT helper rewrites or needs to understand is structured:

* ``o=`` origin address (RFC 8866 §5.2), ``c=`` connection data (§5.7), session
  level and media level (media level overrides session level, §5.7);
* ``m=`` media descriptions (§5.14) with ``<port>/<number of ports>``; port 0
  means the stream is disabled/rejected (RFC 3264 §5.1, §6);
* ``a=rtcp:`` (RFC 3605 §2.1), ``a=rtcp-mux`` (RFC 5761 §5.1.1);
* direction attributes ``a=sendrecv/sendonly/recvonly/inactive`` (RFC 8866 §6.7,
  RFC 3264 §5.1), media level, else session level, else ``sendrecv``;
* ICE ``a=candidate:`` lines (RFC 8839 §5.1) with ``raddr``/``rport``.

Every span is an absolute byte offset into the buffer handed to
:func:`parse_sdp` (in practice ``SipMessage.raw``), so the same
:class:`~nfsip.sip.edit.Edit` machinery rewrites SIP headers and SDP alike.

Tolerance (RFC 8866 §5 requires CRLF but says parsers SHOULD accept LF): lines
may end in LF alone, trailing whitespace is ignored, empty lines are skipped
and unknown ``<type>=`` lines are ignored. Anything that is not a
``<letter>=<value>`` line, a first line other than ``v=``, or a malformed
``o=``/``c=``/``m=``/``a=rtcp:`` raises ``SipParseError("bad-sdp-...")``: a NAT
helper that cannot find an address must not silently forward a half-rewritten
description.

Laziness: ``a=candidate:`` lines are only located by :func:`parse_sdp`; they
are parsed (and a malformed one or more than :data:`MAX_CANDIDATES` raise
``SipParseError``) when :attr:`SdpMedia.candidates` is first read, by
:meth:`Sdp.validate`, or at once with ``parse_sdp(..., strict=True)``. The
NAT engine never reads them: it rewrites ``c=``/``o=``/``m=``/``a=rtcp``, and a
pinhole only ever targets the host that sent the SDP, whatever the candidates
say. Spans and ``formats`` are likewise built on access.
"""

from __future__ import annotations

import re
from typing import Final

from nfsip.sip.errors import SipParseError
from nfsip.sip.spans import Record, Span, new_span

__all__ = ["MAX_CANDIDATES", "MAX_MEDIA", "Sdp", "SdpAddress", "SdpCandidate", "SdpMedia", "SdpRtcp", "parse_sdp"]

_new = object.__new__


class SdpAddress(Record):
    """``<nettype> <addrtype> <address>`` of ``c=``, ``o=`` or ``a=rtcp:``."""

    __slots__ = ("_e", "_s", "address", "addrtype", "nettype")
    _fields = ("nettype", "addrtype", "address", "address_span")

    nettype: str  # "IN"
    addrtype: str  # "IP4" / "IP6"
    address: str  # without the multicast "/ttl/count" suffix

    def __init__(self, nettype: str, addrtype: str, address: str, address_span: Span) -> None:
        self.nettype, self.addrtype, self.address = nettype, addrtype, address
        self._s, self._e = address_span.start, address_span.end

    @property
    def address_span(self) -> Span:
        return new_span(self._s, self._e)


class SdpRtcp(Record):
    """``a=rtcp:<port> [<nettype> <addrtype> <address>]`` (RFC 3605)."""

    __slots__ = ("_e", "_s", "address", "port")
    _fields = ("port", "port_span", "address")

    port: int
    address: SdpAddress | None

    def __init__(self, port: int, port_span: Span, address: SdpAddress | None) -> None:
        self.port, self.address = port, address
        self._s, self._e = port_span.start, port_span.end

    @property
    def port_span(self) -> Span:
        return new_span(self._s, self._e)


class SdpCandidate(Record):
    """``a=candidate:`` (RFC 8839 §5.1)."""

    __slots__ = (
        "address",
        "address_span",
        "component",
        "foundation",
        "port",
        "port_span",
        "priority",
        "raddr",
        "raddr_span",
        "rport",
        "rport_span",
        "span",
        "transport",
        "typ",
    )
    _fields = (
        "foundation",
        "component",
        "transport",
        "priority",
        "address",
        "address_span",
        "port",
        "port_span",
        "typ",
        "raddr",
        "raddr_span",
        "rport",
        "rport_span",
        "span",
    )

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

    def __init__(self, *values: object) -> None:
        if len(values) != len(self._fields):
            raise TypeError(f"SdpCandidate() takes {len(self._fields)} arguments")
        for name, value in zip(self._fields, values, strict=True):
            setattr(self, name, value)


class SdpMedia(Record):
    """One ``m=`` section (RFC 8866 §5.14) and the attributes NAT cares about."""

    __slots__ = (
        "_cand_lines",
        "_cands",
        "_e",
        "_fmt",
        "_pe",
        "_ps",
        "_s",
        "connection",
        "connections",
        "direction",
        "kind",
        "port",
        "port_count",
        "proto",
        "rtcp",
        "rtcp_mux",
    )
    _fields = (
        "kind",
        "port",
        "port_span",
        "port_count",
        "proto",
        "formats",
        "connection",
        "rtcp",
        "rtcp_mux",
        "direction",
        "candidates",
        "span",
        "connections",
    )

    kind: str  # audio / video / image / application / text / message
    port: int
    port_count: int  # "m=audio 49170/2 RTP/AVP 0" -> 2
    proto: str
    connection: SdpAddress | None  # first media-level c=
    connections: tuple[SdpAddress, ...]  # every media-level c= (RFC 8866 allows several)
    rtcp: SdpRtcp | None
    rtcp_mux: bool
    direction: str  # sendrecv / sendonly / recvonly / inactive (effective)
    _cand_lines: list[tuple[str, int]] | None  # a=candidate lines not parsed yet
    _cands: tuple[SdpCandidate, ...]

    @property
    def port_span(self) -> Span:
        return new_span(self._ps, self._pe)

    @property
    def span(self) -> Span:
        """From "m=" to the start of the next m= line (or end of SDP)."""
        return new_span(self._s, self._e)

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(filter(None, self._fmt.split(" ")))

    @property
    def candidates(self) -> tuple[SdpCandidate, ...]:
        """ICE candidates, parsed on first access (``SipParseError`` if malformed)."""
        lines = self._cand_lines
        if lines is not None:
            if len(lines) > MAX_CANDIDATES:
                raise _bad("too-many-candidates", lines[MAX_CANDIDATES][0])
            self._cands = tuple([_candidate(line, off) for line, off in lines])
            self._cand_lines = None
        return self._cands

    @property
    def disabled(self) -> bool:
        """Port 0: stream rejected or disabled (RFC 3264 §6)."""
        return self.port == 0


class Sdp(Record):
    """A parsed session description; spans index the caller's buffer."""

    __slots__ = ("_e", "_oe", "_os", "_s", "connection", "direction", "media", "origin")
    _fields = ("origin", "origin_span", "connection", "media", "span", "direction")

    origin: SdpAddress | None
    connection: SdpAddress | None  # session-level c=
    media: tuple[SdpMedia, ...]
    direction: str | None  # session-level direction attribute, if any

    @property
    def origin_span(self) -> Span | None:
        """The whole o= line value."""
        return None if self._os < 0 else new_span(self._os, self._oe)

    @property
    def span(self) -> Span:
        """The whole SDP body."""
        return new_span(self._s, self._e)

    def media_connection(self, m: SdpMedia) -> SdpAddress | None:
        """Media-level ``c=``, else session-level ``c=`` (RFC 8866 §5.7)."""
        return m.connection if m.connection is not None else self.connection

    def validate(self) -> Sdp:
        """Parse what :func:`parse_sdp` left for later (candidates); raise ``SipParseError``."""
        for m in self.media:
            m.candidates  # noqa: B018 - parses and caches
        return self


MAX_MEDIA: Final = 64  # m= sections per description (real offers carry a handful)
MAX_CANDIDATES: Final = 64  # a=candidate lines per m= section

_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

# Whitespace: RFC 8866 says single SP; real stacks occasionally double it.
_RTCP_RE = re.compile(r"a=rtcp: *(\d+)(?: +(\S+) +(\S+) +([^/\s]+)\S*)?$", re.ASCII)
_CAND_RE = re.compile(r"a=candidate: *(\S+) +(\d+) +(\S+) +(\d+) +(\S+) +(\d+) +typ +(\S+)(.*)$", re.ASCII)
# Lines acted upon, in one C-level scan that also splits the common lines:
# alternatives 1-4 are complete well-formed m= / c= / o= / direction and
# rtcp-mux lines (``lastindex`` says which); anything else of interest (a=rtcp:,
# a=candidate:, a=rtcp-fb, ... and malformed m=/c=/o=) falls to the last
# alternative and is handled line by line. "a=rtcp" also matches "a=rtcp-fb:" /
# "a=rtcp-rsize" (ignored).
_M_LAST, _C_LAST, _O_LAST, _A_LAST, _OTHER = 5, 8, 12, 13, 14
_LINE_RE = re.compile(
    r"\n(?:"
    r"m=(\S+) +(\d+)(?:/(\d+))? +(\S+)((?: +\S+)*)"  # 1-5
    r"|c=(\S+) +(\S+) +([^/\s]+)\S*"  # 6-8
    r"|o=\S+ +\S+ +\S+ +(\S+) +(\S+) +([^/\s]+)(\S*)"  # 9-12
    r"|a=(sendrecv|sendonly|recvonly|inactive|rtcp-mux)"  # 13
    r")[ \t\r]*(?=\n|\Z)"
    r"|\n((?:[mco]=|a=(?:rtcp|candidate:|sendrecv|sendonly|recvonly|inactive))[^\n]*)",  # 14
    re.ASCII,
)
# A line that has content but is not "<letter>=..." (leading whitespace included).
_GARBAGE_RE = re.compile(r"\n(?![A-Za-z]=)[ \t\r]*[^ \t\r\n]", re.ASCII)
_RADDR_RE = re.compile(r" raddr +(\S+)", re.ASCII)
_RPORT_RE = re.compile(r" rport +(\d+)", re.ASCII)


def _bad(reason: str, detail: str) -> SipParseError:
    return SipParseError(reason, detail[:80])


def _address(nettype: str, addrtype: str, address: str, s: int, e: int) -> SdpAddress:
    a = _new(SdpAddress)
    a.nettype = nettype
    a.addrtype = addrtype
    a.address = address
    a._s = s
    a._e = e
    return a


def parse_sdp(raw: bytes, start: int, end: int, *, strict: bool = False) -> Sdp:
    """Parse the SDP in ``raw[start:end]``; spans are offsets into ``raw``.

    ``strict=True`` also parses the ``a=candidate:`` lines at once (see the
    module docstring); the result is equal either way.
    """
    text = raw[start:end].decode("latin-1")  # 1 char == 1 byte: offsets stay exact
    if not text.startswith("v="):
        head = text.lstrip(" \t\r\n")
        if not head:
            raise _bad("bad-sdp", "empty")
        if not head.startswith("v="):
            raise _bad("bad-sdp", "first line is not v=")
    # Only the lines acted upon are visited by Python code (one C-level scan);
    # garbage is detected by a second C-level search. Both patterns start with
    # a literal "\n" (fast scan in the regex engine), hence the prepended LF
    # and the offset shift by one.
    nl_text = "\n" + text
    g = _GARBAGE_RE.search(nl_text)
    if g is not None:
        raise _bad("bad-sdp-line", nl_text[g.start() + 1 : nl_text.find("\n", g.start() + 1)])
    base = start - 1

    origin: SdpAddress | None = None
    os_ = oe = -1
    session_conn: SdpAddress | None = None
    session_dir: str | None = None
    media: list[SdpMedia] = []
    cur: SdpMedia | None = None
    for lm in _LINE_RE.finditer(nl_text):
        last = lm.lastindex
        if last == _A_LAST:
            val = lm.group(13)
            if cur is None:
                if val != "rtcp-mux":
                    session_dir = val
            elif val == "rtcp-mux":
                cur.rtcp_mux = True
            else:
                cur.direction = val
        elif last == _M_LAST:
            if len(media) >= MAX_MEDIA:
                raise _bad("too-many-media", lm.group().strip())  # resource limit, see message.MAX_PARAMS
            ps, pe = lm.span(2)
            cnt = lm.group(3)
            cur = _new(SdpMedia)
            cur.kind = lm.group(1)
            cur.port = int(lm.group(2))  # checked against 65535 below, after every line (error precedence)
            cur._ps = base + ps
            cur._pe = base + pe
            cur.port_count = int(cnt) if cnt else 1
            cur.proto = lm.group(4)
            cur._fmt = lm.group(5)
            cur.connection = None
            cur.connections = ()
            cur.rtcp = None
            cur.rtcp_mux = False
            cur.direction = None  # type: ignore[assignment]  # defaulted below
            cur._cand_lines = None
            cur._cands = ()
            cur._s = base + lm.start() + 1
            media.append(cur)
        elif last == _C_LAST:
            s, e = lm.span(8)
            addr = _address(lm.group(6), lm.group(7), lm.group(8), base + s, base + e)
            if cur is not None:
                if cur.connection is None:
                    cur.connection = addr
                cur.connections += (addr,)
            elif session_conn is None:
                session_conn = addr
        elif last == _O_LAST:
            s, e = lm.span(11)
            origin = _address(lm.group(9), lm.group(10), lm.group(11), base + s, base + e)
            os_ = base + lm.start() + 3
            oe = base + lm.end(12)
        else:
            off = base + lm.start(_OTHER)
            line = lm.group(_OTHER).rstrip(" \t\r")
            kind = line[0]
            # A well-formed m=/c=/o= line matched one of the alternatives above.
            if kind == "m":
                raise _bad("bad-sdp-media", line)
            if kind == "c":
                raise _bad("bad-sdp-connection", line)
            if kind == "o":
                raise _bad("bad-sdp-origin", line)
            if cur is None:
                continue  # session-level a=rtcp*/candidate: not used; directions matched above
            val = line[2:]
            if val.startswith("rtcp:"):
                cur.rtcp = _rtcp(line, off)
            elif val.startswith("candidate:"):
                if cur._cand_lines is None:
                    cur._cand_lines = []
                if strict:
                    if len(cur._cand_lines) >= MAX_CANDIDATES:
                        raise _bad("too-many-candidates", line)
                    _candidate(line, off)  # validate in line order
                cur._cand_lines.append((line, off))
            # other a=rtcp* (rtcp-fb, rtcp-rsize, ...) and a=<direction>x are ignored

    default_dir = session_dir or "sendrecv"
    prev = None
    for m in media:
        if m.port > 65535:
            raise _bad("bad-sdp-media", f"port {m.port}")
        if prev is not None:
            prev._e = m._s
        prev = m
        if m.direction is None:
            m.direction = default_dir
    if prev is not None:
        prev._e = end
    if strict:
        for m in media:
            m.candidates  # noqa: B018 - parse now (already validated above)
    sdp = _new(Sdp)
    sdp.origin = origin
    sdp._os = os_
    sdp._oe = oe
    sdp.connection = session_conn
    sdp.media = tuple(media)
    sdp._s = start
    sdp._e = end
    sdp.direction = session_dir
    return sdp


def _rtcp(line: str, off: int) -> SdpRtcp:
    rm = _RTCP_RE.match(line)
    if rm is None or int(rm[1]) > 65535:
        raise _bad("bad-sdp-rtcp", line)
    raddr = None
    if rm[2] is not None:
        raddr = _address(rm[2], rm[3], rm[4], off + rm.start(4), off + rm.end(4))
    r = _new(SdpRtcp)
    r.port = int(rm[1])
    r._s = off + rm.start(1)
    r._e = off + rm.end(1)
    r.address = raddr
    return r


def _candidate(line: str, off: int) -> SdpCandidate:
    cm = _CAND_RE.match(line)
    if cm is None or int(cm.group(6)) > 65535:
        raise _bad("bad-sdp-candidate", line)
    rest_off = cm.start(8)
    rest = cm.group(8)
    raddr = raddr_span = rport = rport_span = None
    ra = _RADDR_RE.search(rest)
    if ra is not None:
        raddr = ra.group(1)
        raddr_span = Span(off + rest_off + ra.start(1), off + rest_off + ra.end(1))
    rp = _RPORT_RE.search(rest)
    if rp is not None:
        rport = int(rp.group(1))
        rport_span = Span(off + rest_off + rp.start(1), off + rest_off + rp.end(1))
    return SdpCandidate(
        cm.group(1),
        int(cm.group(2)),
        cm.group(3),
        int(cm.group(4)),
        cm.group(5),
        Span(off + cm.start(5), off + cm.end(5)),
        int(cm.group(6)),
        Span(off + cm.start(6), off + cm.end(6)),
        cm.group(7),
        raddr,
        raddr_span,
        rport,
        rport_span,
        Span(off + 12, off + len(line)),
    )
