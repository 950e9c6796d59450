"""Conntrack for nfsip: who sent a translated SIP datagram, and the purge of media flows.

Why a lookup at all: at postrouting srcnat+10 the queue sees an outbound SIP datagram after masquerade
(public source), and this kernel gives the queue no conntrack attributes (no
CONFIG_NETFILTER_NETLINK_GLUE_CT). The LAN host that really sent it - the only host a pinhole may ever
target - is on the other side of the conntrack entry the datagram belongs to. IPv6 goes the same way, by
the family of the addresses asked about: without NAT (the usual IPv6 router) the entry's two sides are the
host and the remote themselves.

Costs (docs/performance.md, "Netlink by hand"): a GET is cheap; a dump walks the whole conntrack hash in
the kernel whatever the filter, which takes milliseconds on a router with a big hash. So lookups are exact
GETs, cached for a few seconds per tuple, and purges are batched: `schedule()` after the verdict, and from
the daemon's housekeeping at most twice a second `sweep_in_background()`, one dump per address involved,
in a thread of its own with its own netlink socket. In the queue's thread the dumps held up every SIP
message behind them (docs/performance.md, "Bottlenecks found with the suite"). The kernel walks the hash
inside recv(), with the GIL released, so the packet loop runs on meanwhile.

Per-call media counts come from conntrack accounting too (`media_counters`): each media flow's entry counts
both its directions, in the kernel, at no measurable cost, where counter lookups in nft sets cost every
forwarded packet (docs/nftables.md). An ended call's final counts are read by the sweep that purges its
flows, just before it deletes them (`read_before_purge`): after the purge they are gone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path

from ..core.model import Endpoint, Pinhole
from .ctnetlink import CtNetlink, Entry, SourceCounts, source_key

log = logging.getLogger(__name__)

_CACHE_SECONDS = 5.0
_CACHE_LIMIT = 4096


class Conntrack:
    def __init__(
        self, clock: Callable[[], float] = time.monotonic, open_socket: Callable[[], CtNetlink] = CtNetlink
    ) -> None:
        """`open_socket`: a new ctnetlink socket (one for lookups, one in the sweeper's thread)."""
        self._open_socket = open_socket
        self._ct = open_socket()
        self._clock = clock
        self._cache: dict[tuple[str, int, str, int], tuple[Endpoint, float]] = {}
        self._gone: list[Pinhole] = []  # removed pinholes: every flow of theirs goes
        self._fresh: list[Pinhole] = []  # new pinholes: only flows that bypassed them go
        self._final: list[FinalRead] = []  # counters to read before the next purge (ended calls)
        self._jobs: queue.SimpleQueue[tuple[list[Pinhole], list[Pinhole], list[FinalRead]] | None] = queue.SimpleQueue()
        self._sweeper: threading.Thread | None = None

    def finish(self) -> int:
        """At stop: wait for the purges handed to the sweeper, then do what is still scheduled, so that a
        call ended just before the stop loses its media flows as it would have with the daemon running."""
        self._stop_sweeper()
        return self.sweep()

    def close(self) -> None:
        self._stop_sweeper()
        self._ct.close()

    def _stop_sweeper(self) -> None:
        """Let the sweeper finish the jobs handed to it, then end it."""
        if self._sweeper is not None:
            self._jobs.put(None)
            self._sweeper.join(timeout=10)
            self._sweeper = None

    def lan_endpoint(self, remote: Endpoint, public: Endpoint) -> Endpoint | None:
        """The LAN ip:port behind an outbound datagram seen after NAT as public -> remote.

        The kernel finds the entry by either direction. A flow the LAN host started has reply tuple
        remote -> public, and the host is its original source; a flow the remote started (an INVITE to a
        registration, DNATed by sip_dnat) has original tuple remote -> public, and the host is the source
        of its reply tuple. Without NAT (IPv6, usually) either way gives the public endpoint itself.
        Addresses in canonical text (Endpoint.ip), as the kernel's answers are read."""
        key = (remote.ip, remote.port, public.ip, public.port)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            entry = self._ct.get(remote.ip, remote.port, public.ip, public.port)
        except OSError as exc:
            log.debug("conntrack get %s -> %s: %s", remote, public, exc)
            return None
        if entry is None:
            return None
        o = entry.orig
        if (o.src, o.sport, o.dst, o.dport) == (remote.ip, remote.port, public.ip, public.port):
            found = Endpoint(entry.reply.src, entry.reply.sport)
        else:
            found = Endpoint(o.src, o.sport)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (found, now + _CACHE_SECONDS)
        return found

    def schedule(self, removed: Iterable[Pinhole] = (), fresh: Iterable[Pinhole] = ()) -> None:
        """Queue pinholes for the next sweep (a registration's SIP flow is never purged)."""
        self._gone.extend(h for h in removed if h.kind != "sip")
        self._fresh.extend(h for h in fresh if h.kind != "sip")

    def read_before_purge(self, lan: Collection[Endpoint], report: Callable[[MediaCounts | OSError], None]) -> None:
        """At the next sweep, before it deletes anything: read the accounting counters of these LAN media
        endpoints' flows (an ended call's) and hand them to `report` (only the endpoints that have flows), or
        the error the read met. Called from the sweeper's thread (from the caller's at stop, `finish()`):
        the call's flows are still in the table then, and the packet loop never waits for the dump."""
        self._final.append((frozenset(lan), report))

    @property
    def pending(self) -> bool:
        return bool(self._gone or self._fresh or self._final)

    def sweep_in_background(self, done: Callable[[int], None]) -> None:
        """Hand what is scheduled to the sweeper thread (started on first use); `done(deleted)` is called
        from that thread after each sweep. The hand-over is one put on a SimpleQueue, no lock taken here."""
        gone, fresh, final = self._gone, self._fresh, self._final
        self._gone, self._fresh, self._final = [], [], []
        if not gone and not fresh and not final:
            return
        if self._sweeper is None:
            self._sweeper = threading.Thread(target=self._sweep_jobs, args=(done,), name="nfsip-conntrack", daemon=True)
            self._sweeper.start()
        self._jobs.put((gone, fresh, final))

    def _sweep_jobs(self, done: Callable[[int], None]) -> None:
        ct = self._open_socket()  # its own socket: the queue's thread keeps using self._ct for lookups
        try:
            while (job := self._jobs.get()) is not None:
                try:
                    done(self._purge(ct, *job))
                except Exception:
                    log.exception("conntrack purge failed")
        finally:
            ct.close()

    def sweep(self) -> int:
        """Delete the conntrack entries of scheduled pinholes now, the counters asked for read first; returns
        how many were deleted."""
        gone, fresh, final = self._gone, self._fresh, self._final
        self._gone, self._fresh, self._final = [], [], []
        return self._purge(self._ct, gone, fresh, final)

    def _purge(self, ct: CtNetlink, gone: list[Pinhole], fresh: list[Pinhole], final: Sequence[FinalRead] = ()) -> int:
        """Delete the conntrack entries of these pinholes; returns how many were deleted.

        Removed pinholes: every UDP flow on their LAN port (the phone started it: original source = LAN
        ip:port) or on their public port (the far end started it: original destination = public ip:port).
        Fresh pinholes: only flows that went around them - the phone's media masqueraded to another port
        because it raced ahead of the map entry, or a far end that sent before the entry existed and left
        an entry that is not DNATed to the phone - since such an entry would keep its NAT binding.

        `final`: counters to read, in one dump for all of them, before anything is deleted."""
        if final:
            _read_final(ct, final)
        if not gone and not fresh:
            return 0
        by_lan: dict[Endpoint, tuple[Pinhole, bool]] = {}
        by_public: dict[Endpoint, tuple[Pinhole, bool]] = {}
        for hole in fresh:
            by_lan[hole.lan] = (hole, True)
            by_public[hole.public] = (hole, True)
        for hole in gone:  # a removal wins over an earlier install of the same ports
            by_lan[hole.lan] = (hole, False)
            by_public[hole.public] = (hole, False)
        doomed: list[Entry] = []
        for ip in {ep.ip for ep in by_lan}:
            for entry in _dump(ct, src=ip):
                match = by_lan.get(Endpoint(entry.orig.src, entry.orig.sport))
                if match is None:
                    continue
                hole, keep_ours = match
                if keep_ours and Endpoint(entry.reply.dst, entry.reply.dport) == hole.public:
                    continue
                doomed.append(entry)
        for ip in {ep.ip for ep in by_public}:
            for entry in _dump(ct, dst=ip):
                match = by_public.get(Endpoint(entry.orig.dst, entry.orig.dport))
                if match is None:
                    continue
                hole, keep_ours = match
                if keep_ours and Endpoint(entry.reply.src, entry.reply.sport) == hole.lan:
                    continue
                doomed.append(entry)
        deleted = 0
        for entry in doomed:
            try:
                deleted += ct.delete(entry.orig)
            except OSError as exc:
                log.debug("conntrack delete %s: %s", entry.orig, exc)
        return deleted

    def purge_media(self, pinholes: Iterable[Pinhole]) -> int:
        """Delete every media flow of these pinholes now (`nfsip flush`)."""
        self.schedule(removed=pinholes)
        return self.sweep()


def _read_final(ct: CtNetlink, final: Sequence[FinalRead]) -> None:
    """One counted dump for every endpoint asked about; each report gets its own endpoints' counts."""
    try:
        counts: MediaCounts | OSError = read_media_counters(frozenset().union(*(lan for lan, _ in final)), ct)
    except OSError as exc:
        counts = exc
    for lan, report in final:
        try:
            report(counts if isinstance(counts, OSError) else {ep: counts[ep] for ep in lan if ep in counts})
        except Exception:
            log.exception("reporting the final media counts of a call failed")


def _dump(ct: CtNetlink, **filters: str) -> list[Entry]:
    try:
        return ct.dump(**filters)
    except OSError as exc:
        log.warning("conntrack dump %s failed: %s", filters, exc)
        return []


# Per network namespace (the one the opening process is in). Off by default in Linux; loading nfsip's table
# turns it on (nfsip.kernel.ruleset.ACCOUNTING_CHAIN).
ACCOUNTING_SYSCTL = Path("/proc/sys/net/netfilter/nf_conntrack_acct")


def accounting_enabled(path: Path = ACCOUNTING_SYSCTL) -> bool | None:
    """Whether conntrack accounting is on in this network namespace (None: cannot tell)."""
    try:
        return path.read_text().strip() == "1"
    except OSError:
        return None


class MediaCounts(dict[Endpoint, tuple[int, int, int, int]]):
    """Per LAN media endpoint: (packets to it, bytes to it, packets from it, bytes from it). `refused`: the
    endpoints asked about that cannot be a conntrack source (a port outside 1-65535, an address that is
    neither IPv4 nor IPv6), left out of the sample, for the caller to count."""

    __slots__ = ("refused",)

    def __init__(
        self, counts: dict[Endpoint, tuple[int, int, int, int]] | None = None, refused: tuple[Endpoint, ...] = ()
    ) -> None:
        super().__init__(counts or {})
        self.refused = refused


# LAN media endpoints whose counters to read before a purge, and who gets them (Conntrack.read_before_purge).
FinalRead = tuple[frozenset[Endpoint], Callable[[MediaCounts | OSError], None]]


def _source_keys(lan: Collection[Endpoint]) -> tuple[dict[bytes, Endpoint], tuple[Endpoint, ...]]:
    """source_key() of each endpoint, and the endpoints it refuses. One endpoint with a port of 65536 once
    failed every sample ("int too big to convert"): the media counts of all calls, for the call's lifetime."""
    keys: dict[bytes, Endpoint] = {}
    refused: list[Endpoint] = []
    for ep in lan:
        try:
            keys[source_key(ep.ip, ep.port)] = ep
        except (OverflowError, OSError, TypeError, ValueError):
            refused.append(ep)
    return keys, tuple(refused)


def media_counters(entries: Iterable[SourceCounts], lan: Collection[Endpoint]) -> MediaCounts:
    """Per LAN media endpoint in `lan`: (packets to it, bytes to it, packets from it, bytes from it), summed
    over the conntrack entries of its flows.

    A flow the phone started has the phone as its original source: the original direction is from it, the
    reply direction to it. A flow the far end started through a pinhole (DNAT) has the phone as its reply
    source: the original direction is to it. A call between two LAN phones through their public ports is
    one entry with a phone on each side, and counts for both. An endpoint that cannot be a conntrack source
    is left out and listed in the result's `refused`; the others are counted all the same."""
    keys, refused = _source_keys(lan)
    return _summed(entries, keys, refused)


def _summed(entries: Iterable[SourceCounts], keys: dict[bytes, Endpoint], refused: tuple[Endpoint, ...]) -> MediaCounts:
    """media_counters of the endpoints `keys` maps to (by source_key), `refused` carried along."""
    out: dict[Endpoint, list[int]] = {}
    for e in entries:
        # (the phone's side of the entry, its counts in the order of MediaCounts: to it, then from it)
        for source, counts in (
            (e.orig_source, (e.reply_packets, e.reply_bytes, e.orig_packets, e.orig_bytes)),
            (e.reply_source, (e.orig_packets, e.orig_bytes, e.reply_packets, e.reply_bytes)),
        ):
            phone = keys.get(source)
            if phone is not None:
                sums = out.setdefault(phone, [0, 0, 0, 0])
                for i, n in enumerate(counts):
                    sums[i] += n
    return MediaCounts({ep: (v[0], v[1], v[2], v[3]) for ep, v in out.items()}, refused)


def read_media_counters(lan: Collection[Endpoint], ct: CtNetlink | None = None) -> MediaCounts:
    """media_counters over one dump of the UDP conntrack table (a socket of its own unless given)."""
    keys, refused = _source_keys(lan)
    if not keys:
        return MediaCounts({}, refused)
    own = ct is None
    sock = CtNetlink() if ct is None else ct
    try:
        return _summed(sock.dump_counted(keys.keys()), keys, refused)
    finally:
        if own:
            sock.close()
