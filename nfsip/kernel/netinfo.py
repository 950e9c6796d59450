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


class AddressWatcher:
    """Tells when the IPv4 addresses of the WAN interface change (DHCP renewals, PPPoE reconnects), from
    rtnetlink address events; the daemon then re-reads the primary address."""

    def __init__(self, interface: str) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR

        self.interface = interface
        self._ipr = IPRoute()
        self._ipr.bind(groups=RTMGRP_IPV4_IFADDR)
        links = self._ipr.link_lookup(ifname=interface)
        self._index = links[0] if links else None

    def fileno(self) -> int:
        return self._ipr.fileno()

    def changed(self) -> bool:
        """Drain the pending events; True if one concerned the WAN interface."""
        hit = False
        for msg in self._ipr.get():
            if msg.get("event") in ("RTM_NEWADDR", "RTM_DELADDR") and (
                msg.get("index") == self._index or msg.get_attr("IFA_LABEL") == self.interface
            ):
                hit = True
        return hit

    def close(self) -> None:
        self._ipr.close()


class WanInterface:
    """The WAN interface's primary IPv4 address, followed through its address events: the daemon's
    WanAddress (nfsip.adapters)."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self._watcher: AddressWatcher | None = None

    def current(self) -> str:
        return primary_ipv4(self.interface)

    def fileno(self) -> int | None:
        if self._watcher is None:
            self._watcher = AddressWatcher(self.interface)
        return self._watcher.fileno()

    def changed(self) -> bool:
        return self._watcher is not None and self._watcher.changed()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
