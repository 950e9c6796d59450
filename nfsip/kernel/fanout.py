"""Queue fanout for several worker processes: SIP of one LAN host always goes to the same queue.

With `workers = N` (a power of two), worker i reads queue `queue_num + i` and owns every LAN host whose
address (IPv4 or IPv6) ANDed with N - 1 is i (`shard()`): all state of one phone (its calls, registrations, per-host
limits and rate bucket) lives in one process, so the packet path shares nothing between workers.

The kernel makes the same choice in `sip_queue`, the one chain every diverted datagram goes through (the
three divert base chains of nfsip.kernel.ruleset jump to it). The LAN host of the datagram's flow is:
- `ct reply ip saddr` for a flow started from the WAN and DNATed to the LAN (`ct status dnat`: an INVITE
  through a registration pinhole, and every later datagram of that flow in either direction);
- `ct original ip saddr` otherwise: a flow the LAN host started, in both directions, including its first
  datagram before source NAT (the unconfirmed conntrack entry already carries the original tuple).
So the daemon appends to `sip_queue`

    ct status dnat ct reply ip saddr & 0.0.0.1 vmap { 0.0.0.0 : jump sip_queue_0, 0.0.0.1 : jump sip_queue_1 }
    ct original ip saddr & 0.0.0.1 vmap { 0.0.0.0 : jump sip_queue_0, 0.0.0.1 : jump sip_queue_1 }

For IPv6 a pinhole without NAT is an identity DNAT, which sets no `ct status dnat`: an IPv6 host is
taken from the packet's direction instead, `ip6 daddr` of an inbound datagram (after DNAT), of an outbound
one `ct reply ip6 saddr` in a flow's reply direction (a flow opened from the WAN) and `ct original ip6
saddr` otherwise. Each `sip_queue_<i>` holds worker i's queue rule (native `queue num`, or the xt NFQUEUE target added
over netlink by nfsip.kernel.divert where the kernel lacks nft_queue). A worker's chain is "parked" while
its process is not ready (empty: its SIP passes unchanged, as the queue's bypass would do; or `drop` when
queue_bypass is false, as the queue would do with nobody bound): the queue rule is added only after the
worker bound and configured its queue (nfsip.kernel.queue.configure must read its ACK before any packet).

This module never edits the table text (nfsip.kernel.ruleset owns it); it adds its chains and rules to the
installed table, and puts them back when a ruleset load removed them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Collection
from typing import Any

from . import divert, nftnl
from .nft import is_queue_rule
from .ruleset import QUEUE_CHAIN


class FanoutError(RuntimeError):
    pass


def shard(lan_ip: str, workers: int) -> int:
    """The worker that owns LAN host `lan_ip`: the low bits of its address (workers is a power of two).
    The same function as the kernel's `ip saddr & (workers - 1)` vmap lookup."""
    return int(ipaddress.ip_address(lan_ip)) & (workers - 1)


def chain_name(index: int) -> str:
    return f"{QUEUE_CHAIN}_{index}"


def vmap_rules(table: str, workers: int, wan_interface: str) -> str:
    """The dispatch rules appended to `sip_queue` (see the module docstring): IPv4's two, then IPv6's three."""
    v4 = ", ".join(f"{ipaddress.IPv4Address(i)} : jump {chain_name(i)}" for i in range(workers))
    v6 = ", ".join(f"{ipaddress.IPv6Address(i)} : jump {chain_name(i)}" for i in range(workers))
    mask4, mask6 = ipaddress.IPv4Address(workers - 1), ipaddress.IPv6Address(workers - 1)
    rule = f"add rule inet {table} {QUEUE_CHAIN}"
    return (
        f"{rule} ct status dnat ct reply ip saddr & {mask4} vmap {{ {v4} }}\n"
        f"{rule} ct original ip saddr & {mask4} vmap {{ {v4} }}\n"
        f'{rule} iifname "{wan_interface}" ip6 daddr & {mask6} vmap {{ {v6} }}\n'
        f"{rule} ct direction reply ct reply ip6 saddr & {mask6} vmap {{ {v6} }}\n"
        f"{rule} ct original ip6 saddr & {mask6} vmap {{ {v6} }}\n"
    )


def chains(table: str, workers: int) -> str:
    """Create every worker chain (idempotent) and empty it."""
    return "".join(
        f"add chain inet {table} {chain_name(i)}\nflush chain inet {table} {chain_name(i)}\n" for i in range(workers)
    )


def parked(table: str, index: int, bypass: bool) -> str:
    """Worker `index` is not ready: its SIP passes unchanged (bypass) or is dropped (fail-closed)."""
    text = f"flush chain inet {table} {chain_name(index)}\n"
    if not bypass:
        text += f"add rule inet {table} {chain_name(index)} drop\n"
    return text


def native_queue_rule(table: str, index: int, queue_num: int, bypass: bool) -> str:
    return f"add rule inet {table} {chain_name(index)} queue num {queue_num + index}{' bypass' if bypass else ''}\n"


def render(table: str, workers: int, queue_num: int, bypass: bool, native_queue: bool, wan_interface: str) -> str:
    """Everything at once, every worker ready (for `nfsip ruleset` and the tests). The daemon applies the same
    pieces in steps: chains parked, then each worker's queue rule once the worker is ready."""
    text = chains(table, workers)
    for i in range(workers):
        if native_queue:
            text += native_queue_rule(table, i, queue_num, bypass)
        else:
            text += f"# {chain_name(i)}: xt NFQUEUE target (added over netlink), listed as: queue num {queue_num + i}"
            text += " bypass\n" if bypass else "\n"
    return text + vmap_rules(table, workers, wan_interface)


class Fanout:
    """Applies the fanout to the installed table through its own libnftables context (the packet path's
    nft context lives in the workers; this one is the supervisor's)."""

    def __init__(
        self, table: str, workers: int, queue_num: int, bypass: bool, native_queue: bool, wan_interface: str
    ) -> None:
        import nftables

        self.table = table
        self.workers = workers
        self.queue_num = queue_num
        self.bypass = bypass
        self.native_queue = native_queue
        self.wan_interface = wan_interface
        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        self._nfnl = nftnl.NftSocket()

    def _run(self, script: str) -> None:
        rc, _out, err = self._nft.cmd(script)
        if rc != 0:
            raise FanoutError(err.strip() or f"nft failed with code {rc}")

    def _list(self, what: str) -> list[dict[str, Any]]:
        rc, out, _err = self._nft.cmd(f"list {what}")
        if rc != 0:
            return []
        return json.loads(out or "{}").get("nftables", [])

    def install(self, ready: Collection[int] = ()) -> None:
        """Put the worker chains (parked, except those of `ready` workers: their queue rule) and the dispatch
        rules into the table, replacing whatever fanout rules were there."""
        self._run(chains(self.table, self.workers))
        for i in range(self.workers):
            if i in ready:
                self.unpark(i)
            else:
                self.park(i)
        stale = [r["handle"] for r in self._rules(QUEUE_CHAIN) if any("vmap" in e for e in r.get("expr", []))]
        script = "".join(f"delete rule inet {self.table} {QUEUE_CHAIN} handle {h}\n" for h in stale)
        # One transaction: the old dispatch rules go and the new ones come together.
        self._run(script + vmap_rules(self.table, self.workers, self.wan_interface))

    def park(self, index: int) -> None:
        self._run(parked(self.table, index, self.bypass))

    def unpark(self, index: int) -> None:
        """Worker `index` bound its queue: divert its LAN hosts' SIP to it."""
        if self.native_queue:
            self._run(
                f"flush chain inet {self.table} {chain_name(index)}\n"
                + native_queue_rule(self.table, index, self.queue_num, self.bypass)
            )
            return
        # The xt target cannot go through libnftables; between the flush and the netlink rule the chain is
        # empty for a moment, so that worker's SIP passes unchanged meanwhile.
        self._run(f"flush chain inet {self.table} {chain_name(index)}\n")
        divert.add_compat_queue_rule(self.table, self.queue_num + index, bypass=self.bypass, chain=chain_name(index))

    def _rules(self, chain: str) -> list[dict[str, Any]]:
        return [item["rule"] for item in self._list(f"chain inet {self.table} {chain}") if "rule" in item]

    def installed(self, ready: Collection[int]) -> bool:
        """Whether the dispatch rules are there and every ready worker's chain holds its queue rule (an
        admin's `nft -f` with `flush ruleset`, or one that re-includes nft/nfsip.nft, removes them). Read
        directly from the kernel (nftnl): libnftables would fetch every set element first."""
        # A vmap is a "lookup" expression into the anonymous verdict map; only the dispatch rules have one.
        dispatch = [r for r in self._nfnl.chain_rules(self.table, QUEUE_CHAIN) if any(e.name == "lookup" for e in r)]
        if len(dispatch) != 2:
            return False
        return all(any(is_queue_rule(r) for r in self._nfnl.chain_rules(self.table, chain_name(i))) for i in ready)
