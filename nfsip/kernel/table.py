"""nfsip's table through nftables: the PinholeTable (nfsip.adapters) the daemon and the supervisor are given.

Behind its few calls: the table text (nfsip.kernel.ruleset), the queue rule - nft's `queue` statement, or
where the kernel lacks it the xt NFQUEUE target through nft_compat (nfsip.kernel.divert), which `nft -f`
cannot express - and the pinholes' map elements (nfsip.kernel.nft.Nft).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from ..config import Config
from ..core.model import Part, Pinhole
from . import divert, ruleset
from .nft import Nft, NftError
from .reader import NO_TABLE

log = logging.getLogger(__name__)


class NftTable:
    def __init__(self, config: Config, nft: Nft, *, queue_rule: bool = True) -> None:
        """`queue_rule`: False for the supervisor of several workers, whose fanout (nfsip.kernel.fanout)
        holds the queue rules."""
        self.config = config
        self.nft = nft
        self.native_queue = False
        self._queue_rule = queue_rule
        # Set by the daemon once its TCP relay listens: the relay's redirects go into the table with the
        # queue rule, and come back with it after a restore.
        self.relay = False

    def _text(self) -> str:
        return ruleset.render(ruleset.options_from(self.config, self.native_queue))

    def install(self) -> None:
        self.native_queue = self.nft.has_native_queue()
        self.nft.install(self._text())
        if self._queue_rule:
            self._add_queue_rule()
        self._add_relay_rules()

    def restore(self, state: str) -> None:
        if state == NO_TABLE:
            self.nft.install(self._text())
        if self._queue_rule:
            self._add_queue_rule()
        try:
            self._add_relay_rules()
        except NftError as exc:  # the pinholes are still to be put back: TCP goes unhelped, not UDP too
            log.error("TCP relay's redirects not restored: %s", exc)

    def start_relay(self) -> None:
        """The TCP relay listens: redirect TCP SIP to it (its chain emptied first: idempotent). Raises
        NftError, and redirects nothing, when nft refuses the rules."""
        self.relay = True
        try:
            self._add_relay_rules()
        except NftError:
            self.relay = False
            raise

    def _add_relay_rules(self) -> None:
        if self.relay:
            opts = ruleset.options_from(self.config, self.native_queue)
            self.nft.run_text(f"flush chain inet {opts.table} {ruleset.TCP_RELAY_CHAIN}\n" + ruleset.relay_rules(opts))

    def _add_queue_rule(self) -> None:
        if self.native_queue:
            self.nft.run_text(ruleset.queue_rule(ruleset.options_from(self.config, self.native_queue)))
        else:
            divert.add_compat_queue_rule(self.config.table_name, self.config.queue_num, bypass=self.config.queue_bypass)

    def exists(self) -> bool:
        return self.nft.table_exists()

    def remove(self) -> None:
        self.nft.remove_table()

    def pinholes(self) -> list[Pinhole]:
        if not self.nft.table_exists():
            # An upgrade from the IPv4-only table: its calls are taken over (the new table replaces it).
            return self.nft.legacy_pinholes()
        return self.nft.media_pinholes() + self.nft.registration_pinholes()

    def features(self) -> str:
        return self.nft.element_features().describe()

    def apply(self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        self.nft.apply(install, remove, recreate)

    def apply_batch(self, parts: Sequence[Part]) -> None:
        self.nft.apply_batch(parts)

    def apply_replacing(self, install: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        self.nft.apply_replacing(install, recreate)

    def apply_each(self, install: Iterable[Pinhole], remove: Iterable[Pinhole]) -> list[str]:
        return self.nft.apply_each(install, remove)
