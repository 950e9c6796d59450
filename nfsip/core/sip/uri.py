"""URIs (RFC 3261 §19.1, RFC 3966 ``tel:``, RFC 5118 IPv6 references) and header parameters (§25.1).

The parsers work on the latin-1 text of the message header block (``t``) between offsets given by the
caller, and return values whose spans are offsets into that text, hence into ``SipMessage.raw``.
"""

from __future__ import annotations

import re

from nfsip.core.sip import grammar
from nfsip.core.sip.errors import SipParseError
from nfsip.core.sip.grammar import MAX_PARAMS, user_text
from nfsip.core.sip.values import HostPort, Param, SipUri, Span

__all__ = ["hostport", "params_end", "parse_uri", "split_params"]


def split_params(block: str, at: int) -> tuple[Param, ...]:
    """The parameters of a ``*(SEMI generic-param)`` block (matched by ``grammar.PARAMS``) found at ``at``.

    Empty parameters (";;") are skipped rather than refused. RFC 4475 §3.1.2.1 (badinv01) wants a 400 from
    the UAS, but a NAT helper is not the UAS: refusing to parse would not produce that 400, it would only
    forward the private addresses unrewritten. Empty elements carry no information.
    """
    if not block:
        return ()
    out: list[Param] = []
    p = at
    for sep, name, eq, value in grammar.PARAM_PARTS.findall(block):
        p += len(sep)
        if name:
            p += len(name)
            if eq:
                p += len(eq)
                out.append(Param(name.lower(), user_text(value), Span(p, p + len(value))))
                p += len(value)
            else:
                out.append(Param(name.lower(), None, None))
    return tuple(out)


def params_end(t: str, p: int, e: int) -> int:
    """End of the ``*(SEMI generic-param)`` block at ``p`` (at most ``e``); bounds its size."""
    q = grammar.PARAMS.match(t, p, e).end()  # type: ignore[union-attr]  # matches the empty string too
    if q > p and t.count(";", p, q) > MAX_PARAMS:  # counted cheaply, quoted ';' included
        raise SipParseError("too-many-params")
    return q


def _uri_params(block: str, at: int) -> tuple[Param, ...]:
    """The ``uri-parameters`` of a sip/sips URI (no LWS inside a URI), block found at ``at``."""
    if not block:
        return ()
    out: list[Param] = []
    q = at
    for name, eq, value in grammar.URI_PARAM.findall(block):
        q += 1 + len(name)
        if name:
            if eq:
                q += 1
                out.append(Param(name.lower(), user_text(value), Span(q, q + len(value))))
                q += len(value)
            else:
                out.append(Param(name.lower(), None, None))
        else:
            q += len(eq) + len(value)
    return tuple(out)


def hostport(host: str, host_at: int, port: str | None, port_at: int) -> HostPort:
    """The HostPort of a matched host (brackets of an IPv6 reference included) and its port digits."""
    host_span = Span(host_at, host_at + len(host))
    if host[0] == "[":
        host = host[1:-1]
    if port is None:
        return HostPort(host, None, host_span, None)
    return HostPort(host, int(port), host_span, Span(port_at, port_at + len(port)))


def _sip_uri(um: re.Match[str]) -> SipUri:
    """The SipUri of a ``grammar.SIP_URI`` match; checks what the pattern cannot (in this order)."""
    scheme, userinfo, host, port, pblock, headers = um.groups()
    if port is not None and int(port) > 65535:
        raise SipParseError("bad-uri", um.group())
    if pblock and pblock.count(";") > MAX_PARAMS:
        raise SipParseError("too-many-params")
    user = None
    if userinfo is not None:
        colon = userinfo.find(":")  # user ":" password
        user = user_text(userinfo if colon < 0 else userinfo[:colon])
    return SipUri(
        scheme.lower(),
        user,
        hostport(host, um.start(3), port, um.start(4)),
        _uri_params(pblock, um.start(5)),
        Span(um.start(), um.end()),
        None if headers is None else user_text(headers),
    )


def parse_uri(t: str, s: int, e: int) -> SipUri:
    """The URI in ``t[s:e]`` (already delimited by the caller)."""
    um = grammar.SIP_URI.match(t, s, e)
    if um is not None:
        return _sip_uri(um)
    m = grammar.SCHEME.match(t, s, e)
    if m is None:
        raise SipParseError("bad-uri", t[s:e])
    scheme = m.group(1).lower()
    if scheme == "sip" or scheme == "sips":
        # e.g. an unbracketed IPv6 address "sip:2001:db8::10" (RFC 5118 §4.2)
        raise SipParseError("bad-uri", t[s:e])
    if scheme == "tel":
        semi = t.find(";", m.end(), e)
        if semi < 0:
            return SipUri(scheme, None, None, (), Span(s, e))
        q = params_end(t, semi, e)
        if q != e:
            raise SipParseError("bad-uri", t[s:e])
        return SipUri(scheme, None, None, split_params(t[semi:q], semi), Span(s, e))
    # Unknown schemes (RFC 4475 §3.3.2 unkscm, §3.3.4 unksm2): opaque.
    return SipUri(scheme, None, None, (), Span(s, e))
