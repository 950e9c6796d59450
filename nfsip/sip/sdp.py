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
``o=``/``c=``/``m=``/``a=rtcp:``/``a=candidate:`` raises
``SipParseError("bad-sdp-...")``: a NAT helper that cannot find an address must
not silently forward a half-rewritten description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from nfsip.sip.errors import SipParseError
from nfsip.sip.spans import Span, fast_ctor, new_span

__all__ = ["Sdp", "SdpAddress", "SdpCandidate", "SdpMedia", "SdpRtcp", "parse_sdp"]


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
    rtcp: SdpRtcp | None
    rtcp_mux: bool
    direction: str  # sendrecv / sendonly / recvonly / inactive (effective)
    candidates: tuple[SdpCandidate, ...]
    span: Span  # from "m=" to the start of the next m= line (or end of SDP)
    connections: tuple[SdpAddress, ...] = ()  # every media-level c= (RFC 8866 allows several)

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
    direction: str | None = None  # session-level direction attribute, if any

    def media_connection(self, m: SdpMedia) -> SdpAddress | None:
        """Media-level ``c=``, else session-level ``c=`` (RFC 8866 §5.7)."""
        return m.connection if m.connection is not None else self.connection


MAX_MEDIA = 64  # m= sections per description (real offers carry a handful)
MAX_CANDIDATES = 64  # a=candidate lines per m= section

_DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})

# Whitespace: RFC 8866 says single SP; real stacks occasionally double it.
_O_RE = re.compile(r"o=(\S+) +(\S+) +(\S+) +(\S+) +(\S+) +([^/\s]+)\S*$", re.ASCII)
_C_RE = re.compile(r"c=(\S+) +(\S+) +([^/\s]+)\S*$", re.ASCII)
_M_RE = re.compile(r"m=(\S+) +(\d+)(?:/(\d+))? +(\S+)((?: +\S+)*)$", re.ASCII)
_RTCP_RE = re.compile(r"a=rtcp: *(\d+)(?: +(\S+) +(\S+) +([^/\s]+)\S*)?$", re.ASCII)
_CAND_RE = re.compile(r"a=candidate: *(\S+) +(\d+) +(\S+) +(\d+) +(\S+) +(\d+) +typ +(\S+)(.*)$", re.ASCII)
# Lines acted upon. "a=rtcp" also matches "a=rtcp-fb:" / "a=rtcp-rsize" (ignored below).
_INTEREST_RE = re.compile(r"\n((?:[mco]=|a=(?:rtcp|candidate:|sendrecv|sendonly|recvonly|inactive))[^\n]*)", re.ASCII)
# A line that has content but is not "<letter>=..." (leading whitespace included).
_GARBAGE_RE = re.compile(r"\n(?![A-Za-z]=)[ \t\r]*[^ \t\r\n]", re.ASCII)
_RADDR_RE = re.compile(r" raddr +(\S+)", re.ASCII)
_RPORT_RE = re.compile(r" rport +(\d+)", re.ASCII)


_new_span = new_span
_new_addr = fast_ctor(SdpAddress)
_new_media = fast_ctor(SdpMedia)
_new_rtcp = fast_ctor(SdpRtcp)
_new_sdp = fast_ctor(Sdp)


def _bad(reason: str, detail: str) -> SipParseError:
    return SipParseError(reason, detail[:80])


def parse_sdp(raw: bytes, start: int, end: int) -> Sdp:
    """Parse the SDP in ``raw[start:end]``; spans are offsets into ``raw``."""
    text = raw[start:end].decode("latin-1")  # 1 char == 1 byte: offsets stay exact
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
    origin_span: Span | None = None
    session_conn: SdpAddress | None = None
    session_dir: str | None = None
    # per m= section: [match, line offset, conns, rtcp, mux, direction, candidates]
    sections: list[list[Any]] = []
    cur: list[Any] | None = None
    for lm in _INTEREST_RE.finditer(nl_text):
        off = base + lm.start(1)
        line = lm.group(1).rstrip(" \t\r")
        kind = line[0]
        if kind == "a":
            val = line[2:]
            if cur is None:
                if val in _DIRECTIONS:
                    session_dir = val
            elif val in _DIRECTIONS:
                cur[5] = val
            elif val == "rtcp-mux":
                cur[4] = True
            elif val.startswith("rtcp:"):
                cur[3] = _rtcp(line, off)
            elif val.startswith("candidate:"):
                if len(cur[6]) >= MAX_CANDIDATES:
                    raise _bad("too-many-candidates", line)
                cur[6].append(_candidate(line, off))
            # other a=rtcp* (rtcp-fb, rtcp-rsize, ...) are ignored
        elif kind == "c":
            cm = _C_RE.match(line)
            if cm is None:
                raise _bad("bad-sdp-connection", line)
            addr = _new_addr(cm[1], cm[2], cm[3], _new_span(off + cm.start(3), off + cm.end(3)))
            if cur is not None:
                cur[2].append(addr)
            elif session_conn is None:
                session_conn = addr
        elif kind == "m":
            mm = _M_RE.match(line)
            if mm is None:
                raise _bad("bad-sdp-media", line)
            if len(sections) >= MAX_MEDIA:
                raise _bad("too-many-media", line)  # resource limit, see message.MAX_PARAMS
            cur = [mm, off, [], None, False, None, []]
            sections.append(cur)
        else:  # "o"
            om = _O_RE.match(line)
            if om is None:
                raise _bad("bad-sdp-origin", line)
            origin = _new_addr(om[4], om[5], om[6], _new_span(off + om.start(6), off + om.end(6)))
            origin_span = _new_span(off + 2, off + len(line))

    media: list[SdpMedia] = []
    default_dir = session_dir or "sendrecv"
    last = len(sections) - 1
    for i, (mm, off, conns, rtcp, mux, direction, cands) in enumerate(sections):
        port = int(mm[2])
        if port > 65535:
            raise _bad("bad-sdp-media", mm[0])
        cnt = mm[3]
        media.append(
            _new_media(
                mm[1],
                port,
                _new_span(off + mm.start(2), off + mm.end(2)),
                int(cnt) if cnt else 1,
                mm[4],
                tuple(filter(None, mm[5].split(" "))),
                conns[0] if conns else None,
                rtcp,
                mux,
                direction or default_dir,
                tuple(cands),
                _new_span(off, end if i == last else sections[i + 1][1]),
                tuple(conns),
            )
        )
    return _new_sdp(origin, origin_span, session_conn, tuple(media), _new_span(start, end), session_dir)


def _rtcp(line: str, off: int) -> SdpRtcp:
    rm = _RTCP_RE.match(line)
    if rm is None or int(rm[1]) > 65535:
        raise _bad("bad-sdp-rtcp", line)
    raddr = None
    if rm[2] is not None:
        raddr = _new_addr(rm[2], rm[3], rm[4], _new_span(off + rm.start(4), off + rm.end(4)))
    return _new_rtcp(int(rm[1]), _new_span(off + rm.start(1), off + rm.end(1)), raddr)


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
