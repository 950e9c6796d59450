"""Fixed addresses and names of the nfsip network-namespace lab.

The addresses are constants (not options) so that tests, the demo and the documentation can
name them literally and so that a capture of one run is comparable with another's::

    phone1 10.0.0.2 ─┐                                     ┌─ server 198.51.100.2
    phone2 10.0.0.3 ─┤ lanswitch ── lan0 router wan0 ── wanswitch ┤
                     ┘            10.0.0.1    198.51.100.1     └─ (wan host 198.51.100.3, optional)

198.51.100.0/24 is TEST-NET-2 (RFC 5737): it can never leak to or collide with a real network.
The server has no default route and no route to 10.0.0.0/24, so a packet that the router did
not translate (for example RTP sent to the private address of an un-rewritten SDP) is dropped
at the server with ENETUNREACH instead of being delivered by accident.

Every host is dual-stack. IPv6 is routed without NAT, as on a real dual-stack router: the LAN
prefix is global, and the WAN hosts reach it through a route via the router's WAN address::

    phone1 2001:db8:1::11 ─┐                                        ┌─ server 2001:db8:f::2
    phone2 2001:db8:1::12 ─┤ lanswitch ── lan0 router wan0 ── wanswitch ┤  (+ 2001:db8:f::102)
                           ┘        2001:db8:1::1  2001:db8:f::1     └─ wanhost2 2001:db8:f::3
                                                                          (+ 2001:db8:f::103)

2001:db8::/32 is the documentation prefix (RFC 3849). The last group of a phone's address is
10 + n in decimal digits (phone1 ::11, phone9 ::19, phone10 ::20). Each WAN host has a second
address, its "media address" (::100 + its host number), for a far end whose media comes from
another address than its signalling, as real gateways do.
"""

from __future__ import annotations

PREFIX_LEN = 24
"""Both subnets are /24."""

LAN_NET = "10.0.0.0/24"
ROUTER_LAN_IP = "10.0.0.1"
ROUTER_WAN_IP = "198.51.100.1"
WAN_NET = "198.51.100.0/24"
SERVER_IP = "198.51.100.2"
WAN_HOST2_IP = "198.51.100.3"
"""Reserved for a second WAN host (e.g. a second SIP server), see ``Lab.add_wan_host``."""

PHONE_IPS: tuple[str, ...] = tuple(f"10.0.0.{n}" for n in range(2, 2 + 50))
"""phone1 is 10.0.0.2, phone2 10.0.0.3, ... (phone<n> is 10.0.0.<n + 1>)."""

MAX_PHONES = len(PHONE_IPS)

PREFIX_LEN6 = 64
"""Both IPv6 subnets are /64."""

LAN_NET6 = "2001:db8:1::/64"
ROUTER_LAN_IP6 = "2001:db8:1::1"
WAN_NET6 = "2001:db8:f::/64"
ROUTER_WAN_IP6 = "2001:db8:f::1"
SERVER_IP6 = "2001:db8:f::2"
SERVER_MEDIA_IP6 = "2001:db8:f::102"
"""The server's second address (see the module doc: media from another address)."""
WAN_HOST2_IP6 = "2001:db8:f::3"
WAN_HOST2_MEDIA_IP6 = "2001:db8:f::103"
"""wanhost2's second address."""

PHONE_IP6S: tuple[str, ...] = tuple(f"2001:db8:1::{10 + n}" for n in range(1, 1 + 50))
"""phone1 is 2001:db8:1::11, phone2 2001:db8:1::12, ... (phone<n> is 2001:db8:1::<10 + n>)."""

SIP_PORT = 5060
MEDIA_PORT = 6000
"""Default RTP port of the sipp endpoints (sipp's own default for ``-mp``)."""

# Node names (the namespace name is "<lab prefix>-<node>").
ROUTER = "router"
SERVER = "server"
LAN_SWITCH = "lanswitch"
WAN_SWITCH = "wanswitch"

# Interface names inside the namespaces. Every veth is created directly inside its namespace,
# so these short names never collide with another lab or with the root namespace.
ROUTER_LAN_IF = "lan0"
ROUTER_WAN_IF = "wan0"
HOST_IF = "eth0"
"""Interface of a phone or a WAN host."""
BRIDGE_IF = "br0"
"""Bridge inside each switch namespace; its ports are named after the node they lead to."""


def phone_name(n: int) -> str:
    """Node name of phone number ``n`` (1-based)."""
    return f"phone{n}"


def phone_ip(n: int) -> str:
    """Address of phone number ``n`` (1-based): 10.0.0.(n + 1)."""
    if not 1 <= n <= MAX_PHONES:
        raise ValueError(f"phone number must be 1..{MAX_PHONES}, got {n}")
    return PHONE_IPS[n - 1]


def phone_ip6(n: int) -> str:
    """IPv6 address of phone number ``n`` (1-based): 2001:db8:1::(10 + n)."""
    if not 1 <= n <= MAX_PHONES:
        raise ValueError(f"phone number must be 1..{MAX_PHONES}, got {n}")
    return PHONE_IP6S[n - 1]


# --- Second site ("both ends behind NAT"), built by ``nfsiplab.lab.TwoSiteLab`` ----------------
#
#    phoneb1 10.1.0.2 ─┐                                         ┌─ router  198.51.100.1 (site A)
#    phoneb2 10.1.0.3 ─┤ lanbswitch ── lan0 routerb wan0 ── wanswitch ┤
#                      ┘             10.1.0.1    198.51.100.4     └─ server  198.51.100.2
#
# Site B is a copy of site A with its own LAN (10.1.0.0/24) behind its own NAT router on the same
# WAN switch. Inside routerb the interfaces have the same names as in router (lan0, wan0): the
# nfsip daemon and the admin's masquerade run there unchanged (``--wan-interface wan0``).
# Phones of site B are phoneb<n>; the server still has no route to either LAN.
# In IPv6 site B is 2001:db8:2::/64 (routerb ::1, phoneb<n> ::<10 + n>), routed without NAT via
# routerb's WAN address 2001:db8:f::4, like site A.

ROUTERB = "routerb"
LANB_SWITCH = "lanbswitch"
LANB_NET = "10.1.0.0/24"
ROUTERB_LAN_IP = "10.1.0.1"
ROUTERB_WAN_IP = "198.51.100.4"

SITEB_PHONE_IPS: tuple[str, ...] = tuple(f"10.1.0.{n}" for n in range(2, 2 + 50))
"""phoneb1 is 10.1.0.2, phoneb2 10.1.0.3, ... (phoneb<n> is 10.1.0.<n + 1>)."""

LANB_NET6 = "2001:db8:2::/64"
ROUTERB_LAN_IP6 = "2001:db8:2::1"
ROUTERB_WAN_IP6 = "2001:db8:f::4"
SITEB_PHONE_IP6S: tuple[str, ...] = tuple(f"2001:db8:2::{10 + n}" for n in range(1, 1 + 50))
"""phoneb1 is 2001:db8:2::11, phoneb2 2001:db8:2::12, ..."""


def siteb_phone_name(n: int) -> str:
    """Node name of site B's phone number ``n`` (1-based)."""
    return f"phoneb{n}"


def siteb_phone_ip(n: int) -> str:
    """Address of site B's phone number ``n`` (1-based): 10.1.0.(n + 1)."""
    if not 1 <= n <= len(SITEB_PHONE_IPS):
        raise ValueError(f"site B phone number must be 1..{len(SITEB_PHONE_IPS)}, got {n}")
    return SITEB_PHONE_IPS[n - 1]


def siteb_phone_ip6(n: int) -> str:
    """IPv6 address of site B's phone number ``n`` (1-based): 2001:db8:2::(10 + n)."""
    if not 1 <= n <= len(SITEB_PHONE_IP6S):
        raise ValueError(f"site B phone number must be 1..{len(SITEB_PHONE_IP6S)}, got {n}")
    return SITEB_PHONE_IP6S[n - 1]


def is_ip6(ip: str) -> bool:
    """True for an IPv6 address (unbracketed, as every address in the lab is written)."""
    return ":" in ip


def hostport(ip: str, port: int) -> str:
    """``ip:port``, with the IPv6 address in brackets (RFC 3986): how sipp takes a remote host,
    how ``ss`` prints a socket and how a SIP URI carries it (RFC 5118)."""
    return f"[{ip}]:{port}" if is_ip6(ip) else f"{ip}:{port}"


PUBLIC_IP_OF_ROUTER: dict[str, str] = {ROUTER: ROUTER_WAN_IP, ROUTERB: ROUTERB_WAN_IP}
"""The public (WAN) address of each NAT router."""
