"""SIP messages framed out of a TCP byte stream (RFC 3261 §18.3), sans-I/O.

One :class:`StreamFramer` per direction of a connection: the relay feeds it the bytes it received and gets
back, in order, the complete items found so far; the rest stays buffered. An item is

* a :class:`Message`: the exact bytes of one message, start-line to the end of its body, whose length is the
  header section plus Content-Length. Nothing else of the message is parsed here
  (:func:`nfsip.core.sip.message.parse_message` does that, and may still refuse what was framed);
* a :class:`Keepalive`: one line end (CRLF, or LF alone as the parser tolerates) between messages. RFC 3261
  §7.5 says to ignore them, RFC 5626 §4.4.1 makes them the keepalive (a client's CRLF CRLF ping, the
  server's CRLF pong); the relay forwards them byte for byte. A ping comes out as two items: after one CRLF
  the framer cannot know whether a second follows, and holding a pong until the next byte arrives would hold
  it for good. One item per line end also makes the items independent of how the stream was cut into
  segments.

Errors raise :class:`StreamError`, whose ``reason`` is one of :data:`STREAM_ERROR_REASONS`; the framer is then
dead, and the relay closes the connection: past a framing error the next message boundary is unknown.

* ``garbage``: what begins a message is not a SIP start-line (checked as the bytes arrive, with the grammar's
  patterns: TLS fails at its first byte, HTTP at its version, anything else by the end of its first line),
  or a CR not followed by LF between messages. Never searched past: the next bytes are the next message or
  nothing (NAT slipstreaming hid a REGISTER inside an HTTP body). A request line parse_message calls
  malformed (RFC 4475 lwsstart: two spaces) is garbage here too: a line is refused at its first byte that
  no start-line could have there, which is what stops TLS and HTTP early.
* ``header-too-large``: the header section (start-line to the empty line) would exceed ``max_header_size``.
* ``message-too-large``: header section plus Content-Length exceed ``max_message_size``; refused as soon as
  the headers are complete, before any of the body is buffered.
* ``no-content-length``: RFC 3261 §18.3 makes Content-Length mandatory on streams, and without it the end of
  the message is unknown. Refused by default, as Kamailio closes such a connection unless configured with
  ``tcp_accept_no_cl``: taking it as an empty body would make a body that reads like a SIP message a second
  message to the relay that the receiver may not see. ``missing_content_length_is_zero=True`` takes it as 0.
* ``bad-content-length``: a value that is not digits, or several values that disagree (RFC 4475 mcl01):
  the two ends could frame the stream differently.

Cost: every byte is looked at a bounded number of times, however the stream is cut (a byte-per-segment
drip included): the searches for the start-line's end and the empty line resume where the previous one
stopped, and the buffer never holds more than one incomplete item, so never more than the limits.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nfsip.core.sip import grammar

__all__ = ["STREAM_ERROR_REASONS", "Frame", "Keepalive", "Message", "StreamError", "StreamFramer"]

STREAM_ERROR_REASONS: Final = (
    "garbage",
    "header-too-large",
    "message-too-large",
    "no-content-length",
    "bad-content-length",
)

# The empty line that ends the header section: CRLF CRLF, or LF LF as in the RFC 5118 archive files; the
# earliest of the two, as parse_message takes it.
_EMPTY_LINE = re.compile(rb"\n\r?\n")
# How much of an unfinished start-line is checked against grammar.START_LINE_PREFIX as it arrives: enough for
# a method or "SIP/2.0 200" and the start of a URI; the rest of the line is checked once its LF is there.
_START_LINE_HEAD = 64


@dataclass(frozen=True, slots=True)
class Message:
    """The bytes of one SIP message: start-line, headers, empty line, Content-Length bytes of body."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Keepalive:
    """One line end between messages (b"\\r\\n", or b"\\n"): a keepalive or a stray CRLF, to forward as is."""

    raw: bytes


Frame = Message | Keepalive


class StreamError(ValueError):
    """The stream cannot be framed further; ``reason`` is one of :data:`STREAM_ERROR_REASONS`. ``frames`` are
    the complete items the failed :meth:`StreamFramer.feed` found before the fault, in order."""

    def __init__(self, reason: str, frames: Iterable[Frame] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames = tuple(frames)


class StreamFramer:
    """Frames one direction of one SIP-over-TCP connection (module docstring)."""

    def __init__(
        self,
        *,
        max_header_size: int = 32768,
        max_message_size: int = 65535,
        missing_content_length_is_zero: bool = False,
    ) -> None:
        if max_header_size < _START_LINE_HEAD:
            raise ValueError(f"max_header_size must be at least {_START_LINE_HEAD}")
        if max_message_size < max_header_size:
            raise ValueError("max_message_size must be at least max_header_size")
        self.max_header_size = max_header_size
        self.max_message_size = max_message_size
        self.missing_content_length_is_zero = missing_content_length_is_zero
        self._buffer = bytearray()  # starts with the next item
        # The item being framed (offsets into the buffer): the start-line's LF once seen, where the search for
        # it or for the empty line resumes, and the whole message's length once the headers are complete.
        self._line_end = -1
        self._scan = 0
        self._size = -1
        self._error: str | None = None

    @property
    def pending(self) -> int:
        """Bytes buffered: the start of an item not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The items completed by ``data``, in order; raises :class:`StreamError` (then and ever after)."""
        if self._error is not None:
            raise StreamError(self._error)
        self._buffer += data
        frames: list[Frame] = []
        try:
            while (frame := self._next()) is not None:
                frames.append(frame)
        except StreamError as exc:
            self._error = exc.reason
            self._buffer = bytearray()
            raise StreamError(exc.reason, frames) from None
        return frames

    def _next(self) -> Frame | None:
        """Take the item at the start of the buffer if it is complete."""
        buf = self._buffer
        if not buf:
            return None
        if self._size < 0:
            if self._line_end < 0:
                if buf[0] in b"\r\n":
                    return self._keepalive()
                if not self._start_line():
                    return None
            if not self._header_section():
                return None
        if len(buf) < self._size:
            return None
        frame = Message(bytes(buf[: self._size]))
        del buf[: self._size]  # O(1): CPython moves the start of a bytearray
        self._line_end, self._scan, self._size = -1, 0, -1
        return frame

    def _keepalive(self) -> Keepalive | None:
        buf = self._buffer
        if buf[0] == 10:
            size = 1
        elif len(buf) < 2:
            return None
        elif buf[1] == 10:
            size = 2
        else:
            raise StreamError("garbage")  # a CR alone
        frame = Keepalive(bytes(buf[:size]))
        del buf[:size]
        return frame

    def _start_line(self) -> bool:
        """Find the start-line's end; refuse what cannot begin a SIP message. True once the line is whole."""
        buf = self._buffer
        limit = self.max_header_size
        lf = buf.find(b"\n", self._scan, limit)
        if lf < 0:
            # Checked while the head is growing (each byte of it at most _START_LINE_HEAD times); every prefix
            # of a start-line matches, so a head that does not can only grow into garbage.
            if self._scan < _START_LINE_HEAD:
                head = buf[:_START_LINE_HEAD].decode("latin-1")
                if grammar.START_LINE_PREFIX.match(head) is None:
                    raise StreamError("garbage")
            if len(buf) > limit:
                raise StreamError("header-too-large")
            self._scan = len(buf)
            return False
        line = buf[:lf].decode("latin-1")
        if grammar.REQUEST_LINE.match(line) is None and grammar.STATUS_LINE.match(line) is None:
            raise StreamError("garbage")
        self._line_end = self._scan = lf
        return True

    def _header_section(self) -> bool:
        """Find the empty line; then the message's length. True once it is known."""
        buf = self._buffer
        # A match starting at the start-line's LF is a message without header fields.
        found = _EMPTY_LINE.search(buf, self._scan, self.max_header_size)
        if found is None:
            if len(buf) > self.max_header_size:
                raise StreamError("header-too-large")
            self._scan = max(self._line_end, len(buf) - 2)  # an empty line may begin in the last two bytes
            return False
        header_end = found.start() + 1  # after the last header line's LF
        size = found.end() + self._content_length(buf[self._line_end + 1 : header_end].decode("latin-1"))
        if size > self.max_message_size:
            raise StreamError("message-too-large")
        self._size = size
        return True

    def _content_length(self, headers: str) -> int:
        """The body length the header lines give (each ends with LF, folded lines included)."""
        digits: str | None = None
        pos = 0
        while pos < len(headers):
            line = grammar.HEADER_LINE.match(headers, pos)
            if line is None:
                # Not a header field, so not a Content-Length (parse_message refuses the message).
                pos = headers.index("\n", pos) + 1
                continue
            pos = line.end()
            if grammar.canonical_header_name(line.group(1)) != "content-length":
                continue
            value = line.group(3).strip(grammar.LWS_CHARS)
            if not (value.isdigit() and value.isascii()):
                raise StreamError("bad-content-length")
            value = value.lstrip("0") or "0"
            if digits is not None and value != digits:
                raise StreamError("bad-content-length")
            digits = value
        if digits is None:
            if self.missing_content_length_is_zero:
                return 0
            raise StreamError("no-content-length")
        if len(digits) > len(str(self.max_message_size)):
            raise StreamError("message-too-large")  # before int(): thousands of digits are slow to convert
        return int(digits)
