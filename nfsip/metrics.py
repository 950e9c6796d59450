"""Prometheus metrics of the daemon (prometheus-client), in a registry of its own.

With several workers (config `workers`), each worker process counts into its own files of
prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the supervisor before it starts
them): one file per process, written only by that process, read only at scrape time. The supervisor serves
the one endpoint: `supervisor_registry()` sums counters and histograms over workers (dead ones included,
so totals never go back when a worker is restarted) and gauges over live workers ("livesum"). Per-call
media series reach the supervisor as snapshots over each worker's pipe (nfsip.supervisor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .core.mediastats import CallMedia

_LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.5)


class MediaCollector:
    """Per-call media counters, from the daemon's latest sample of conntrack accounting (read on each scrape
    from a snapshot the packet loop replaces whole: no kernel access from the HTTP thread)."""

    def __init__(self, snapshot: Callable[[], list[CallMedia]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        calls = self._snapshot()
        packets = CounterMetricFamily(
            "nfsip_call_media_packets",
            "Media packets of a live call, per direction (sampled from conntrack accounting)",
            labels=["call_id", "lan_host", "direction"],
        )
        octets = CounterMetricFamily(
            "nfsip_call_media_bytes",
            "Media bytes of a live call, per direction (sampled from conntrack accounting)",
            labels=["call_id", "lan_host", "direction"],
        )
        # (Call-ID, LAN host) identifies a call: the two legs of a hairpin call share a Call-ID.
        for call in calls:
            packets.add_metric([call.call_id, call.lan_ip, "to_lan"], call.to_lan_packets)
            packets.add_metric([call.call_id, call.lan_ip, "from_lan"], call.from_lan_packets)
            octets.add_metric([call.call_id, call.lan_ip, "to_lan"], call.to_lan_bytes)
            octets.add_metric([call.call_id, call.lan_ip, "from_lan"], call.from_lan_bytes)
        one_way = GaugeMetricFamily(
            "nfsip_one_way_calls", "Established calls with media in one direction only (for one_way_seconds)"
        )
        one_way.add_metric([], sum(1 for c in calls if c.one_way))
        yield packets
        yield octets
        yield one_way


class QueueCollector:
    """What the kernel diverted to the queue and what it let pass the rate check, read from the kernel at
    scrape time (in the HTTP thread; nothing on the packet path): the `sip_queue` chain's counter, the rate
    chains' counters and the queues' own counters. Diverted minus the verdicts the daemon gave
    (nfsip_verdicts_total) passed nfsip by unchanged: failed open on a full queue or socket (an overloaded
    daemon), or found no daemon bound. Enqueued is no measure of that: the kernel counts a datagram as
    enqueued before it finds the daemon's socket full and fails open."""

    def __init__(self, table: str, queue_nums: tuple[int, ...]) -> None:
        self._table = table
        self._queue_nums = queue_nums

    def collect(self) -> Iterator[Metric]:
        from .kernel.nft import Nft, NftError
        from .kernel.queue import queue_stats

        try:
            # A fresh libnftables context per scrape: one kept alive keeps its cache of every set element.
            nft = Nft(self._table)
            diverted: int | None = nft.diverted_packets()
            over_rate: int | None = nft.over_rate_packets() if diverted is not None else None
            tls: int | None = nft.tls_flows() if diverted is not None else None
        except (NftError, OSError):
            diverted = over_rate = tls = None
        yield from self.families(diverted, over_rate, queue_stats(self._queue_nums), tls)

    @staticmethod
    def families(
        diverted: int | None, over_rate: int | None, stats: dict[str, int] | None, tls: int | None = None
    ) -> Iterator[Metric]:
        """The families for these kernel values (a family whose value the kernel did not give is left out)."""
        if diverted is not None:
            family = CounterMetricFamily(
                "nfsip_sip_diverted_packets",
                "SIP datagrams the divert chains sent to nfsip's queue chain (kernel counter; restarts with the table)",
            )
            family.add_metric([], diverted)
            yield family
        if over_rate is not None:
            family = CounterMetricFamily(
                "nfsip_sip_over_rate_packets",
                "SIP datagrams of LAN hosts over sip_rate_per_host, accepted unchanged instead of queued "
                "(kernel counter; restarts with the table)",
            )
            family.add_metric([], over_rate)
            yield family
        if tls is not None:
            family = CounterMetricFamily(
                "nfsip_sip_tls_flows",
                "New TLS SIP connections (sip_tls_ports) from the LAN, which nfsip cannot read and leaves alone "
                "(kernel counter; restarts with the table)",
            )
            family.add_metric([], tls)
            yield family
        if stats is not None:
            enqueued = CounterMetricFamily(
                "nfsip_queue_enqueued_packets",
                "Datagrams the kernel tried to deliver on nfsip's queue(s), including those that failed open at "
                "a full socket (restarts when a queue is bound anew)",
            )
            enqueued.add_metric([], stats["enqueued"])
            dropped = CounterMetricFamily(
                "nfsip_queue_dropped_packets",
                "Datagrams the kernel dropped at nfsip's queue(s): full without fail-open, or not deliverable",
                labels=["reason"],
            )
            dropped.add_metric(["queue-full"], stats["queue_dropped"])
            dropped.add_metric(["socket"], stats["user_dropped"])
            yield enqueued
            yield dropped


class Metrics:
    def __init__(
        self,
        media_snapshot: Callable[[], list[CallMedia]] | None = None,
        queues: QueueCollector | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        if media_snapshot is not None:
            r.register(MediaCollector(media_snapshot))
        if queues is not None:
            r.register(queues)
        self.sip_messages = Counter(
            "nfsip_sip_messages",
            "SIP messages seen, by direction, method or status class, address family and transport",
            ["direction", "kind", "family", "transport"],
            registry=r,
        )
        self.verdicts = Counter(
            "nfsip_verdicts",
            "Queued datagrams by outcome (rewritten, unchanged, or the reason they passed untouched)",
            ["outcome"],
            registry=r,
        )
        self.parse_errors = Counter(
            "nfsip_parse_errors",
            "Datagrams that were not a SIP message nfsip could parse, by reason",
            ["reason"],
            registry=r,
        )
        self.pinholes_opened = Counter(
            "nfsip_pinholes_opened", "Media pinholes opened, by address family", ["family"], registry=r
        )
        self.pinholes_closed = Counter(
            "nfsip_pinholes_closed", "Media pinholes closed by signalling, by address family", ["family"], registry=r
        )
        self.pinholes_expired = Counter(
            "nfsip_pinholes_expired",
            "Media pinholes dropped when their call state timed out, by address family",
            ["family"],
            registry=r,
        )
        # "livesum": with several workers, the sum over the live ones (ignored in a single process).
        self.pinholes_active = Gauge(
            "nfsip_pinholes_active", "Media pinholes nfsip holds now", registry=r, multiprocess_mode="livesum"
        )
        self.calls_active = Gauge(
            "nfsip_calls_active", "Calls with media pinholes now", registry=r, multiprocess_mode="livesum"
        )
        self.registrations_active = Gauge(
            "nfsip_registrations_active",
            "Phone registrations kept reachable now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tcp_errors = Counter(
            "nfsip_tcp_relay_errors",
            "TCP SIP connections the relay gave up or refused, by reason (a framing error, a peer not reading, "
            "a connection it could not make, one not redirected by nfsip's table)",
            ["reason"],
            registry=r,
        )
        self.tcp_paused = Counter(
            "nfsip_tcp_relay_paused",
            "Times the TCP relay stopped reading a connection whose host sent more SIP than sip_rate_per_host "
            "(it reads on as the host's bucket fills: nothing is dropped)",
            registry=r,
        )
        self.tcp_connections = Gauge(
            "nfsip_tcp_connections",
            "Phone connections the TCP relay carries now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.refusals = Counter(
            "nfsip_policy_refusals",
            "Messages whose pinholes the security policy refused, by reason",
            ["reason"],
            registry=r,
        )
        self.nft_errors = Counter("nfsip_nft_errors", "Failed nft transactions", registry=r)
        self.media_sample_errors = Counter(
            "nfsip_media_sample_errors",
            "LAN media endpoints left out of a media counter sample: not a valid UDP endpoint",
            registry=r,
        )
        self.conntrack_purged = Counter(
            "nfsip_conntrack_purged", "Conntrack entries of media flows deleted", registry=r
        )
        self.verdict_seconds = Histogram(
            "nfsip_verdict_seconds",
            "Time from reading a queued datagram to its verdict",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.nft_seconds = Histogram(
            "nfsip_nft_transaction_seconds",
            "Time of one nft pinhole transaction",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def tcp_errors_inc(self, reason: str) -> None:
        self.tcp_errors.labels(reason).inc()

    def serve(self, listen: str) -> None:
        serve(self.registry, listen)


def serve(registry: CollectorRegistry, listen: str) -> None:
    """The HTTP endpoint, in a thread of its own (it reads snapshots and files, never the packet state)."""
    host, _, port = listen.rpartition(":")
    start_http_server(int(port), addr=host.strip("[]"), registry=registry)


def supervisor_registry(
    multiproc_dir: str, media_snapshot: Callable[[], list[CallMedia]], queues: QueueCollector | None = None
) -> CollectorRegistry:
    """The registry the supervisor of several workers serves: the workers' multiprocess files, summed, and
    the per-call media series of their latest snapshots."""
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)
    registry.register(MediaCollector(media_snapshot))
    if queues is not None:
        registry.register(queues)
    return registry
