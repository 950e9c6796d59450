"""Security policy: what a SIP message may open on the router (pure; the clock is passed in).

An ALG is a security boundary. The kernel SIP ALG was the tool of "NAT slipstreaming": a web page made a
LAN browser send a SIP-looking REGISTER inside an HTTP POST to the attacker's server, the ALG parsed it and
opened an inbound port to the victim. nfsip is immune by construction (see docs/security.md):
- it queues UDP SIP only and parses only datagrams that start with a SIP start line (nfsip.core.sip);
- a pinhole only ever targets the LAN host that sent the message (the engine takes the host from
  conntrack, never from the SIP text);
and this module adds the configurable limits:
- optional allowlist of SIP servers: messages to/from others pass unchanged and open nothing;
- media pinholes only to LAN ports >= 1024 that are not SIP ports (public ports come from the range);
- caps per LAN host and global on pinholes, calls and registrations, and a token-bucket rate limit on
  pinhole creation per LAN host. Beyond them the message passes unchanged and a counter says why.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..config import DEFAULTS, Config


@dataclass(frozen=True, slots=True)
class Limits:
    """The caps of nfsip.config (max_*, pinhole_rate/burst_per_host); defaults are the configuration's."""

    pinholes_per_host: int = DEFAULTS.max_pinholes_per_host
    calls_per_host: int = DEFAULTS.max_calls_per_host
    registrations_per_host: int = DEFAULTS.max_registrations_per_host
    pinholes_total: int = DEFAULTS.max_pinholes
    calls_total: int = DEFAULTS.max_calls
    registrations_total: int = DEFAULTS.max_registrations
    pinhole_rate_per_host: float = DEFAULTS.pinhole_rate_per_host  # new pinholes per second, sustained ...
    pinhole_burst_per_host: int = DEFAULTS.pinhole_burst_per_host  # ... with this burst


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class Policy:
    sip_servers: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # empty: any server
    sip_ports: tuple[int, ...] = DEFAULTS.sip_ports
    limits: Limits = field(default_factory=Limits)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def server_allowed(self, address: str) -> bool:
        if not self.sip_servers:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.sip_servers)

    def media_port_allowed(self, port: int) -> bool:
        """Privileged ports and SIP ports are never pinhole targets: an SDP naming 22 or 5060 is a trick."""
        return port >= 1024 and port not in self.sip_ports

    def media_ports_allowed(self, ports: tuple[int, ...]) -> bool:
        """media_port_allowed for each of `ports`."""
        return all(self.media_port_allowed(port) for port in ports)

    def take_pinholes(self, host: str, count: int, now: float) -> bool:
        """Rate limit for new pinholes of one LAN host (token bucket). False: over the limit."""
        if count <= 0:
            return True
        rate, burst = self.limits.pinhole_rate_per_host, self.limits.pinhole_burst_per_host
        bucket = self._buckets.get(host)
        if bucket is None:
            bucket = self._buckets[host] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens < count:
            return False
        bucket.tokens -= count
        return True

    def forget_idle(self, now: float) -> None:
        """Drop buckets that are full again (bounded memory under a flood of source addresses)."""
        burst, rate = self.limits.pinhole_burst_per_host, self.limits.pinhole_rate_per_host
        full = [h for h, b in self._buckets.items() if b.tokens + (now - b.stamp) * rate >= burst]
        for host in full:
            del self._buckets[host]


def policy_from(config: Config) -> Policy:
    return Policy(
        sip_servers=tuple(ipaddress.ip_network(n) for n in config.sip_servers),
        sip_ports=config.sip_ports,
        limits=Limits(
            pinholes_per_host=config.max_pinholes_per_host,
            calls_per_host=config.max_calls_per_host,
            registrations_per_host=config.max_registrations_per_host,
            pinholes_total=config.max_pinholes,
            calls_total=config.max_calls,
            registrations_total=config.max_registrations,
            pinhole_rate_per_host=float(config.pinhole_rate_per_host),
            pinhole_burst_per_host=config.pinhole_burst_per_host,
        ),
    )
