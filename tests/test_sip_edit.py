"""nfsip.core.sip.edit.apply_edits against its rules written out plainly (every edit checked against every
Content-Length value): the same bytes, or the same ValueError, for any set of edits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.core.sip import Edit, SipMessage, Span, apply_edits, parse_message


def reference_apply_edits(msg: SipMessage, edits: list[Edit]) -> bytes:
    raw = msg.raw
    n = len(raw)
    bs, be = msg.body_span.start, msg.body_span.end
    ordered = sorted([(ed.span.start, ed.span.end, ed.replacement) for ed in edits])
    delta = 0
    prev_end = 0
    for s, e, replacement in ordered:
        if not 0 <= s <= e <= n:
            raise ValueError(f"edit span {s}:{e} outside message of {n} bytes")
        if s < prev_end:
            raise ValueError(f"overlapping edits at {s}:{e}")
        if s < bs < e or (s < be < e):
            raise ValueError(f"edit {s}:{e} straddles the body boundary {bs}:{be}")
        prev_end = e
        if s >= bs:
            delta += len(replacement) - (e - s)
    if delta and msg.content_length_spans:
        new_len = str(be - bs + delta).encode("ascii")
        cl_edits = [(sp.start, sp.end, new_len) for sp in msg.content_length_spans]
        for cs, ce, _ in cl_edits:
            for s, e, _ in ordered:
                if s < ce and cs < e:
                    raise ValueError("edit overlaps a Content-Length value that must be rewritten")
        ordered = sorted(ordered + cl_edits)
    if not ordered:
        return raw
    out: list[bytes] = []
    p = 0
    for s, e, replacement in ordered:
        out.append(raw[p:s])
        out.append(replacement)
        p = e
    out.append(raw[p:])
    return b"".join(out)


BODY = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
MESSAGES = [
    parse_message(
        (
            "INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
            "From: <sip:a@example.org>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
            f"Content-Length: {len(BODY)}\r\nContent-Type: application/sdp\r\nl: {len(BODY)}\r\n\r\n{BODY}"
        ).encode()
    ),
    parse_message(
        (
            "INVITE sip:bob@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
            "From: <sip:a@example.org>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n"
            f"Content-Type: application/sdp\r\n\r\n{BODY}"
        ).encode()
    ),
]


def _outcome(fn, msg, edits):
    try:
        return fn(msg, edits)
    except ValueError as exc:
        return ("ValueError", str(exc))


@settings(max_examples=1500, deadline=None)
@given(
    which=st.sampled_from([0, 1]),
    edits=st.lists(
        st.tuples(
            st.integers(-2, 420),
            st.integers(0, 12),
            st.sampled_from([b"", b"x", b"198.51.100.1", b"40000", b"1"]),
        ),
        max_size=7,
    ),
    near=st.booleans(),
)
def test_apply_edits_follows_the_rules(which, edits, near):
    msg = MESSAGES[which]
    if near:
        # Aim at the Content-Length values and the body boundary, where the rules bite.
        marks = [cl.start for cl in msg.content_length_spans] + [msg.body_span.start, msg.body_span.end]
        edits = [(marks[start % len(marks)] + start % 5 - 2, length, r) for start, length, r in edits]
    as_edits = [Edit(Span(s, s + length), r) for s, length, r in edits]
    expected = _outcome(reference_apply_edits, msg, as_edits)
    assert _outcome(apply_edits, msg, as_edits) == expected


def test_every_edit_around_a_content_length_value_with_the_body_resized():
    for msg in MESSAGES:
        body_edit = (msg.body_span.start + 10, msg.body_span.start + 11, b"yy")
        for cs, ce in [(cl.start, cl.end) for cl in msg.content_length_spans] or [
            (msg.body_span.start - 4, msg.body_span.start - 2)
        ]:
            for s in range(cs - 3, ce + 3):
                for e in range(s, ce + 4):
                    for replacement in (b"", b"7", b"123"):
                        edits = [(s, e, replacement), body_edit]
                        as_edits = [Edit(Span(a, b), r) for a, b, r in edits]
                        expected = _outcome(reference_apply_edits, msg, as_edits)
                        assert _outcome(apply_edits, msg, as_edits) == expected
