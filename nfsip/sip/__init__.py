"""SIP/SDP parsing layer of nfsip: pure (sans-I/O) parsing with byte spans.

* :func:`parse_message` (RFC 3261) -> :class:`SipMessage`; lazy by default (the parts a NAT
  helper does not act upon are parsed on first access), ``strict=True`` or
  :meth:`SipMessage.validate` for a full validation
* :func:`parse_sdp` (RFC 8866) -> :class:`Sdp`
* :func:`apply_edits` + :class:`Edit`: byte-exact rewriting with Content-Length fix-up
* :class:`SipParseError`: the only exception the parsers raise
"""

from nfsip.sip.edit import Edit, apply_edits
from nfsip.sip.errors import SipParseError
from nfsip.sip.message import (
    Header,
    HostPort,
    NameAddr,
    Param,
    SipMessage,
    SipUri,
    Via,
    canonical_header_name,
    parse_message,
    parse_name_addrs,
)
from nfsip.sip.sdp import Sdp, SdpAddress, SdpCandidate, SdpMedia, SdpRtcp, parse_sdp
from nfsip.sip.spans import Span

__all__ = [
    "Edit",
    "Header",
    "HostPort",
    "NameAddr",
    "Param",
    "Sdp",
    "SdpAddress",
    "SdpCandidate",
    "SdpMedia",
    "SdpRtcp",
    "SipMessage",
    "SipParseError",
    "SipUri",
    "Span",
    "Via",
    "apply_edits",
    "canonical_header_name",
    "parse_message",
    "parse_name_addrs",
    "parse_sdp",
]
