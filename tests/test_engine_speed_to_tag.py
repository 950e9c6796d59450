"""SipMessage.to_has_tag() and to_uri_bytes() read the usual To off the regex match instead of parsing it:
they must say what the parse says (msg.to.tag is not None, False when To is malformed; the bytes under
msg.to.uri.span, SipParseError when To is malformed), for any To value."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.sip.errors import SipParseError
from nfsip.sip.message import MAX_PARAMS, parse_message


def reference_has_tag(raw: bytes) -> bool:
    msg = parse_message(raw)
    try:
        return msg.to.tag is not None
    except SipParseError:
        return False


def reference_uri(raw: bytes) -> bytes | str:
    msg = parse_message(raw)
    try:
        return msg.to.uri.span.slice(msg.raw)
    except SipParseError as exc:
        return exc.reason


def uri_of(raw: bytes) -> bytes | str:
    try:
        return parse_message(raw).to_uri_bytes()
    except SipParseError as exc:
        return exc.reason


def bye_with_to(to_value: str) -> bytes:
    return (
        "BYE sip:bob@198.51.100.2 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1;rport\r\n"
        "From: <sip:alice@example.org>;tag=a1\r\n"
        f"To: {to_value}\r\n"
        "Call-ID: 1-bench@10.0.0.2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    ).encode("utf-8", "surrogateescape")


_params = st.lists(
    st.sampled_from(
        ["tag=b1", "TAG=x", "Tag", "tag", "tag=", 'tag="q"', "tag =x", "x=1", "lr", "", "tag=b1;tag", "tagx=1"]
    ),
    max_size=4,
).map(lambda ps: "".join(";" + p for p in ps))
_uri = st.builds(
    lambda scheme, user, host, port, uparams: f"{scheme}:{user}{host}{port}{uparams}",
    # The usual forms first and most often (they take the shortcut), then the unusual and the broken.
    st.sampled_from(["sip"] * 4 + ["SIPS", "tel", "http"]),
    st.sampled_from(["bob@"] * 4 + ["", "b;ob@", "a@b@", "bob:pw@"]),
    st.sampled_from(["example.org"] * 4 + ["10.0.0.2", "[2001:db8::1]", "ex ample", ""]),
    st.sampled_from([""] * 4 + [":5060", ":65535", ":65536", ":99999", ":"]),
    st.sampled_from([""] * 4 + [";transport=udp", ";tag=u1", ";lr;x", "?h=1", ";;"]),
)


@settings(max_examples=600, deadline=None)
@given(
    display=st.sampled_from(["", "", '"Bob" ', '"B\\"ob" ', "Bob ", '"unterminated ']),
    uri=_uri,
    bracket=st.sampled_from([True, True, True, False]),
    params=_params,
    space=st.sampled_from(["", "", "", "", " ", "\t"]),
)
def test_to_has_tag_matches_the_parse(display, uri, bracket, params, space):
    value = f"{display}<{uri}>{space}{params}" if bracket else f"{uri}{params}"
    raw = bye_with_to(value)
    try:
        msg = parse_message(raw)
    except SipParseError:
        return
    assert msg.to_has_tag() == reference_has_tag(raw), value
    assert uri_of(raw) == reference_uri(raw), value


def test_to_has_tag_of_the_usual_forms():
    for value, expected in (
        ("<sip:bob@example.org>;tag=b1", True),
        ('"Bob" <sip:bob@example.org:5060;transport=udp>;x=1;TAG=b1', True),
        ("<sip:bob@example.org>;tag", False),
        ("<sip:bob@example.org>;Tag;tag=b1", False),
        ("<sip:bob@example.org;tag=u1>", False),
        ("<sip:bob@example.org:65536>;tag=b1", False),  # a bad port: the parse fails, no tag
        ("<sip:bob@example.org>;tagx=1", False),
    ):
        raw = bye_with_to(value)
        assert parse_message(raw).to_has_tag() is expected, value
        assert reference_has_tag(raw) is expected, value
        assert uri_of(raw) == reference_uri(raw), value


def test_to_has_tag_at_the_parameter_limits():
    for count in (MAX_PARAMS - 1, MAX_PARAMS, MAX_PARAMS + 1):
        for where in ("uri", "header"):
            extra = ";x" * count
            value = f"<sip:bob@example.org{extra}>;tag=b1" if where == "uri" else f"<sip:bob@example.org>{extra};tag=b1"
            raw = bye_with_to(value)
            assert parse_message(raw).to_has_tag() == reference_has_tag(raw), (count, where)
            assert uri_of(raw) == reference_uri(raw), (count, where)
