"""The reference for nfsip's element batches: the same element changes sent through libnftables JSON.

nfsip.kernel.nftnl encodes element changes itself (libnftables is several times dearer per transaction:
docs/performance.md, "Netlink by hand"). This is the path it replaced, kept outside the package as the
oracle it is checked against (tests/test_lab_nftnl.py: both must leave the same tables) and measured
against (bench/engine.py). Both start from one representation, Nft.changes().
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from nfsip.core.model import Pinhole
from nfsip.kernel.nft import Nft, NftError
from nfsip.kernel.nftnl import Change


def json_command(change: Change, table: str) -> dict[str, Any]:
    """One change as a libnftables JSON command on `table inet <table>` (nft 1.0.6 has no destroy: a
    delete). Addresses go in as nfsip holds them (IPv6 unbracketed); nft parses each field by the type of
    the map, ipv4_addr or ipv6_addr."""
    elem: dict[str, Any] = {"val": {"concat": list(change.key)}}
    if change.add:
        elem["timeout"] = (change.timeout_ms or 0) // 1000
        if change.comment is not None:
            elem["comment"] = change.comment
    item: Any = {"elem": elem}
    if change.value is not None:
        item = [item, {"concat": list(change.value)}]
    element = {"family": "inet", "table": table, "name": change.set_name, "elem": [item]}
    return {"add" if change.add else "delete": {"element": element}}


class LibnftablesPath:
    """Nft.apply through libnftables JSON, on a libnftables context of its own (made in the network
    namespace the caller is in)."""

    def __init__(self, nft: Nft) -> None:
        import nftables

        self.nft = nft
        self._ctx = nftables.Nftables()
        self._ctx.set_json_output(True)

    def apply(self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        """One transaction of the element changes Nft.apply would send. Raises NftError."""
        features = replace(self.nft.element_features(), destroy=False)  # removals as add + delete
        changes = self.nft.changes([(install, remove, recreate)], features)
        if not changes:
            return
        commands = [json_command(change, self.nft.table) for change in changes]
        rc, _out, err = self._ctx.json_cmd({"nftables": commands})
        if rc != 0:
            raise NftError(err.strip() or f"nft transaction failed with code {rc}")
