"""Byte-exact edits of a parsed SIP message.

A NAT helper must change as little as possible (RFC 3261 §16.6 proxies may only touch specific fields;
anything else can break S/MIME, RFC 4474 Identity signatures over the body, or simply confuse picky UAs).
:func:`apply_edits` therefore replaces only the given spans and, when the body length changed, the digits of
every Content-Length value (RFC 3261 §20.14), keeping everything else -- folding, compact names, leading
zeros' position -- byte-identical.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass

from nfsip.core.sip.message import SipMessage
from nfsip.core.sip.values import Span

__all__ = ["Edit", "apply_edits"]


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace ``msg.raw[span.start:span.end]`` by ``replacement``."""

    span: Span
    replacement: bytes


def apply_edits(msg: SipMessage, edits: Iterable[Edit]) -> bytes:
    """Return ``msg.raw`` with ``edits`` applied and Content-Length fixed up.

    * Edits must not overlap (``ValueError``); they may touch (adjacent), be empty insertions, or be no-ops
      (same bytes).
    * An edit may not straddle the header/body boundary (``ValueError``).
    * If the body length changed and Content-Length header(s) exist, each of their values is rewritten to the
      new length; an edit overlapping a Content-Length value is then a ``ValueError``. Without a
      Content-Length (UDP) the body simply ends with the datagram.
    * The datagram's ``msg.trailing`` bytes are *not* re-attached: they are not part of the message (RFC 3261
      §18.3) and forwarding them would let a sender smuggle a second message past the helper (RFC 4475
      dblreq).
    """
    raw = msg.raw
    n = len(raw)
    bs, be = msg.body_span.start, msg.body_span.end
    ordered = sorted((ed.span.start, ed.span.end, ed.replacement) for ed in edits)
    delta = 0
    prev_end = 0
    for s, e, replacement in ordered:
        if not 0 <= s <= e <= n:
            raise ValueError(f"edit span {s}:{e} outside message of {n} bytes")
        if s < prev_end:
            raise ValueError(f"overlapping edits at {s}:{e}")
        if s < bs < e or s < be < e:
            raise ValueError(f"edit {s}:{e} straddles the body boundary {bs}:{be}")
        prev_end = e
        if s >= bs:  # not straddling, so the edit lies inside the body
            delta += len(replacement) - (e - s)
    if delta and msg.content_length_spans:
        new_length = str(be - bs + delta).encode("ascii")
        for cl in msg.content_length_spans:
            # An edit overlaps [cl.start, cl.end) when it starts before cl.end and ends after cl.start. The
            # edits are sorted and do not overlap, so of those starting before cl.end the last ends furthest.
            # (A message may repeat Content-Length thousands of times: no scan of every edit per value.)
            i = bisect_left(ordered, cl.end, key=_start)
            if i and ordered[i - 1][1] > cl.start:
                raise ValueError("edit overlaps a Content-Length value that must be rewritten")
        ordered = sorted(ordered + [(cl.start, cl.end, new_length) for cl in msg.content_length_spans])
    out: list[bytes] = []
    p = 0
    for s, e, replacement in ordered:
        out.append(raw[p:s])
        out.append(replacement)
        p = e
    out.append(raw[p:])
    return b"".join(out)


def _start(edit: tuple[int, int, bytes]) -> int:
    return edit[0]
