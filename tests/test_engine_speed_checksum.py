"""internet_checksum folds long buffers before its division by 0xFFFF: it must still give the RFC 1071 sum,
for buffers of every size up to a 64 KiB datagram."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.packet import internet_checksum

from .test_packet import rfc1071


def reference(data: bytes) -> int:
    """The sum as it was computed before the folding: one big integer modulo 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    if total == 0 and any(data):
        total = 0xFFFF
    return ~total & 0xFFFF


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(min_size=500, max_size=20000),
        st.tuples(st.binary(min_size=1, max_size=4), st.integers(1, 16000)).map(lambda t: t[0] * t[1]),
    )
)
def test_long_buffers_sum_as_before(data: bytes):
    assert internet_checksum(data) == reference(data)


@pytest.mark.parametrize("size", [511, 512, 513, 4096, 2968, 65507])
@pytest.mark.parametrize("byte", [0x00, 0xFF, 0x80, 0x01])
def test_uniform_buffers_around_the_fold_threshold(size: int, byte: int):
    data = bytes([byte]) * size
    assert internet_checksum(data) == reference(data) == rfc1071(data)
