"""One worker of several (config `workers` > 1): the daemon's packet loop on its own queue and its own share.

Worker i of N reads queue `queue_num + i`; the kernel sends it the SIP of every LAN host whose address has
i in its low bits (nfsip.kernel.fanout.shard), so all state of a phone - its calls, registrations, per-host
limits and rate bucket - lives in exactly one process, and the packet path shares nothing with the other
workers: each has its own Engine, PortAllocator, nft and ctnetlink sockets, and metric files. What is left
in common is the kernel: nft commits of all workers are serialized by the kernel (the nfnetlink commit
mutex of the network namespace), as they would be between any two processes changing nftables.

Each worker has:
- its own contiguous, even-aligned slice of the media port range (`port_slices`): public ports cannot
  collide between workers by construction, and RTP/RTCP pairs never straddle two slices;
- 1/N of the global limits (max_calls, max_pinholes, max_registrations); per-host limits unchanged;
- a pipe to the supervisor (nfsip.supervisor): "ready" once its queue is bound, a heartbeat about once a
  second (the supervisor pings systemd's watchdog only while every worker beats), media snapshots for the
  per-call metrics; from the supervisor, "restore" when the table had to be reinstalled.

The supervisor owns the table (install, restore, removal); a worker never replaces or removes it. A worker
that starts (first, or after its predecessor died) adopts the pinholes of its own LAN hosts from the kernel.

A worker is the daemon (nfsip.daemon.Daemon) composed for it: `worker_config` (its queue, slice and caps),
a `Shard` (its LAN hosts; the table is the supervisor's) and a `WorkerLink` (the pipe) as its supervisor.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import sys
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from . import logsetup
from .config import Config
from .core.mediastats import CallMedia
from .daemon import Daemon
from .kernel.fanout import shard
from .kernel.nft import NftError

log = logging.getLogger("nfsip")

HEARTBEAT_SECONDS = 1.0
# Exit codes of a worker process, as nfsip.cli's: the supervisor reports a missing privilege as such.
EXIT_FAILURE = 1
EXIT_MISSING = 3


def port_slices(low: int, high: int, workers: int) -> list[tuple[int, int]]:
    """Split the media port range into `workers` contiguous slices, each starting even and (but the last,
    which takes the remainder) of even length: RTP/RTCP blocks stay inside one slice."""
    first_even = low + (low & 1)
    size = ((high - first_even + 1) // workers) & ~1
    if size < 4:
        raise ValueError(f"media ports {low}-{high} cannot be split between {workers} workers")
    slices = [(first_even + i * size, first_even + (i + 1) * size - 1) for i in range(workers)]
    slices[-1] = (slices[-1][0], high)
    return slices


def worker_config(config: Config, index: int) -> Config:
    """The configuration worker `index` runs with: its queue, its port slice, its share of the global caps.
    No metrics endpoint of its own (the supervisor serves one for all)."""
    n = config.workers
    low, high = port_slices(config.media_port_min, config.media_port_max, n)[index]
    return replace(
        config,
        queue_num=config.queue_num + index,
        media_port_min=low,
        media_port_max=high,
        max_calls=max(1, config.max_calls // n),
        max_pinholes=max(1, config.max_pinholes // n),
        max_registrations=max(1, config.max_registrations // n),
        metrics_listen="",
    )


@dataclass(frozen=True, slots=True)
class Shard:
    """Worker `index` of `workers`: the LAN hosts whose SIP the kernel sends to its queue."""

    index: int
    workers: int

    def owns(self, lan_ip: str) -> bool:
        return shard(lan_ip, self.workers) == self.index


class WorkerLink:
    """A worker's SupervisorLink (nfsip.adapters): the pipe to nfsip's supervisor."""

    wake_seconds = HEARTBEAT_SECONDS

    def __init__(self, connection: Connection, index: int) -> None:
        self.connection = connection
        self.index = index
        self.lost = False
        self._last_beat = 0.0
        self._gone: list[tuple[str, str]] = []

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.connection.send(message)
        except (BrokenPipeError, OSError):
            self.lost = True  # the supervisor is gone: stop (the kernel then bypasses the queue)

    def fileno(self) -> int | None:
        return self.connection.fileno()

    def requests(self) -> list[str]:
        kinds = []
        try:
            while self.connection.poll():
                kinds.append(self.connection.recv()[0])
        except (EOFError, OSError):
            self.lost = True
        return kinds

    def ready(self, detail: str) -> None:
        self._send(("ready", self.index, os.getpid()))

    def alive(self, now: float) -> None:
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self._send(("beat", self.index))
        if self._gone:
            # Ended calls' media series go from the supervisor's snapshot too; batched here, not per message.
            self._send(("gone", self.index, self._gone))
            self._gone = []

    def media(self, calls: list[CallMedia]) -> None:
        self._send(("media", self.index, calls))

    def ended(self, calls: list[tuple[str, str]]) -> None:
        self._gone.extend(calls)

    def stopping(self) -> None:
        pass

    def close(self) -> None:
        self.connection.close()


def worker_daemon(config: Config, index: int, connection: Connection) -> Daemon:
    """Worker `index`'s daemon, with the kernel's adapters (Daemon.from_config)."""
    return Daemon.from_config(
        worker_config(config, index), shard=Shard(index, config.workers), link=WorkerLink(connection, index)
    )


PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1


def process_name(index: int) -> str:
    """The worker's name in ps/top (/proc/PID/comm, at most 15 bytes): which worker is which."""
    return f"nfsip-worker-{index}"


def _set_up_process(parent: int, index: int) -> None:
    """Name the process, and SIGTERM it when the supervisor dies (even by SIGKILL): an orphan would keep
    its queue bound."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, process_name(index).encode()[:15], 0, 0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the prctl
        sys.exit(EXIT_FAILURE)


def worker_main(config: Config, index: int, link: Connection, parent: int, log_format: str) -> None:
    """Entry point of a worker process (multiprocessing, "spawn": a fresh interpreter that inherits no
    netlink socket, nft context or thread of the supervisor)."""
    _set_up_process(parent, index)
    logsetup.configure(config.log_level, log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the supervisor decides
    try:
        daemon = worker_daemon(config, index, link)
        signal.signal(signal.SIGTERM, daemon.stop)
        daemon.run()
    except NftError as exc:
        log.error("worker %d: nftables refused: %s", index, exc)
        sys.exit(EXIT_MISSING if "Operation not permitted" in str(exc) else EXIT_FAILURE)
    except OSError as exc:
        log.error("worker %d: %s", index, exc)
        sys.exit(EXIT_MISSING if exc.errno in (errno.EPERM, errno.EACCES) or "root" in str(exc) else EXIT_FAILURE)
    sys.exit(0)
