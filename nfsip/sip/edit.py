"""Byte-exact edits of a parsed SIP message.

A NAT helper must change as little as possible (RFC 3261 §16.6 proxies may only
touch specific fields; anything else can break S/MIME, RFC 4474 Identity
signatures over the body, or simply confuse picky UAs). :func:`apply_edits`
therefore replaces only the given spans and, when the body length changed,
the digits of every Content-Length value (RFC 3261 §20.14), keeping everything
else -- folding, compact names, leading zeros' position -- byte-identical.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter

from nfsip.sip.message import SipMessage
from nfsip.sip.spans import Span

__all__ = ["Edit", "apply_edits", "apply_splices"]


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace ``msg.raw[span.start:span.end]`` by ``replacement``."""

    span: Span
    replacement: bytes


def apply_edits(msg: SipMessage, edits: Iterable[Edit]) -> bytes:
    """Return ``msg.raw`` with ``edits`` applied and Content-Length fixed up.

    * Edits must not overlap (``ValueError``); they may touch (adjacent), be
      empty insertions, or be no-ops (same bytes).
    * An edit may not straddle the header/body boundary (``ValueError``).
    * If the body length changed and Content-Length header(s) exist, each of
      their values is rewritten to the new length; an edit overlapping a
      Content-Length value is then a ``ValueError``. Without a Content-Length
      (UDP) the body simply ends with the datagram.
    * The datagram's ``msg.trailing`` bytes are *not* re-attached: they are
      not part of the message (RFC 3261 §18.3) and forwarding them would let a
      sender smuggle a second message past the helper (RFC 4475 dblreq).
    """
    return apply_splices(msg, [(ed.span.start, ed.span.end, ed.replacement) for ed in edits])


def apply_splices(msg: SipMessage, splices: list[tuple[int, int, bytes]]) -> bytes:
    """:func:`apply_edits` for plain ``(start, end, replacement)`` tuples, same rules; sorts ``splices`` in
    place. The engine builds its edits this way: a Span and an Edit object per change cost more than the
    splice itself (bench/engine.py)."""
    raw = msg.raw
    n = len(raw)
    body = msg.body_span
    bs, be = body.start, body.end
    # Plain (start, end, bytes) tuples sort natively: a per-edit key function cost more than the splice.
    splices.sort()
    ordered = splices
    delta = 0
    prev_end = 0
    for s, e, replacement in ordered:
        # One chained test for the usual edit (in order, inside the message, not across the body's ends);
        # any other one goes through the checks one by one, which say what is wrong (prev_end >= 0).
        if not (prev_end <= s <= e <= n) or s < bs < e or s < be < e:
            if not 0 <= s <= e <= n:
                raise ValueError(f"edit span {s}:{e} outside message of {n} bytes")
            if s < prev_end:
                raise ValueError(f"overlapping edits at {s}:{e}")
            raise ValueError(f"edit {s}:{e} straddles the body boundary {bs}:{be}")
        prev_end = e
        if s >= bs:  # not straddling, so the edit lies inside the body
            delta += len(replacement) - (e - s)
    if delta and msg._clen_at:  # the offsets behind msg.content_length_spans, without building Spans
        new_len = str(be - bs + delta).encode("ascii")
        cl_edits = [(cs, ce, new_len) for cs, ce in msg._clen_at]
        for cs, ce, _ in cl_edits:
            # An edit overlaps [cs, ce) when it starts before ce and ends after cs. The edits are sorted and
            # do not overlap, so their ends only grow: of those starting before ce, the last ends furthest.
            i = bisect_left(ordered, ce, key=_start)
            if i and ordered[i - 1][1] > cs:
                raise ValueError("edit overlaps a Content-Length value that must be rewritten")
        ordered = sorted(ordered + cl_edits)
    if not ordered:
        return raw
    out: list[bytes] = []
    append = out.append
    p = 0
    for s, e, replacement in ordered:
        append(raw[p:s])
        append(replacement)
        p = e
    append(raw[p:])
    return b"".join(out)


_start = itemgetter(0)
