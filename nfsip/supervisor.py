"""The supervisor of several workers (config `workers` > 1): the per-router jobs, no packet handling.

It installs nfsip's table (taking over the pinholes a previous run left, as the single daemon does) and
the queue fanout (nfsip.kernel.fanout), starts one worker process per queue (nfsip.workers; multiprocessing
"spawn": fresh interpreters, no inherited sockets or threads), and then:
- diverts a worker's LAN hosts to its queue only once the worker says it bound the queue ("ready"), and
  tells systemd READY=1 when all are;
- pings systemd's watchdog while every worker's heartbeat is fresh (a hung worker stops the pings, and
  systemd restarts the service);
- restarts a worker that died (its chain is parked meanwhile: that worker's SIP passes unchanged, or is
  dropped with queue_bypass = false); the new worker adopts its share of the kernel's pinholes;
- every 5 s checks the table and the fanout rules, puts them back after someone else's ruleset load, and
  tells the workers to restore their pinholes;
- serves the one metrics endpoint (nfsip.metrics.supervisor_registry), with the per-call media series of
  the workers' latest snapshots;
- on SIGTERM/SIGINT removes the table (rules first, as the single daemon does), then stops the workers,
  which give a verdict to whatever was still queued.
Each worker follows the WAN address itself (rtnetlink events): no message needed on an address change.

Why "spawn" and not "fork": a forked worker would inherit the supervisor's metrics HTTP thread (forking a
threaded process can leave a lock held forever in the child), its libnftables context and netlink
sockets, and prometheus-client's value class, which is chosen when the module is first imported (before
PROMETHEUS_MULTIPROC_DIR is set, so a forked worker would count into private memory nobody scrapes). The
price is a slower start and a worker as large as the single daemon (docs/performance.md, the workers paragraph).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import selectors
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from .config import Config
from .core.mediastats import CallMedia
from .core.model import Pinhole
from .daemon import CHECK_TABLE_SECONDS
from .kernel.fanout import Fanout
from .kernel.nft import Nft, NftError
from .kernel.reader import NO_TABLE
from .kernel.table import NftTable
from .metrics import QueueCollector, serve, supervisor_registry
from .sdnotify import Notifier
from .workers import EXIT_MISSING, worker_main

log = logging.getLogger("nfsip")

# A worker that has not beaten (nfsip.workers.HEARTBEAT_SECONDS) for this long, or for systemd's ping
# interval if that is longer, is considered hung: no more watchdog pings, and systemd restarts the service.
STALE_SECONDS = 3.0
START_SECONDS = 30.0
RESTART_DELAY = 1.0
# More deaths than this within RESTART_WINDOW: something is wrong that restarting does not fix.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0


class WorkerError(RuntimeError):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class WorkerSlot:
    index: int
    process: BaseProcess | None = None
    link: Connection | None = None
    pid: int = 0
    ready: bool = False
    last_beat: float = 0.0
    restart_at: float = 0.0  # > 0: dead, start again at this time
    deaths: list[float] = field(default_factory=list)
    media: dict[tuple[str, str], CallMedia] = field(default_factory=dict)


class Supervisor:
    def __init__(
        self,
        config: Config,
        log_format: str = "%(levelname)s %(name)s: %(message)s",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.log_format = log_format
        # Comments keep the wall-clock start times they were read with: identity between clocks here. The
        # queue rules are the fanout's.
        self.table = NftTable(config, Nft(config.table_name), queue_rule=False)
        self.fanout: Fanout | None = None
        self.slots = [WorkerSlot(i) for i in range(config.workers)]
        self._ctx = multiprocessing.get_context("spawn")
        self._selector = selectors.DefaultSelector()
        self._media_snapshot: list[CallMedia] = []
        self._multiproc_dir = ""
        self._stop = False
        self._installed = False

    # -- table -----------------------------------------------------------------------------------------------
    def install(self) -> None:
        """Replace the table (carrying over a previous run's pinholes, which the workers then adopt), with
        the fanout in place and every worker's chain parked."""
        left_behind = self._kernel_pinholes()
        self.table.install()
        self._installed = True
        if left_behind:
            self.table.apply(left_behind, ())
            log.info("carried %d pinholes left by a previous run into the new table", len(left_behind))
        self.fanout = Fanout(
            self.config.table_name,
            self.config.workers,
            self.config.queue_num,
            self.config.queue_bypass,
            self.table.native_queue,
            self.config.wan_interface,
        )
        self.fanout.install(ready=())
        log.info(
            "table inet %s installed; WAN %s; %d workers on queues %d-%d via %s",
            self.config.table_name,
            self.config.wan_interface,
            self.config.workers,
            self.config.queue_num,
            self.config.queue_num + self.config.workers - 1,
            "nft queue" if self.table.native_queue else "xt NFQUEUE (nft_compat)",
        )

    def _kernel_pinholes(self) -> list[Pinhole]:
        try:
            return self.table.pinholes()
        except NftError as exc:
            log.warning("could not read the existing table (%s); its pinholes are not taken over", exc)
            return []

    def _ready_set(self) -> set[int]:
        return {s.index for s in self.slots if s.ready}

    def ensure_installed(self) -> None:
        """Put the table and the fanout back after another ruleset load, and have the workers restore their
        pinholes (a table recreated by an `include` of nft/nfsip.nft is empty)."""
        assert self.fanout is not None
        ready = self._ready_set()
        if self.table.exists() and self.fanout.installed(ready):
            return
        log.warning(
            "table inet %s or its queue fanout was removed by another ruleset load; restoring", self.config.table_name
        )
        if not self.table.exists():
            self.table.restore(NO_TABLE)
        self.fanout.install(ready)
        for slot in self.slots:
            if slot.ready and slot.link is not None:
                self._send(slot, ("restore",))

    def uninstall(self) -> None:
        if self._installed:
            self.table.remove()
            self._installed = False

    # -- workers ----------------------------------------------------------------------------------------------
    def start_worker(self, slot: WorkerSlot) -> None:
        if self.fanout is not None:
            self.fanout.park(slot.index)
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=worker_main,
            args=(self.config, slot.index, theirs, os.getpid(), self._worker_format(slot.index)),
            name=f"nfsip-worker-{slot.index}",
        )
        process.start()
        theirs.close()
        slot.process, slot.link, slot.pid = process, ours, process.pid or 0
        slot.ready, slot.restart_at, slot.last_beat = False, 0.0, self.clock()
        self._selector.register(ours, selectors.EVENT_READ, ("link", slot))
        self._selector.register(process.sentinel, selectors.EVENT_READ, ("exit", slot))
        log.info("worker %d started (pid %d, queue %d)", slot.index, slot.pid, self.config.queue_num + slot.index)

    def _worker_format(self, index: int) -> str:
        return self.log_format.replace("%(message)s", f"worker {index}: %(message)s")

    def _send(self, slot: WorkerSlot, message: tuple[Any, ...]) -> None:
        if slot.link is None:
            return
        try:
            slot.link.send(message)
        except OSError:
            pass  # it is dying; its exit is handled through its sentinel

    def _on_link(self, slot: WorkerSlot) -> None:
        link = slot.link
        if link is None:
            return
        try:
            while link.poll():
                self._on_message(slot, link.recv())
        except (EOFError, OSError):
            self._selector.unregister(link)
            slot.link = None

    def _on_message(self, slot: WorkerSlot, message: tuple[Any, ...]) -> None:
        kind = message[0]
        slot.last_beat = self.clock()
        if kind == "ready":
            assert self.fanout is not None
            self.fanout.unpark(slot.index)
            slot.ready = True
            log.info("worker %d ready", slot.index)
        elif kind == "media":
            slot.media = {(c.call_id, c.lan_ip): c for c in message[2]}
            self._refresh_media()
        elif kind == "gone":
            for key in message[2]:
                slot.media.pop(key, None)
            self._refresh_media()

    def _refresh_media(self) -> None:
        # Replaced whole: the HTTP thread reads this list, never the dicts being changed.
        self._media_snapshot = [c for slot in self.slots for c in slot.media.values()]

    def _on_exit(self, slot: WorkerSlot, started: bool) -> None:
        """A worker process ended: before the service was up that is fatal, after it the worker is restarted
        (with its chain parked until the new one is ready)."""
        from prometheus_client import multiprocess

        process = slot.process
        assert process is not None
        process.join()
        code = process.exitcode
        self._selector.unregister(process.sentinel)
        if slot.link is not None:
            self._selector.unregister(slot.link)
            slot.link.close()
        slot.process, slot.link, slot.ready, slot.media = None, None, False, {}
        self._refresh_media()
        multiprocess.mark_process_dead(slot.pid, self._multiproc_dir)  # its gauges stop counting
        if self._stop:
            return
        if not started:
            raise WorkerError(
                f"worker {slot.index} exited with {code} before it was ready",
                EXIT_MISSING if code == EXIT_MISSING else 1,
            )
        now = self.clock()
        slot.deaths = [t for t in slot.deaths if now - t < RESTART_WINDOW] + [now]
        if len(slot.deaths) > MAX_RESTARTS:
            raise WorkerError(f"worker {slot.index} died {len(slot.deaths)} times in {RESTART_WINDOW:.0f}s")
        log.error("worker %d (pid %d) exited with %s; restarting it", slot.index, slot.pid, code)
        assert self.fanout is not None
        self.fanout.park(slot.index)
        slot.restart_at = now + RESTART_DELAY

    # -- run ----------------------------------------------------------------------------------------------------
    def stop(self, *_args: object) -> None:
        self._stop = True

    def run(self) -> None:
        # Before any worker starts (and imports prometheus_client): their metrics go to per-process files.
        self._multiproc_dir = tempfile.mkdtemp(prefix="nfsip-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._multiproc_dir
        notifier = Notifier()
        try:
            if self.config.metrics_listen:
                serve(
                    supervisor_registry(
                        self._multiproc_dir,
                        lambda: self._media_snapshot,
                        QueueCollector(
                            self.config.table_name,
                            tuple(range(self.config.queue_num, self.config.queue_num + self.config.workers)),
                        ),
                    ),
                    self.config.metrics_listen,
                )
            self.install()
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
            for slot in self.slots:
                self.start_worker(slot)
            self._wait_ready(notifier)
            self._loop(notifier)
        finally:
            notifier.stopping()
            try:
                self.uninstall()
            finally:
                self._stop_workers()
                notifier.close()
                self._selector.close()
                shutil.rmtree(self._multiproc_dir, ignore_errors=True)
                log.info("table inet %s removed; stopped", self.config.table_name)

    def _poll(self, timeout: float, started: bool) -> None:
        for key, _ in self._selector.select(timeout=timeout):
            what, slot = key.data
            if what == "link":
                self._on_link(slot)
            elif slot.process is not None and key.fileobj == slot.process.sentinel:
                if slot.link is not None:
                    self._on_link(slot)  # its last messages first
                self._on_exit(slot, started)

    def _wait_ready(self, notifier: Notifier) -> None:
        deadline = self.clock() + START_SECONDS
        while not all(s.ready for s in self.slots):
            if self._stop:
                return
            if self.clock() > deadline:
                raise WorkerError(f"workers not ready after {START_SECONDS:.0f}s")
            self._poll(0.5, started=False)
        log.info("ready: %d workers", len(self.slots))
        notifier.ready(f"{len(self.slots)} workers")

    def _loop(self, notifier: Notifier) -> None:
        last_check = self.clock()
        while not self._stop:
            self._poll(1.0, started=True)
            now = self.clock()
            for slot in self.slots:
                if slot.process is None and slot.restart_at and now >= slot.restart_at and not self._stop:
                    self.start_worker(slot)
            if now - last_check >= CHECK_TABLE_SECONDS:
                last_check = now
                try:
                    self.ensure_installed()
                except (NftError, OSError, RuntimeError) as exc:
                    log.error("cannot restore table inet %s: %s", self.config.table_name, exc)
            stale = max(STALE_SECONDS, notifier.watchdog_interval)
            healthy = all(s.ready and now - s.last_beat < stale for s in self.slots)
            if notifier.watchdog_interval and healthy:
                notifier.watchdog()

    def _stop_workers(self, timeout: float = 10.0) -> None:
        self._stop = True
        running = [s for s in self.slots if s.process is not None and s.process.is_alive()]
        for slot in running:
            assert slot.process is not None
            slot.process.terminate()
        deadline = time.monotonic() + timeout
        for slot in running:
            assert slot.process is not None
            slot.process.join(max(0.1, deadline - time.monotonic()))
            if slot.process.is_alive():
                log.error("worker %d did not stop; killing it", slot.index)
                slot.process.kill()
                slot.process.join()
