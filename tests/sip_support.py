"""The verdict of the SIP parser on a message, for the parser tests: what parse_message raises, else what
validate() raises (the parts parsed on first access: From, To, the Vias below the first, ICE candidates)."""

from __future__ import annotations

from nfsip.core.sip import SipMessage, SipParseError, parse_message


def parse_valid(data: bytes, *, stream: bool = False) -> SipMessage:
    """The message, every part of it parsed and valid."""
    msg = parse_message(data, stream=stream)
    assert msg.validate() is msg
    return msg


def verdict(data: bytes, *, stream: bool = False) -> str:
    """The reason the message is refused, or "ok"."""
    try:
        parse_valid(data, stream=stream)
    except SipParseError as exc:
        return exc.reason
    return "ok"


def assert_rejected(data: bytes, reason: str, *, stream: bool = False) -> None:
    assert verdict(data, stream=stream) == reason
