"""Interface facts through pyroute2 (rtnetlink): does the WAN interface exist, what is its IPv4 address."""

from __future__ import annotations


class InterfaceError(RuntimeError):
    pass


def primary_ipv4(interface: str) -> str:
    """The first (primary, non-secondary) IPv4 address of `interface`."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=interface)
        if not links:
            raise InterfaceError(f"interface {interface!r} does not exist (see `ip link`)")
        addresses = ipr.get_addr(family=2, index=links[0])
        for addr in addresses:
            # IFA_F_SECONDARY = 0x01: an alias added after the primary address of the same prefix.
            if not addr["flags"] & 0x01:
                return addr.get_attr("IFA_ADDRESS")
    raise InterfaceError(
        f"interface {interface!r} has no IPv4 address; set public_address in the config or bring it up"
    )
