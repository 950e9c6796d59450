"""SIP message parsing (RFC 3261 §7, §20, §25), sans-I/O and byte-preserving.

:func:`parse_message` turns the bytes of one datagram (or the head of a TCP
stream buffer) into a :class:`SipMessage` whose interesting parts carry
:class:`Span` offsets into the original bytes, so that a NAT helper can
replace an address or a port without re-serialising anything
(:mod:`nfsip.sip.edit`).

Grammar followed (RFC 3261 §25.1 unless stated):

* start-line (§7.1, §7.2): ``Method SP Request-URI SP SIP-Version`` or
  ``SIP-Version SP Status-Code SP Reason-Phrase``. Exactly one SP between
  elements: the RFC 4475 §3.1.2.7–3.1.2.10 messages (``<uri>``, LWS in the URI,
  several SP, trailing SP) are rejected. SIP-Version is compared
  case-insensitively (§7.1) and must be 2.0 (RFC 4475 §3.1.2.16).
* header fields (§7.3): case-insensitive names, compact forms (§7.3.3 and the
  later RFCs listed in :data:`COMPACT_FORMS`), LWS before and after ``:``, line
  folding (§7.3.1, unfolded to one SP in :attr:`Header.value`), several values
  per line and the same header on several lines (§7.3.1).
* Via (§20.42), Contact/From/To (§20.10, §20.20, §20.39) with name-addr or
  addr-spec, quoted strings with quoted-pairs (§25.1), URIs (§19.1, RFC 3966
  ``tel:``, IPv6 references RFC 5118), header and URI parameters.
* message body (§7.4, §18.3, §20.14): Content-Length is authoritative; when it
  is absent a datagram's body is the rest of the datagram, a stream message is
  an error. Bytes after Content-Length in a datagram are not part of the
  message (§18.3, RFC 4475 §3.1.1.8 "dblreq").

Leading CRLFs are skipped (§7.5, keep-alives RFC 5626 §3.5.1), but the first
non-CRLF bytes *must* be a SIP start-line: the parser never searches for a
start-line further inside the data (NAT slipstreaming, Samy Kamkar 2020, hid a
REGISTER inside an HTTP POST body).

Deliberate tolerances (a NAT helper that refuses a message does not make the
sender fix it, it only forwards private addresses unrewritten):

* LF-only line endings (RFC 3261 §7.5 says CRLF; the RFC 5118 archive files
  use LF) and a missing empty line at the end of a datagram (RFC 4475 baddn,
  RFC 5118 ipv6-*-colons archive copies);
* empty list elements / parameters (``;;,;,,``, RFC 4475 badinv01);
* LWS inside ``<...>`` (RFC 4475 badaspec), unquoted display names with
  non-token characters in From/To (RFC 4475 baddn, suricata ``\"arik\"``);
* ``?headers`` in a Request-URI or an addr-spec Contact (RFC 4475 escruri,
  regbadct): unambiguous, exposed as :attr:`SipUri.headers`;
* IPv6 references are only checked for their character set, so the RFC 3261
  ABNF bug form ``[2001:db8:::192.0.2.1]`` passes (RFC 5118 §4.10 "tolerate").

Strictness kept: start-line grammar, SIP/2.0 only, CSeq < 2**31 and equal to
the request method, single Call-ID/CSeq/From/To, consistent numeric
Content-Length, body not shorter than Content-Length, balanced quoted
display-names, Via sent-protocol/sent-by, sip/sips URIs with a valid host and
port. Work per packet is bounded (:data:`MAX_PARAMS`, :data:`MAX_VALUES`,
:data:`MAX_SEPARATORS`, :data:`nfsip.sip.sdp.MAX_MEDIA`).

Laziness (per-packet cost): :attr:`SipMessage.headers` and ``header()`` are
materialised on access; everything else (Via, Contact, From, To, CSeq,
Call-ID, Content-*, SDP) is parsed and validated by :func:`parse_message`, so
reading attributes never raises.

Text is decoded as latin-1 internally so that string offsets equal byte
offsets; values handed out (display names, reason phrase, header values) are
re-decoded as UTF-8 with ``surrogateescape`` when they are not ASCII. Any input
bytes raise :class:`~nfsip.sip.errors.SipParseError` or nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from nfsip.sip.errors import SipParseError
from nfsip.sip.sdp import Sdp, parse_sdp
from nfsip.sip.spans import Span, fast_ctor, new_span

__all__ = [
    "COMPACT_FORMS",
    "MAX_PARAMS",
    "MAX_SEPARATORS",
    "MAX_VALUES",
    "Header",
    "HostPort",
    "NameAddr",
    "Param",
    "SipMessage",
    "SipParseError",
    "SipUri",
    "Span",
    "Via",
    "canonical_header_name",
    "parse_message",
    "parse_name_addrs",
]

#: Compact header forms: RFC 3261 §7.3.3 (i c e f k l m s t v), RFC 3265 (o u),
#: RFC 3515 (r), RFC 4028 (x), RFC 4474 (y), RFC 3892 (b), RFC 3841 (a j d).
COMPACT_FORMS: Final[dict[str, str]] = {
    "i": "call-id",
    "c": "content-type",
    "e": "content-encoding",
    "f": "from",
    "k": "supported",
    "l": "content-length",
    "m": "contact",
    "s": "subject",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "u": "allow-events",
    "x": "session-expires",
    "y": "identity",
    "b": "referred-by",
    "j": "reject-contact",
    "d": "request-disposition",
    "a": "accept-contact",
}


def canonical_header_name(name: str) -> str:
    """Lower-case long form of a header name (``"V"`` -> ``"via"``)."""
    low = name.strip().lower()
    return COMPACT_FORMS.get(low, low)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class HostPort:
    """``host[:port]`` as written (RFC 3261 §25.1 hostport)."""

    host: str  # IPv6 references without the brackets
    port: int | None
    host_span: Span  # for IPv6 covers "[...]", brackets included
    port_span: Span | None  # digits only
    span: Span  # host[:port]

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


@dataclass(frozen=True, slots=True)
class Param:
    """``;name[=value]``; ``value`` is as written (quotes kept for quoted-strings)."""

    name: str  # lower-cased
    value: str | None
    value_span: Span | None


def _find_param(params: tuple[Param, ...], name: str) -> Param | None:
    for p in params:
        if p.name == name:
            return p
    return None


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm (RFC 3261 §20.42)."""

    protocol: str  # "SIP/2.0/UDP"
    transport: str  # "UDP", "TCP", "TLS", "SCTP", "WS", ...
    sent_by: HostPort
    params: tuple[Param, ...]
    span: Span  # whole via-parm

    def param(self, name: str) -> Param | None:
        return _find_param(self.params, name.lower())

    @property
    def branch(self) -> str | None:
        p = _find_param(self.params, "branch")
        return p.value if p is not None else None

    @property
    def received(self) -> str | None:
        p = _find_param(self.params, "received")
        return p.value if p is not None else None

    @property
    def maddr(self) -> str | None:
        p = _find_param(self.params, "maddr")
        return p.value if p is not None else None

    @property
    def rport(self) -> Param | None:
        """The rport Param (RFC 3581); ``value is None`` for a bare ``;rport``."""
        return _find_param(self.params, "rport")


@dataclass(frozen=True, slots=True)
class SipUri:
    """A URI as found in a Request-URI or name-addr (RFC 3261 §19.1, RFC 3966)."""

    scheme: str  # lower-cased
    user: str | None  # user part as written (escapes kept), sip/sips only
    hostport: HostPort | None  # None for tel: and unknown schemes
    params: tuple[Param, ...]
    span: Span
    headers: str | None = None  # "?h=v&..." without the "?", as written

    def param(self, name: str) -> Param | None:
        return _find_param(self.params, name.lower())


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One value of Contact/From/To/Route/Record-Route/... (RFC 3261 §20.10)."""

    display_name: str | None  # quoted-pairs resolved, quotes removed
    uri: SipUri
    params: tuple[Param, ...]  # header params after the URI (tag, expires, q, ...)
    span: Span

    def param(self, name: str) -> Param | None:
        return _find_param(self.params, name.lower())

    @property
    def tag(self) -> str | None:
        p = _find_param(self.params, "tag")
        return p.value if p is not None else None


@dataclass(frozen=True, slots=True)
class Header:
    """One header field line (possibly folded)."""

    name: str  # canonical lower-case long form
    raw_name: str
    value: str  # unfolded, stripped
    value_span: Span  # as written, may contain folding
    line_span: Span  # whole line(s) including the line terminator


# ------------------------------------------------------------------------ grammar

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_LWS = r"[ \t\r\n]*"
_QUOTED = r'"[^"\\]*(?:\\[\s\S][^"\\]*)*"'  # unrolled: no per-char alternation

_REQ_LINE_RE = re.compile(r"(" + _TOKEN + r") (\S+) ([Ss][Ii][Pp]/\d+\.\d+)\r?\Z", re.ASCII)
_STATUS_LINE_RE = re.compile(r"[Ss][Ii][Pp]/(\d+\.\d+) (\d{3})(?: ([^\r\n]*?))?\r?\Z", re.ASCII)
_SIP_VERSION_TAIL_RE = re.compile(r".* [Ss][Ii][Pp]/\d+\.\d+\s*\Z", re.ASCII | re.DOTALL)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):", re.ASCII)
_HOST = r"(\[[0-9A-Fa-f:.]+\]|[^:;?\s\[\]<>@\",/]+)"
# sip/sips URI after "scheme:" (RFC 3261 §19.1.1): [userinfo "@"] hostport
# uri-parameters [headers]. userinfo is greedy up to the *last* '@' ('@' is not
# allowed unescaped in parameters or headers, but RFC 4475 intmeth shows that
# almost anything else, '?' and ';' included, is legal in the user part).
_SIP_URI_RE = re.compile(r"(?:(.*)@)?" + _HOST + r"(?::(\d{1,5}))?((?:;[^;?]*)*)(?:\?(.*))?\Z", re.ASCII | re.DOTALL)
_URI_PARAMS_FINDALL = re.compile(r";([^;?=]*)(=?)([^;?]*)").findall
_LWS_RE = re.compile(_LWS)
_LWS_COMMA_RE = re.compile(r"[ \t\r\n,]*")
_EMPTY_TAIL_RE = re.compile(r"[ \t\r\n;,]*\Z")
# *(SEMI generic-param) with LWS (RFC 3261 §25.1 SEMI, EQUAL, gen-value). The
# name is optional so that stray separators (";;") are skipped -- see
# _params_from_block. Matched as one block, then split by _PARAM_PARTS.
_PARAM_UNIT = _LWS + r";" + _LWS + r"(?:" + _TOKEN + r"(?:" + _LWS + r"=" + _LWS + r"(?:" + _QUOTED + r'|[^\s;,"]+))?)?'
_PARAMS_BLOCK_RE = re.compile(r"(?:" + _PARAM_UNIT + r")*", re.ASCII)
_PARAM_PARTS_FINDALL = re.compile(
    r"(" + _LWS + r";" + _LWS + r")(" + _TOKEN + r")?(?:(" + _LWS + r"=" + _LWS + r")(" + _QUOTED + r'|[^\s;,"]+))?',
    re.ASCII,
).findall
_VIA_RE = re.compile(
    r"("
    + _TOKEN
    + r")"
    + _LWS
    + r"/"
    + _LWS
    + r"("
    + _TOKEN
    + r")"
    + _LWS
    + r"/"
    + _LWS
    + r"("
    + _TOKEN
    + r")[ \t\r\n]+"
    + r"(\[[0-9A-Fa-f:.]+\]|[^\s;:,\[\]\"<>/]+)"
    + r"(?:"
    + _LWS
    + r":"
    + _LWS
    + r"(\d{1,5}))?"
    + r"((?:"
    + _PARAM_UNIT
    + r")*)"
    + _LWS,
    re.ASCII,
)
_QUOTED_RE = re.compile(_QUOTED)
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
_CSEQ_RE = re.compile(r"(\d+)[ \t\r\n]+(" + _TOKEN + r")\Z", re.ASCII)
_DIGITS_RE = re.compile(r"\d+\Z", re.ASCII)
_FOLD_RE = re.compile(r"[ \t]*\r?\n[ \t]*")
_ADDR_SPEC_END_RE = re.compile(r"[;,\s]", re.ASCII)
_BOUNDARY_RE = re.compile(r';[ \t\r\n]*boundary[ \t\r\n]*=[ \t\r\n]*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)

_MAX_CSEQ: Final = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"

# Resource limits. Parsing is linear, but a 64 KB datagram made of ";;;;" or
# thousands of Contact values would cost tens of ms of Python per packet (a
# cheap CPU DoS on a router). Real messages stay far below these (RFC 4475
# longreq, the torture test for long messages, has 34 Via values).
MAX_PARAMS: Final = 64  # ';' separators per URI / header value (empty params included)
MAX_VALUES: Final = 128  # Via values, Contact values in one message
# ';' per Via/Contact header field, checked with str.count before any regex
# runs: the regex engine itself spends ~0.7 us per repetition of a parameter.
MAX_SEPARATORS: Final = 512

_new_span = new_span
_new_hostport = fast_ctor(HostPort)
_new_param = fast_ctor(Param)
_new_via = fast_ctor(Via)
_new_uri = fast_ctor(SipUri)
_new_name_addr = fast_ctor(NameAddr)


def _text(s: str) -> str:
    """latin-1 internal text -> user string (UTF-8, surrogateescape)."""
    if s.isascii():
        return s
    return s.encode("latin-1").decode("utf-8", "surrogateescape")


def _unescape(m: re.Match[str]) -> str:
    return m.group(1)


def _err(reason: str, detail: str = "") -> SipParseError:
    return SipParseError(reason, detail[:120])


# ----------------------------------------------------------------- sub-parsers


def _params_from_block(block: str, p: int) -> tuple[Param, ...]:
    """Split a block matched by ``_PARAMS_BLOCK_RE`` at offset ``p`` into Params.

    Empty parameters (";;") are skipped rather than rejected. RFC 4475 §3.1.2.1
    (badinv01) wants a 400 from the UAS, but a NAT helper is not the UAS:
    refusing to parse would not produce that 400, it would only forward the
    private addresses unrewritten. Empty elements carry no information.
    """
    if not block:
        return ()
    out: list[Param] = []
    if block.count(";") > MAX_PARAMS:  # counted cheaply, quoted ';' included
        raise _err("too-many-params")
    for sep, name, eq, value in _PARAM_PARTS_FINDALL(block):
        p += len(sep)
        if name:
            p += len(name)
            if eq:
                p += len(eq)
                ve = p + len(value)
                out.append(_new_param(name.lower(), value if value.isascii() else _text(value), _new_span(p, ve)))
                p = ve
            else:
                out.append(_new_param(name.lower(), None, None))
    return tuple(out)


def _parse_params(t: str, p: int, e: int) -> tuple[tuple[Param, ...], int]:
    """Parse ``*(SEMI generic-param)`` from ``p``; return params and end position."""
    m = _PARAMS_BLOCK_RE.match(t, p, e)
    end = m.end()  # type: ignore[union-attr]  # always matches (possibly empty)
    if end == p:
        return (), p
    return _params_from_block(t[p:end], p), end


def _parse_uri(t: str, s: int, e: int) -> SipUri:
    """Parse the URI in ``t[s:e]`` (already delimited by the caller)."""
    m = _SCHEME_RE.match(t, s, e)
    if m is None:
        raise _err("bad-uri", t[s:e])
    scheme = m.group(1).lower()
    p = m.end()
    if scheme == "sip" or scheme == "sips":
        um = _SIP_URI_RE.match(t, p, e)
        if um is None:
            # e.g. an unbracketed IPv6 address "sip:2001:db8::10" (RFC 5118 §4.2)
            raise _err("bad-uri", t[s:e])
        userinfo, host, port_s, pblock, headers = um.groups()
        user = None
        if userinfo is not None:
            colon = userinfo.find(":")
            user = _text(userinfo if colon < 0 else userinfo[:colon])
        hs, he = um.span(2)
        if host[0] == "[":
            host = host[1:-1]
        if port_s is None:
            hsp = _new_span(hs, he)
            hp = _new_hostport(host, None, hsp, None, hsp)
        else:
            port = int(port_s)
            if port > 65535:
                raise _err("bad-uri", t[s:e])
            pe = um.end(3)
            hp = _new_hostport(host, port, _new_span(hs, he), _new_span(he + 1, pe), _new_span(hs, pe))
        params: tuple[Param, ...] = ()
        if pblock:
            plist: list[Param] = []
            q = um.start(4)
            if pblock.count(";") > MAX_PARAMS:
                raise _err("too-many-params")
            for name, eq, value in _URI_PARAMS_FINDALL(pblock):
                q += 1 + len(name)
                if name:
                    if eq:
                        q += 1
                        ve = q + len(value)
                        plist.append(_new_param(name.lower(), _text(value), _new_span(q, ve)))
                        q = ve
                    else:
                        plist.append(_new_param(name.lower(), None, None))
                else:
                    q += len(eq) + len(value)
            params = tuple(plist)
        hdrs = None if headers is None else _text(headers)
        return _new_uri(scheme, user, hp, params, _new_span(s, e), hdrs)
    if scheme == "tel":
        semi = t.find(";", p, e)
        params = ()
        if semi >= 0:
            params, q = _parse_params(t, semi, e)
            if q != e:
                raise _err("bad-uri", t[s:e])
        return _new_uri(scheme, None, None, params, _new_span(s, e), None)
    # Unknown schemes (RFC 4475 §3.3.2 unkscm, §3.3.4 unksm2): opaque.
    return _new_uri(scheme, None, None, (), _new_span(s, e), None)


def _parse_vias(t: str, s: int, e: int, out: list[Via]) -> None:
    """Parse every via-parm in ``t[s:e]`` and append to ``out`` (RFC 3261 §20.42)."""
    p = _LWS_RE.match(t, s, e).end()  # type: ignore[union-attr]
    while True:
        m = _VIA_RE.match(t, p, e)
        if m is None:
            raise _err("bad-via", t[p:e])
        name, version, transport, host, port_s, pblock = m.groups()
        if version != "2.0" or name.upper() != "SIP":
            raise _err("bad-via-version", t[p:e])  # RFC 4475 badvers (SIP/7.0)
        transport = transport.upper()
        hs, he = m.span(4)
        if host[0] == "[":
            host = host[1:-1]
        if port_s is None:
            hsp = _new_span(hs, he)
            hp = _new_hostport(host, None, hsp, None, hsp)
        else:
            port = int(port_s)
            if port > 65535:
                raise _err("bad-via", t[p:e])
            ps, pe = m.span(5)
            hp = _new_hostport(host, port, _new_span(hs, he), _new_span(ps, pe), _new_span(hs, pe))
        pstart, q = m.span(6)
        params = _params_from_block(pblock, pstart) if pblock else ()
        out.append(_new_via("SIP/2.0/" + transport, transport, hp, params, _new_span(p, q)))
        if len(out) > MAX_VALUES:
            raise _err("too-many-values", "Via")
        q = m.end()
        if q >= e:
            return
        if t[q] != ",":
            raise _err("bad-via", t[q:e])
        # Empty list elements ("Via: ...;;,;,,", RFC 4475 badinv01) are skipped.
        if _EMPTY_TAIL_RE.match(t, q, e) is not None:
            return
        p = _LWS_COMMA_RE.match(t, q, e).end()  # type: ignore[union-attr]


def _parse_name_addr(t: str, s: int, e: int, multi: bool, reason: str) -> tuple[NameAddr, int]:
    """Parse one name-addr / addr-spec with header params starting at ``s``.

    Returns the value and the position after it: ``e`` or just after the ``,``
    separating it from the next value (``multi``).
    """
    i = _LWS_RE.match(t, s, e).end()  # type: ignore[union-attr]
    if i >= e:
        raise _err(reason, "empty value")
    display: str | None = None
    c = t[i]
    if c == "<":
        lt = i
    elif c == '"':
        qm = _QUOTED_RE.match(t, i, e)
        if qm is None:
            raise _err("unterminated-quote", t[i:e])  # RFC 4475 §3.1.2.6 quotbal
        display = qm.group()[1:-1]
        if "\\" in display:
            display = _QUOTED_PAIR_RE.sub(_unescape, display)
        display = _text(display)
        lt = _LWS_RE.match(t, qm.end(), e).end()  # type: ignore[union-attr]
        if lt >= e or t[lt] != "<":
            raise _err(reason, t[i:e])
    else:
        lt = t.find("<", i, e)
        if lt >= 0 and multi and t.find(",", i, lt) >= 0:
            lt = -1  # the '<' belongs to a later value
        if lt >= 0:
            # Unquoted display name. RFC 4475 §3.1.2.15 (baddn) puts non-token
            # characters ("Bell, Alexander") here and wants a 400 from the UAS;
            # From/To are single-valued so the name is unambiguous, and a NAT
            # helper gains nothing by refusing: accept anything before '<'.
            display = _text(t[i:lt].strip(" \t\r\n")) or None
    if lt >= 0:
        gt = t.find(">", lt, e)
        if gt < 0:
            raise _err(reason, t[i:e])
        us, ue = lt + 1, gt
        if t[us] in " \t\r\n" or t[ue - 1] in " \t\r\n":
            # LWS inside <...> (RFC 4475 §3.1.2.14 badaspec): the addr-spec is
            # still unambiguous, so tolerate it instead of leaking addresses.
            us = _LWS_RE.match(t, us, gt).end()  # type: ignore[union-attr]
            while ue > us and t[ue - 1] in " \t\r\n":
                ue -= 1
        uri = _parse_uri(t, us, ue)
        p = gt + 1
    else:
        m = _ADDR_SPEC_END_RE.search(t, i, e)
        ue = m.start() if m is not None else e
        uri = _parse_uri(t, i, ue)
        p = ue
    if p < e:
        bm = _PARAMS_BLOCK_RE.match(t, p, e)
        q = bm.end()  # type: ignore[union-attr]
        params = _params_from_block(t[p:q], p) if q > p else ()
        p = q
    else:
        params = ()
    na = _new_name_addr(display, uri, params, _new_span(i, p))
    if p >= e:
        return na, e
    q = _LWS_RE.match(t, p, e).end()  # type: ignore[union-attr]
    if q >= e:
        return na, e
    if multi and t[q] == ",":
        return na, q + 1
    raise _err(reason, t[q:e])


def _parse_name_addr_list(t: str, s: int, e: int, reason: str) -> list[NameAddr]:
    out: list[NameAddr] = []
    p = s
    while p < e:
        na, p = _parse_name_addr(t, p, e, True, reason)
        out.append(na)
        if len(out) > MAX_VALUES:
            raise _err("too-many-values", reason)
        if p < e and _LWS_COMMA_RE.match(t, p, e).end() >= e:  # type: ignore[union-attr]
            break  # trailing empty list elements
    return out


def parse_name_addrs(msg: SipMessage, name: str) -> list[NameAddr]:
    """All name-addr values of every header ``name`` (e.g. Route, Record-Route).

    Spans index ``msg.raw``. Raises :class:`SipParseError` on malformed values.
    """
    canon = canonical_header_name(name)
    t = msg._text
    out: list[NameAddr] = []
    for h in msg._index:
        if h[0] == canon:
            vs, ve = _strip_span(t, h[2], h[3])
            out.extend(_parse_name_addr_list(t, vs, ve, "bad-" + canon))
    return out


# --------------------------------------------------------------------- message

# Internal header index entry: (canonical name, raw name, value start, raw
# value end (before the line terminator, trailing LWS not yet stripped), line
# start, line end).
_HIdx = tuple[str, str, int, int, int, int]

# Header lines in one C-level pass: (name, "LWS:LWS", value incl. folded
# continuation lines and the CR of CRLF). Each match is exactly one logical
# line minus its final LF, so offsets are recovered by adding lengths;
# coverage is checked afterwards to catch lines this pattern skipped.
_HDRS_FINDALL = re.compile(r"(" + _TOKEN + r")([ \t]*:[ \t]*)([^\n]*(?:\n[ \t][^\n]*)*)\n", re.ASCII).findall

# Headers parsed eagerly, to small ints for a cheap dispatch.
_H_VIA, _H_CONTACT, _H_CALLID, _H_CSEQ, _H_CLEN, _H_CTYPE, _H_FROM, _H_TO, _H_EXPIRES = range(9)
_EAGER: Final[dict[str, int]] = {
    "via": _H_VIA,
    "contact": _H_CONTACT,
    "call-id": _H_CALLID,
    "cseq": _H_CSEQ,
    "content-length": _H_CLEN,
    "content-type": _H_CTYPE,
    "from": _H_FROM,
    "to": _H_TO,
    "expires": _H_EXPIRES,
}
_RSTRIP_LWS = " \t\r\n"
_STRUCTURED: Final = frozenset({_H_VIA, _H_CONTACT, _H_FROM, _H_TO})

# raw header name -> (canonical name, eager kind). Bounded: names are
# attacker-controlled, so the cache stops growing at _NAME_CACHE_MAX entries.
_NAME_CACHE: dict[str, tuple[str, int | None]] = {}
_NAME_CACHE_MAX: Final = 2048


def _classify_name(name: str) -> tuple[str, int | None]:
    low = name.lower()
    canon = COMPACT_FORMS.get(low, low)
    known = (canon, _EAGER.get(canon))
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = known
    return known


class SipMessage:
    """A parsed SIP message. Treat as immutable.

    ``raw`` is a prefix of the bytes given to :func:`parse_message` (leading
    CRLFs included, trailing datagram bytes excluded: see ``trailing``); every
    span indexes ``raw``. ``headers`` is built on first access (per-packet
    cost); reading any attribute never raises.
    """

    __slots__ = (
        "_from",
        "_headers",
        "_index",
        "_text",
        "_to",
        "body_span",
        "call_id",
        "contact_star",
        "contacts",
        "content_length",
        "content_length_spans",
        "content_type",
        "cseq",
        "cseq_method",
        "expires",
        "is_request",
        "method",
        "raw",
        "reason",
        "request_uri",
        "sdp",
        "start_line_span",
        "status",
        "trailing",
        "vias",
    )

    raw: bytes
    is_request: bool
    method: str | None
    request_uri: SipUri | None
    status: int | None
    reason: str | None
    call_id: str
    cseq: int
    cseq_method: str
    vias: tuple[Via, ...]
    contacts: tuple[NameAddr, ...]
    contact_star: bool
    content_type: str | None
    content_length: int | None
    content_length_spans: tuple[Span, ...]
    body_span: Span
    sdp: Sdp | None
    expires: int | None
    trailing: bytes  # datagram bytes after the message (never part of it)
    start_line_span: Span  # the start-line including its line terminator
    _text: str
    _index: list[_HIdx]
    _headers: tuple[Header, ...] | None
    _from: NameAddr
    _to: NameAddr

    # -- headers

    @property
    def headers(self) -> tuple[Header, ...]:
        """All header fields in order (built on first access)."""
        if self._headers is None:
            self._headers = tuple(self._make_header(h) for h in self._index)
        return self._headers

    def _make_header(self, h: _HIdx) -> Header:
        t = self._text
        vs, ve = _strip_span(t, h[2], h[3])
        v = t[vs:ve]
        if "\n" in v:
            v = _FOLD_RE.sub(" ", v)
        return Header(h[0], _text(h[1]), _text(v), Span(vs, ve), Span(h[4], h[5]))

    def header(self, name: str) -> Header | None:
        """First header named ``name`` (compact or long form, any case)."""
        canon = canonical_header_name(name)
        for h in self._index:
            if h[0] == canon:
                return self._make_header(h)
        return None

    def headers_named(self, name: str) -> list[Header]:
        """Every header named ``name`` in order (compact or long form, any case)."""
        canon = canonical_header_name(name)
        return [self._make_header(h) for h in self._index if h[0] == canon]

    # -- convenience

    @property
    def from_(self) -> NameAddr:
        """The From value (parsed and validated by :func:`parse_message`)."""
        return self._from

    @property
    def to(self) -> NameAddr:
        """The To value (parsed and validated by :func:`parse_message`)."""
        return self._to

    @property
    def top_via(self) -> Via:
        return self.vias[0]

    @property
    def header_end(self) -> int:
        """Offset just after the last header line (the empty line follows)."""
        return self._index[-1][5] if self._index else self.start_line_span.end

    def body(self) -> bytes:
        return self.raw[self.body_span.start : self.body_span.end]

    def __repr__(self) -> str:
        if self.is_request:
            first = f"{self.method} {self._text[self.request_uri.span.start : self.request_uri.span.end]}"  # type: ignore[union-attr]
        else:
            first = f"{self.status} {self.reason}"
        return f"<SipMessage {first} call-id={self.call_id!r} cseq={self.cseq} {self.cseq_method}>"


def _strip_span(t: str, s: int, e: int) -> tuple[int, int]:
    """Shrink ``[s, e)`` so that it excludes surrounding LWS (incl. folding)."""
    v = t[s:e]
    stripped = v.strip(_RSTRIP_LWS)
    if not stripped:
        return s, s
    if v[0] in _RSTRIP_LWS:
        s += v.find(stripped[0])
    return s, s + len(stripped)


_START_PREFIX_RE = re.compile(
    r"(?:"
    + _TOKEN
    + r"(?: [^ \s]*(?: (?:[Ss](?:[Ii](?:[Pp](?:/[\d.]*)?)?)?)?)?)?"
    + r"|[Ss](?:[Ii](?:[Pp](?:/(?:\d+(?:\.(?:\d+(?: \d{0,3}(?: .*)?)?)?)?)?)?)?)?)\r?\Z",
    re.ASCII | re.DOTALL,
)


def _looks_like_start(partial: bytes) -> bool:
    """Could ``partial`` (no LF yet) be the beginning of a SIP start-line?"""
    return _START_PREFIX_RE.match(partial.decode("latin-1")) is not None


def _bad_header_line(t: str, p: int, hend: int) -> SipParseError:
    """Locate the first header line the fast path could not match."""
    m = _HDR_LINE_RE.match(t, p, hend)
    while m is not None:
        p = m.end()
        m = _HDR_LINE_RE.match(t, p, hend)
    return _err("bad-header-line", t[p : t.find("\n", p, hend)])


_HDR_LINE_RE = re.compile(r"(" + _TOKEN + r")[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n", re.ASCII)


def parse_message(data: bytes, *, stream: bool = False) -> SipMessage:
    """Parse one SIP message from the start of ``data``.

    ``stream=False`` (UDP): ``data`` is one datagram; without Content-Length
    the body runs to its end; bytes after Content-Length go to ``trailing``.
    ``stream=True`` (TCP/TLS): Content-Length is mandatory (RFC 3261 §18.3) and
    ``trailing`` holds the start of the next message. Errors whose
    ``.incomplete`` is true mean "wait for more bytes".
    """
    if type(data) is not bytes:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError("parse_message() needs bytes")
        data = bytes(data)
    n = len(data)
    if n == 0:
        raise _err("empty")
    pos = 0
    if data[0] == 13 or data[0] == 10:
        # RFC 3261 §7.5: ignore CRLFs before the start-line (RFC 5626 keep-alives).
        pos = n - len(data.lstrip(b"\r\n"))
        if pos == n:
            raise _err("keepalive")

    # ---- start-line, checked before anything else: the first non-CRLF bytes
    # must be a SIP start-line (never searched for further in).
    nl = data.find(b"\n", pos)
    if nl < 0:
        raise _err("incomplete-headers" if _looks_like_start(data[pos:]) else "no-start-line")
    sl = data[pos:nl].decode("latin-1")
    sl_end = nl + 1
    req = None
    if sl[:4].upper() == "SIP/":
        m = _STATUS_LINE_RE.match(sl)
        if m is None:
            raise _err("bad-status-line", sl)  # incl. RFC 4475 bigcode (4294967301)
        if m.group(1) != "2.0":
            raise _err("bad-version", sl)
        status = int(m.group(2))
        if status < 100:
            raise _err("bad-status-line", sl)
    else:
        req = _REQ_LINE_RE.match(sl)
        if req is None:
            if _SIP_VERSION_TAIL_RE.match(sl) is None:
                raise _err("no-start-line", sl)
            raise _err("bad-request-line", sl)  # RFC 4475 lwsstart, trws, lwsruri
        if req.group(3)[4:] != "2.0":
            raise _err("bad-version", sl)  # RFC 4475 badvers (SIP/7.0)

    # End of the header block: the first empty line (CRLF CRLF, or LF LF as in
    # the RFC 5118 archive files).
    a = data.find(b"\n\r\n", nl)
    b = data.find(b"\n\n", nl)
    if a >= 0 and (b < 0 or a < b):
        hend, body_start = a + 1, a + 3
    elif b >= 0:
        hend, body_start = b + 1, b + 2
    elif not stream and data[-1] == 10:
        # No empty line after the headers. RFC 3261 requires one, but the RFC
        # archives themselves ship such datagrams (RFC 4475 baddn.dat, RFC
        # 5118 ipv6-*-colons.dat) and on UDP the datagram boundary ends the
        # message unambiguously: accept with an empty body.
        hend = body_start = n
    else:
        raise _err("incomplete-headers")

    t = data[:hend].decode("latin-1")  # 1 char == 1 byte: str offsets are byte offsets
    msg = SipMessage.__new__(SipMessage)
    msg._text = t
    msg._headers = None
    msg.start_line_span = _new_span(pos, sl_end)
    if req is None:
        msg.is_request = False
        msg.method = None
        msg.request_uri = None
        msg.status = status
        msg.reason = _text(m.group(3) or "")  # type: ignore[union-attr]
    else:
        msg.is_request = True
        msg.method = req.group(1)
        if sl.count(";") > MAX_PARAMS:
            raise _err("too-many-params")
        msg.request_uri = _parse_uri(t, pos + req.start(2), pos + req.end(2))
        msg.status = None
        msg.reason = None

    # ---- header index (one regex pass, offsets by accumulation)
    index: list[_HIdx] = []
    eager: list[tuple[int, str, int, int]] = []
    p = sl_end
    names = _NAME_CACHE
    for name, sep, value in _HDRS_FINDALL(t, sl_end, hend):
        vs = p + len(name) + len(sep)
        ve = vs + len(value)
        known = names.get(name)
        if known is None:
            known = _classify_name(name)
        canon, kind = known
        index.append((canon, name, vs, ve, p, ve + 1))
        if kind is not None:
            eager.append((kind, value, vs, ve))
        p = ve + 1
    if p != hend:
        raise _bad_header_line(t, sl_end, hend)

    # ---- headers the engine needs on every packet
    vias: list[Via] = []
    contacts: list[NameAddr] = []
    star = False
    call_id: str | None = None
    cseq_t: tuple[int, str] | None = None
    from_: NameAddr | None = None
    to: NameAddr | None = None
    ctype: str | None = None
    ctype_raw: str | None = None
    clen: int | None = None
    clen_spans: list[Span] = []
    expires: int | None = None
    for kind, value, vs, ve in eager:
        v = value.rstrip(_RSTRIP_LWS)
        ve = vs + len(v)
        if kind in _STRUCTURED and v.count(";") > MAX_SEPARATORS:
            raise _err("too-many-params")  # before any regex: see MAX_SEPARATORS
        if kind == _H_VIA:
            _parse_vias(t, vs, ve, vias)
        elif kind == _H_CONTACT:
            if v.strip(_RSTRIP_LWS) == "*":
                star = True
            else:
                contacts.extend(_parse_name_addr_list(t, vs, ve, "bad-contact"))
                if len(contacts) > MAX_VALUES:
                    raise _err("too-many-values", "Contact")
        elif kind == _H_CALLID:
            if call_id is not None:
                raise _err("multiple-call-id")  # RFC 4475 §3.3.8 multi01
            v = v.lstrip(_RSTRIP_LWS)
            if not v:
                raise _err("missing-call-id", "empty Call-ID")
            call_id = _text(_FOLD_RE.sub(" ", v) if "\n" in v else v)
        elif kind == _H_CSEQ:
            if cseq_t is not None:
                raise _err("multiple-cseq")  # RFC 4475 §3.3.8 multi01
            cm = _CSEQ_RE.match(v.lstrip(_RSTRIP_LWS))
            if cm is None:
                raise _err("bad-cseq", v)
            num = int(cm.group(1))
            if num > _MAX_CSEQ:
                raise _err("bad-cseq", "CSeq number too large")  # RFC 4475 scalar02, scalarlg
            cseq_t = (num, cm.group(2))
        elif kind == _H_CLEN:
            v2 = v.lstrip(_RSTRIP_LWS)
            if _DIGITS_RE.match(v2) is None:
                raise _err("bad-content-length", v2)  # RFC 4475 ncl (-999); zeek "bad"
            val = int(v2)
            if clen is not None and val != clen:
                raise _err("bad-content-length", "disagreeing values")  # RFC 4475 mcl01
            clen = val
            clen_spans.append(_new_span(ve - len(v2), ve))
        elif kind == _H_CTYPE:
            if ctype is None:
                ctype_raw = v
                ctype = v.split(";", 1)[0].strip(_RSTRIP_LWS).lower()
        elif kind in (_H_FROM, _H_TO):
            # Quoted display-names are checked by _parse_name_addr (RFC 4475
            # quotbal -> "unterminated-quote"); quotes *not* opening the value
            # belong to a tolerated unquoted display-name (synthetic suricata
            # captures write 'From: \"arik\" <sip:..>').
            if kind == _H_FROM:
                if from_ is not None:
                    raise _err("multiple-from")  # RFC 4475 §3.3.8 multi01
                from_ = _parse_name_addr(t, vs, ve, False, "bad-from")[0]
            else:
                if to is not None:
                    raise _err("multiple-to")  # RFC 4475 §3.3.8 multi01
                to = _parse_name_addr(t, vs, ve, False, "bad-to")[0]
        elif kind == _H_EXPIRES:
            v2 = v.lstrip(_RSTRIP_LWS)
            if _DIGITS_RE.match(v2) is not None:
                expires = int(v2)

    if call_id is None:
        raise _err("missing-call-id")
    if cseq_t is None:
        raise _err("missing-cseq")
    if not vias:
        raise _err("missing-via")
    if from_ is None:
        raise _err("missing-from")
    if to is None:
        raise _err("missing-to")
    if msg.is_request and cseq_t[1] != msg.method:
        raise _err("cseq-method-mismatch")  # RFC 3261 §8.1.1.5, RFC 4475 mismatch01/02

    # ---- body
    if clen is None:
        if stream:
            raise _err("missing-content-length")  # RFC 3261 §18.3
        body_end = n if body_start <= n else body_start
    else:
        body_end = body_start + clen
        if body_end > n:
            raise _err("truncated-body", f"Content-Length {clen}, {n - body_start} bytes available")
    if body_start > n:
        body_start = body_end = n
    raw = data if body_end == n else data[:body_end]
    msg.raw = raw
    msg.trailing = data[body_end:] if body_end < n else b""
    msg.body_span = _new_span(body_start, body_end)
    msg.call_id = call_id
    msg.cseq, msg.cseq_method = cseq_t
    msg.vias = tuple(vias)
    msg.contacts = tuple(contacts)
    msg.contact_star = star
    msg.content_type = ctype
    msg.content_length = clen
    msg.content_length_spans = tuple(clen_spans)
    msg.expires = expires
    msg._index = index
    msg._from = from_
    msg._to = to
    msg.sdp = None
    if body_end > body_start and ctype is not None:
        if ctype == "application/sdp":
            msg.sdp = parse_sdp(raw, body_start, body_end)
        elif ctype.startswith("multipart/") and ctype_raw is not None:
            msg.sdp = _multipart_sdp(raw, body_start, body_end, ctype_raw)
    return msg


def _multipart_sdp(raw: bytes, bs: int, be: int, ctype_raw: str) -> Sdp | None:
    """Find and parse the first application/sdp part of a multipart body.

    RFC 5621 (message bodies in SIP) with RFC 2046 §5.1.1 framing: a part
    starts after a ``--boundary`` line and ends before the CRLF preceding the
    next delimiter. Nested multiparts are not searched (not seen in the wild
    for SDP).
    """
    bm = _BOUNDARY_RE.search(ctype_raw)
    if bm is None:
        raise _err("bad-multipart", "no boundary")
    boundary = (bm.group(1) or bm.group(2)).encode("latin-1")
    delim = b"--" + boundary
    # the first delimiter may be at the very start of the body
    i = bs if raw.startswith(delim, bs) else raw.find(b"\n" + delim, bs, be)
    if i < 0:
        raise _err("bad-multipart", "no delimiter")
    if i != bs:
        i += 1
    while True:
        after = i + len(delim)
        if raw.startswith(b"--", after):
            return None  # close-delimiter
        line_end = raw.find(b"\n", after, be)
        if line_end < 0:
            raise _err("bad-multipart", "truncated")
        part_start = line_end + 1
        nxt = raw.find(b"\n" + delim, part_start - 1, be)
        if nxt < 0:
            raise _err("bad-multipart", "missing close delimiter")
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
        for line in raw[part_start:hdr_end].decode("latin-1").split("\n"):
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() in ("content-type", "c"):
                ptype = value.split(";", 1)[0].strip().lower()
        if ptype == "application/sdp" and pbody < part_end:
            return parse_sdp(raw, pbody, part_end)
        i = nxt + 1
