"""The nfsip daemon in any router of the lab (``routerb`` of a TwoSiteLab included).

``NfsipDaemon`` runs in ``T.ROUTER``: every command it starts goes through ``lab.run(T.ROUTER, ...)``
or ``lab.popen(T.ROUTER, ...)``. Rather than copying its start/status/metrics code,
``RouterNfsipDaemon`` hands it a view of the lab in which the node name "router" means the
router wanted; everything else is the real lab. So the daemon in routerb behaves exactly like the
one in router (same config file handling, same readiness check, same CLI), and picks up any change
made to NfsipDaemon.

The cleaner fix is a ``node`` parameter on NfsipDaemon (``self.node = node`` and ``self.node`` for
``T.ROUTER`` in start/cli/metrics); once it exists, ``RouterNfsipDaemon`` can become a thin alias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from nfsiplab import topology as T
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon


class _RouterView:
    """A Lab whose ``run``/``popen`` send "router" to another node; all else is delegated."""

    def __init__(self, lab: Lab, router: str) -> None:
        self._lab = lab
        self._router = router

    def _node(self, node: str) -> str:
        return self._router if node == T.ROUTER else node

    def run(self, node: str, argv: Sequence[str], **kw: Any) -> Any:
        return self._lab.run(self._node(node), argv, **kw)

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> Any:
        return self._lab.popen(self._node(node), argv, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lab, name)


class RouterNfsipDaemon(NfsipDaemon):
    """``NfsipDaemon`` in router ``node`` (default: the site A router, i.e. plain NfsipDaemon).

    Each router namespace has its own nftables, conntrack, queue and loopback, so daemons in two
    routers need no different settings (table name, queue number and metrics port may coincide).
    """

    def __init__(self, lab: Lab, node: str = T.ROUTER, **kw: Any) -> None:
        view = lab if node == T.ROUTER else cast(Lab, _RouterView(lab, node))
        super().__init__(view, **kw)
        self.node = node
        self.real_lab = lab

    def __repr__(self) -> str:
        return f"RouterNfsipDaemon({self.node}, {'running' if self.alive() else 'stopped'})"
