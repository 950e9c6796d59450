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

Lazy and strict parsing (per-packet cost). By default :func:`parse_message`
parses and validates only what a NAT helper acts upon:

* eagerly, on every message: the start-line (the Request-URI is validated;
  its :class:`SipUri` is built on first access), the syntax of every header
  line, the *top* Via value (:attr:`SipMessage.top_via`), every Contact,
  Call-ID, CSeq, Content-Length, Content-Type, Expires, the presence and
  uniqueness of From and To, the body framing and the SDP lines a NAT helper
  rewrites (``o=``, ``c=``, ``m=``, ``a=rtcp:``, ``a=rtcp-mux``). Errors there
  raise from :func:`parse_message` with the reason a strict parse gives;
* on first access, then cached: :attr:`SipMessage.from_`, :attr:`SipMessage.to`,
  :attr:`SipMessage.vias` (the values after the first), the ICE candidates
  (:attr:`SdpMedia.candidates <nfsip.sip.sdp.SdpMedia.candidates>`), the
  direction attributes, the header table (``headers``, ``header()``),
  parameters and spans. A malformed From, To, second-or-later Via value or
  ``a=candidate:`` line raises :class:`SipParseError` *when that attribute is
  read* -- never another exception; parameter, span, direction and header
  accessors never raise. Callers on the packet path read ``top_via`` (not
  ``vias[0]``, which parses every Via) and catch :class:`SipParseError` around
  ``to``/``from_``/``vias``.

:meth:`SipMessage.validate` forces every deferred part. ``parse_message(data,
strict=True)`` parses everything at once and raises exactly what the
historical eager parser raised, in the same order (the RFC 4475/5118 and
corpus verdicts are checked that way). Lazy and strict parses of a valid
message are equal field by field (hypothesis-tested). The lazy parse of the
usual header forms goes through one C-level regex scan (``_fast_headers``);
anything unusual (folding, LF-only lines, LWS, quoted parameters, several
values per line) or erroneous takes the generic line-by-line path, which is
also the strict one.

What a lazy parse does not notice, and why that is safe for an ALG: a broken
From (``bad-from``, an unterminated quote, a bad URI, too many parameters), a
broken To the engine does not read, broken Via values below the top one
(``bad-via``, ``bad-via-version``, more than :data:`MAX_VALUES` of them, too
many parameters) and broken ICE candidates (``bad-sdp-candidate``,
``too-many-candidates``). None of these is ever rewritten or used to open
anything: the engine rewrites the top Via, the Contacts, the Request-URI and
the SDP addresses and ports, and opens pinholes only towards the host that
sent the SDP -- all validated eagerly. Such a datagram goes through either
rewritten in those validated places or unchanged, exactly as if the broken
field were well-formed, and the receiving UA still sees the broken field and
answers it as RFC 3261 says (the helper is not the UAS that owes the 400).
Resource bounds still hold: a deferred part is bounded when it is parsed, and
nothing is parsed that is never read.

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
from nfsip.sip.spans import Record, Span, new_span

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


# Resource limits. Parsing is linear, but a 64 KB datagram made of ";;;;" or
# thousands of Contact values would cost tens of ms of Python per packet (a
# cheap CPU DoS on a router). Real messages stay far below these (RFC 4475
# longreq, the torture test for long messages, has 34 Via values).
MAX_PARAMS: Final = 64  # ';' separators per URI / header value (empty params included)
MAX_VALUES: Final = 128  # Via values, Contact values in one message
# ';' per Via/Contact header field, checked with str.count before any regex
# runs: the regex engine itself spends ~0.7 us per repetition of a parameter.
MAX_SEPARATORS: Final = 512

_new = object.__new__


# --------------------------------------------------------------------------- types
#
# The value classes are slotted classes built by the parser through ``_new``
# plus slot assignments (about half the cost of a dataclass ``__init__``);
# spans and parameter tuples are properties built on access from offsets kept
# as ints. Equality, hashing and repr cover the public fields (Record).


class HostPort(Record):
    """``host[:port]`` as written (RFC 3261 §25.1 hostport)."""

    __slots__ = ("_he", "_hs", "_pe", "_ps", "host", "port")
    _fields = ("host", "port", "host_span", "port_span", "span")

    host: str  # IPv6 references without the brackets
    port: int | None

    def __init__(self, host: str, port: int | None, host_span: Span, port_span: Span | None, span: Span) -> None:
        self.host, self.port = host, port
        self._hs, self._he = host_span.start, host_span.end
        self._ps, self._pe = (-1, span.end) if port_span is None else (port_span.start, port_span.end)

    @property
    def host_span(self) -> Span:
        """For IPv6 covers "[...]", brackets included."""
        return new_span(self._hs, self._he)

    @property
    def port_span(self) -> Span | None:
        """The port digits only."""
        return None if self._ps < 0 else new_span(self._ps, self._pe)

    @property
    def span(self) -> Span:
        """``host[:port]``."""
        return new_span(self._hs, self._pe)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


def _hostport(host: str, port: int | None, hs: int, he: int, ps: int, pe: int) -> HostPort:
    o = _new(HostPort)
    o.host = host
    o.port = port
    o._hs = hs
    o._he = he
    o._ps = ps
    o._pe = pe
    return o


class Param(Record):
    """``;name[=value]``; ``value`` is as written (quotes kept for quoted-strings)."""

    __slots__ = ("_ve", "_vs", "name", "value")
    _fields = ("name", "value", "value_span")

    name: str  # lower-cased
    value: str | None

    def __init__(self, name: str, value: str | None, value_span: Span | None) -> None:
        self.name, self.value = name, value
        self._vs, self._ve = (-1, -1) if value_span is None else (value_span.start, value_span.end)

    @property
    def value_span(self) -> Span | None:
        return None if self._vs < 0 else new_span(self._vs, self._ve)


def _param(name: str, value: str | None, vs: int, ve: int) -> Param:
    o = _new(Param)
    o.name = name
    o.value = value
    o._vs = vs
    o._ve = ve
    return o


def _find_param(params: tuple[Param, ...], name: str) -> Param | None:
    for p in params:
        if p.name == name:
            return p
    return None


class _WithParams(Record):
    """A value followed by parameters, split into :class:`Param` on first access.

    ``_pb`` is the parameter block as written and ``_pp`` its offset; the
    block was matched (and its size bounded) by the parser, so splitting it
    cannot fail.
    """

    __slots__ = ("_params", "_pb", "_pp")

    _params: tuple[Param, ...] | None
    _pb: str
    _pp: int

    @property
    def params(self) -> tuple[Param, ...]:
        ps = self._params
        if ps is None:
            ps = self._params = self._split()
        return ps

    def _split(self) -> tuple[Param, ...]:
        return _params_from_block(self._pb, self._pp)

    def param(self, name: str) -> Param | None:
        return _find_param(self.params, name.lower())


class Via(_WithParams):
    """One via-parm (RFC 3261 §20.42)."""

    __slots__ = ("_e", "_s", "sent_by", "transport")
    _fields = ("protocol", "transport", "sent_by", "params", "span")

    transport: str  # "UDP", "TCP", "TLS", "SCTP", "WS", ...
    sent_by: HostPort

    def __init__(self, protocol: str, transport: str, sent_by: HostPort, params: tuple[Param, ...], span: Span) -> None:
        self.transport, self.sent_by, self._params, self._pb, self._pp = transport, sent_by, params, "", 0
        self._s, self._e = span.start, span.end

    @property
    def protocol(self) -> str:
        """ "SIP/2.0/UDP" (the version is always 2.0, the transport upper-cased)."""
        return "SIP/2.0/" + self.transport

    @property
    def span(self) -> Span:
        """The whole via-parm."""
        return new_span(self._s, self._e)

    @property
    def branch(self) -> str | None:
        if self._params is None and _WS_OR_QUOTE_SEARCH(self._pb) is None:
            # Not split yet, and a block _params_from_block splits at ';' and '=': read the first branch off
            # the text as it would (every outbound request asks, and nothing else of its top Via).
            for part in self._pb[1:].split(";"):
                name, eq, value = part.partition("=")
                if name.lower() == "branch":
                    return (value if value.isascii() else _text(value)) if eq else None
            return None
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


def _via(transport: str, sent_by: HostPort, pb: str, pp: int, s: int, e: int) -> Via:
    o = _new(Via)
    o.transport = transport
    o.sent_by = sent_by
    o._params = None if pb else ()
    o._pb = pb
    o._pp = pp
    o._s = s
    o._e = e
    return o


class SipUri(_WithParams):
    """A URI as found in a Request-URI or name-addr (RFC 3261 §19.1, RFC 3966)."""

    __slots__ = ("_e", "_s", "headers", "hostport", "scheme", "user")
    _fields = ("scheme", "user", "hostport", "params", "span", "headers")

    scheme: str  # lower-cased
    user: str | None  # user part as written (escapes kept), sip/sips only
    hostport: HostPort | None  # None for tel: and unknown schemes
    headers: str | None  # "?h=v&..." without the "?", as written

    def __init__(
        self,
        scheme: str,
        user: str | None,
        hostport: HostPort | None,
        params: tuple[Param, ...],
        span: Span,
        headers: str | None = None,
    ) -> None:
        self.scheme, self.user, self.hostport, self.headers = scheme, user, hostport, headers
        self._params, self._pb, self._pp = params, "", 0
        self._s, self._e = span.start, span.end

    @property
    def span(self) -> Span:
        return new_span(self._s, self._e)

    def _split(self) -> tuple[Param, ...]:
        # sip/sips: uri-parameters (no LWS); tel: generic params (RFC 3966)
        if self.hostport is not None:
            return _uri_params(self._pb, self._pp)
        return _params_from_block(self._pb, self._pp)


def _uri(
    scheme: str, user: str | None, hp: HostPort | None, pb: str, pp: int, s: int, e: int, hdrs: str | None
) -> SipUri:
    o = _new(SipUri)
    o.scheme = scheme
    o.user = user
    o.hostport = hp
    o._params = None if pb else ()
    o._pb = pb
    o._pp = pp
    o._s = s
    o._e = e
    o.headers = hdrs
    return o


class NameAddr(_WithParams):
    """One value of Contact/From/To/Route/Record-Route/... (RFC 3261 §20.10)."""

    __slots__ = ("_e", "_s", "display_name", "uri")
    _fields = ("display_name", "uri", "params", "span")

    display_name: str | None  # quoted-pairs resolved, quotes removed
    uri: SipUri
    # params: header params after the URI (tag, expires, q, ...)

    def __init__(self, display_name: str | None, uri: SipUri, params: tuple[Param, ...], span: Span) -> None:
        self.display_name, self.uri, self._params, self._pb, self._pp = display_name, uri, params, "", 0
        self._s, self._e = span.start, span.end

    @property
    def span(self) -> Span:
        return new_span(self._s, self._e)

    @property
    def tag(self) -> str | None:
        p = _find_param(self.params, "tag")
        return p.value if p is not None else None


def _name_addr(display: str | None, uri: SipUri, pb: str, pp: int, s: int, e: int) -> NameAddr:
    o = _new(NameAddr)
    o.display_name = display
    o.uri = uri
    o._params = None if pb else ()
    o._pb = pb
    o._pp = pp
    o._s = s
    o._e = e
    return o


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
# sip/sips URI (RFC 3261 §19.1.1): "sip" ["s"] ":" [userinfo "@"] hostport
# uri-parameters [headers]. userinfo is greedy up to the *last* '@' ('@' is not
# allowed unescaped in parameters or headers, but RFC 4475 intmeth shows that
# almost anything else, '?' and ';' included, is legal in the user part).
_SIP_URI_RE = re.compile(
    r"([Ss][Ii][Pp][Ss]?):(?:(.*)@)?" + _HOST + r"(?::(\d{1,5}))?((?:;[^;?]*)*)(?:\?(.*))?\Z", re.ASCII | re.DOTALL
)
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
_WS_OR_QUOTE_SEARCH = re.compile(r'[\s"]').search
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
# The common via-parm ("SIP/2.0/UDP host:port;branch=...;rport") in one match:
# a subset of _VIA_RE (no LWS, no quoted or empty parameters) that gives the
# same groups whenever it matches up to the end of the value or a ','.
_VIA_FAST_RE = re.compile(
    r"[Ss][Ii][Pp]/2\.0/("
    + _TOKEN
    + r") (\[[0-9A-Fa-f:.]+\]|[^\s;:,\[\]\"<>/]+)(?::(\d{1,5}))?((?:;"
    + _TOKEN
    + r'(?:=[^\s;,"]+)?)*)',
    re.ASCII,
)
_QUOTED_RE = re.compile(_QUOTED)
_QUOTED_PAIR_RE = re.compile(r"\\([\s\S])")
_CSEQ_RE = re.compile(r"(\d+)[ \t\r\n]+(" + _TOKEN + r")\Z", re.ASCII)
_FOLD_RE = re.compile(r"[ \t]*\r?\n[ \t]*")
_ADDR_SPEC_END_RE = re.compile(r"[;,\s]", re.ASCII)
_BOUNDARY_RE = re.compile(r';[ \t\r\n]*boundary[ \t\r\n]*=[ \t\r\n]*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)

_MAX_CSEQ: Final = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"
_LWS_CHARS = " \t\r\n"


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

    Never raises: the caller bounded the block (:data:`MAX_PARAMS`) when it
    matched it. Empty parameters (";;") are skipped rather than rejected. RFC
    4475 §3.1.2.1 (badinv01) wants a 400 from the UAS, but a NAT helper is not
    the UAS: refusing to parse would not produce that 400, it would only
    forward the private addresses unrewritten. Empty elements carry no
    information.
    """
    if not block:
        return ()
    out: list[Param] = []
    if _WS_OR_QUOTE_SEARCH(block) is None:
        # No LWS, no quoted-string: the block is ";name[=value]" units, a value
        # never contains ';' and a name never '=' -- a plain split is exact.
        for part in block[1:].split(";"):
            p += 1
            if part:
                name, eq, value = part.partition("=")
                if eq:
                    vs = p + len(name) + 1
                    out.append(_param(name.lower(), value if value.isascii() else _text(value), vs, p + len(part)))
                else:
                    out.append(_param(name.lower(), None, -1, -1))
                p += len(part)
        return tuple(out)
    for sep, name, eq, value in _PARAM_PARTS_FINDALL(block):
        p += len(sep)
        if name:
            p += len(name)
            if eq:
                p += len(eq)
                ve = p + len(value)
                out.append(_param(name.lower(), value if value.isascii() else _text(value), p, ve))
                p = ve
            else:
                out.append(_param(name.lower(), None, -1, -1))
    return tuple(out)


def _uri_params(block: str, q: int) -> tuple[Param, ...]:
    """Split the ``uri-parameters`` of a sip/sips URI (block at offset ``q``)."""
    plist: list[Param] = []
    for name, eq, value in _URI_PARAMS_FINDALL(block):
        q += 1 + len(name)
        if name:
            if eq:
                q += 1
                ve = q + len(value)
                plist.append(_param(name.lower(), _text(value), q, ve))
                q = ve
            else:
                plist.append(_param(name.lower(), None, -1, -1))
        else:
            q += len(eq) + len(value)
    return tuple(plist)


def _params_block(t: str, p: int, e: int) -> int:
    """End of the ``*(SEMI generic-param)`` block at ``p``; bounds its size."""
    q = _PARAMS_BLOCK_RE.match(t, p, e).end()  # type: ignore[union-attr]  # always matches
    if q > p and t.count(";", p, q) > MAX_PARAMS:  # counted cheaply, quoted ';' included
        raise _err("too-many-params")
    return q


def _check_sip_uri(um: re.Match[str]) -> None:
    """What a ``_SIP_URI_RE`` match must also satisfy (the order of the checks matters)."""
    port_s, pblock = um.group(4, 5)
    if port_s is not None and int(port_s) > 65535:
        raise _err("bad-uri", um.group())
    if pblock and pblock.count(";") > MAX_PARAMS:
        raise _err("too-many-params")


def _sip_uri(um: re.Match[str]) -> SipUri:
    """Build the SipUri of a checked ``_SIP_URI_RE`` match."""
    scheme, userinfo, host, port_s, pblock, headers = um.groups()
    user = None
    if userinfo is not None:
        colon = userinfo.find(":")
        user = _text(userinfo if colon < 0 else userinfo[:colon])
    hs, he = um.span(3)
    if host[0] == "[":
        host = host[1:-1]
    if port_s is None:
        hp = _hostport(host, None, hs, he, -1, he)
    else:
        hp = _hostport(host, int(port_s), hs, he, he + 1, um.end(4))
    s, e = um.span()
    return _uri(scheme.lower(), user, hp, pblock, um.start(5), s, e, None if headers is None else _text(headers))


def _parse_uri(t: str, s: int, e: int) -> SipUri:
    """Parse the URI in ``t[s:e]`` (already delimited by the caller)."""
    um = _SIP_URI_RE.match(t, s, e)
    if um is not None:
        _check_sip_uri(um)
        return _sip_uri(um)
    m = _SCHEME_RE.match(t, s, e)
    if m is None:
        raise _err("bad-uri", t[s:e])
    scheme = m.group(1).lower()
    if scheme == "sip" or scheme == "sips":
        # e.g. an unbracketed IPv6 address "sip:2001:db8::10" (RFC 5118 §4.2)
        raise _err("bad-uri", t[s:e])
    if scheme == "tel":
        semi = t.find(";", m.end(), e)
        if semi < 0:
            return _uri(scheme, None, None, "", 0, s, e, None)
        q = _params_block(t, semi, e)
        if q != e:
            raise _err("bad-uri", t[s:e])
        return _uri(scheme, None, None, t[semi:q], semi, s, e, None)
    # Unknown schemes (RFC 4475 §3.3.2 unkscm, §3.3.4 unksm2): opaque.
    return _uri(scheme, None, None, "", 0, s, e, None)


def _parse_via_at(t: str, p: int, e: int) -> tuple[Via, int]:
    """Parse the via-parm at ``p``; return it and the position after it and its LWS."""
    m = _VIA_FAST_RE.match(t, p, e)
    if m is not None:
        q = m.end()
        if q == e or t[q] == ",":
            transport, host, port_s, pblock = m.groups()
            hs, he = m.span(2)
            if host[0] == "[":
                host = host[1:-1]
            if port_s is None:
                hp = _hostport(host, None, hs, he, -1, he)
            else:
                port = int(port_s)
                if port > 65535:
                    raise _err("bad-via", t[p:e])
                hp = _hostport(host, port, hs, he, he + 1, m.end(3))
            if pblock and pblock.count(";") > MAX_PARAMS:
                raise _err("too-many-params")
            return _via(transport.upper(), hp, pblock, m.start(4), p, q), q
    m = _VIA_RE.match(t, p, e)
    if m is None:
        raise _err("bad-via", t[p:e])
    name, version, transport, host, port_s, pblock = m.groups()
    if version != "2.0" or name.upper() != "SIP":
        raise _err("bad-via-version", t[p:e])  # RFC 4475 badvers (SIP/7.0)
    hs, he = m.span(4)
    if host[0] == "[":
        host = host[1:-1]
    if port_s is None:
        hp = _hostport(host, None, hs, he, -1, he)
    else:
        port = int(port_s)
        if port > 65535:
            raise _err("bad-via", t[p:e])
        ps, pe = m.span(5)
        hp = _hostport(host, port, hs, he, ps, pe)
    pstart, q = m.span(6)
    if pblock and pblock.count(";") > MAX_PARAMS:
        raise _err("too-many-params")
    return _via(transport.upper(), hp, pblock, pstart, p, q), m.end()


def _skip_lws(t: str, p: int, e: int) -> int:
    if p < e and t[p] in _LWS_CHARS:
        return _LWS_RE.match(t, p, e).end()  # type: ignore[union-attr]
    return p


def _parse_vias(t: str, s: int, e: int, out: list[Via]) -> None:
    """Parse every via-parm in ``t[s:e]`` and append to ``out`` (RFC 3261 §20.42)."""
    p = _skip_lws(t, s, e)
    while True:
        via, q = _parse_via_at(t, p, e)
        out.append(via)
        if len(out) > MAX_VALUES:
            raise _err("too-many-values", "Via")
        if q >= e:
            return
        if t[q] != ",":
            raise _err("bad-via", t[q:e])
        # Empty list elements ("Via: ...;;,;,,", RFC 4475 badinv01) are skipped.
        if _EMPTY_TAIL_RE.match(t, q, e) is not None:
            return
        p = _LWS_COMMA_RE.match(t, q, e).end()  # type: ignore[union-attr]


def _parse_top_via(t: str, s: int, e: int) -> Via:
    """The first via-parm of a Via header value, checked up to its ',' (lazy mode)."""
    via, q = _parse_via_at(t, _skip_lws(t, s, e), e)
    if q < e and t[q] != ",":
        raise _err("bad-via", t[q:e])
    return via


def _parse_name_addr(t: str, s: int, e: int, multi: bool, reason: str) -> tuple[NameAddr, int]:
    """Parse one name-addr / addr-spec with header params starting at ``s``.

    Returns the value and the position after it: ``e`` or just after the ``,``
    separating it from the next value (``multi``).
    """
    i = _skip_lws(t, s, e)
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
        lt = _skip_lws(t, qm.end(), e)
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
            display = _text(t[i:lt].strip(_LWS_CHARS)) or None
    if lt >= 0:
        gt = t.find(">", lt, e)
        if gt < 0:
            raise _err(reason, t[i:e])
        us, ue = lt + 1, gt
        if t[us] in _LWS_CHARS or t[ue - 1] in _LWS_CHARS:
            # LWS inside <...> (RFC 4475 §3.1.2.14 badaspec): the addr-spec is
            # still unambiguous, so tolerate it instead of leaking addresses.
            us = _LWS_RE.match(t, us, gt).end()  # type: ignore[union-attr]
            while ue > us and t[ue - 1] in _LWS_CHARS:
                ue -= 1
        uri = _parse_uri(t, us, ue)
        p = gt + 1
    else:
        m = _ADDR_SPEC_END_RE.search(t, i, e)
        ue = m.start() if m is not None else e
        uri = _parse_uri(t, i, ue)
        p = ue
    if p < e:
        q = _params_block(t, p, e)
        na = _name_addr(display, uri, t[p:q] if q > p else "", p, i, q)
        p = q
    else:
        na = _name_addr(display, uri, "", p, i, p)
    if p >= e:
        return na, e
    q = _skip_lws(t, p, e)
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


def _parse_single(t: str, s: int, e: int, reason: str) -> NameAddr:
    """From / To on first access: one name-addr (quoted display-names checked by
    _parse_name_addr, RFC 4475 quotbal -> "unterminated-quote"; quotes *not*
    opening the value belong to a tolerated unquoted display-name: synthetic
    suricata captures write 'From: \\"arik\\" <sip:..>')."""
    if t.count(";", s, e) > MAX_SEPARATORS:
        raise _err("too-many-params")  # before any regex: see MAX_SEPARATORS
    m = _NAME_ADDR_FAST_RE.fullmatch(t, s, e)
    if m is not None:
        na = _fast_name_addr(m, _NA_IDX)
        if na is not None:
            return na
    return _parse_name_addr(t, s, e, False, reason)[0]


def parse_name_addrs(msg: SipMessage, name: str) -> list[NameAddr]:
    """All name-addr values of every header ``name`` (e.g. Route, Record-Route).

    Spans index ``msg.raw``. Raises :class:`SipParseError` on malformed values.
    """
    canon = canonical_header_name(name)
    t = msg._text
    out: list[NameAddr] = []
    for h in msg._header_index():
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
# coverage is checked afterwards to catch lines this pattern skipped. Used for
# header blocks with folded lines (the fast path splits on LF instead).
_HDRS_FINDALL = re.compile(r"(" + _TOKEN + r")([ \t]*:[ \t]*)([^\n]*(?:\n[ \t][^\n]*)*)\n", re.ASCII).findall
_HDR_LINE_RE = re.compile(r"(" + _TOKEN + r")[ \t]*:[^\n]*(?:\n[ \t][^\n]*)*\n", re.ASCII)

# Headers parsed by parse_message, to small ints for a cheap dispatch (0: other).
# Via, Contact, From and To (kinds 1-4) carry spans.
_H_VIA, _H_CONTACT, _H_FROM, _H_TO, _H_CALLID, _H_CSEQ, _H_CLEN, _H_CTYPE, _H_EXPIRES = range(1, 10)
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

# "Name[ \t]*:" as written at the start of a header line -> kind (0: a header
# parse_message does not read). Bounded: names are attacker-controlled, so the
# cache stops growing at _NAME_CACHE_MAX entries. A key present here is a valid
# header-line start, so known names are validated with one dict lookup.
_NAME_CACHE: dict[str, int] = {}
_NAME_CACHE_MAX: Final = 2048
_NAME_KEY_RE = re.compile(r"(" + _TOKEN + r")[ \t]*:\Z", re.ASCII)


def _classify_key(key: str) -> int:
    """Kind of a header-line start "Name[ \t]*:"; -1 when it is not one."""
    m = _NAME_KEY_RE.match(key)
    if m is None:
        return -1
    low = m.group(1).lower()
    kind = _EAGER.get(COMPACT_FORMS.get(low, low), 0)
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[key] = kind
    return kind


def _logical_lines(t: str, sl_end: int, hend: int) -> tuple[list[str], list[_HIdx]]:
    """Header fields with folded continuation lines (LF kept inside), and the index."""
    lines: list[str] = []
    index: list[_HIdx] = []
    p = sl_end
    for name, sep, value in _HDRS_FINDALL(t, sl_end, hend):
        vs = p + len(name) + len(sep)
        ve = vs + len(value)
        low = name.lower()
        index.append((COMPACT_FORMS.get(low, low), name, vs, ve, p, ve + 1))
        lines.append(t[p:ve])
        p = ve + 1
    if p != hend:
        raise _bad_header_line(t, sl_end, hend)
    return lines, index


def _check_lines(lines: list[str]) -> None:
    """Raise bad-header-line for the first line that does not start a header field."""
    for line in lines:
        key = line[: line.find(":") + 1]
        if key not in _NAME_CACHE and _classify_key(key) < 0:
            raise _err("bad-header-line", line)


def _build_index(t: str, sl_end: int, hend: int) -> list[_HIdx]:
    """The header index of an already validated header block."""
    index: list[_HIdx] = []
    p = sl_end
    for name, sep, value in _HDRS_FINDALL(t, sl_end, hend):
        vs = p + len(name) + len(sep)
        ve = vs + len(value)
        low = name.lower()
        index.append((COMPACT_FORMS.get(low, low), name, vs, ve, p, ve + 1))
        p = ve + 1
    return index


class SipMessage:
    """A parsed SIP message. Treat as immutable.

    ``raw`` is a prefix of the bytes given to :func:`parse_message` (leading
    CRLFs included, trailing datagram bytes excluded: see ``trailing``); every
    span indexes ``raw``. Several parts are built on first access (per-packet
    cost): after a lazy parse, reading ``from_``, ``to`` or ``vias`` can raise
    :class:`SipParseError` (see the module docstring); every other attribute
    never raises.
    """

    __slots__ = (
        "_clen_at",
        "_clen_spans",
        "_from",
        "_from_at",
        "_hdr_end",
        "_headers",
        "_index",
        "_ruri",
        "_ruri_m",
        "_se",
        "_se_known",
        "_sl_e",
        "_sl_s",
        "_text",
        "_to",
        "_to_at",
        "_top",
        "_via_at",
        "_vias",
        "body_span",
        "call_id",
        "contact_star",
        "contacts",
        "content_length",
        "content_type",
        "cseq",
        "cseq_method",
        "expires",
        "is_request",
        "method",
        "raw",
        "reason",
        "sdp",
        "status",
        "trailing",
    )

    raw: bytes
    is_request: bool
    method: str | None
    status: int | None
    reason: str | None
    call_id: str
    cseq: int
    cseq_method: str
    contacts: tuple[NameAddr, ...]
    contact_star: bool
    content_type: str | None
    content_length: int | None
    body_span: Span
    sdp: Sdp | None
    expires: int | None
    trailing: bytes  # datagram bytes after the message (never part of it)
    _text: str
    _sl_s: int
    _sl_e: int
    _hdr_end: int
    _index: list[_HIdx] | None
    _headers: tuple[Header, ...] | None
    _ruri: SipUri | None
    _ruri_m: re.Match[str] | None  # validated sip/sips Request-URI, SipUri not built yet
    _top: Via
    _vias: tuple[Via, ...] | None
    _via_at: list[tuple[int, int]]  # (value start, end) of every Via header
    _from: NameAddr | None
    _from_at: tuple[int, int]
    _to: NameAddr | None
    _to_at: tuple[int, int]
    _clen_at: list[tuple[int, int]]
    _clen_spans: tuple[Span, ...] | None
    _se: str | None  # first Session-Expires value, when _se_known (read by the fast header scan)
    _se_known: bool

    # -- parts built or parsed on first access

    @property
    def request_uri(self) -> SipUri | None:
        """The Request-URI (validated by :func:`parse_message`, built on first access)."""
        u = self._ruri
        if u is None and self._ruri_m is not None:
            u = self._ruri = _sip_uri(self._ruri_m)
        return u

    @property
    def start_line_span(self) -> Span:
        """The start-line including its line terminator."""
        return new_span(self._sl_s, self._sl_e)

    @property
    def content_length_spans(self) -> tuple[Span, ...]:
        """The digits of every Content-Length value."""
        spans = self._clen_spans
        if spans is None:
            spans = self._clen_spans = tuple([new_span(s, e) for s, e in self._clen_at])
        return spans

    @property
    def top_via(self) -> Via:
        """The first via-parm (always parsed and validated by :func:`parse_message`)."""
        return self._top

    @property
    def vias(self) -> tuple[Via, ...]:
        """Every via-parm in order; the ones after the first are parsed on first access."""
        vias = self._vias
        if vias is None:
            t = self._text
            out: list[Via] = []
            for s, e in self._via_at:
                if t.count(";", s, e) > MAX_SEPARATORS:
                    raise _err("too-many-params")  # before any regex: see MAX_SEPARATORS
                _parse_vias(t, s, e, out)
            out[0] = self._top
            vias = self._vias = tuple(out)
        return vias

    @property
    def from_(self) -> NameAddr:
        """The From value, parsed on first access."""
        v = self._from
        if v is None:
            s, e = self._from_at
            v = self._from = _parse_single(self._text, s, e, "bad-from")
        return v

    @property
    def to(self) -> NameAddr:
        """The To value, parsed on first access."""
        v = self._to
        if v is None:
            s, e = self._to_at
            v = self._to = _parse_single(self._text, s, e, "bad-to")
        return v

    def session_expires_value(self) -> str | None:
        """The value of the first Session-Expires header (RFC 4028, compact form "x"), or None. Read by the
        fast header scan (the engine asks on every in-dialog request and 2xx: building the whole header
        index for it cost about 9 % of the daemon under load)."""
        if self._se_known:
            return self._se
        header = self.header("session-expires")
        return None if header is None else header.value

    def to_has_tag(self) -> bool:
        """Whether To carries a tag: the request is inside a dialog (RFC 3261 §12.2.1). Never raises: a
        malformed To has no tag. A To whose text cannot hold "tag" is not parsed at all (the common
        initial INVITE: parsing its To cost about 4 % of the whole decision, bench/engine.py)."""
        if self._to is None:
            s, e = self._to_at
            t = self._text
            if "tag" not in t[s:e].lower():
                return False
            # The usual To of an in-dialog request: what the parse would say, read off the match without
            # building the NameAddr (every ACK and BYE asks; bench/engine.py).
            m = self._usual_to_match()
            if m is not None:
                return _has_valued_param(m.group(_NA_PB), "tag")
        try:
            return self.to.tag is not None
        except SipParseError:
            return False

    def to_uri_bytes(self) -> bytes:
        """``raw`` under the To URI (``to.uri.span``); raises :class:`SipParseError` as ``to`` does. The usual
        To is read off the name-addr match without building the NameAddr (the engine asks on every REGISTER,
        bench/engine.py); only when _parse_single would take its fast path and _fast_name_addr accept the
        match (same limits), else from ``to``."""
        if self._to is None:
            m = self._usual_to_match()
            if m is not None:
                # From after '<' to before '>': the span _fast_name_addr gives the SipUri.
                return self.raw[m.start(_NA_SCHEME) : m.start(_NA_PB) - 1]
        return self.to.uri.span.slice(self.raw)

    def _usual_to_match(self) -> re.Match[str] | None:
        """The fast name-addr match of the unparsed To, only where _parse_single would take its fast path and
        _fast_name_addr accept the match (same limits); None where the full parse must decide."""
        s, e = self._to_at
        t = self._text
        if t.count(";", s, e) > MAX_SEPARATORS:
            return None
        m = _NAME_ADDR_FAST_RE.fullmatch(t, s, e)
        if m is None:
            return None
        port_s, upb, hpb = m.group(_NA_PORT, _NA_UPB, _NA_PB)
        if upb.count(";") > MAX_PARAMS or hpb.count(";") > MAX_PARAMS or (port_s is not None and int(port_s) > 65535):
            return None
        return m

    def validate(self) -> SipMessage:
        """Parse every part a lazy :func:`parse_message` deferred; raise :class:`SipParseError`.

        Returns the message. Afterwards no attribute of it (or of its SDP) raises.
        """
        self.vias  # noqa: B018 - each access parses and caches
        self.from_  # noqa: B018
        self.to  # noqa: B018
        if self.sdp is not None:
            self.sdp.validate()
        return self

    # -- headers

    def _header_index(self) -> list[_HIdx]:
        index = self._index
        if index is None:
            index = self._index = _build_index(self._text, self._sl_e, self._hdr_end)
        return index

    @property
    def headers(self) -> tuple[Header, ...]:
        """All header fields in order (built on first access)."""
        if self._headers is None:
            self._headers = tuple(self._make_header(h) for h in self._header_index())
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
        for h in self._header_index():
            if h[0] == canon:
                return self._make_header(h)
        return None

    def headers_named(self, name: str) -> list[Header]:
        """Every header named ``name`` in order (compact or long form, any case)."""
        canon = canonical_header_name(name)
        return [self._make_header(h) for h in self._header_index() if h[0] == canon]

    # -- convenience

    @property
    def header_end(self) -> int:
        """Offset just after the last header line (the empty line follows)."""
        return self._hdr_end

    def body(self) -> bytes:
        return self.raw[self.body_span.start : self.body_span.end]

    def __repr__(self) -> str:
        if self.is_request:
            ruri = self.request_uri
            first = f"{self.method} {self._text[ruri._s : ruri._e]}"  # type: ignore[union-attr]
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


# ---------------------------------------------------------- fast header scan

_EOL = r"[ \t\r]*(?=\n)"
# a value without its leading SP/HT and trailing LWS (one backtracking step)
_VALUE = r"(?:[^\n]*[^ \t\r\n])?"
_FAST_GEN_PARAMS = r"(?:;" + _TOKEN + r'(?:=[^\s;,"]+)?)*'
# The usual name-addr, '"display" <sip:user@host:port;uri-params?headers>;params'
# (display-name optional): no LWS, no quoted parameter, no escaped quote, no
# ';' in the user part, display-name or headers (so that its ';' count is
# bounded by the two parameter blocks), at most one '@' (so that the user
# part ends at the *last* '@' as in _SIP_URI_RE). For a whole value it gives
# what _parse_name_addr gives (a subset of its grammar with the same groups).
_FAST_NAME_ADDR = (
    r'(?:"(?P<dn>[^"\\\r\n;]*)"[ \t]*)?<(?P<sch>[Ss][Ii][Pp][Ss]?):'
    r'(?:(?P<ui>[^@<>\s";]*)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:;?\s\[\]<>@",/]+)(?::(?P<port>\d{1,5}))?'
    r"(?P<upb>(?:;[^;?>\s@]*)*)(?:\?(?P<hdr>[^>\s;@]*))?>(?P<pb>" + _FAST_GEN_PARAMS + r")"
)
_NAME_ADDR_GROUPS = ("dn", "sch", "ui", "host", "port", "upb", "hdr", "pb")
_NAME_ADDR_FAST_RE = re.compile(_FAST_NAME_ADDR, re.ASCII)
_NA_IDX = tuple(_NAME_ADDR_FAST_RE.groupindex[name] for name in _NAME_ADDR_GROUPS)
_NA_SCHEME, _NA_PORT, _NA_UPB, _NA_PB = (_NAME_ADDR_FAST_RE.groupindex[n] for n in ("sch", "port", "upb", "pb"))


def _has_valued_param(block: str, name: str) -> bool:
    """Whether the first parameter ``name`` (lower case) of a ``_FAST_GEN_PARAMS`` block has a value: what
    ``_find_param(_params_from_block(block, p), name).value is not None`` says (such a block has no LWS and
    no quotes: _params_from_block splits it at ';' and '=')."""
    for part in block[1:].split(";"):
        key, eq, _value = part.partition("=")
        if key.lower() == name:
            return bool(eq)
    return False


def _fast_name_addr(m: re.Match[str], idx: tuple[int, ...]) -> NameAddr | None:
    """Build the NameAddr of a _FAST_NAME_ADDR match (group numbers ``idx``);
    None when a limit is exceeded (the generic parser reports it)."""
    dn, scheme, userinfo, host, port_s, upb, uhdr, hpb = m.group(*idx)
    if upb.count(";") > MAX_PARAMS or hpb.count(";") > MAX_PARAMS:
        return None
    hs, he = m.span(idx[3])
    if port_s is None:
        pe = he
        hp = _hostport(host[1:-1] if host[0] == "[" else host, None, hs, he, -1, he)
    else:
        port = int(port_s)
        if port > 65535:
            return None
        pe = he + 1 + len(port_s)
        hp = _hostport(host[1:-1] if host[0] == "[" else host, port, hs, he, he + 1, pe)
    if userinfo is None:
        user = None
        us = hs - 1 - len(scheme)
    else:
        us = hs - 2 - len(userinfo) - len(scheme)
        colon = userinfo.find(":")
        user = userinfo if colon < 0 else userinfo[:colon]
        if not user.isascii():
            user = _text(user)
    gt = pe + len(upb)  # the '>'
    if uhdr is not None:
        gt += 1 + len(uhdr)
        uhdr = _text(uhdr)
    uri = _uri(scheme.lower(), user, hp, upb, pe, us, gt, uhdr)
    if dn is None:
        return _name_addr(None, uri, hpb, gt + 1, us - 1, gt + 1 + len(hpb))
    return _name_addr(_text(dn), uri, hpb, gt + 1, m.start(idx[0]) - 1, gt + 1 + len(hpb))


# One alternative per value kind read by parse_message, each ending with an
# empty marker group so that ``lastindex`` names the alternative. The VIA and
# CONTACT alternatives parse the usual forms completely; they are subsets of
# the generic grammar giving the same result (see _VIA_FAST_RE; for Contact a
# single name-addr "<sip:...>" with an optional quoted display-name, no LWS,
# no quoted parameter, no ';' in the user part, display-name or headers, so
# that its ';' count is bounded by the two parameter blocks). VIA_ANY and
# CONTACT_ANY catch the other forms for the generic sub-parsers; CSeq and
# Content-Length in another form (OTHER) send parse_message to the generic path.
_HDR_FAST_RE = re.compile(
    r"\n"
    # Guard: a line can only match when its name starts with a letter one of the names below starts with,
    # or when it is not "token:" at all (BAD). Other headers (Allow, User-Agent, Record-Route, P-*, ...)
    # are then passed over by one test instead of one per alternative.
    r"(?=[VvFfTtCcIiMmLlEeSsXx]|(?!" + _TOKEN + r"[ \t]*:|\Z))"
    r"(?:"
    r"(?i:via|v)[ \t]*:[ \t]*[Ss][Ii][Pp]/2\.0/(?P<v_tr>"
    + _TOKEN
    + r") (?P<v_host>\[[0-9A-Fa-f:.]+\]|[^\s;:,\[\]\"<>/]+)(?::(?P<v_port>\d{1,5}))?(?P<v_pb>"
    + _FAST_GEN_PARAMS
    + r")(?P<v_rest>,"
    + _VALUE
    + r")?"
    + _EOL
    + r"(?P<VIA>)"
    r"|(?i:from|f)[ \t]*:[ \t]*(?P<f_v>" + _VALUE + r")" + _EOL + r"(?P<FROM>)"
    r"|(?i:to|t)[ \t]*:[ \t]*(?P<t_v>" + _VALUE + r")" + _EOL + r"(?P<TO>)"
    r"|(?i:call-id|i)[ \t]*:[ \t\r]*(?P<i_v>" + _VALUE + r")" + _EOL + r"(?P<CALLID>)"
    r"|(?i:cseq)[ \t]*:[ \t]*(?P<cs_n>\d+)[ \t]+(?P<cs_m>" + _TOKEN + r")" + _EOL + r"(?P<CSEQ>)"
    r"|(?i:contact|m)[ \t]*:[ \t]*" + _FAST_NAME_ADDR.replace("(?P<", "(?P<c_") + _EOL + r"(?P<CONTACT>)"
    r"|(?i:content-length|l)[ \t]*:[ \t]*(?P<l_v>\d+)" + _EOL + r"(?P<CLEN>)"
    r"|(?i:content-type|c)[ \t]*:[ \t\r]*(?P<c_v>" + _VALUE + r")" + _EOL + r"(?P<CTYPE>)"
    r"|(?i:expires)[ \t]*:[ \t\r]*(?P<e_v>" + _VALUE + r")" + _EOL + r"(?P<EXPIRES>)"
    r"|(?i:session-expires|x)[ \t]*:[ \t\r]*(?P<x_v>" + _VALUE + r")" + _EOL + r"(?P<SESSEXP>)"
    r"|(?i:via|v)[ \t]*:[ \t]*(?P<va_v>" + _VALUE + r")" + _EOL + r"(?P<VIA_ANY>)"
    r"|(?i:contact|m)[ \t]*:[ \t]*(?P<ca_v>" + _VALUE + r")" + _EOL + r"(?P<CONTACT_ANY>)"
    r"|(?i:cseq|content-length|l)[ \t]*:(?P<OTHER>)"
    r"|(?!" + _TOKEN + r"[ \t]*:|\Z)(?P<BAD>)"  # empty, folded or malformed line
    r")",
    re.ASCII,
)
_HDR_FAST_FINDITER = _HDR_FAST_RE.finditer
_G = _HDR_FAST_RE.groupindex
_MK_VIA, _MK_CONTACT, _MK_FROM, _MK_TO, _MK_CALLID = _G["VIA"], _G["CONTACT"], _G["FROM"], _G["TO"], _G["CALLID"]
_MK_CSEQ, _MK_CLEN, _MK_CTYPE, _MK_EXPIRES = _G["CSEQ"], _G["CLEN"], _G["CTYPE"], _G["EXPIRES"]
_MK_VIA_ANY, _MK_CONTACT_ANY, _MK_SESSEXP = _G["VIA_ANY"], _G["CONTACT_ANY"], _G["SESSEXP"]
_V_TR, _V_HOST, _V_PORT, _V_PB, _V_REST = _G["v_tr"], _G["v_host"], _G["v_port"], _G["v_pb"], _G["v_rest"]
_C_IDX = tuple(_G["c_" + name] for name in _NAME_ADDR_GROUPS)
_F_V, _T_V, _I_V, _CS_N, _CS_M, _L_V = _G["f_v"], _G["t_v"], _G["i_v"], _G["cs_n"], _G["cs_m"], _G["l_v"]
_CT_V, _E_V, _VA_V, _CA_V, _X_V = _G["c_v"], _G["e_v"], _G["va_v"], _G["ca_v"], _G["x_v"]
del _G


def _fast_headers(msg: SipMessage, t: str, nl: int, hend: int) -> str | bool | None:
    """The lazy parse of a header block without folded, empty or malformed lines.

    Sets on ``msg`` what :func:`_generic_headers` would and returns the raw
    Content-Type, or ``False`` -- having raised nothing -- when anything is
    unusual or wrong: the generic path then starts over and reports the error
    it finds, if any. Offsets are derived from lengths where the grammar fixes
    them, to spare calls.
    """
    top: Via | None = None
    via_at: list[tuple[int, int]] = []
    contacts: list[NameAddr] = []
    star = False
    call_id: str | None = None
    cseq = -1
    cseq_method: str | None = None
    from_at: tuple[int, int] | None = None
    to_at: tuple[int, int] | None = None
    ctype: str | None = None
    ctype_raw: str | None = None
    clen: int | None = None
    clen_at: list[tuple[int, int]] = []
    expires: int | None = None
    session_expires: str | None = None
    try:
        for m in _HDR_FAST_FINDITER(t, nl, hend):
            k = m.lastindex
            if k == _MK_VIA:
                transport, host, port_s, pblock, rest = m.group(_V_TR, _V_HOST, _V_PORT, _V_PB, _V_REST)
                hs, he = m.span(_V_HOST)
                pe = he if port_s is None else he + 1 + len(port_s)
                qe = pe + len(pblock)
                vs = hs - 9 - len(transport)  # "SIP/2.0/<transport> "
                if rest is not None:
                    if top is None and t.count(";", vs, qe + len(rest)) > MAX_SEPARATORS:
                        return False
                    via_at.append((vs, qe + len(rest)))
                else:
                    via_at.append((vs, qe))
                if top is None:
                    if pblock.count(";") > MAX_PARAMS:
                        return False
                    if host[0] == "[":
                        host = host[1:-1]
                    if port_s is None:
                        hp = _hostport(host, None, hs, he, -1, he)
                    else:
                        port = int(port_s)
                        if port > 65535:
                            return False
                        hp = _hostport(host, port, hs, he, he + 1, pe)
                    top = _via(transport.upper(), hp, pblock, pe, vs, qe)
            elif k == _MK_FROM:
                if from_at is not None:
                    return False
                from_at = m.span(_F_V)
            elif k == _MK_TO:
                if to_at is not None:
                    return False
                to_at = m.span(_T_V)
            elif k == _MK_CALLID:
                if call_id is not None:
                    return False
                call_id = m.group(_I_V)
                if not call_id:
                    return False
                if not call_id.isascii():
                    call_id = _text(call_id)
            elif k == _MK_CSEQ:
                if cseq_method is not None:
                    return False
                num_s, cseq_method = m.group(_CS_N, _CS_M)
                cseq = int(num_s)
                if cseq > _MAX_CSEQ:
                    return False
            elif k == _MK_CONTACT:
                na = _fast_name_addr(m, _C_IDX)
                if na is None:
                    return False
                contacts.append(na)
                if len(contacts) > MAX_VALUES:
                    return False
            elif k == _MK_CLEN:
                val = int(m.group(_L_V))
                if clen is not None and val != clen:
                    return False
                clen = val
                clen_at.append(m.span(_L_V))
            elif k == _MK_CTYPE:
                if ctype is None:
                    ctype_raw = m.group(_CT_V)
                    if ctype_raw == "application/sdp":
                        ctype = ctype_raw
                    else:
                        ctype = ctype_raw.split(";", 1)[0].rstrip(_RSTRIP_LWS).lower()
            elif k == _MK_EXPIRES:
                v = m.group(_E_V)
                if v.isdigit() and v.isascii():
                    expires = int(v)
            elif k == _MK_SESSEXP:
                if session_expires is None:
                    session_expires = m.group(_X_V)
            elif k == _MK_VIA_ANY:
                vs, ve = m.span(_VA_V)
                if top is None:
                    if t.count(";", vs, ve) > MAX_SEPARATORS:
                        return False
                    top = _parse_top_via(t, vs, ve)
                via_at.append((vs, ve))
            elif k == _MK_CONTACT_ANY:
                vs, ve = m.span(_CA_V)
                if t.count(";", vs, ve) > MAX_SEPARATORS:
                    return False
                if t[vs:ve] == "*":
                    star = True
                else:
                    contacts.extend(_parse_name_addr_list(t, vs, ve, "bad-contact"))
                    if len(contacts) > MAX_VALUES:
                        return False
            else:
                return False
    except SipParseError:
        return False
    if call_id is None or cseq_method is None or top is None or from_at is None or to_at is None:
        return False
    msg._index = None
    msg.call_id = call_id
    msg.cseq = cseq
    msg.cseq_method = cseq_method
    msg._top = top
    msg._vias = (top,) if len(via_at) == 1 and via_at[0][1] == top._e else None
    msg._via_at = via_at
    msg.contacts = tuple(contacts)
    msg.contact_star = star
    msg.content_type = ctype
    msg.content_length = clen
    msg._clen_at = clen_at
    msg._clen_spans = None
    msg.expires = expires
    msg._se = session_expires
    msg._se_known = True
    msg._from = None
    msg._from_at = from_at
    msg._to = None
    msg._to_at = to_at
    return ctype_raw


def _generic_headers(msg: SipMessage, t: str, nl: int, hend: int, strict: bool) -> str | None:
    """Validate every header line and handle the values parse_message reads, in
    header order (the first error in header order is reported, except that a
    bad header line anywhere wins, as in the historical eager parser); set them
    on ``msg``; return the raw Content-Type. Any header block, either mode."""
    sl_end = nl + 1
    if t.find("\n ", nl, hend) < 0 and t.find("\n\t", nl, hend) < 0:
        lines = t[sl_end : hend - 1].split("\n") if hend > sl_end else []
        msg._index = None
    else:
        lines, msg._index = _logical_lines(t, sl_end, hend)  # folded lines: rare
    top: Via | None = None
    vias: list[Via] = []
    via_at: list[tuple[int, int]] = []
    contacts: list[NameAddr] = []
    star = False
    call_id: str | None = None
    cseq_t: tuple[int, str] | None = None
    from_at: tuple[int, int] | None = None
    to_at: tuple[int, int] | None = None
    from_: NameAddr | None = None
    to: NameAddr | None = None
    ctype: str | None = None
    ctype_raw: str | None = None
    clen: int | None = None
    clen_at: list[tuple[int, int]] = []
    expires: int | None = None
    cache = _NAME_CACHE
    p = sl_end
    try:
        for line in lines:
            q = p
            p += len(line) + 1
            c = line.find(":") + 1
            kind = cache.get(line[:c])
            if kind is None:
                kind = _classify_key(line[:c])
                if kind < 0:
                    raise _err("bad-header-line", line)
            if not kind:
                continue
            if kind <= _H_TO:
                # structured values: offsets needed (leading SP/HT and trailing LWS excluded)
                v = line[c:].lstrip(" \t")
                vs = p - 1 - len(v)
                v = v.rstrip(_RSTRIP_LWS)
                ve = vs + len(v)
                # Bound the regex work before it starts (see MAX_SEPARATORS);
                # a lazy parse does it when it parses the value.
                if (strict or kind == _H_CONTACT or (kind == _H_VIA and top is None)) and v.count(";") > MAX_SEPARATORS:
                    raise _err("too-many-params")
                if kind == _H_VIA:
                    if strict:
                        _parse_vias(t, vs, ve, vias)
                    elif top is None:
                        top = _parse_top_via(t, vs, ve)
                    via_at.append((vs, ve))
                elif kind == _H_CONTACT:
                    if v == "*" or v.lstrip(_RSTRIP_LWS) == "*":
                        star = True
                    else:
                        contacts.extend(_parse_name_addr_list(t, vs, ve, "bad-contact"))
                        if len(contacts) > MAX_VALUES:
                            raise _err("too-many-values", "Contact")
                elif kind == _H_FROM:
                    if from_at is not None:
                        raise _err("multiple-from")  # RFC 4475 §3.3.8 multi01
                    from_at = (vs, ve)
                    if strict:
                        from_ = _parse_name_addr(t, vs, ve, False, "bad-from")[0]
                else:
                    if to_at is not None:
                        raise _err("multiple-to")  # RFC 4475 §3.3.8 multi01
                    to_at = (vs, ve)
                    if strict:
                        to = _parse_name_addr(t, vs, ve, False, "bad-to")[0]
            elif kind == _H_CALLID:
                if call_id is not None:
                    raise _err("multiple-call-id")  # RFC 4475 §3.3.8 multi01
                v = line[c:].strip(_RSTRIP_LWS)
                if not v:
                    raise _err("missing-call-id", "empty Call-ID")
                call_id = _text(_FOLD_RE.sub(" ", v) if "\n" in v else v)
            elif kind == _H_CSEQ:
                if cseq_t is not None:
                    raise _err("multiple-cseq")  # RFC 4475 §3.3.8 multi01
                v = line[c:].strip(_RSTRIP_LWS)
                cm = _CSEQ_RE.match(v)
                if cm is None:
                    raise _err("bad-cseq", v)
                num = int(cm.group(1))
                if num > _MAX_CSEQ:
                    raise _err("bad-cseq", "CSeq number too large")  # RFC 4475 scalar02, scalarlg
                cseq_t = (num, cm.group(2))
            elif kind == _H_CLEN:
                v = line[c:].rstrip(_RSTRIP_LWS)
                ve = q + c + len(v)
                v = v.lstrip(_RSTRIP_LWS)
                if not (v.isdigit() and v.isascii()):
                    raise _err("bad-content-length", v)  # RFC 4475 ncl (-999); zeek "bad"
                val = int(v)
                if clen is not None and val != clen:
                    raise _err("bad-content-length", "disagreeing values")  # RFC 4475 mcl01
                clen = val
                clen_at.append((ve - len(v), ve))
            elif kind == _H_CTYPE:
                if ctype is None:
                    ctype_raw = line[c:].strip(_RSTRIP_LWS)
                    ctype = ctype_raw.split(";", 1)[0].rstrip(_RSTRIP_LWS).lower()
            else:  # _H_EXPIRES
                v = line[c:].strip(_RSTRIP_LWS)
                if v.isdigit() and v.isascii():
                    expires = int(v)
    except SipParseError as exc:
        if exc.reason != "bad-header-line" and msg._index is None:
            _check_lines(lines)  # a bad header line anywhere is the error to report
        raise

    if call_id is None:
        raise _err("missing-call-id")
    if cseq_t is None:
        raise _err("missing-cseq")
    if not via_at:
        raise _err("missing-via")
    if from_at is None:
        raise _err("missing-from")
    if to_at is None:
        raise _err("missing-to")
    msg.call_id = call_id
    msg.cseq, msg.cseq_method = cseq_t
    if strict:
        msg._top = vias[0]
        msg._vias = tuple(vias)
    else:
        msg._top = top  # type: ignore[assignment]  # set with the first via_at entry
        msg._vias = (top,) if len(via_at) == 1 and via_at[0][1] == top._e else None  # type: ignore[union-attr]
    msg._via_at = via_at
    msg.contacts = tuple(contacts)
    msg.contact_star = star
    msg.content_type = ctype
    msg.content_length = clen
    msg._clen_at = clen_at
    msg._clen_spans = None
    msg.expires = expires
    msg._from = from_
    msg._from_at = from_at
    msg._to = to
    msg._to_at = to_at
    return ctype_raw


def parse_message(data: bytes, *, stream: bool = False, strict: bool = False) -> SipMessage:
    """Parse one SIP message from the start of ``data``.

    ``stream=False`` (UDP): ``data`` is one datagram; without Content-Length
    the body runs to its end; bytes after Content-Length go to ``trailing``.
    ``stream=True`` (TCP/TLS): Content-Length is mandatory (RFC 3261 §18.3) and
    ``trailing`` holds the start of the next message. Errors whose
    ``.incomplete`` is true mean "wait for more bytes".

    ``strict=False`` (the default) defers the parts a NAT helper does not act
    upon to their first access (module docstring); ``strict=True`` parses and
    validates everything now, raising exactly what the eager parser raised.
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

    # ---- end of the header block: the first empty line (CRLF CRLF, or LF LF
    # as in the RFC 5118 archive files). Usual case: the first CRLF CRLF, and
    # the fast header scan checks that every line before it starts a header
    # field (which rules out an earlier LF LF and folded lines).
    a = data.find(b"\n\r\n", nl)
    fast = a >= 0 and not strict
    if fast:
        hend = a + 1
        body_start = a + 3
        t = data[:hend].decode("latin-1")  # 1 char == 1 byte: str offsets are byte offsets
    else:
        b = data.find(b"\n\n", nl, a + 1 if a >= 0 else n)  # only an LF LF before the CRLF one matters
        if b >= 0:
            hend, body_start = b + 1, b + 2
        elif a >= 0:
            hend, body_start = a + 1, a + 3
        elif not stream and data[-1] == 10:
            # No empty line after the headers. RFC 3261 requires one, but the
            # RFC archives themselves ship such datagrams (RFC 4475 baddn.dat,
            # RFC 5118 ipv6-*-colons.dat) and on UDP the datagram boundary ends
            # the message unambiguously: accept with an empty body.
            hend = body_start = n
        else:
            raise _err("incomplete-headers")
        t = data[:hend].decode("latin-1")

    msg = _new(SipMessage)
    msg._text = t
    msg._headers = None
    msg._hdr_end = hend
    msg._sl_s = pos
    msg._sl_e = nl + 1
    msg._ruri_m = None
    msg._se_known = False  # the fast header scan reads Session-Expires; any other path looks it up
    if req is None:
        msg.is_request = False
        msg.method = None
        msg._ruri = None
        msg.status = status
        msg.reason = _text(m.group(3) or "")  # type: ignore[union-attr]
    else:
        msg.is_request = True
        msg.method = req.group(1)
        if sl.count(";") > MAX_PARAMS:
            raise _err("too-many-params")
        us, ue = req.span(2)
        um = _SIP_URI_RE.match(t, pos + us, pos + ue)
        if um is None:
            msg._ruri = _parse_uri(t, pos + us, pos + ue)  # other schemes, errors
        else:
            _check_sip_uri(um)  # the SipUri is built on first access
            msg._ruri = None
            msg._ruri_m = um
        msg.status = None
        msg.reason = None

    # ---- header lines. The common case goes through one C-level scan; any
    # other block, any doubt and any error take the generic line-by-line path.
    if fast:
        ctype_raw = _fast_headers(msg, t, nl, hend)
        if ctype_raw is False:
            b = data.find(b"\n\n", nl, hend)  # an empty line before the CRLF CRLF?
            if b >= 0:
                hend, body_start = b + 1, b + 2
                msg._text = t = data[:hend].decode("latin-1")
                msg._hdr_end = hend
            ctype_raw = _generic_headers(msg, t, nl, hend, strict)
    else:
        ctype_raw = _generic_headers(msg, t, nl, hend, strict)
    if req is not None and msg.cseq_method != msg.method:
        raise _err("cseq-method-mismatch")  # RFC 3261 §8.1.1.5, RFC 4475 mismatch01/02

    # ---- body
    clen = msg.content_length
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
    msg.body_span = new_span(body_start, body_end)
    msg.sdp = None
    ctype = msg.content_type
    if body_end > body_start and ctype is not None:
        if ctype == "application/sdp":
            msg.sdp = parse_sdp(raw, body_start, body_end, strict=strict)
        elif ctype.startswith("multipart/") and ctype_raw is not None:
            msg.sdp = _multipart_sdp(raw, body_start, body_end, ctype_raw, strict)
    return msg


def _multipart_sdp(raw: bytes, bs: int, be: int, ctype_raw: str, strict: bool) -> Sdp | None:
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
            return parse_sdp(raw, pbody, part_end, strict=strict)
        i = nxt + 1
