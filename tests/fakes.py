"""In-memory stand-ins for the daemon's adapters (nfsip.adapters): a table, conntrack, the kernel reader, a
queue and its packets, a supervisor link. `fake_daemon` builds a real Daemon (real engine, policy, metrics)
on them; a test passes its own where it needs to see or steer one."""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from nfsip.adapters import FixedAddress, Part, QueuedPacket
from nfsip.config import Config
from nfsip.core.mediastats import CallMedia
from nfsip.core.model import Endpoint, Pinhole
from nfsip.core.packet import decode_udp
from nfsip.daemon import Daemon
from nfsip.kernel.nft import NftError
from nfsip.kernel.reader import NO_TABLE
from nfsip.loglines import NF_INET_POST_ROUTING


class FakeTable:
    """nfsip's table in memory (a PinholeTable): its pinholes by public endpoint and kind, each transaction
    in `transactions` and as "transaction" in `journal` (share it with FakePackets to see the order of
    transactions and verdicts). `refuse`: Call-IDs the "kernel" refuses to add pinholes for; a transaction
    holding one fails whole, as nft's does."""

    def __init__(self, pinholes: Iterable[Pinhole] = (), journal: list[str] | None = None) -> None:
        self.journal = [] if journal is None else journal
        self.native_queue = True
        self.exists = False
        self.holes: dict[tuple[Endpoint, str], Pinhole] = {}
        self.transactions: list[list[Part]] = []
        self.refuse: set[str] = set()
        for hole in pinholes:
            self.exists = True
            self.holes[hole.public, hole.kind] = hole

    def install(self) -> None:
        self.journal.append("install")
        self.exists = True
        self.holes.clear()

    def start_relay(self) -> None:
        self.journal.append("relay")

    def restore(self, state: str) -> None:
        self.journal.append(f"restore {state}")
        if state == NO_TABLE:
            self.exists = True
            self.holes.clear()

    def remove(self) -> None:
        self.journal.append("remove")
        self.exists = False
        self.holes.clear()

    def pinholes(self) -> list[Pinhole]:
        return list(self.holes.values())

    def features(self) -> str:
        return "element destroy yes; timeout update on re-add yes"

    def _commit(self, parts: Sequence[Part]) -> None:
        parts = [tuple(tuple(holes) for holes in part) for part in parts]
        for install, _, recreate in parts:
            refused = [h.call_id for h in (*install, *recreate) if h.call_id in self.refuse]
            if refused:
                raise NftError(f"EEXIST ({refused[0]})")
        self.journal.append("transaction")
        self.transactions.append(parts)
        for install, remove, recreate in parts:
            for hole in remove:
                self.holes.pop((hole.public, hole.kind), None)
            for hole in (*recreate, *install):
                self.holes[hole.public, hole.kind] = hole

    def apply(self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        self._commit([(install, remove, recreate)])

    def apply_batch(self, parts: Sequence[Part]) -> None:
        self._commit(parts)

    def apply_replacing(self, install: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        self._commit([(install, (), recreate)])

    def apply_each(self, install: Iterable[Pinhole], remove: Iterable[Pinhole]) -> list[str]:
        errors = []
        for hole in remove:
            self._commit([((), (hole,), ())])
        for hole in install:
            try:
                self._commit([((hole,), (), ())])
            except NftError as exc:
                errors.append(f"install {hole.call_id}: {exc}")
        return errors


class FakeConntrack:
    """Connection tracking in memory (a ConntrackTable): every translated datagram comes from `lan`; the
    purges scheduled and the reads asked for are recorded. `counts`: when given, each read is answered
    with it at once (else a test answers through the recorded report)."""

    def __init__(self, lan: Endpoint, counts: dict[Endpoint, Any] | None = None) -> None:
        self.lan = lan
        self.counts = counts
        self.removed: list[Pinhole] = []
        self.fresh: list[Pinhole] = []
        self.reads: list[tuple[frozenset[Endpoint], Callable[[Any], None]]] = []
        self.swept = 0
        self._scheduled = 0

    def lan_endpoint(self, remote: Endpoint, public: Endpoint) -> Endpoint | None:
        return self.lan

    def schedule(self, removed: Iterable[Pinhole] = (), fresh: Iterable[Pinhole] = ()) -> None:
        removed, fresh = list(removed), list(fresh)
        self.removed += removed
        self.fresh += fresh
        self._scheduled += len(removed) + len(fresh)

    def read_before_purge(self, lan: Collection[Endpoint], report: Callable[[Any], None]) -> None:
        self.reads.append((frozenset(lan), report))
        if self.counts is not None:
            report(self.counts)

    @property
    def pending(self) -> bool:
        return self._scheduled > 0

    def sweep_in_background(self, done: Callable[[int], None]) -> None:
        self.swept += 1
        self._scheduled = 0
        done(0)

    def finish(self) -> int:
        self._scheduled = 0
        return 0

    def close(self) -> None:
        pass


class FakeReader:
    """The kernel reader in memory (KernelReads): what was asked; a test puts answers in `waiting`."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, frozenset[Endpoint]]] = []
        self.waiting: list[tuple[str, Any]] = []

    def ask(self, what: str, endpoints: frozenset[Endpoint] = frozenset()) -> None:
        self.asked.append((what, endpoints))

    def answers(self) -> list[tuple[str, Any]]:
        answers, self.waiting = self.waiting, []
        return answers

    def close(self) -> None:
        pass


class FakePacket:
    """A datagram on the queue (a QueuedPacket): `raw` as queued, `new` what the daemon set; its verdict
    appends it to `verdicts` and "verdict" to `journal`."""

    def __init__(
        self,
        raw: bytes,
        verdicts: list[FakePacket] | None = None,
        journal: list[str] | None = None,
        hook: int = NF_INET_POST_ROUTING,
    ) -> None:
        self.hook = hook
        self.raw = raw
        self.new: bytes | None = None
        self.verdicts = verdicts
        self.journal = journal

    def get_payload(self) -> bytes:
        return self.raw

    def set_payload(self, payload: bytes) -> None:
        self.new = payload

    def accept(self) -> None:
        if self.verdicts is not None:
            self.verdicts.append(self)
        if self.journal is not None:
            self.journal.append("verdict")

    @property
    def sent_sip(self) -> bytes:
        return decode_udp(self.new or self.raw).payload


class FakeQueue:
    """A queue in memory (a PacketQueue) with a real descriptor to wait on: `put` queues a packet and
    makes `fd` readable; drain() hands what waits to the daemon."""

    def __init__(self, callback: Callable[[QueuedPacket], None]) -> None:
        self.callback = callback
        self._ours, self._theirs = socket.socketpair()
        self._ours.setblocking(False)
        self.fd = self._ours.fileno()
        self.waiting: list[QueuedPacket] = []
        self.closed = False

    def put(self, packet: QueuedPacket) -> None:
        self.waiting.append(packet)
        self._theirs.send(b"x")

    def drain(self) -> None:
        try:
            self._ours.recv(4096)
        except BlockingIOError:
            pass
        waiting, self.waiting = self.waiting, []
        for packet in waiting:
            self.callback(packet)

    def close(self) -> None:
        self.closed = True
        self._ours.close()
        self._theirs.close()


class FakeLink:
    """A supervisor in memory (a SupervisorLink): what the daemon told it; requests a test puts in
    `waiting` (send() also makes `fileno()` readable)."""

    wake_seconds = 0.05

    def __init__(self) -> None:
        self.lost = False
        self.told: list[tuple[str, Any]] = []
        self.waiting: list[str] = []
        self._ours, self._theirs = socket.socketpair()
        self._ours.setblocking(False)

    def send(self, request: str) -> None:
        self.waiting.append(request)
        self._theirs.send(b"x")

    def fileno(self) -> int | None:
        return self._ours.fileno()

    def requests(self) -> list[str]:
        try:
            self._ours.recv(4096)
        except BlockingIOError:
            pass
        waiting, self.waiting = self.waiting, []
        return waiting

    def ready(self, detail: str) -> None:
        self.told.append(("ready", detail))

    def alive(self, now: float) -> None:
        pass

    def media(self, calls: list[CallMedia]) -> None:
        self.told.append(("media", calls))

    def ended(self, calls: list[tuple[str, str]]) -> None:
        self.told.append(("ended", calls))

    def stopping(self) -> None:
        self.told.append(("stopping", None))

    def close(self) -> None:
        self._ours.close()
        self._theirs.close()


def fake_daemon(config: Config, **adapters: Any) -> Daemon:
    """A Daemon of `config` on in-memory adapters, `adapters` replacing any of them by name."""
    parts: dict[str, Any] = {
        "table": FakeTable(),
        "conntrack": FakeConntrack(Endpoint("10.0.0.2", 5060)),
        "reader": FakeReader(),
        "open_queue": FakeQueue,
        "wan": FixedAddress(config.public_address),
        "link": FakeLink(),
    }
    parts.update(adapters)
    return Daemon(config, **parts)
