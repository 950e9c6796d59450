"""SIP/SDP parsing layer of nfsip: pure (sans-I/O) parsing with byte spans.

* :func:`parse_message` (RFC 3261) -> :class:`SipMessage`; the parts a NAT helper does not act upon (From,
  To, the Vias below the first, ICE candidates) are parsed on first access, and
  :meth:`SipMessage.validate` parses them all
* :func:`parse_sdp` (RFC 8866) -> :class:`Sdp`
* :func:`apply_edits` + :class:`Edit`: byte-exact rewriting with Content-Length fix-up
* :class:`SipParseError`: the only exception the parsers raise

Modules: ``grammar`` (the RFC 3261 ABNF as regular expressions, limits), ``values`` (the parsed value types
and their spans), ``uri`` (URIs and parameters), ``headers`` (header lines, Via, name-addr, CSeq),
``message`` (start-line, header values, body framing), ``sdp``, ``edit``.
"""

from nfsip.core.sip.edit import Edit, apply_edits
from nfsip.core.sip.errors import SipParseError
from nfsip.core.sip.grammar import canonical_header_name
from nfsip.core.sip.message import SipMessage, parse_message, parse_name_addrs
from nfsip.core.sip.sdp import Sdp, SdpAddress, SdpCandidate, SdpMedia, SdpRtcp, parse_sdp
from nfsip.core.sip.values import Header, HostPort, NameAddr, Param, SipUri, Span, Via

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
