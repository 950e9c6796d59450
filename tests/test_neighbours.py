"""Grouping the neighbour table by link-layer address (nfsip.kernel.neighbours): which addresses are one host."""

from __future__ import annotations

from nfsip.kernel.neighbours import group_by_link


def test_addresses_with_one_link_layer_address_on_one_interface_are_one_host() -> None:
    # As pyroute2 gives them: (ifindex, NDA_LLADDR, NDA_DST); a FAILED or INCOMPLETE entry has no lladdr.
    entries = [
        (3, "02:00:00:00:00:11", "10.0.0.2"),
        (3, "02:00:00:00:00:11", "2001:DB8:1:0::11"),
        (3, "02:00:00:00:00:11", "fe80::11"),
        (3, "02:00:00:00:00:12", "10.0.0.3"),
        (4, "02:00:00:00:00:11", "198.51.100.7"),  # the same MAC on another interface: another host
        (3, None, "10.0.0.9"),
        (3, "00:00:00:00:00:00", "10.0.0.10"),
    ]
    by_ip = group_by_link(entries)
    phone = frozenset({"10.0.0.2", "2001:db8:1::11", "fe80::11"})
    assert by_ip["10.0.0.2"] == by_ip["2001:db8:1::11"] == phone  # canonical text, as the packets give it
    assert by_ip["10.0.0.3"] == frozenset({"10.0.0.3"})
    assert by_ip["198.51.100.7"] == frozenset({"198.51.100.7"})
    assert "10.0.0.9" not in by_ip and "10.0.0.10" not in by_ip


def test_several_ipv4_addresses_on_one_link_layer_address_are_several_hosts() -> None:
    """Behind a MAC-NAT extender every host shows with the extender's MAC: none may name another's address."""
    extender = "02:00:00:00:00:77"
    by_ip = group_by_link([(3, extender, "192.168.1.50"), (3, extender, "192.168.1.51"), (3, extender, "fd00::50")])
    assert by_ip["192.168.1.50"] == frozenset({"192.168.1.50"})
    assert by_ip["192.168.1.51"] == frozenset({"192.168.1.51"})
    assert by_ip["fd00::50"] == frozenset({"fd00::50"})
