"""Policy.media_ports_allowed (one call per stream) says what media_port_allowed says for each port."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nfsip.policy import Policy

_ports = st.integers(0, 65535) | st.sampled_from([0, 1023, 1024, 5060, 5061, 5070, 65535])


@given(
    ports=st.lists(_ports, max_size=4).map(tuple),
    sip_ports=st.lists(st.sampled_from([5060, 5061, 5070, 1024, 6000]), max_size=3).map(tuple),
)
def test_media_ports_allowed_is_media_port_allowed_for_each(ports, sip_ports):
    policy = Policy(sip_ports=sip_ports)
    assert policy.media_ports_allowed(ports) == all(policy.media_port_allowed(p) for p in ports)
