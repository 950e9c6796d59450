"""The daemon: the queue loop that ties the kernel adapters to the sans-I/O engine.

Per queued datagram, one way: bytes -> decode (nfsip.core.packet) -> flow (who is the LAN host: conntrack)
-> engine decision -> pinholes to the kernel in one nft transaction -> encode -> verdict -> after the
verdict, purge conntrack of what was removed. Whatever goes wrong, the datagram is accepted unchanged and
the reason counted: nfsip never drops SIP and never leaves a packet without a verdict.

The daemon is given its adapters (nfsip.adapters): `Daemon.from_config` makes the real ones. The same
class runs alone (it owns the table, systemd supervises it) and as one worker of several (nfsip.workers:
its own queue, port slice and share of the caps, a `Shard` of the LAN hosts, the supervisor's pipe).
"""

from __future__ import annotations

import logging
import selectors
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from . import loglines
from .adapters import (
    ConntrackTable,
    FixedAddress,
    HostAddresses,
    KernelReads,
    NoHostAddresses,
    OpenQueue,
    PacketQueue,
    PinholeTable,
    QueuedPacket,
    SupervisorLink,
    WanAddress,
)
from .config import Config
from .core.engine import Engine
from .core.mediastats import CallMedia, MediaStats
from .core.model import (
    CallEnded,
    Decision,
    Direction,
    Endpoint,
    Flow,
    Pinhole,
)
from .core.packet import PacketError, decode_udp, encode_udp
from .kernel import reader
from .kernel.conntrack import Conntrack
from .kernel.firstpacket import FirstPackets
from .kernel.neighbours import Neighbours
from .kernel.netinfo import InterfaceError, WanInterface
from .kernel.nft import Nft, NftError
from .kernel.queue import Queue
from .kernel.table import NftTable
from .kernel.tcprelay import Relayed, TcpRelay
from .loglines import NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING
from .metrics import Metrics, QueueCollector
from .sdnotify import Notifier, SystemdLink

if TYPE_CHECKING:
    from .workers import Shard

log = logging.getLogger("nfsip")

CHECK_TABLE_SECONDS = 5.0
# Conntrack purges are batched: a dump walks the whole conntrack hash (milliseconds on a big table).
SWEEP_SECONDS = 0.5
TICK_SECONDS = 0.1
# Methods with their own metrics label; any other token counts as "other" (a LAN host choosing method
# names must not be able to create unbounded metric series). Responses are labelled by class ("2xx").
_KINDS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY", "PUBLISH"}
    | {"INFO", "REFER", "MESSAGE", "UPDATE"}
)


def _count_media(counter: Any, holes: Iterable[Pinhole]) -> None:
    """Add the media pinholes among `holes` to a counter labelled by address family."""
    ipv4 = ipv6 = 0
    for hole in holes:
        if hole.kind != "sip":
            if ":" in hole.lan.ip:
                ipv6 += 1
            else:
                ipv4 += 1
    if ipv4:
        counter.labels("ipv4").inc(ipv4)
    if ipv6:
        counter.labels("ipv6").inc(ipv6)


def _changes_kernel(decision: Decision) -> bool:
    return bool(decision.install or decision.remove or decision.recreate)


# Verdicts held back for one transaction at most this many datagrams (the rest of a long drain waits for the
# next): bounds the delay a busy queue adds to the first of them.
BATCH_MAX = 32


class _Held(NamedTuple):
    """A datagram decided on, waiting for its verdict (nfsip.daemon.Daemon.flush)."""

    pkt: QueuedPacket
    started: float
    raw: bytes
    outcome: str
    decision: Decision | None


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        table: PinholeTable,
        conntrack: ConntrackTable,
        reader: KernelReads,
        open_queue: OpenQueue,
        wan: WanAddress,
        link: SupervisorLink,
        shard: Shard | None = None,
        hosts: HostAddresses | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`shard`: as a worker (nfsip.workers), the LAN hosts it owns, and the supervisor owns the table;
        None: the one daemon, which installs, checks and removes the table. `hosts`: the LAN hosts' other
        addresses (none known when None: an SDP may name only the address its SIP came from)."""
        self.config = config
        self.clock = clock
        self.table = table
        self.conntrack = conntrack
        self.reader = reader
        self.open_queue = open_queue
        self.wan = wan
        self.link = link
        self.shard = shard
        self.hosts = hosts or NoHostAddresses()
        self.media = MediaStats(config.one_way_seconds)
        self._media_snapshot: list[CallMedia] = []
        self._last_sample = 0.0
        self._last_check = 0.0
        self._last_sweep = 0.0
        self._last_tick = 0.0
        self.metrics = Metrics(lambda: self._media_snapshot, QueueCollector(config.table_name, (config.queue_num,)))
        self.public_ip = self._wan_address()
        self.engine = Engine.from_config(self.public_ip, config)
        # Policy refusals are logged once per (reason, LAN host) per minute: a flood must not flood the log.
        self._refusal_logged: dict[tuple[str, str], float] = {}
        self.first_packets = FirstPackets()
        self._stop = False
        self._held: list[_Held] = []
        # Metric children by label values: labels() takes a lock and builds a key on every call, twice per
        # datagram. Both label sets are bounded (outcomes; direction x _KINDS).
        self._verdict_counters: dict[str, Any] = {}
        self._message_counters: dict[tuple[str, str, str, str], Any] = {}
        self.tcp: TcpRelay | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        shard: Shard | None = None,
        link: SupervisorLink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Daemon:
        """The daemon with the kernel's adapters (nfsip.kernel); supervised by systemd unless `link` says
        otherwise (a worker's: nfsip.workers)."""
        # Element comments carry wall-clock start times (for `nfsip status` ages); the engine runs on the
        # monotonic clock, which does not jump with NTP.
        nft = Nft(config.table_name, epoch_of=lambda t: time.time() - (clock() - t))
        return cls(
            config,
            table=NftTable(config, nft),
            conntrack=Conntrack(clock),
            reader=reader.KernelReader(config.table_name),
            open_queue=partial(Queue, config.queue_num),
            wan=FixedAddress(config.public_address) if config.public_address else WanInterface(config.wan_interface),
            link=link or SystemdLink(Notifier()),
            shard=shard,
            hosts=Neighbours(clock),
            clock=clock,
        )

    # -- lifecycle ------------------------------------------------------------------------------------
    def install(self) -> None:
        """Alone: install (replace) nfsip's table; pinholes a previous run left (kill -9, crash) are carried
        over into the new table and the engine's state, so their calls can still be torn down by signalling.
        As a worker: adopt the kernel's pinholes of its own LAN hosts (its predecessor's, or a previous run's
        that the supervisor carried into its new table)."""
        left_behind = self._kernel_pinholes()
        if self.shard is not None:
            shard = self.shard
            self._adopt([h for h in left_behind if shard.owns(h.lan.ip)], reapply=False)
            log.info(
                "queue %d; public address %s; media ports %d-%d; %s",
                self.config.queue_num,
                self.public_ip,
                self.config.media_port_min,
                self.config.media_port_max,
                self.table.features(),  # asked now, not at the first SIP message
            )
            return
        self.table.install()
        self._adopt(left_behind, reapply=True)
        log.info(
            "table inet %s installed; WAN %s public address %s; queue %d via %s; %s",
            self.config.table_name,
            self.config.wan_interface,
            self.public_ip,
            self.config.queue_num,
            "nft queue" if self.table.native_queue else "xt NFQUEUE (nft_compat)",
            self.table.features(),
        )

    def _adopt(self, left_behind: list[Pinhole], *, reapply: bool) -> None:
        """Take over pinholes read from the kernel (their comments carry wall-clock start times; the engine
        runs on the monotonic clock). `reapply`: put them into a table that was just replaced."""
        if not left_behind:
            return
        now, wall = self.clock(), time.time()
        left_behind = [replace(h, since=now - (wall - h.since) if h.since else now) for h in left_behind]
        if reapply:
            self.table.apply(left_behind, ())
        self.engine.adopt(left_behind, now)
        self._update_gauges()
        log.info(
            "took over %d pinholes of %d calls and %d registrations left by a previous run",
            len(left_behind),
            len(self.engine.calls),
            len(self.engine.registrations),
        )

    def ensure_installed(self, state: str) -> None:
        """Put nfsip's table, queue rule and pinholes back if someone else's ruleset load removed them: an
        admin's `nft -f /etc/nftables.conf` starts with `flush ruleset`, and where it includes
        nft/nfsip.nft it recreates the table empty and without the queue rule (which nft -f cannot hold).
        `state`: what the reader's thread found (nfsip.kernel.reader.table_state)."""
        if state == reader.INSTALLED:
            return
        log.warning(
            "table inet %s or its queue rule was removed by another ruleset load; restoring", self.config.table_name
        )
        self.table.restore(state)
        self.restore_pinholes()

    def restore_pinholes(self) -> int:
        """Put the engine's live pinholes into a table that was put back empty; returns how many."""
        holes = self.engine.live_pinholes(self.clock())
        if holes:
            try:
                self.table.apply(holes, ())
            except NftError:
                for error in self.table.apply_each(holes, ()):
                    log.warning("nft: %s", error)
        return len(holes)

    def _kernel_pinholes(self) -> list[Pinhole]:
        """The pinholes in an existing nfsip table, each with its remaining lifetime."""
        try:
            return self.table.pinholes()
        except NftError as exc:  # an incompatible older table: start afresh
            log.warning("could not read the existing table (%s); its pinholes are not taken over", exc)
            return []

    def uninstall(self) -> None:
        """Remove nfsip's table. Calls in progress keep their media: the NAT bindings live in conntrack,
        which is left alone (the flows idle out), so `systemctl restart nfsip` does not cut calls; only
        new flows need the daemon back. `nfsip flush` removes the media conntrack entries too."""
        self.table.remove()

    def stop(self, *_args: object) -> None:
        self._stop = True

    def run(self) -> None:
        """Until stop() (the caller's signal handlers call it) or the supervisor is gone: the queue bound,
        the table taken over, the packet loop; at the end every queued datagram still gets its verdict and
        the scheduled purges are done. Alone, the table is removed first; a worker's supervisor removes it."""
        if self.config.metrics_listen:
            self.metrics.serve(self.config.metrics_listen)
        # Bind and configure the queue before the divert rules exist: the configuration's ACK is read
        # from the queue's socket, where no packet may arrive yet (nfsip.kernel.queue).
        queue = self.open_queue(self.on_packet)
        selector = selectors.DefaultSelector()
        try:
            self.install()
            selector.register(queue.fd, selectors.EVENT_READ, "queue")
            for source, fd in (("address", self.wan.fileno()), ("link", self.link.fileno())):
                if fd is not None:
                    selector.register(fd, selectors.EVENT_READ, source)
            self._start_tcp_relay(selector)
            self.link.ready(f"public address {self.public_ip}")
            self._loop(queue, selector)
        finally:
            self.link.stopping()
            if self.tcp is not None:
                self.tcp.shutdown()  # the phones' connections end; they reconnect to the next daemon
            selector.close()
            try:
                if self.shard is None:
                    self.uninstall()
                self.drain(queue)  # what was queued before the rules went away still gets its verdict
                self.finish_purges()
                if self.shard is None:
                    log.info("table inet %s removed; stopped", self.config.table_name)
                else:
                    log.info("stopped")
            finally:
                queue.close()
                self.reader.close()
                self.conntrack.close()
                self.wan.close()
                self.link.close()

    def _loop(self, queue: PacketQueue, selector: selectors.BaseSelector) -> None:
        """The packet loop, until stop(): drain the queue when it is readable, follow the WAN address, take
        the supervisor's requests, housekeeping between batches."""
        wake = self.link.wake_seconds  # at least this often, for timers and the watchdog or heartbeat
        while not self._stop and not self.link.lost:
            timeout = min(wake, SWEEP_SECONDS) if self.conntrack.pending else wake
            for key, mask in selector.select(timeout=timeout):
                if isinstance(key.data, tuple) and self.tcp is not None:
                    self.tcp.on_event(key.data[1], mask)
                elif key.data == "queue":
                    self.drain(queue)
                elif key.data == "address":
                    if self.wan.changed():
                        self.readdress()
                else:
                    self.on_requests()
            self.tick()
            self.link.alive(self.clock())

    # -- SIP over TCP (nfsip.kernel.tcprelay) ----------------------------------------------------------------
    def _start_tcp_relay(self, selector: selectors.BaseSelector) -> None:
        """Listen for TCP SIP and have the table redirect it here. Alone only: with several workers TCP SIP is
        left alone (it crosses unhelped), and so it is when the port cannot be had."""
        port = self.config.tcp_relay_port
        if not port:
            return
        if self.shard is not None:
            log.warning("SIP over TCP is not relayed with workers > 1: it crosses the router unhelped")
            return
        try:
            self.tcp = TcpRelay(
                port,
                selector,
                self._tcp_message,
                self._tcp_phone_for,
                self.metrics.tcp_errors_inc,
                self.clock,
                rate=self.config.sip_rate_per_host,
                burst=self.config.sip_burst_per_host,
                on_pause=self.metrics.tcp_paused.inc,
            )
            self.table.start_relay()
        except (OSError, NftError) as exc:
            log.error("SIP over TCP not relayed: cannot listen on port %d or redirect to it: %s", port, exc)
            if self.tcp is not None:
                self.tcp.shutdown()
                self.tcp = None
            return
        log.info("SIP over TCP relayed through port %d", port)

    def _tcp_phone_for(self, public: Endpoint, sender_ip: str) -> Endpoint | None:
        return self.engine.registrations.phone_for(public, sender_ip)

    def _tcp_message(self, conn: Relayed, direction: Direction, raw: bytes) -> bytes:
        """One whole SIP message the relay read from a phone (OUTBOUND) or from the server (INBOUND): decide,
        put its pinholes in place (before the message goes on, as for a datagram), and return the bytes to
        send on: rewritten, or as they came."""
        started = time.perf_counter()
        out, outcome, decision = raw, "internal-error", None
        try:
            lan = conn.phone.peer
            hosts = self.hosts.addresses_of(lan.ip) if direction is Direction.OUTBOUND else frozenset()
            flow = Flow(direction, lan, conn.public, conn.server.peer, hosts, transport="tcp")
            outcome, decision = self._decide(flow, raw)
            failed = self._apply([decision]) if _changes_kernel(decision) else set()
            if failed:
                outcome = "nft-error"
            elif decision.payload is not None:
                out = decision.payload
            self._after_verdict(decision.remove, decision.opened if not failed else ())
        except Exception:  # the message goes on as it came; the connection and the daemon live on
            log.exception("internal error; TCP message passed unchanged")
            out, outcome = raw, "internal-error"
        self._count_verdict(outcome, started)
        if log.isEnabledFor(logging.DEBUG):
            loglines.log_tcp_message(direction, raw, decision, outcome)
        return out

    def on_requests(self) -> None:
        """The supervisor asked: "restore" after it put the table back empty (a worker's pinholes are its
        own to put back)."""
        for request in self.link.requests():
            if request == "restore":
                log.info("restored %d pinholes after the table was reinstalled", self.restore_pinholes())

    def _wan_address(self) -> str:
        """The WAN interface's address, or "" while it has none: a PPPoE link or a DHCP lease may come up
        after nfsip starts. Until then every datagram passes unchanged; the address event brings it in."""
        try:
            return self.wan.current()
        except InterfaceError as exc:
            log.warning("%s; SIP passes unchanged until it has an IPv4 address", exc)
            return ""

    def readdress(self) -> None:
        """The WAN address changed: rewrite with the new one from the next message on, and drop every
        pinhole of the old one (the far ends can no longer reach it)."""
        try:
            new_ip = self.wan.current()
        except InterfaceError as exc:
            new_ip = None
            log.warning("WAN address gone (%s); keeping %s until a new one appears", exc, self.public_ip)
        if new_ip == self.public_ip:
            return
        if not self.public_ip and new_ip:
            log.info("WAN address is %s; rewriting from now on", new_ip)
            self.public_ip = self.engine.public_ip = new_ip
            return
        stale = self.engine.drop_all(self.clock())
        if new_ip is not None:
            log.info(
                "WAN address changed from %s to %s; %d pinholes of the old one removed",
                self.public_ip,
                new_ip,
                len(stale),
            )
            self.public_ip = new_ip
            self.engine.public_ip = new_ip
        if stale:
            _count_media(self.metrics.pinholes_closed, stale)
            try:
                self.table.apply((), stale)
            except NftError:
                self.table.apply_each((), stale)
            self._after_verdict(tuple(stale), ())
        self._update_gauges()

    def tick(self) -> None:
        """Housekeeping between packets: sample the media counters; end calls and registrations whose
        deadline passed, with their map entries (gone from the kernel already unless the engine's deadline
        came first, as for Timer B) and their media flows' conntrack entries."""
        now = self.clock()
        if now - self._last_tick < TICK_SECONDS:
            return  # between packet batches of a busy queue: housekeeping need not run every time
        self._last_tick = now
        if self.tcp is not None:
            self.tcp.expire()
            self.metrics.tcp_connections.set(len(self.tcp.connections))
        if self.conntrack.pending and now - self._last_sweep >= SWEEP_SECONDS:
            self._last_sweep = now
            self.sweep_conntrack()
        # The table check and the counter read run in the reader's thread (nfsip.kernel.reader): at 20,000
        # pinholes they took 1.0 s and 0.8 s, during which SIP waited here.
        if self.shard is None and now - self._last_check >= CHECK_TABLE_SECONDS:
            self._last_check = now
            self.reader.ask(reader.TABLE)
        if now - self._last_sample >= self.config.media_sample_interval:
            self._last_sample = now
            if self.engine.calls.calls:
                self.reader.ask(reader.COUNTERS, self._media_endpoints())
            else:
                self.sample_media(now, {})
        for what, value in self.reader.answers():
            if isinstance(value, Exception):
                log.warning("reading table inet %s (%s) failed: %s", self.config.table_name, what, value)
            elif what == reader.TABLE:
                try:
                    self.ensure_installed(value)
                except (NftError, OSError) as exc:
                    log.error("cannot restore table inet %s: %s", self.config.table_name, exc)
            elif what == reader.COUNTERS:
                self.sample_media(now, value)
        expired, ended = self.engine.expire_ended(now)
        self._log_ended(ended)
        if not expired:
            return
        _count_media(self.metrics.pinholes_expired, expired)
        try:
            self.table.apply((), expired)
        except NftError as exc:
            self.metrics.nft_errors.inc()
            log.warning("removing expired pinholes failed (%s); retrying one by one", exc)
            self.table.apply_each((), expired)
        self._after_verdict(tuple(expired), ())
        self._update_gauges()

    # -- per packet -----------------------------------------------------------------------------------
    def on_packet(self, pkt: QueuedPacket) -> None:
        """Decide now, give the verdict at flush(): the pinhole changes of every datagram read in one drain
        of the queue (at most BATCH_MAX) go to the kernel as one nft transaction, before any of their
        verdicts. One transaction costs about the same for 1 or 30 messages' elements (the kernel's commit
        and the syscall dominate), and under load one drain holds many datagrams."""
        started = time.perf_counter()
        try:
            raw = pkt.get_payload()
            outcome, decision = self._process(pkt.hook, raw)
        except Exception:  # never leave a packet without a verdict, never crash the loop
            log.exception("internal error; datagram passed unchanged")
            raw, outcome, decision = b"", "internal-error", None
        self._held.append(_Held(pkt, started, raw, outcome, decision))
        if len(self._held) >= BATCH_MAX:
            self.flush()

    def drain(self, queue: PacketQueue) -> None:
        """Handle everything waiting on the queue, then give the held verdicts."""
        try:
            queue.drain()
        finally:
            self.flush()

    def flush(self) -> None:
        """Apply the held datagrams' pinhole changes in one transaction, then give their verdicts in the
        order they came: rewritten where the changes they needed are in place, else unchanged."""
        held, self._held = self._held, []
        if not held:
            return
        changing = [h.decision for h in held if h.decision is not None and _changes_kernel(h.decision)]
        failed: set[int] = set()
        if changing:
            try:
                failed = self._apply(changing)
            except Exception:  # whatever happened, every datagram still gets its verdict
                log.exception("internal error applying pinhole changes; datagrams passed unchanged")
                failed = {id(d) for d in changing}
        debug = log.isEnabledFor(logging.DEBUG)  # once per drain: at info the per-datagram line costs nothing
        for h in held:
            self._verdict(h, h.decision is not None and id(h.decision) in failed, debug)

    def _verdict(self, h: _Held, failed: bool, debug: bool = False) -> None:
        outcome, remove, fresh = h.outcome, (), ()
        decision = h.decision
        try:
            if decision is not None:
                remove = decision.remove
                if failed:
                    outcome = "nft-error"  # the SDP would name ports without pinholes: pass it unchanged
                else:
                    fresh = decision.opened
                    if decision.payload is not None:
                        try:
                            h.pkt.set_payload(encode_udp(h.raw, decision.payload))
                        except PacketError as exc:  # a rewrite that no longer fits in one IP datagram
                            outcome, fresh = exc.reason, ()
        except Exception:
            log.exception("internal error; datagram passed unchanged")
            outcome = "internal-error"
        h.pkt.accept()
        self._count_verdict(outcome, h.started)
        self._after_verdict(remove, fresh)
        if debug:
            loglines.log_datagram(h.pkt.hook, h.raw, h.decision, outcome)

    def _count_verdict(self, outcome: str, started: float) -> None:
        """One message's verdict (a datagram's, or a relayed message's) in nfsip_verdicts_total and its time
        in nfsip_verdict_seconds."""
        counter = self._verdict_counters.get(outcome)
        if counter is None:
            counter = self._verdict_counters[outcome] = self.metrics.verdicts.labels(outcome)
        counter.inc()
        self.metrics.verdict_seconds.observe(time.perf_counter() - started)

    def _process(self, hook: int, raw: bytes) -> tuple[str, Decision | None]:
        try:
            dgram = decode_udp(raw)
        except PacketError as exc:
            return exc.reason, None
        flow = self._flow(hook, dgram.src, dgram.sport, dgram.dst, dgram.dport, dgram.payload)
        if isinstance(flow, str):
            return flow, None
        return self._decide(flow, dgram.payload)

    def _decide(self, flow: Flow, payload: bytes) -> tuple[str, Decision]:
        """The engine's decision for one message (a datagram's, or one the TCP relay framed), counted and
        logged."""
        decision = self.engine.handle(flow, payload, self.clock())
        kind = decision.kind if decision.kind in _KINDS or decision.kind.endswith("xx") else "other"
        family = "ipv6" if ":" in flow.lan.ip else "ipv4"
        labels = (flow.direction.value, kind if decision.kind else "unparsed", family, flow.transport)
        counter = self._message_counters.get(labels)
        if counter is None:
            counter = self._message_counters[labels] = self.metrics.sip_messages.labels(*labels)
        counter.inc()
        if decision.outcome == "parse-error":
            self.metrics.parse_errors.labels(decision.detail).inc()
        for event in decision.events:
            loglines.log_event(event)
        self._log_ended(decision.ended)
        for reason in decision.refusals:
            self.metrics.refusals.labels(reason).inc()
            self._log_refusal(reason, flow.lan.ip, decision.detail)
        return decision.outcome, decision

    def _flow(self, hook: int, src: str, sport: int, dst: str, dport: int, payload: bytes) -> Flow | str:
        if ":" in src:
            return self._flow6(hook, src, sport, dst, dport, payload)
        if not self.public_ip:
            return "no-public-address"
        if hook == NF_INET_POST_ROUTING:
            if src != self.public_ip:
                # Before source NAT (sip_new_to_wan), or a LAN host that is not NATed at all: nothing to
                # rewrite; remember who sent these bytes for their second pass (nfsip.kernel.firstpacket).
                self.first_packets.note(payload, Endpoint(src, sport), self.clock())
                return "not-translated"
            public = Endpoint(src, sport)
            remote = Endpoint(dst, dport)
            lan = self.conntrack.lan_endpoint(remote, public)
            if lan is None:
                lan = self.first_packets.sender(payload, self.clock())
            if lan is None:
                return "no-conntrack"
            if lan.ip == self.public_ip:
                return "not-from-lan"  # the router's own SIP traffic
            return Flow(
                Direction.OUTBOUND, lan, Endpoint(self.public_ip, sport), remote, self.hosts.addresses_of(lan.ip)
            )
        if hook == NF_INET_PRE_ROUTING:
            if dst == self.public_ip:
                return "not-for-lan"
            return Flow(Direction.INBOUND, Endpoint(dst, dport), Endpoint(self.public_ip, 0), Endpoint(src, sport))
        return "unexpected-hook"

    def _flow6(self, hook: int, src: str, sport: int, dst: str, dport: int, payload: bytes) -> Flow | str:
        """An IPv6 datagram. Whether the router translates IPv6 at all shows only in conntrack: the source of
        an outbound datagram after source NAT is the host's own address without NAT, the router's (or a
        mapped one) with it. The first datagram of a new flow is queued twice, before and after NAT, with no
        confirmed conntrack entry either time: its first pass only notes the sender, as for IPv4, and the
        second is recognised by its bytes."""
        if hook == NF_INET_POST_ROUTING:
            now = self.clock()
            public = Endpoint(src, sport)
            remote = Endpoint(dst, dport)
            lan = self.conntrack.lan_endpoint(remote, public) or self.first_packets.sender(payload, now)
            if lan is None:
                self.first_packets.note(payload, public, now)
                return "not-translated"
            return Flow(Direction.OUTBOUND, lan, public, remote, self.hosts.addresses_of(lan.ip))
        if hook == NF_INET_PRE_ROUTING:
            # The public address it was sent to is the engine's to know (from the host's outbound SIP).
            return Flow(Direction.INBOUND, Endpoint(dst, dport), Endpoint(dst, 0), Endpoint(src, sport))
        return "unexpected-hook"

    def _apply(self, decisions: list[Decision]) -> set[int]:
        """Put the decisions' pinhole changes into the kernel, in order, as one transaction. Returns the ids
        of the decisions whose installs failed (their datagrams must pass unchanged)."""
        started = time.perf_counter()
        failed: set[int] = set()
        try:
            self.table.apply_batch([(d.install, d.remove, d.recreate) for d in decisions])
        except NftError as exc:
            # Nothing of the transaction was applied: each decision again on its own (one bad message costs
            # only itself), and its pinholes all or none (_apply_one).
            self.metrics.nft_errors.inc()
            log.warning("nft transaction failed (%s); retrying message by message", exc)
            for d in decisions:
                if not self._apply_one(d):
                    failed.add(id(d))
            if failed:
                self._forget_refused([d for d in decisions if id(d) in failed])
        self.metrics.nft_seconds.observe(time.perf_counter() - started)
        _count_media(self.metrics.pinholes_closed, (h for d in decisions for h in d.remove))
        _count_media(self.metrics.pinholes_opened, (h for d in decisions if id(d) not in failed for h in d.opened))
        self._update_gauges()
        return failed

    def _apply_one(self, decision: Decision) -> bool:
        """One message's changes in a transaction of their own; False when its pinholes are not installed.
        Its installs are all or nothing, never pinhole by pinhole: a message passed unchanged must not leave
        half its pinholes behind (an RTP element without its RTCP one stayed for the call's lifetime)."""
        try:
            self.table.apply(decision.install, decision.remove, decision.recreate)
            return True
        except NftError:
            pass
        # The removals on their own (the engine has forgotten those pinholes: take out what can be), then the
        # installs once more, each key cleared first (a stale value left by an earlier run refuses the add).
        for error in self.table.apply_each((), decision.remove):
            log.warning("nft: %s", error)
        if not decision.install and not decision.recreate:
            return True
        try:
            self.table.apply_replacing(decision.install, decision.recreate)
            return True
        except NftError as exc:
            log.warning("nft: pinholes of one message not installed, none of them: %s", exc)
            return False

    def _forget_refused(self, decisions: list[Decision]) -> None:
        """The engine forgets what these messages opened, since none of it reached the kernel (their
        datagrams pass unchanged): no call is kept with pinholes it does not have. The forgotten pinholes
        are deleted too, in case a later message of the drain (its 200 OK, say) installed them after all."""
        now = self.clock()
        dropped: list[Pinhole] = []
        ended: list[CallEnded] = []
        for decision in decisions:
            holes, gone = self.engine.forget_opened(decision, now)
            dropped.extend(holes)
            ended.extend(gone)
        if dropped:
            try:
                self.table.apply((), dropped)
            except NftError as exc:
                log.warning("nft: deleting pinholes that were refused: %s", exc)
        self._log_ended(ended)

    def _after_verdict(self, remove: tuple[Pinhole, ...], fresh: tuple[Pinhole, ...]) -> None:
        """Queue the conntrack purge: removed pinholes lose their flows; new ones lose the flows that went
        around them (media the phone sent before its map entry existed was masqueraded to another port,
        and that binding would stick). The sweep runs from tick(), batched, off the per-packet path."""
        self.conntrack.schedule(removed=remove, fresh=fresh)

    def finish_purges(self) -> None:
        """Stopping: the conntrack purges scheduled or under way are done before the process exits."""
        try:
            self.metrics.conntrack_purged.inc(self.conntrack.finish())
        except Exception:
            log.exception("conntrack purge failed")

    def sweep_conntrack(self) -> None:
        """Purge the scheduled media flows from conntrack, in the sweeper thread (nfsip.kernel.conntrack)."""
        self.conntrack.sweep_in_background(self.metrics.conntrack_purged.inc)

    def _media_endpoints(self) -> frozenset[Endpoint]:
        """The LAN ends of every live call's media streams: whose conntrack counters a sample reads."""
        return frozenset(
            Endpoint(binding.lan_ip, port)
            for call in self.engine.calls.calls.values()
            for binding in call.streams.values()
            for port in binding.lan_ports
        )

    def sample_media(self, now: float, counters: dict[Endpoint, tuple[int, int, int, int]]) -> None:
        """Take a media counter sample (read by the reader's thread): per-call counts, one-way audio."""
        refused = getattr(counters, "refused", ())  # conntrack.MediaCounts: endpoints it could not look up
        if refused:
            self.metrics.media_sample_errors.inc(len(refused))
            log.warning("media counters: %d endpoint(s) left out, e.g. %s", len(refused), refused[0])
        calls = list(self.engine.calls.calls.values())
        for stats in self.media.update(calls, counters, now):
            silent = "far end -> phone" if stats.one_way == "to-lan" else "phone -> far end"
            log.warning(
                "call %s: one-way audio, no media %s for %ds (to phone %d pkts, from phone %d pkts)",
                stats.call_id,
                silent,
                self.config.one_way_seconds,
                stats.to_lan_packets,
                stats.from_lan_packets,
            )
        self._media_snapshot = list(self.media.calls.values())
        self.link.media(self._media_snapshot)

    def _log_ended(self, ended: Sequence[CallEnded]) -> None:
        """One line per ended call: Call-ID, why, duration, ports, media packets each way. The counts are
        read when the call ends: by the conntrack sweep that purges its media flows, just before it deletes
        them (the line comes from there, half a second later at most); the last sample could be seconds old."""
        if not ended:
            return
        self.link.ended([(end.call_id, end.lan_ip) for end in ended])
        if log.isEnabledFor(logging.INFO):
            for end in ended:
                lan = frozenset(h.lan for h in end.pinholes if h.kind != "sip")
                sampled = self.media.get(end.call_id, end.lan_ip)
                if lan:
                    self.conntrack.read_before_purge(lan, partial(loglines.log_call_ended, end, sampled))
                else:
                    loglines.log_call_ended(end, sampled, None)
        # An ended call's metric series go at once, not at the next counter sample. Most calls under load
        # end before any sample took them in: then the snapshot (every sampled call) is left as it is.
        gone = {(end.call_id, end.lan_ip) for end in ended if self.media.get(end.call_id, end.lan_ip) is not None}
        if gone:
            self.media.forget(gone)
            self._media_snapshot = [c for c in self._media_snapshot if (c.call_id, c.lan_ip) not in gone]

    def _log_refusal(self, reason: str, host: str, detail: str) -> None:
        now = self.clock()
        key = (reason, host)
        if now - self._refusal_logged.get(key, -1e9) < 60:
            return
        if len(self._refusal_logged) > 4096:
            self._refusal_logged.clear()
        self._refusal_logged[key] = now
        log.warning("policy: %s (%s); nothing opened", detail or reason, reason)

    def _update_gauges(self) -> None:
        # Counts the call table keeps up to date: recounting every call's pinholes here made each message
        # O(calls) (92 % of the daemon's time at 4,700 calls in bench/scale.py).
        self.metrics.calls_active.set(len(self.engine.calls))
        self.metrics.registrations_active.set(len(self.engine.registrations))
        self.metrics.pinholes_active.set(self.engine.calls.pinholes_total)
        if self.tcp is not None:
            self.metrics.tcp_connections.set(len(self.tcp.connections))
