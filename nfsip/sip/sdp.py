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

Laziness (per-packet cost): :func:`parse_sdp` validates and structures the
lines a NAT helper rewrites (``o=``, ``c=``, ``m=``, ``a=rtcp:``,
``a=rtcp-mux``) plus the garbage-line check, in one C-level scan. The
direction attributes and the ``a=candidate:`` lines are looked up in the
section's text when :attr:`SdpMedia.direction` / :attr:`SdpMedia.candidates`
/ :attr:`Sdp.direction` is first read (then cached); a malformed candidate or
more than :data:`MAX_CANDIDATES` raise ``SipParseError`` then, or from
:meth:`Sdp.validate`, or at once with ``parse_sdp(..., strict=True)`` (which
reports the first error in line order, as the historical eager parser did).
The NAT engine never reads candidates: it rewrites ``c=``/``o=``/``m=``/
``a=rtcp``, and a pinhole only ever targets the host that sent the SDP,
whatever the candidates say. Spans and ``formats`` are built on access.
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
        "_cands",
        "_dir",
        "_e",
        "_fmt",
        "_pe",
        "_ps",
        "_s",
        "_sess",
        "connection",
        "connections",
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
    _dir: str | None  # effective direction, once known
    _cands: tuple[SdpCandidate, ...] | None  # once parsed
    _sess: _Session

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
    def direction(self) -> str:
        """sendrecv / sendonly / recvonly / inactive: media level, else session level, else sendrecv."""
        d = self._dir
        if d is None:
            sess = self._sess
            base = sess.base
            d = self._dir = _last_direction(sess.text, self._s - base, self._e - base) or sess.direction or "sendrecv"
        return d

    @property
    def candidates(self) -> tuple[SdpCandidate, ...]:
        """ICE candidates, parsed on first access (``SipParseError`` if malformed)."""
        cands = self._cands
        if cands is None:
            sess = self._sess
            base = sess.base
            out: list[SdpCandidate] = []
            for cm in _CAND_LINE_FINDITER(sess.text, self._s - base, self._e - base):
                line = cm.group(1).rstrip(" \t\r")
                if len(out) >= MAX_CANDIDATES:
                    raise _bad("too-many-candidates", line)
                out.append(_candidate(line, base + cm.start(1)))
            cands = self._cands = tuple(out)
        return cands

    @property
    def disabled(self) -> bool:
        """Port 0: stream rejected or disabled (RFC 3264 §6)."""
        return self.port == 0


class _Session:
    """What the lazily computed SDP attributes need: the text, as "\n" + the
    body (so that offset + ``base`` is an offset into the caller's buffer),
    and the session-level direction once known."""

    __slots__ = ("_dir", "base", "sess_end", "text")

    def __init__(self, text: str, base: int, sess_end: int, direction: str | bool | None) -> None:
        self.text = text
        self.base = base
        self.sess_end = sess_end  # text offset of the first m= line
        self._dir = direction  # False: not looked up yet

    @property
    def direction(self) -> str | None:
        d = self._dir
        if d is False:
            d = self._dir = _last_direction(self.text, 0, self.sess_end)
        return d  # type: ignore[return-value]


class Sdp(Record):
    """A parsed session description; spans index the caller's buffer."""

    __slots__ = ("_e", "_oe", "_os", "_s", "_sess", "connection", "media", "origin")
    _fields = ("origin", "origin_span", "connection", "media", "span", "direction")

    origin: SdpAddress | None
    connection: SdpAddress | None  # session-level c=
    media: tuple[SdpMedia, ...]
    _sess: _Session

    @property
    def origin_span(self) -> Span | None:
        """The whole o= line value."""
        return None if self._os < 0 else new_span(self._os, self._oe)

    @property
    def span(self) -> Span:
        """The whole SDP body."""
        return new_span(self._s, self._e)

    @property
    def direction(self) -> str | None:
        """The session-level direction attribute, if any."""
        return self._sess.direction

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

_RTCP_RE = re.compile(r"a=rtcp: *(\d+)(?: +(\S+) +(\S+) +([^/\s]+)\S*)?$", re.ASCII)
_CAND_RE = re.compile(r"a=candidate: *(\S+) +(\d+) +(\S+) +(\d+) +(\S+) +(\d+) +typ +(\S+)(.*)$", re.ASCII)
_CAND_LINE_FINDITER = re.compile(r"\n(a=candidate:[^\n]*)", re.ASCII).finditer
_DIRECTION_FINDITER = re.compile(r"\na=(sendrecv|sendonly|recvonly|inactive)[ \t\r]*(?=\n|\Z)", re.ASCII).finditer


def _last_direction(text: str, s: int, e: int) -> str | None:
    d = None
    for dm in _DIRECTION_FINDITER(text, s, e):
        d = dm.group(1)
    return d


# The lines acted upon, in one C-level scan that also splits the usual lines
# and finds garbage. Whitespace: RFC 8866 says single SP; real stacks
# occasionally double it. Groups 1-13: complete well-formed m= / c= / o= lines
# and a=rtcp-mux (plus, for a strict parse, the direction attributes), which
# one is told by ``lastindex``; group 14: any other line of interest (a=rtcp:,
# malformed m=/c=/o=, and for a strict parse a=candidate: and a=rtcp* lines),
# handled line by line; group 15: a line that has content but is not
# "<letter>=..." (leading whitespace included).
_M_LAST, _C_LAST, _O_LAST, _A_LAST, _OTHER = 5, 8, 12, 13, 14  # and 15: garbage


def _line_re(attrs: str, others: str, guard: str = "") -> re.Pattern[str]:
    return re.compile(
        r"\n" + guard + r"(?:(?:"
        r"m=(\S+) +(\d+)(?:/(\d+))? +(\S+)([ \S]*)"  # 1-5 (formats: SP-separated, checked by the class)
        r"|c=(\S+) +(\S+) +([^/\s]+)\S*"  # 6-8
        r"|o=\S+ +\S+ +\S+ +(\S+) +(\S+) +([^/\s]+)(\S*)"  # 9-12
        r"|a=(" + attrs + r")"  # 13
        r")[ \t\r]*(?=\n|\Z)"
        r"|((?:[mco]=|a=" + others + r")[^\n]*)"  # 14
        r"|(?![A-Za-z]=)[ \t\r]*([^ \t\r\n])"  # 15
        r")",
        re.ASCII,
    )


# The lazy scan first looks whether a line can match at all: a line of interest starts with m=, c=, o= or
# a=rtcp, garbage with anything but "<letter>=" (group 15). Most lines are other a= lines: rejected by
# the guard instead of by each alternative in turn (ICE offer: 8.2 -> 6.3 µs per scan).
_LAZY_LINE_FINDITER = _line_re("rtcp-mux", "rtcp:", r"(?=[mco]=|a=rtcp|(?![A-Za-z]=))").finditer
_STRICT_LINE_FINDITER = _line_re(
    "sendrecv|sendonly|recvonly|inactive|rtcp-mux", "(?:rtcp|candidate:|sendrecv|sendonly|recvonly|inactive)"
).finditer
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

    ``strict=True`` also parses the ``a=candidate:`` lines at once and reports
    the first error in line order (see the module docstring); the result is
    equal either way.
    """
    # Work on "\n" + body: every line then starts after a "\n" (fast literal
    # scan in the regex engine) and offset + base is an offset into raw.
    if start > 0 and raw[start - 1] == 10:
        nl_text = raw[start - 1 : end].decode("latin-1")  # 1 char == 1 byte: offsets stay exact
    else:
        nl_text = "\n" + raw[start:end].decode("latin-1")
    if not nl_text.startswith("v=", 1):
        head = nl_text.lstrip(" \t\r\n")
        if not head:
            raise _bad("bad-sdp", "empty")
        if not head.startswith("v="):
            raise _bad("bad-sdp", "first line is not v=")
    base = start - 1

    origin: SdpAddress | None = None
    os_ = oe = -1
    session_conn: SdpAddress | None = None
    session_dir: str | None = None
    media: list[SdpMedia] = []
    cur: SdpMedia | None = None
    cands: list[SdpCandidate] = []
    try:
        for lm in (_STRICT_LINE_FINDITER if strict else _LAZY_LINE_FINDITER)(nl_text):
            last = lm.lastindex
            if last == _M_LAST:
                if len(media) >= MAX_MEDIA:
                    raise _bad("too-many-media", lm.group().strip())  # resource limit, see message.MAX_PARAMS
                kind, port_s, cnt, proto, fmt = lm.group(1, 2, 3, 4, 5)
                ps = base + lm.start(2)
                if cur is not None:
                    cur._e = base + lm.start() + 1
                    if strict:
                        cur._cands = tuple(cands)
                        cands = []
                cur = _new(SdpMedia)
                cur.kind = kind
                cur.port = int(port_s)  # checked against 65535 after every line (error precedence)
                cur._ps = ps
                cur._pe = ps + len(port_s)
                cur.port_count = int(cnt) if cnt else 1
                cur.proto = proto
                cur._fmt = fmt
                cur.connection = None
                cur.connections = ()
                cur.rtcp = None
                cur.rtcp_mux = False
                cur._dir = None
                cur._cands = None
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
            elif last == _A_LAST:
                val = lm.group(13)
                if val == "rtcp-mux":
                    if cur is not None:
                        cur.rtcp_mux = True
                elif cur is None:  # directions: strict parses only
                    session_dir = val
                else:
                    cur._dir = val
            elif last == _OTHER:
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
                    continue  # session-level a=rtcp: / a=candidate: are not used
                val = line[2:]
                if val.startswith("rtcp:"):
                    cur.rtcp = _rtcp(line, off)
                elif val.startswith("candidate:"):  # strict parses only
                    if len(cands) >= MAX_CANDIDATES:
                        raise _bad("too-many-candidates", line)
                    cands.append(_candidate(line, off))
                # other a=rtcp* (rtcp-fb, rtcp-rsize, ...) and a=<direction>x are ignored
            else:
                raise _bad("bad-sdp-line", "")  # reported with its line below
        for m in media:
            if m.port > 65535:
                raise _bad("bad-sdp-media", f"port {m.port}")
    except SipParseError:
        # A line that is not "<letter>=..." anywhere is the error to report.
        g = _GARBAGE_RE.search(nl_text)
        if g is not None:
            raise _bad("bad-sdp-line", nl_text[g.start() + 1 : nl_text.find("\n", g.start() + 1)]) from None
        raise
    if cur is not None:
        cur._e = end
        if strict:
            cur._cands = tuple(cands)
    sess = _Session(nl_text, base, media[0]._s - base if media else len(nl_text), session_dir if strict else False)
    for m in media:
        m._sess = sess
        if strict and m._dir is None:
            m._dir = session_dir or "sendrecv"
    sdp = _new(Sdp)
    sdp.origin = origin
    sdp._os = os_
    sdp._oe = oe
    sdp.connection = session_conn
    sdp.media = tuple(media)
    sdp._s = start
    sdp._e = end
    sdp._sess = sess
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
