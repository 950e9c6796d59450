"""nfsip.sip.spans.fast_ctor builds objects through a twin class and __class__ assignment: the result must
be what the dataclass constructor gives, for every class the parsers and the engine build that way."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfsip.model import CallEnded, Decision, Endpoint, Pinhole
from nfsip.packet import UdpDatagram
from nfsip.registrations import PendingRegister
from nfsip.sip.edit import Edit
from nfsip.sip.spans import Span, fast_ctor, new_span

_endpoints = st.builds(Endpoint, st.sampled_from(["10.0.0.2", "203.0.113.7", ""]), st.integers(0, 65535))
_pinholes = st.builds(
    Pinhole,
    _endpoints,
    _endpoints,
    st.text(max_size=8),
    st.sampled_from(["m0.rtp", "m1.rtcp", "sip"]),
    st.integers(0, 10**6),
    st.sampled_from(["media", "media-out", "sip"]),
    st.sampled_from(["", "198.51.100.9"]),
    st.booleans(),
    st.floats(allow_nan=False),
)
_spans = st.builds(Span, st.integers(0, 10**5), st.integers(0, 10**5))
_decisions = st.builds(
    Decision,
    st.one_of(st.none(), st.binary(max_size=16)),
    st.sampled_from(["rewritten", "unchanged", "refused"]),
    st.text(max_size=4),
    st.text(max_size=4),
    st.lists(_pinholes, max_size=2).map(tuple),
    st.lists(_pinholes, max_size=2).map(tuple),
    st.lists(_pinholes, max_size=2).map(tuple),
    st.lists(_pinholes, max_size=2).map(tuple),
    st.lists(st.text(max_size=4), max_size=2).map(tuple),
    st.lists(st.text(max_size=4), max_size=2).map(tuple),
    st.just(()),
)
_datagrams = st.builds(
    UdpDatagram,
    st.sampled_from(["10.0.0.2", "198.51.100.2"]),
    st.integers(0, 65535),
    st.sampled_from(["10.0.0.2", "198.51.100.2"]),
    st.integers(0, 65535),
    st.integers(28, 60),
    st.binary(max_size=16),
)
_edits = st.builds(Edit, _spans, st.binary(max_size=8))


def _check(value: object) -> None:
    cls = type(value)
    names = [f.name for f in dataclasses.fields(cls)]
    made = fast_ctor(cls)(*(getattr(value, name) for name in names))
    assert type(made) is cls
    assert made == value and value == made
    assert hash(made) == hash(value)
    assert repr(made) == repr(value)
    assert pickle.loads(pickle.dumps(made)) == value
    assert dataclasses.replace(made) == value
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(made, names[0], getattr(value, names[0]))
    assert not hasattr(made, "__dict__")


@given(st.one_of(_endpoints, _pinholes, _spans, _decisions, _datagrams, _edits))
def test_fast_ctor_builds_what_the_constructor_builds(value):
    _check(value)


def test_fast_ctor_of_the_other_frozen_model_classes():
    hole = Pinhole(Endpoint("203.0.113.7", 40000), Endpoint("10.0.0.2", 6000), "c", "m0.rtp", 60)
    _check(CallEnded("c", "10.0.0.2", "BYE (out)", 1.5, (hole,)))
    _check(PendingRegister(hole.lan, hole.public, Endpoint("198.51.100.2", 5060), "sip:a@example.org", 64.0))
    assert type(new_span(1, 2)) is Span and new_span(1, 2) == Span(1, 2)


def test_fast_ctor_of_a_class_with_a_weakref_slot():
    @dataclasses.dataclass(frozen=True, slots=True, weakref_slot=True)
    class WithWeakref:
        a: int
        b: str

    made = fast_ctor(WithWeakref)(1, "x")
    assert type(made) is WithWeakref and made == WithWeakref(1, "x")
