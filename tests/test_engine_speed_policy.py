"""Policy.media_ports_allowed (one call per stream) says what media_port_allowed says for each port, and
server_allowed, which remembers its answers, what the networks say for the servers of the moment."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from nfsip.core.policy import Policy

_ports = st.integers(0, 65535) | st.sampled_from([0, 1023, 1024, 5060, 5061, 5070, 65535])


@given(
    ports=st.lists(_ports, max_size=4).map(tuple),
    sip_ports=st.lists(st.sampled_from([5060, 5061, 5070, 1024, 6000]), max_size=3).map(tuple),
)
def test_media_ports_allowed_is_media_port_allowed_for_each(ports, sip_ports):
    policy = Policy(sip_ports=sip_ports)
    assert policy.media_ports_allowed(ports) == all(policy.media_port_allowed(p) for p in ports)


def reference_server_allowed(servers, address: str) -> bool:
    if not servers:
        return True
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return any(ip in net for net in servers)


_networks = st.sampled_from(["198.51.100.0/28", "203.0.113.0/24", "10.0.0.0/8", "192.0.2.7/32"]).map(
    ipaddress.IPv4Network
)
_addresses = st.sampled_from(
    ["198.51.100.2", "198.51.100.20", "203.0.113.9", "10.1.2.3", "192.0.2.7", "192.0.2.8", "", "x", "::1", "1.2.3"]
)


@given(
    rounds=st.lists(st.tuples(st.lists(_networks, max_size=3).map(tuple), st.lists(_addresses, max_size=6)), max_size=4)
)
def test_server_allowed_remembers_only_for_the_same_servers(rounds):
    policy = Policy()
    for servers, addresses in rounds:
        policy.sip_servers = servers  # replaced between rounds, as a reload would
        for address in addresses * 2:  # asked twice: the second answer comes from the memo
            assert policy.server_allowed(address) == reference_server_allowed(servers, address)
