"""The nftables adapter: install nfsip's table, change pinholes' elements, read the maps back.

Pinhole changes go to the kernel as ONE transaction per call of `apply` / `apply_batch`: every DNAT and
SNAT element of the pinholes is added, refreshed or removed together, or nothing is. Like firewalld, one
representation of a change and one transaction: `changes()` plans the transaction as a list of
nftnl.Change (one element change each), and nfsip.kernel.nftnl sends that list as one nfnetlink batch.
No other path changes elements.

libnftables (through its `nftables` Python binding, JSON output) does what it is made for: installing and
removing the table text, listing the maps (`nfsip status`, taking over a crashed run's pinholes), dry runs
(`nfsip check`). Never an `nft` subprocess (docs/performance.md, "Netlink by hand").
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.model import Endpoint, Part, Pinhole, element_comment, parse_comment
from . import nftnl
from .nftnl import Change
from .ruleset import (
    DNAT_MAP,
    DNAT_STRICT_MAP,
    IPV6_SUFFIX,
    QUEUE_CHAIN,
    RATE_IN_CHAIN,
    RATE_OUT_CHAIN,
    SIP_DNAT_ANY_MAP,
    SIP_DNAT_MAP,
    SIP_SNAT_MAP,
    SIP_TCP_ANY_MAP,
    SIP_TCP_MAP,
    SNAT_MAP,
    TLS_CHAIN,
    TLS_HOSTS_SET,
    map_for,
)

log = logging.getLogger(__name__)


def is_queue_rule(rule: list[nftnl.Expr]) -> bool:
    """A rule that queues: the native `queue` statement, or the xt NFQUEUE target (nft_compat)."""
    return any(e.name == "queue" or (e.name == "target" and e.xt_name == "NFQUEUE") for e in rule)


class NftError(RuntimeError):
    """A refused nft command or transaction. From element changes and reads also the kernel's errno, and
    from element changes the refused message type ("NEWSETELEM", "DELSETELEM", "BATCH"); None / "" from
    libnftables."""

    def __init__(self, message: str, errno: int | None = None, msg_type: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.msg_type = msg_type


def _set_dry_run(nft: Any, enabled: bool) -> None:
    """pip-nftables 1.0.2 lacks set_dry_run(); libnftables has had nft_ctx_set_dry_run() since 0.9.
    A dry run still sends the transaction to the kernel, which validates it and commits nothing."""
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(enabled)
        return
    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_set_dry_run.argtypes = [ctypes.c_void_p, ctypes.c_bool]
    lib.nft_ctx_set_dry_run(nft._Nftables__ctx, enabled)


def _nftables() -> Any:
    try:
        import nftables
    except ImportError as exc:  # pragma: no cover - depends on the host
        raise NftError(
            "the libnftables Python binding is missing: install the 'pip-nftables' package (and the "
            "Debian package libnftables1)"
        ) from exc
    return nftables.Nftables()


@dataclass(frozen=True, slots=True)
class MapElement:
    map: str
    key: Endpoint
    value: Endpoint
    comment: str
    expires: float | None  # seconds left, None when the kernel gave none
    remote_ip: str = ""  # the first key part of sip_dnat (the only sender allowed)


# nfsip's table before IPv6 (`table ip`, the same maps without IPv6 twins): read once, on an upgrade.
LEGACY_FAMILY = "ip"

Entry = tuple[str, tuple["nftnl.Field", ...], tuple[str, int] | None]  # (set, key, value) of one element
Deleted = dict[tuple[str, tuple["nftnl.Field", ...]], tuple["nftnl.Field", ...] | None]  # (set, key) -> value
Added = tuple[Pinhole, list[Entry]]  # a pinhole to add, with its elements


@dataclass(frozen=True, slots=True)
class ElementFeatures:
    """What the running kernel does with set elements, asked once per process (Nft.element_features)."""

    # NFT_MSG_DESTROYSETELEM (Linux >= 6.3): a removal is one message. Without it, removing an element the
    # kernel already expired fails the whole transaction with ENOENT, so each removal is an add (same value,
    # 1 s) followed by the delete: two messages.
    destroy: bool
    # Re-adding an existing element sets the new timeout (Linux >= 6.12, "set element timeout update
    # support"). Through 6.11 the kernel accepts the re-add and changes nothing: a refresh must delete
    # and add the element again.
    timeout_update: bool

    def describe(self) -> str:
        destroy = "yes" if self.destroy else "no (Linux < 6.3): removals are add + delete"
        update = "yes" if self.timeout_update else "no (Linux < 6.12): refreshes re-create elements"
        return f"element destroy {destroy}; timeout update on re-add {update}"


# Assumed when the kernel cannot be asked: correct on every kernel, at the cost of more messages.
CONSERVATIVE = ElementFeatures(destroy=False, timeout_update=False)


class Nft:
    def __init__(self, table: str, epoch_of: Callable[[float], float] | None = None) -> None:
        """`epoch_of` turns the engine's clock into wall-clock seconds, for the start time kept in each
        element's comment (identity when the caller's clock is the wall clock)."""
        self.table = table
        self._epoch_of = epoch_of or (lambda t: t)
        self._nft = _nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)
        self._nfnl = nftnl.NftSocket()
        self._features: ElementFeatures | None = None

    def close(self) -> None:
        """Close the netlink socket (opened again on next use)."""
        self._nfnl.close()

    # -- whole table ----------------------------------------------------------------------------------
    def run_text(self, script: str, *, dry_run: bool = False) -> None:
        if dry_run:
            _set_dry_run(self._nft, True)
        try:
            rc, _out, err = self._nft.cmd(script)
        finally:
            if dry_run:
                _set_dry_run(self._nft, False)
        if rc != 0:
            raise NftError(err.strip() or f"nft failed with code {rc}")

    def install(self, ruleset_text: str) -> None:
        """Replace nfsip's table atomically (the text starts with add+delete of the table)."""
        self.run_text(ruleset_text)

    def remove_table(self) -> bool:
        """Delete nfsip's table; False when there was none."""
        if not self.table_exists():
            return False
        self.run_text(f"delete table inet {self.table}")
        return True

    def table_exists(self) -> bool:
        """Asked of the kernel directly (nftnl): libnftables would fetch every element first."""
        try:
            return self._nfnl.table_exists(self.table)
        except OSError as exc:
            raise NftError(f"cannot ask for table inet {self.table}: {exc}", exc.errno) from exc

    # -- pinholes -------------------------------------------------------------------------------------
    @staticmethod
    def _entries(hole: Pinhole) -> list[Entry]:
        """The elements that make one pinhole, as (set, key, value): its inbound DNAT and outbound SNAT map
        entries. (Per-call media counts come from conntrack accounting, not from elements.)"""
        public, lan = hole.public, hole.lan
        ip = lan.ip  # the family of the pinhole's maps (a pinhole's addresses are all of one family)
        if hole.kind == "sip" and hole.transport == "tcp":
            # Over TCP the relay takes the registrar's connection: one element, which the relay's redirect
            # looks up; nothing to translate on the way out (the relay's own connection carries it).
            if hole.remote_ip:
                return [(map_for(SIP_TCP_MAP, ip), (hole.remote_ip, public.ip, public.port), (lan.ip, lan.port))]
            return [(map_for(SIP_TCP_ANY_MAP, ip), (public.ip, public.port), (lan.ip, lan.port))]
        if hole.kind == "sip":
            if hole.remote_ip:
                dnat = (map_for(SIP_DNAT_MAP, ip), (hole.remote_ip, public.ip, public.port), (lan.ip, lan.port))
            else:
                dnat = (map_for(SIP_DNAT_ANY_MAP, ip), (public.ip, public.port), (lan.ip, lan.port))
            return [dnat, (map_for(SIP_SNAT_MAP, ip), (lan.ip, lan.port), (public.ip, public.port))]
        lan_key = (lan.ip, lan.port)
        public_key = (public.ip, public.port)
        entries: list[Entry] = [(map_for(SNAT_MAP, ip), lan_key, public_key)]
        if hole.kind == "media" and hole.remote_ip:
            entries.append((map_for(DNAT_STRICT_MAP, ip), (hole.remote_ip, public.ip, public.port), lan_key))
        elif hole.kind == "media":
            entries.append((map_for(DNAT_MAP, ip), public_key, lan_key))
        return entries

    # -- what the kernel can do -------------------------------------------------------------------------
    def element_features(self) -> ElementFeatures:
        """Asked of the running kernel on first use, in a throwaway table of this process."""
        if self._features is None:
            self._features = self._probe_elements()
        return self._features

    def _probe_elements(self) -> ElementFeatures:
        table = f"nfsip_probe_{os.getpid()}"
        key = ("127.0.0.1", 1)
        try:
            self.run_text(
                f"add table inet {table}\nadd set inet {table} s {{ type ipv4_addr . inet_service; flags timeout; }}\n"
            )
        except NftError as exc:
            log.warning("cannot ask the kernel about set elements (%s); assuming %s", exc, CONSERVATIVE.describe())
            return CONSERVATIVE
        try:
            try:
                # An element that does not exist: success only where DESTROYSETELEM is known.
                self._nfnl.send([Change(False, "s", key, destroy=True)], table)
                destroy = True
            except (nftnl.BatchError, OSError):
                destroy = False
            try:
                self._nfnl.send([Change(True, "s", key, None, 60_000)], table)
                self._nfnl.send([Change(True, "s", key, None, 120_000)], table)
                rc, out, _err = self._nft.cmd(f"list set inet {table} s")
                timeouts = [
                    entry.get("elem", {}).get("timeout")
                    for item in json.loads(out or "{}").get("nftables", [])
                    for entry in (item.get("set") or {}).get("elem", [])
                    if isinstance(entry, dict)
                ]
                timeout_update = rc == 0 and timeouts == [120]
            except (nftnl.BatchError, OSError, ValueError):
                timeout_update = False
        finally:
            try:
                self.run_text(f"delete table inet {table}")
            except NftError as exc:
                log.warning("could not delete the probe table %s: %s", table, exc)
        return ElementFeatures(destroy, timeout_update)

    # -- pinholes -------------------------------------------------------------------------------------
    def changes(self, parts: Sequence[Part], features: ElementFeatures | None = None) -> list[Change]:
        """The element changes of one transaction for several messages' (install, remove, recreate) parts,
        in the order the kernel applies them: per step of _plan, the deletions, then the additions. Each
        set's deletions and each set's additions come together (sets in the order they first appear, each
        set's changes in order), so that nftnl sends them as one message per set and kind."""
        features = features or self.element_features()
        changes: list[Change] = []
        for deleted, added in self._plan(parts, features.timeout_update):
            by_set: dict[str, list[Change]] = {}
            if features.destroy:
                # The map value rides along for error messages; the kernel deletes by key.
                for (name, key), value in deleted.items():
                    by_set.setdefault(name, []).append(Change(False, name, key, value, destroy=True))
                for group in by_set.values():
                    changes.extend(group)
            else:
                for (set_name, key), value in deleted.items():
                    # No destroy: deleting an element the kernel already expired fails the whole transaction
                    # with ENOENT. Adding it first (same value, so no EEXIST) makes the delete safe.
                    changes.append(Change(True, set_name, key, value, 1000))
                    changes.append(Change(False, set_name, key, value))
            by_set = {}
            for hole, entries in added:
                timeout_ms = int(max(1, hole.timeout) * 1000)
                comment = element_comment(hole, self._epoch_of(hole.since))
                for name, key, value in entries:
                    by_set.setdefault(name, []).append(Change(True, name, key, value, timeout_ms, comment))
            for group in by_set.values():
                changes.extend(group)  # two additions of one element keep their order
        return changes

    def _plan(self, parts: Sequence[Part], timeout_update: bool) -> list[tuple[Deleted, list[Added]]]:
        """The elements to delete, then the pinholes whose elements to add, for several (install, remove,
        recreate) parts in one transaction. Normally one step: every deletion of every part (each element
        once), then every addition. Same end state as the parts one after the other, unless a part deletes
        what an earlier part added (a call that ended in the drain it began in): then one step per part,
        in their order."""
        deleted: Deleted = {}
        added: list[Added] = []
        added_keys: set[tuple[str, tuple[nftnl.Field, ...]]] = set()
        for install, remove, recreate in parts:
            part_deleted, part_added = self._part(install, remove, recreate, timeout_update)
            if added_keys and not added_keys.isdisjoint(part_deleted):
                return [step for part in parts for step in self._plan([part], timeout_update)]
            for element, value in part_deleted.items():
                deleted.setdefault(element, value)
            if len(parts) > 1:
                for _hole, entries in part_added:
                    added_keys.update((name, key) for name, key, _value in entries)
            added.extend(part_added)
        return [(deleted, added)]

    def _part(
        self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole], timeout_update: bool
    ) -> tuple[Deleted, list[Added]]:
        """One message's elements to delete ((set, key) -> value) and pinholes to add (with their elements)."""
        install = list(install)
        recreate = list(recreate)
        deleted: Deleted = {}
        # Every pinhole whose elements are deleted first: removals, and state changes (recreate: a re-add
        # keeps an element's comment, which carries the state).
        cleared = [*remove, *recreate]
        if not timeout_update:
            # A re-add would leave the old timeout: every element is deleted before it is added again.
            cleared.extend(install)
        for hole in cleared:
            for map_name, key, value in self._entries(hole):
                deleted.setdefault((map_name, key), value)
        # Re-adding an element with the same value refreshes its timeout (Linux >= 6.12; before, it was
        # deleted above); a changed mapping is always preceded by its removal in the same transaction.
        return deleted, [(hole, self._entries(hole)) for hole in [*install, *recreate]]

    def apply(self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        """One transaction: remove, then install/refresh (and delete + add `recreate`). Raises NftError and
        changes nothing on failure."""
        self.apply_batch([(install, remove, recreate)])

    def apply_batch(self, parts: Sequence[Part]) -> None:
        """Several messages' (install, remove, recreate) in one transaction: the same end state as one
        `apply` per part, all or nothing, for the cost of one commit (see _plan)."""
        try:
            self._nfnl.send(self.changes(parts), self.table)
        except nftnl.BatchError as exc:
            raise NftError(f"nft transaction failed: {exc}", exc.errno, exc.msg_type) from exc
        except (OSError, ValueError) as exc:  # the socket itself, or an element nft would refuse too
            raise NftError(f"nft transaction failed: {exc}", getattr(exc, "errno", None)) from exc

    def apply_replacing(self, install: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        """Install one message's pinholes as one transaction, all or nothing, each key first cleared of
        whatever it holds: a stale value left by an earlier run refuses the plain add (EEXIST). Raises
        NftError, having added nothing. Before Linux 6.3 (no destroy) clearing an absent key fails the
        whole transaction, so the keys are cleared one by one first: deletes only, never a half install."""
        holes = [*install, *recreate]
        if self.element_features().destroy:
            self.apply((), (), holes)  # recreate: destroy every key, then add, in one batch
            return
        for hole in holes:
            self._delete_keys(hole)
        self.apply(holes, ())

    def apply_each(self, install: Iterable[Pinhole], remove: Iterable[Pinhole]) -> list[str]:
        """Fallback after a failed transaction: one pinhole at a time, so one bad element (say, a key left
        with another value by an earlier run) costs only itself. Returns the errors."""
        errors = []
        for hole in remove:
            try:
                self.apply((), (hole,))
            except NftError as exc:
                errors.append(f"remove {hole.public}: {exc}")
        for hole in install:
            try:
                self.apply((hole,), ())
            except NftError:
                self._delete_keys(hole)  # the key may hold a stale value: drop whatever is there, then add
                try:
                    self.apply((hole,), ())
                except NftError as exc:
                    errors.append(f"install {hole.public}: {exc}")
        return errors

    def _delete_keys(self, hole: Pinhole) -> None:
        """Delete whatever this pinhole's keys hold, each key in a transaction of its own: before Linux 6.3
        (no destroy) deleting an absent key fails its transaction, and that failure is ignored here (a
        key that is still wrong shows in the add that follows)."""
        destroy = self.element_features().destroy
        for map_name, key, _value in self._entries(hole):
            try:
                self._nfnl.send([Change(False, map_name, key, destroy=destroy)], self.table)
            except (OSError, ValueError):
                pass

    def elements(self, map_name: str = DNAT_MAP, family: str = "inet") -> list[MapElement]:
        rc, out, err = self._nft.cmd(f"list map {family} {self.table} {map_name}")
        if rc != 0:
            raise NftError(err.strip() or f"cannot list map {map_name}")
        result = []
        for item in json.loads(out).get("nftables", []):
            nft_map = item.get("map")
            if not nft_map:
                continue
            for key_part, value_part in nft_map.get("elem", []):
                elem = key_part.get("elem", {})
                key = elem.get("val", {}).get("concat", [])
                value = value_part.get("concat", [])
                if len(key) not in (2, 3) or len(value) != 2:
                    continue
                result.append(
                    MapElement(
                        map_name,
                        Endpoint(str(key[-2]), int(key[-1])),
                        Endpoint(str(value[0]), int(value[1])),
                        str(elem.get("comment", "")),
                        float(elem["expires"]) if "expires" in elem else None,
                        str(key[0]) if len(key) == 3 else "",
                    )
                )
        return result

    def legacy_pinholes(self) -> list[Pinhole]:
        """The pinholes of nfsip's IPv4-only table of earlier versions (`table ip`; its maps have no IPv6
        twins), so that an upgrade takes its calls over; [] when there is none."""
        rc, _out, _err = self._nft.cmd(f"list chain ip {self.table} pinholes_prerouting")
        if rc != 0:
            return []
        return self.media_pinholes(LEGACY_FAMILY) + self.registration_pinholes(LEGACY_FAMILY)

    def _all(self, name: str, family: str) -> list[MapElement]:
        """The elements of a map in each address family the table holds it for."""
        suffixes = ("", IPV6_SUFFIX) if family == "inet" else ("",)
        return [e for x in suffixes for e in self.elements(name + x, family)]

    def media_pinholes(self, family: str = "inet") -> list[Pinhole]:
        """The media pinholes in the kernel (both address families), each with its remaining lifetime,
        rebuilt from the SNAT maps (every media pinhole has one) and the DNAT maps (whether, and from where,
        it accepts inbound)."""
        latching = {e.key for e in self._all(DNAT_MAP, family)}
        strict = {e.key: e.remote_ip for e in self._all(DNAT_STRICT_MAP, family)}
        holes = []
        for elem in self._all(SNAT_MAP, family):
            label, state, since, call_id = parse_comment(elem.comment)
            if not call_id:
                continue
            public, lan = elem.value, elem.key
            remote = strict.get(public, "")
            kind = "media" if remote or public in latching else "media-out"
            timeout = max(1, int((elem.expires or 1) + 0.999))
            holes.append(
                Pinhole(
                    public,
                    lan,
                    call_id,
                    label,
                    timeout,
                    kind=kind,
                    remote_ip=remote,
                    established=state == "e",
                    since=since,
                )
            )
        return holes

    def registration_pinholes(self, family: str = "inet") -> list[Pinhole]:
        holes = []
        for name in (SIP_DNAT_MAP, SIP_DNAT_ANY_MAP, SIP_TCP_MAP, SIP_TCP_ANY_MAP):
            if family == LEGACY_FAMILY and name in (SIP_TCP_MAP, SIP_TCP_ANY_MAP):
                continue
            for elem in self._all(name, family):
                _label, _state, since, call_id = parse_comment(elem.comment)
                if call_id:
                    timeout = max(1, int((elem.expires or 1) + 0.999))
                    holes.append(
                        Pinhole(
                            elem.key,
                            elem.value,
                            call_id,
                            "sip",
                            timeout,
                            kind="sip",
                            remote_ip=elem.remote_ip,
                            since=since,
                            transport="tcp" if name in (SIP_TCP_MAP, SIP_TCP_ANY_MAP) else "udp",
                        )
                    )
        return holes

    def _queue_chain(self) -> list[list[nftnl.Expr]]:
        try:
            return self._nfnl.chain_rules(self.table, QUEUE_CHAIN)
        except OSError as exc:
            raise NftError(f"cannot read chain {QUEUE_CHAIN}: {exc}", exc.errno) from exc

    def has_queue_rule(self) -> bool:
        """Whether `sip_queue` still holds the queue rule (native `queue`, or the xt NFQUEUE target). An
        admin's `nft -f /etc/nftables.conf` that includes nft/nfsip.nft recreates the table without it."""
        return any(is_queue_rule(rule) for rule in self._queue_chain())

    def diverted_packets(self) -> int | None:
        """The packet count of `sip_queue`'s counter: every datagram the divert chains sent towards the queue
        (None without the table)."""
        for rule in self._queue_chain():
            for expr in rule:
                if expr.counter is not None:
                    return expr.counter[0]
        return None

    def over_rate_packets(self) -> int:
        """SIP datagrams accepted unchanged by the per-LAN-host rate check instead of queued: the counters of
        the rate chains' accept rules (0 where the table has no such chain)."""
        total = 0
        for chain in (RATE_OUT_CHAIN, RATE_IN_CHAIN):
            try:
                rules = self._nfnl.chain_rules(self.table, chain)
            except OSError as exc:
                raise NftError(f"cannot read chain {chain}: {exc}", exc.errno) from exc
            total += sum(expr.counter[0] for rule in rules for expr in rule if expr.counter is not None)
        return total

    def tls_hosts(self) -> list[str]:
        """The LAN hosts that opened TLS SIP connections in the last hour (both families)."""
        hosts = []
        for name in (TLS_HOSTS_SET, TLS_HOSTS_SET + IPV6_SUFFIX):
            rc, out, _err = self._nft.cmd(f"list set inet {self.table} {name}")
            if rc != 0:
                continue  # a table without the set (an older version's)
            for item in json.loads(out).get("nftables", []):
                for elem in (item.get("set") or {}).get("elem", []):
                    value = elem.get("elem", {}).get("val") if isinstance(elem, dict) else elem
                    if isinstance(value, str):
                        hosts.append(value)
        return hosts

    def tls_flows(self) -> int:
        """New TLS SIP connections from the LAN: the counter of the TLS chain (0 where the table has none)."""
        try:
            rules = self._nfnl.chain_rules(self.table, TLS_CHAIN)
        except OSError as exc:
            raise NftError(f"cannot read chain {TLS_CHAIN}: {exc}", exc.errno) from exc
        return sum(expr.counter[0] for rule in rules for expr in rule if expr.counter is not None)

    def has_native_queue(self) -> bool:
        """Whether the kernel takes the nft `queue` statement (CONFIG_NFT_QUEUE), asked without changing
        anything: a dry-run transaction still goes to the kernel, which validates the expression."""
        probe = (
            "add table inet nfsip_probe\nadd chain inet nfsip_probe c\nadd rule inet nfsip_probe c queue num 0 bypass\n"
        )
        try:
            self.run_text(probe, dry_run=True)
        except NftError:
            return False
        return True
