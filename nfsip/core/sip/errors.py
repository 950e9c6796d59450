"""Errors raised by the SIP/SDP parsing layer.

The parser (:func:`nfsip.core.sip.message.parse_message`) raises *only*
:class:`SipParseError`, whatever the input bytes: callers on the packet path
catch exactly one exception type and decide (accept unmodified / drop) from
:attr:`SipParseError.reason`, a short machine-friendly slug.
"""

from __future__ import annotations

__all__ = ["INCOMPLETE_REASONS", "SipParseError"]

#: Reasons meaning "these bytes may be the beginning of a valid message": on a
#: stream transport (TCP) the caller should wait for more data.
INCOMPLETE_REASONS: frozenset[str] = frozenset({"incomplete-headers", "truncated-body"})


class SipParseError(ValueError):
    """The bytes are not a SIP message this layer is willing to handle.

    ``reason`` is a slug such as ``"no-start-line"``, ``"bad-content-length"``,
    ``"missing-call-id"`` or ``"truncated-body"``; ``detail`` is free text for logs (the offending text,
    cut to its first 120 characters).
    """

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str = "") -> None:
        detail = detail[:120]
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def incomplete(self) -> bool:
        """True when more bytes could make the message parse (stream transports)."""
        return self.reason in INCOMPLETE_REASONS
