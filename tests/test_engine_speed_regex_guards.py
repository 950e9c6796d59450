"""The header and SDP line scans start with a lookahead guard that passes over lines no alternative can
match: with and without it, the scans must find the same matches, for any text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.sip import message, sdp

_HDR_GUARDED = message._HDR_FAST_RE
_HDR_GUARD = r"(?=[VvFfTtCcIiMmLlEeSsXx]|(?!" + message._TOKEN + r"[ \t]*:|\Z))"
assert _HDR_GUARDED.pattern.startswith("\\n" + _HDR_GUARD)
_HDR_PLAIN = re.compile("\\n" + _HDR_GUARDED.pattern[2 + len(_HDR_GUARD) :], _HDR_GUARDED.flags)
_SDP_GUARDED = sdp._LAZY_LINE_FINDITER.__self__  # type: ignore[attr-defined]
_SDP_PLAIN = sdp._line_re("rtcp-mux", "rtcp:")


def _scan(pattern: re.Pattern[str], text: str) -> list[tuple]:
    return [(m.span(), m.lastindex, m.groups()) for m in pattern.finditer(text)]


_header_lines = st.sampled_from(
    [
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport",
        "v: SIP/2.0/UDP 10.0.0.2;branch=z9",
        "VIA :SIP/2.0/UDP [2001:db8::1]:5060, SIP/2.0/TCP x",
        "From: <sip:a@example.org>;tag=1",
        "f:x",
        "To: <sip:b@example.org>",
        "t : <sip:b@example.org>;tag=2",
        "Call-ID: abc@10.0.0.2",
        "i: x",
        "CSeq: 1 INVITE",
        "cseq: bad",
        "Contact: <sip:a@10.0.0.2:5060>;expires=60",
        "m: *",
        "Contact: a, b",
        "Content-Length: 12",
        "l: 0",
        "Content-Type: application/sdp",
        "c: text/plain",
        "Expires: 60",
        "Session-Expires: 1800;refresher=uac",
        "x: 90",
        "Max-Forwards: 70",
        "User-Agent: x",
        "Allow: INVITE",
        "Supported: timer",
        "Record-Route: <sip:r;lr>",
        "P-Asserted-Identity: <sip:1@x>",
        "Subject: hi",
        "s: hi",
        "e: gzip",
        "k: timer",
        "",
        " folded",
        "\tfolded",
        "no colon here",
        ":empty name",
        "Bad Name: x",
        "9xx: digits",
        "\xe9t\xe9: latin",
    ]
)
_sdp_lines = st.sampled_from(
    [
        "v=0",
        "o=- 1 1 IN IP4 10.0.0.2",
        "o=bad",
        "s=-",
        "c=IN IP4 10.0.0.2",
        "c=IN IP4 224.2.1.1/127/3",
        "c=bad",
        "t=0 0",
        "m=audio 6000 RTP/AVP 0 8",
        "m=video 6002/2 RTP/AVP 96",
        "m=bad",
        "a=rtcp:6001",
        "a=rtcp:6001 IN IP4 10.0.0.2",
        "a=rtcp-mux",
        "a=rtcp-fb:96 nack",
        "a=rtpmap:0 PCMU/8000",
        "a=sendrecv",
        "a=candidate:1 1 UDP 2130706431 10.0.0.2 6000 typ host",
        "b=AS:64",
        "",
        " m=audio 1 RTP/AVP 0",
        "\tc=IN IP4 10.0.0.2",
        "garbage",
        "A=x",
        "1=x",
        "=x",
        "m=audio 6000 RTP/AVP 0  ",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(_header_lines, max_size=14), eol=st.sampled_from(["\r\n", "\n"]))
def test_header_scan_guard_changes_no_match(lines, eol):
    text = "INVITE sip:b@x SIP/2.0" + "".join(eol + line for line in lines) + eol
    assert _scan(_HDR_GUARDED, text) == _scan(_HDR_PLAIN, text)


@settings(max_examples=1500, deadline=None)
@given(lines=st.lists(_sdp_lines, max_size=16), eol=st.sampled_from(["\r\n", "\n"]), end=st.sampled_from(["", "\n"]))
def test_sdp_scan_guard_changes_no_match(lines, eol, end):
    text = "\n" + eol.join(lines) + end
    assert _scan(_SDP_GUARDED, text) == _scan(_SDP_PLAIN, text)
