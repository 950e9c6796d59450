"""The values a parsed SIP message is made of, each with the spans of its parts in ``SipMessage.raw``.

A span is a half-open ``[start, end)`` byte range of the message as received: a NAT helper replaces the
bytes under a span (:mod:`nfsip.core.sip.edit`) and leaves every other byte as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Header", "HostPort", "NameAddr", "Param", "SipUri", "Span", "Via", "find_param"]


@dataclass(frozen=True, slots=True)
class Span:
    """Half-open byte offsets into ``SipMessage.raw``."""

    start: int
    end: int

    @property
    def length(self) -> int:
        # Deliberately not ``__len__``: an empty span must not be falsy.
        return self.end - self.start

    def slice(self, data: bytes) -> bytes:
        """The bytes this span covers in ``data``."""
        return data[self.start : self.end]


@dataclass(frozen=True, slots=True)
class HostPort:
    """``host[:port]`` as written (RFC 3261 §25.1 hostport)."""

    host: str  # IPv6 references without the brackets
    port: int | None
    host_span: Span  # for IPv6 "[...]", brackets included
    port_span: Span | None  # the port digits only

    @property
    def span(self) -> Span:
        """``host[:port]``."""
        return Span(self.host_span.start, (self.port_span or self.host_span).end)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host


@dataclass(frozen=True, slots=True)
class Param:
    """``;name[=value]``; ``value`` is as written (quotes kept for quoted-strings)."""

    name: str  # lower-cased
    value: str | None
    value_span: Span | None


def find_param(params: tuple[Param, ...], name: str) -> Param | None:
    """The first parameter called ``name`` (lower case)."""
    for p in params:
        if p.name == name:
            return p
    return None


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
        return find_param(self.params, name.lower())


@dataclass(frozen=True, slots=True)
class NameAddr:
    """One value of Contact/From/To/Route/Record-Route/... (RFC 3261 §20.10)."""

    display_name: str | None  # quoted-pairs resolved, quotes removed
    uri: SipUri
    params: tuple[Param, ...]  # header parameters after the URI (tag, expires, q, ...)
    span: Span

    def param(self, name: str) -> Param | None:
        return find_param(self.params, name.lower())

    @property
    def tag(self) -> str | None:
        p = find_param(self.params, "tag")
        return p.value if p is not None else None


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm (RFC 3261 §20.42)."""

    transport: str  # "UDP", "TCP", "TLS", "SCTP", "WS", ... (upper-cased)
    sent_by: HostPort
    params: tuple[Param, ...]
    span: Span  # the whole via-parm

    @property
    def protocol(self) -> str:
        """ "SIP/2.0/UDP" (the version is always 2.0)."""
        return "SIP/2.0/" + self.transport

    def param(self, name: str) -> Param | None:
        return find_param(self.params, name.lower())

    @property
    def branch(self) -> str | None:
        p = find_param(self.params, "branch")
        return p.value if p is not None else None

    @property
    def received(self) -> str | None:
        p = find_param(self.params, "received")
        return p.value if p is not None else None

    @property
    def maddr(self) -> str | None:
        p = find_param(self.params, "maddr")
        return p.value if p is not None else None

    @property
    def rport(self) -> Param | None:
        """The rport Param (RFC 3581); ``value is None`` for a bare ``;rport``."""
        return find_param(self.params, "rport")


@dataclass(frozen=True, slots=True)
class Header:
    """One header field line (possibly folded)."""

    name: str  # canonical lower-case long form
    raw_name: str
    value: str  # unfolded, stripped
    value_span: Span  # as written, may contain folding
    line_span: Span  # whole line(s) including the line terminator
