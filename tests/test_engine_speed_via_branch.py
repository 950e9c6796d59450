"""Via.branch reads the branch off the parameter text before the parameters are split: it must say what the
split parameters say, for any top Via."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.sip.errors import SipParseError
from nfsip.sip.message import parse_message


def bye_with_via(via_value: bytes) -> bytes:
    return (
        b"BYE sip:bob@198.51.100.2 SIP/2.0\r\nVia: "
        + via_value
        + b"\r\nFrom: <sip:alice@example.org>;tag=a1\r\nTo: <sip:bob@example.org>;tag=b1\r\n"
        b"Call-ID: 1@10.0.0.2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    )


_param = st.sampled_from(
    [
        b"branch=z9hG4bK1",
        b"BRANCH=Z9",
        b"Branch",
        b"branch",
        b"branch=",
        b'branch="q;x"',
        b"branch = z9",
        b"rport",
        b"rport=5060",
        b"received=10.0.0.2",
        b"",
        b"branch=caf\xc3\xa9",
        b"branch=\xff",
        b"branchx=1",
        b"x=branch",
    ]
)


@settings(max_examples=800, deadline=None)
@given(
    head=st.sampled_from([b"SIP/2.0/UDP 10.0.0.2:5060", b"SIP/2.0/UDP 10.0.0.2", b"SIP / 2.0 / UDP 10.0.0.2:5060"]),
    params=st.lists(_param, max_size=4),
    sep=st.sampled_from([b";", b";", b";", b" ;", b"; "]),
    tail=st.sampled_from([b"", b"", b", SIP/2.0/UDP 10.0.0.9;branch=z9other"]),
)
def test_branch_matches_the_split_parameters(head, params, sep, tail):
    raw = bye_with_via(head + b"".join(sep + p for p in params) + tail)
    try:
        first = parse_message(raw)
    except SipParseError:
        return
    second = parse_message(raw)
    by_params = next((p.value for p in second.top_via.params if p.name == "branch"), None)
    assert first.top_via.branch == by_params
    assert first.top_via.params == second.top_via.params  # reading the branch first changes nothing else
