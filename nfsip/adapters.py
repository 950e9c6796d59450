"""What the daemon is given: the narrow interfaces of the kernel adapters it drives.

The daemon (nfsip.daemon) builds no socket, nft context or queue itself: `Daemon.from_config` makes the
real adapters (nfsip.kernel.*) and hands them in, tests hand in fakes (tests/fakes.py). The model is
miniupnpd's netfilter_nft: a daemon that owns one table and changes it only through a few calls - add,
delete and refresh its entries, read them back, make sure the table is there, remove it at exit.

Adapters raise nfsip.kernel.nft.NftError when nftables refuses a change and OSError when a socket fails.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, Protocol

from .core.mediastats import CallMedia
from .core.model import Endpoint, Part, Pinhole


class PinholeTable(Protocol):
    """nfsip's own table (`table inet nfsip`) and the pinholes in it (real: nfsip.kernel.table.NftTable)."""

    # The queue rule is nft's own `queue` statement, else the xt NFQUEUE target; known after install().
    native_queue: bool

    def install(self) -> None:
        """Replace the table with nfsip's, without a pinhole, and add its queue rule."""

    def start_relay(self) -> None:
        """The TCP relay listens: redirect TCP SIP to it, now and after every restore."""

    def restore(self, state: str) -> None:
        """Put back what another ruleset load removed: the table (state nfsip.kernel.reader.NO_TABLE) and
        the queue rule. The caller puts its pinholes back."""

    def remove(self) -> None:
        """Delete the table (a clean stop)."""

    def pinholes(self) -> list[Pinhole]:
        """The pinholes in the table (media and registrations) with their remaining lifetime and their
        wall-clock start; none when there is no table."""

    def features(self) -> str:
        """What the kernel does with set elements, for the start log line."""

    def apply(self, install: Iterable[Pinhole], remove: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        """One transaction, all or nothing: remove, add or refresh `install`, delete and add `recreate`."""

    def apply_batch(self, parts: Sequence[Part]) -> None:
        """Several messages' changes, in message order, as one transaction, all or nothing."""

    def apply_replacing(self, install: Iterable[Pinhole], recreate: Iterable[Pinhole] = ()) -> None:
        """apply() without removals, each key cleared first: a stale value an earlier run left would refuse
        the add."""

    def apply_each(self, install: Iterable[Pinhole], remove: Iterable[Pinhole]) -> list[str]:
        """Pinhole by pinhole, a transaction each; returns one line per change the kernel refused."""


class ConntrackTable(Protocol):
    """The kernel's connection tracking as the daemon uses it (real: nfsip.kernel.conntrack.Conntrack)."""

    def lan_endpoint(self, remote: Endpoint, public: Endpoint) -> Endpoint | None:
        """The LAN ip:port behind an outbound datagram seen after NAT as public -> remote."""

    def schedule(self, removed: Iterable[Pinhole] = (), fresh: Iterable[Pinhole] = ()) -> None:
        """Purge at the next sweep the flows of removed pinholes and those that went around fresh ones."""

    def read_before_purge(self, lan: Collection[Endpoint], report: Callable[[Any], None]) -> None:
        """At the next sweep, before it deletes anything, hand `report` the media counts of these LAN
        endpoints (an ended call's), or the OSError the read met."""

    @property
    def pending(self) -> bool:
        """Something is scheduled for the next sweep."""

    def sweep_in_background(self, done: Callable[[int], None]) -> None:
        """Sweep what is scheduled, off the packet loop; `done(deleted)` after each sweep."""

    def finish(self) -> int:
        """At stop: every scheduled purge done; returns how many entries were deleted."""

    def close(self) -> None: ...


class KernelReads(Protocol):
    """Reads too slow for the packet loop, done elsewhere (real: nfsip.kernel.reader.KernelReader): the
    table's state (nfsip.kernel.reader.TABLE) and the media counters of LAN endpoints (COUNTERS)."""

    def ask(self, what: str, endpoints: frozenset[Endpoint] = frozenset()) -> None:
        """Request a read unless one of that kind is under way."""

    def answers(self) -> list[tuple[str, Any]]:
        """The reads done since the last call: (kind, value or the exception the read raised)."""

    def close(self) -> None: ...


class QueuedPacket(Protocol):
    """A datagram waiting on the queue for its verdict (netfilterqueue's Packet)."""

    hook: int

    def get_payload(self) -> bytes: ...

    def set_payload(self, payload: bytes) -> None: ...

    def accept(self) -> None: ...


class PacketQueue(Protocol):
    """The bound NFQUEUE (real: nfsip.kernel.queue.Queue)."""

    fd: int

    def drain(self) -> None:
        """Hand every waiting datagram to the callback the queue was opened with."""

    def close(self) -> None: ...


# Binds the queue with the callback that gets each queued datagram (real: Queue with its queue number).
OpenQueue = Callable[[Callable[[QueuedPacket], None]], PacketQueue]


class HostAddresses(Protocol):
    """Which addresses a LAN host has (real: nfsip.kernel.neighbours.Neighbours, the neighbour table)."""

    def addresses_of(self, ip: str) -> frozenset[str]:
        """Every address of the host with address `ip`, itself included; empty when unknown."""


class NoHostAddresses:
    """Knows no host's other addresses: an SDP may name only the address its SIP came from."""

    def addresses_of(self, ip: str) -> frozenset[str]:
        return frozenset()


class WanAddress(Protocol):
    """The router's public IPv4 address (real: nfsip.kernel.netinfo.WanInterface, or FixedAddress)."""

    def current(self) -> str:
        """The address now; nfsip.kernel.netinfo.InterfaceError when there is none."""

    def fileno(self) -> int | None:
        """Address events to wait on; None: the address never changes."""

    def changed(self) -> bool:
        """Take the waiting events; True when the address may have changed."""

    def close(self) -> None: ...


class FixedAddress:
    """A configured public address (config `public_address`): no interface to ask, no event to wait on."""

    def __init__(self, address: str) -> None:
        self.address = address

    def current(self) -> str:
        return self.address

    def fileno(self) -> int | None:
        return None

    def changed(self) -> bool:
        return False

    def close(self) -> None:
        pass


class SupervisorLink(Protocol):
    """Whoever watches over the daemon's process: systemd (nfsip.daemon.SystemdLink) or, for a worker,
    nfsip's supervisor process (nfsip.workers.WorkerLink)."""

    lost: bool  # the supervisor is gone: the daemon stops
    wake_seconds: float  # the packet loop wakes at least this often, for alive()

    def fileno(self) -> int | None:
        """Requests from the supervisor to wait on; None: it sends none."""

    def requests(self) -> list[str]:
        """The requests that came ("restore": the table was put back empty, put the pinholes back in)."""

    def ready(self, detail: str) -> None:
        """The queue is bound and the table in place."""

    def alive(self, now: float) -> None:
        """Once per turn of the packet loop: the watchdog's ping or the heartbeat, when due."""

    def media(self, calls: list[CallMedia]) -> None:
        """The per-call media counts after a sample."""

    def ended(self, calls: list[tuple[str, str]]) -> None:
        """(Call-ID, LAN host) of calls that ended: their media series go."""

    def stopping(self) -> None: ...

    def close(self) -> None: ...
