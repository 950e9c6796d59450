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
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from . import logsetup
from .config import Config
from .daemon import Daemon
from .kernel.fanout import shard
from .kernel.netinfo import AddressWatcher
from .kernel.nft import NftError
from .kernel.queue import Queue
from .model import CallEnded, Endpoint, Pinhole
from .sdnotify import Notifier

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


class WorkerDaemon(Daemon):
    """Daemon's packet loop, without the table duties (the supervisor's) and with a link to the supervisor."""

    checks_table = False  # the supervisor checks the table and sends "restore" when it had to put it back

    def __init__(self, config: Config, index: int, link: Connection, clock: Callable[[], float] = time.monotonic):
        super().__init__(worker_config(config, index), clock)
        self.index = index
        self.workers = config.workers
        self.link = link
        self._last_beat = 0.0
        self._gone: list[tuple[str, str]] = []

    # -- the supervisor owns the table -------------------------------------------------------------------
    def install(self) -> None:
        """Adopt this worker's share of the pinholes in the kernel (a predecessor's, or a previous run's that
        the supervisor carried into the new table)."""
        self.native_queue = self.nft.has_native_queue()
        mine = [h for h in self._kernel_pinholes() if self.owns(h)]
        self._adopt(mine, reapply=False)
        log.info(
            "queue %d; public address %s; media ports %d-%d; %s",
            self.config.queue_num,
            self.public_ip,
            self.config.media_port_min,
            self.config.media_port_max,
            self.nft.element_features().describe(),  # asked now, not at the first SIP message
        )

    def owns(self, hole: Pinhole) -> bool:
        return shard(hole.lan.ip, self.workers) == self.index

    def uninstall(self) -> None:
        """The supervisor removes the table once every worker stopped."""

    def restore(self) -> None:
        """The table was reinstalled empty: put this worker's live pinholes back."""
        holes = self.engine.live_pinholes(self.clock())
        if holes:
            try:
                self.nft.apply(holes, ())
            except NftError:
                for error in self.nft.apply_each(holes, ()):
                    log.warning("nft: %s", error)
        log.info("restored %d pinholes after the table was reinstalled", len(holes))

    # -- the link -------------------------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self.link.send(message)
        except (BrokenPipeError, OSError):
            self._stop = True  # the supervisor is gone: stop (the kernel then bypasses the queue)

    def on_event(self, source: object) -> None:
        try:
            while self.link.poll():
                message = self.link.recv()
                if message[0] == "restore":
                    self.restore()
        except (EOFError, OSError):
            self._stop = True

    def tick(self) -> None:
        super().tick()
        now = self.clock()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._last_beat = now
            self._send(("beat", self.index))
        if self._gone:
            # Ended calls' media series go from the supervisor's snapshot too; batched here, not per message.
            self._send(("gone", self.index, self._gone))
            self._gone = []

    def sample_media(self, now: float, counters: dict[Endpoint, tuple[int, int, int, int]]) -> None:
        super().sample_media(now, counters)
        self._send(("media", self.index, self._media_snapshot))

    def _log_ended(self, ended: Sequence[CallEnded]) -> None:
        super()._log_ended(ended)
        self._gone.extend((end.call_id, end.lan_ip) for end in ended)

    # -- loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        queue = Queue(self.config.queue_num, self.on_packet)
        watcher = None if self.config.public_address else AddressWatcher(self.config.wan_interface)
        selector = selectors.DefaultSelector()
        try:
            self.install()
            selector.register(queue.fd, selectors.EVENT_READ, "queue")
            selector.register(self.link.fileno(), selectors.EVENT_READ, "link")
            if watcher is not None:
                selector.register(watcher.fileno(), selectors.EVENT_READ, "address")
            self._send(("ready", self.index, os.getpid()))
            self._loop(queue, watcher, selector, Notifier(environ={}))
        finally:
            selector.close()
            try:
                self.drain(queue)  # what was queued before the supervisor removed the rules still gets a verdict
                self.finish_purges()
            finally:
                queue.close()
                self.reader.close()
                if watcher is not None:
                    watcher.close()
            log.info("stopped")


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
        daemon = WorkerDaemon(config, index, link)
        signal.signal(signal.SIGTERM, daemon.stop)
        daemon.run()
    except NftError as exc:
        log.error("worker %d: nftables refused: %s", index, exc)
        sys.exit(EXIT_MISSING if "Operation not permitted" in str(exc) else EXIT_FAILURE)
    except OSError as exc:
        log.error("worker %d: %s", index, exc)
        sys.exit(EXIT_MISSING if exc.errno in (errno.EPERM, errno.EACCES) or "root" in str(exc) else EXIT_FAILURE)
    sys.exit(0)
