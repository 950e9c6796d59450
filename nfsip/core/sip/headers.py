"""Header fields (RFC 3261 §7.3): the lines of a header block, and the values of Via, Contact, From, To and
CSeq.

The parsers work on the latin-1 text of the header block (``t``, see :mod:`nfsip.core.sip.grammar`) between
offsets given by the caller; every span they return indexes that text, hence ``SipMessage.raw``. They raise
:class:`~nfsip.core.sip.errors.SipParseError` and nothing else.

Tolerated beyond the ABNF, because the value stays unambiguous (see :mod:`nfsip.core.sip.grammar`): empty list
elements and parameters (RFC 4475 badinv01), LWS inside ``<...>`` (RFC 4475 badaspec), unquoted display
names with non-token characters in From/To (RFC 4475 baddn), ``?headers`` in an addr-spec Contact (RFC 4475
regbadct).
"""

from __future__ import annotations

from nfsip.core.sip import grammar
from nfsip.core.sip.errors import SipParseError
from nfsip.core.sip.grammar import COMPACT_FORMS, LWS_CHARS, MAX_PARAMS, MAX_SEPARATORS, MAX_VALUES, user_text
from nfsip.core.sip.uri import hostport, params_end, parse_uri, split_params
from nfsip.core.sip.values import NameAddr, Span, Via

__all__ = [
    "HeaderLine",
    "parse_cseq",
    "parse_name_addr_list",
    "parse_single_name_addr",
    "parse_top_via",
    "parse_vias",
    "split_lines",
    "unfold",
]


# Where one header field is in the header block text (a logical line: folded lines included):
# (canonical lower-case long name, name as written, value start, value end (the value without the LWS
# around it), line start, line end (after its LF)). A plain tuple: one is made per header line of every
# message.
HeaderLine = tuple[str, str, int, int, int, int]


def split_lines(t: str, start: int, end: int) -> list[HeaderLine]:
    """The header fields of ``t[start:end]`` (each line ends with LF); raises ``bad-header-line`` for the
    first line that does not begin a header field (RFC 3261 §7.3.1), or begins with whitespace where no
    field is being continued."""
    lines: list[HeaderLine] = []
    p = start
    for name, sep, value in grammar.HEADER_LINE.findall(t, start, end):
        # The matches are consecutive unless a line was passed over (checked below): offsets by lengths.
        vs = p + len(name) + len(sep)
        line_end = vs + len(value) + 1
        stripped = value.strip(LWS_CHARS)
        if stripped:
            vs += len(value) - len(value.lstrip(LWS_CHARS))
        low = name.lower()
        lines.append((COMPACT_FORMS.get(low, low), name, vs, vs + len(stripped), p, line_end))
        p = line_end
    if p != end:
        # findall passed over a line it could not match: find the first one.
        m = grammar.HEADER_LINE.match(t, start, end)
        while m is not None:
            start = m.end()
            m = grammar.HEADER_LINE.match(t, start, end)
        raise SipParseError("bad-header-line", t[start : t.find("\n", start, end)])
    return lines


def unfold(value: str) -> str:
    """A value's text with each line fold replaced by one SP (RFC 3261 §7.3.1)."""
    return grammar.FOLD.sub(" ", value) if "\n" in value else value


def parse_cseq(value: str) -> tuple[int, str]:
    """CSeq (RFC 3261 §20.16): the number, below 2**31 (§8.1.1.5), and the method."""
    m = grammar.CSEQ.match(value)
    if m is None:
        raise SipParseError("bad-cseq", value)
    number = int(m.group(1))
    if number >= 2**31:
        raise SipParseError("bad-cseq", "CSeq number too large")  # RFC 4475 scalar02, scalarlg
    return number, m.group(2)


def _skip_lws(t: str, p: int, e: int) -> int:
    if p < e and t[p] in LWS_CHARS:
        return grammar.LWS_RUN.match(t, p, e).end()  # type: ignore[union-attr]  # matches the empty string too
    return p


# --------------------------------------------------------------------------- Via (§20.42)


def _parse_via_at(t: str, p: int, e: int) -> tuple[Via, int]:
    """The via-parm at ``p``, and the position after it and its LWS."""
    m = grammar.VIA_PARM.match(t, p, e)
    if m is None:
        raise SipParseError("bad-via", t[p:e])
    name, version, transport, host, port, params = m.groups()
    if version != "2.0" or name.upper() != "SIP":
        raise SipParseError("bad-via-version", t[p:e])  # RFC 4475 badvers (SIP/7.0)
    if port is not None and int(port) > 65535:
        raise SipParseError("bad-via", t[p:e])
    if params and params.count(";") > MAX_PARAMS:
        raise SipParseError("too-many-params")
    sent_by = hostport(host, m.start(4), port, m.start(5))
    via = Via(transport.upper(), sent_by, split_params(params, m.start(6)), Span(p, m.end(6)))
    return via, m.end()


def parse_vias(t: str, s: int, e: int, out: list[Via]) -> None:
    """Append every via-parm of the Via value ``t[s:e]`` to ``out``."""
    p = _skip_lws(t, s, e)
    while True:
        via, q = _parse_via_at(t, p, e)
        out.append(via)
        if len(out) > MAX_VALUES:
            raise SipParseError("too-many-values", "Via")
        if q >= e:
            return
        if t[q] != ",":
            raise SipParseError("bad-via", t[q:e])
        if grammar.EMPTY_LIST_TAIL.match(t, q, e) is not None:
            return  # empty list elements at the end ("Via: ...;;,;,,", RFC 4475 badinv01)
        p = grammar.LWS_OR_COMMAS.match(t, q, e).end()  # type: ignore[union-attr]


def parse_top_via(t: str, s: int, e: int) -> Via:
    """The first via-parm of the Via value ``t[s:e]``, checked up to the ',' that ends it."""
    via, q = _parse_via_at(t, _skip_lws(t, s, e), e)
    if q < e and t[q] != ",":
        raise SipParseError("bad-via", t[q:e])
    return via


# --------------------------------------------------------------------------- name-addr (§20.10)


def _parse_name_addr(t: str, s: int, e: int, multi: bool, reason: str) -> tuple[NameAddr, int]:
    """One name-addr or addr-spec with header parameters at ``s``; returns it and the position after it:
    ``e``, or just after the ``,`` separating it from the next value (``multi``)."""
    i = _skip_lws(t, s, e)
    if i >= e:
        raise SipParseError(reason, "empty value")
    display: str | None = None
    c = t[i]
    if c == "<":
        lt = i
    elif c == '"':
        qm = grammar.QUOTED.match(t, i, e)
        if qm is None:
            raise SipParseError("unterminated-quote", t[i:e])  # RFC 4475 §3.1.2.6 quotbal
        display = qm.group()[1:-1]
        if "\\" in display:
            display = grammar.QUOTED_PAIR.sub(r"\1", display)
        display = user_text(display)
        lt = _skip_lws(t, qm.end(), e)
        if lt >= e or t[lt] != "<":
            raise SipParseError(reason, t[i:e])
    else:
        lt = t.find("<", i, e)
        if lt >= 0 and multi and t.find(",", i, lt) >= 0:
            lt = -1  # the '<' belongs to a later value
        if lt >= 0:
            # Unquoted display name. RFC 4475 §3.1.2.15 (baddn) puts non-token characters ("Bell, Alexander")
            # here and wants a 400 from the UAS; From/To are single-valued so the name is unambiguous, and a
            # NAT helper gains nothing by refusing: anything before '<' is the name.
            display = user_text(t[i:lt].strip(LWS_CHARS)) or None
    if lt >= 0:
        gt = t.find(">", lt, e)
        if gt < 0:
            raise SipParseError(reason, t[i:e])
        # LWS inside <...> (RFC 4475 §3.1.2.14 badaspec): the addr-spec is still unambiguous.
        us = _skip_lws(t, lt + 1, gt)
        ue = gt
        while ue > us and t[ue - 1] in LWS_CHARS:
            ue -= 1
        uri = parse_uri(t, us, ue)
        p = gt + 1
    else:
        m = grammar.ADDR_SPEC_END.search(t, i, e)
        ue = m.start() if m is not None else e
        uri = parse_uri(t, i, ue)
        p = ue
    q = params_end(t, p, e)
    value = NameAddr(display, uri, split_params(t[p:q], p), Span(i, q))
    q = _skip_lws(t, q, e)
    if q >= e:
        return value, e
    if multi and t[q] == ",":
        return value, q + 1
    raise SipParseError(reason, t[q:e])


def parse_name_addr_list(t: str, s: int, e: int, reason: str) -> list[NameAddr]:
    """Every name-addr of a list value such as Contact or Record-Route (``reason`` names the header)."""
    out: list[NameAddr] = []
    p = s
    while p < e:
        value, p = _parse_name_addr(t, p, e, True, reason)
        out.append(value)
        if len(out) > MAX_VALUES:
            raise SipParseError("too-many-values", reason)
        if p < e and grammar.LWS_OR_COMMAS.match(t, p, e).end() >= e:  # type: ignore[union-attr]
            break  # trailing empty list elements
    return out


def parse_single_name_addr(t: str, s: int, e: int, reason: str) -> NameAddr:
    """The one name-addr of From or To. A quote that does not open the value belongs to a tolerated unquoted
    display name (synthetic captures write 'From: \\"arik\\" <sip:..>')."""
    if t.count(";", s, e) > MAX_SEPARATORS:
        raise SipParseError("too-many-params")  # before any regular expression runs
    return _parse_name_addr(t, s, e, False, reason)[0]
