"""IP addresses as the core compares and writes them.

The kernel adapters give addresses in one text form: dotted quad, or IPv6 compressed and lower-case
(RFC 5952, what inet_ntop writes). SIP and SDP text may write the same IPv6 address differently
(`2001:DB8:0:0::1`); RFC 5118 section 4 says two IPv6 references are equal when their addresses are, so the
engine compares every address from a message in the canonical form.
"""

from __future__ import annotations

import socket
from functools import lru_cache

# The "no address" of an old-style hold (RFC 3264 section 8.4): a stream keeps its ports.
HOLD_ADDRESSES = frozenset(("0.0.0.0", "::"))


@lru_cache(maxsize=4096)
def canonical(text: str) -> str:
    """An IPv6 address in canonical form, as inet_ntop writes it (the form of the kernel adapters' addresses,
    also for an IPv4-mapped address); anything else (IPv4, a host name, junk) as written."""
    if ":" not in text:
        return text
    try:
        return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        return text


def is_ipv6(address: str) -> bool:
    return ":" in address


def hostport(ip: str, port: int) -> bytes:
    """`ip:port` as SIP writes it: an IPv6 address in brackets (RFC 3261 section 25.1, IPv6reference)."""
    return (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}").encode()
