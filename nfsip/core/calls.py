"""Calls and their media pinholes (pure state; the clock is passed in).

A call is keyed by (Call-ID, LAN host): the same Call-ID seen for two LAN hosts (a hairpin call through an
outside softswitch) is two independent calls here. Each SDP stream (m= line index) of the LAN host owns a
block of public ports mapped 1:1 onto its LAN ports (RTP, and RTCP unless rtcp-mux), at its own LAN address:
the host's signalling address, or another address of the same host (a dual-stack phone's IPv6 media in a
call signalled over IPv4). A stream whose public address is its LAN address (IPv6 routed without NAT) keeps
its own ports: nothing is allocated, the pinholes only let the far end in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .callstate import CallState
from .model import Endpoint, Pinhole, comment_call_id
from .ports import PortAllocator


@dataclass
class StreamBinding:
    """Public ports of one m= line: `lan_ip`:`lan_ports[i]` is reachable on `public_ip`:`public_ports[i]`."""

    lan_ports: tuple[int, ...]
    public_ports: tuple[int, ...]
    labels: tuple[str, ...]
    lan_ip: str
    public_ip: str

    @property
    def translated(self) -> bool:
        """False where the stream's public address is its own (IPv6 without NAT): ports are kept as they are."""
        return self.public_ip != self.lan_ip


@dataclass
class Call:
    call_id: str
    lan_ip: str
    public_ip: str
    created: float
    state: CallState = CallState.OFFERED  # the engine moves it by the table of nfsip.core.callstate
    expires_at: float = 0.0  # the engine's deadline for this call
    kernel_deadline: float = 0.0  # when the kernel elements expire unless refreshed
    session_expires: int = 0  # RFC 4028 interval negotiated for the dialog, 0 without session timers
    streams: dict[int, StreamBinding] = field(default_factory=dict)
    # media_from = "sdp": inbound media only from the far end's SDP address, per m= line index, as learned
    # from the far end's SDP; until it is known a stream is outbound-only (SNAT, no DNAT).
    strict: bool = False
    far_media: dict[int, str] = field(default_factory=dict)
    # The call's signalling path, learned from the phone's own messages (the LAN side is trusted to choose
    # whom it talks to): the remote addresses it sent this call's SIP to, and its SIP ports. Only a message
    # from one of those addresses to one of those ports may change the call from the WAN side. Empty for a
    # call rebuilt after a restart until the phone sends again (the kernel elements do not keep it).
    peer_ips: set[str] = field(default_factory=set)
    sip_ports: set[int] = field(default_factory=set)

    @property
    def confirmed(self) -> bool:
        """The call had its 2xx (its pinholes are marked established)."""
        return self.state is CallState.CONFIRMED

    def learn_path(self, remote_ip: str, lan_port: int) -> None:
        """The phone sent this call's SIP to `remote_ip` from `lan_port`."""
        self.peer_ips.add(remote_ip)
        self.sip_ports.add(lan_port)

    def on_path(self, remote_ip: str, lan_port: int) -> bool:
        """Whether an inbound message from `remote_ip` to the phone's `lan_port` may change the call."""
        if not self.peer_ips:
            return True  # adopted after a restart, nothing learned yet
        return remote_ip in self.peer_ips and lan_port in self.sip_ports

    def pinholes(self, timeout: int = 0) -> list[Pinhole]:
        return [
            hole for index, binding in self.streams.items() for hole in stream_pinholes(self, index, binding, timeout)
        ]


def stream_pinholes(call: Call, index: int, binding: StreamBinding, timeout: int) -> list[Pinhole]:
    kind, remote = "media", ""
    if call.strict:
        remote = call.far_media.get(index, "")
        kind = "media" if remote else "media-out"
    return [
        Pinhole(
            Endpoint(binding.public_ip, public),
            Endpoint(binding.lan_ip, lan),
            call.call_id,
            label,
            timeout,
            kind=kind,
            remote_ip=remote,
            established=call.confirmed,
            since=call.created,
        )
        for lan, public, label in zip(binding.lan_ports, binding.public_ports, binding.labels, strict=True)
    ]


def _allocate_run(ports: PortAllocator, lan_ports: tuple[int, ...], now: float) -> tuple[int, ...]:
    """Public ports for LAN ports; consecutive LAN ports get consecutive public ports (RTP/RTCP pairs)."""
    if len(lan_ports) == 2 and lan_ports[0] + 1 == lan_ports[1]:
        first = ports.allocate(2, now, preferred=lan_ports[0])  # the usual RTP/RTCP pair: one block
        return (first, first + 1)
    runs: list[list[int]] = []
    for port in lan_ports:
        if runs and runs[-1][-1] + 1 == port:
            runs[-1].append(port)
        else:
            runs.append([port])
    public: list[int] = []
    try:
        for run in runs:
            first = ports.allocate(len(run), now, preferred=run[0])
            public.extend(range(first, first + len(run)))
    except Exception:
        ports.release_each(public, now)
        raise
    return tuple(public)


def _release(ports: PortAllocator, binding: StreamBinding, now: float) -> None:
    if binding.translated:
        ports.release_each(binding.public_ports, now)


class CallTable:
    def __init__(self, ports: PortAllocator) -> None:
        self.ports = ports
        self.calls: dict[tuple[str, str], Call] = {}
        # Which call/stream owns a LAN media endpoint (ip, port): a phone cannot use one port in two live calls,
        # so a new owner means the old call was stale (its BYE lost): take the endpoint over.
        self._owner: dict[tuple[str, int], tuple[tuple[str, str], int]] = {}
        self._adopted = False
        # Live counts for the policy limits (nfsip.core.policy), kept up to date instead of recounted per message.
        self.calls_of: Counter[str] = Counter()
        self.pinholes_of: Counter[str] = Counter()
        self.pinholes_total = 0

    def _count_pinholes(self, lan_ip: str, delta: int) -> None:
        # dict methods on the Counter: its __missing__ and __delitem__ are Python code, called per message.
        count = self.pinholes_of.get(lan_ip, 0) + delta
        self.pinholes_total += delta
        if count > 0:
            self.pinholes_of[lan_ip] = count
        else:
            self.pinholes_of.pop(lan_ip, None)

    def get(self, call_id: str, lan_ip: str) -> Call | None:
        call = self.calls.get((call_id, lan_ip))
        if call is None and self._adopted:
            # A call rebuilt after a restart is known by the Call-ID its kernel elements carry.
            call = self.calls.get((comment_call_id(call_id), lan_ip))
        return call

    def owner_of(self, lan: Endpoint) -> Call | None:
        """The live call whose stream receives on `lan` (a media endpoint of any of the host's addresses)."""
        owner = self._owner.get((lan.ip, lan.port))
        return self.calls.get(owner[0]) if owner is not None else None

    def adopt(self, hole: Pinhole, now: float) -> None:
        """Take over one media pinhole found in the kernel at start (crash recovery)."""
        index_text = hole.label.partition(".")[0]
        if not index_text.startswith("m") or not index_text[1:].isdigit():
            return
        index = int(index_text[1:])
        call = self.get_or_create(hole.call_id, hole.lan.ip, hole.public.ip, now)
        if hole.since:
            call.created = min(call.created, hole.since)
        # The element comment's state (nfsip.core.model.element_comment): e is a confirmed call, a an attempt.
        # Whether an attempt had a response is not kept: it comes back early, under the setup timeout.
        if hole.established:
            call.state = CallState.CONFIRMED
        elif call.state is CallState.OFFERED:
            call.state = CallState.EARLY
        if hole.kind == "media-out" or hole.remote_ip:
            call.strict = True
        if hole.remote_ip:
            call.far_media[index] = hole.remote_ip
        call.expires_at = max(call.expires_at, now + hole.timeout)
        call.kernel_deadline = max(call.kernel_deadline, now + hole.timeout)
        old = call.streams.get(index)
        self._count_pinholes(call.lan_ip, 1)
        pairs = sorted(
            [
                *zip(old.lan_ports, old.public_ports, old.labels, strict=True),
                (hole.lan.port, hole.public.port, hole.label),
            ]
            if old is not None
            else [(hole.lan.port, hole.public.port, hole.label)]
        )
        lan_ports, public_ports, labels = (tuple(x) for x in zip(*pairs, strict=True))
        binding = call.streams[index] = StreamBinding(lan_ports, public_ports, labels, hole.lan.ip, hole.public.ip)
        if binding.translated:
            self.ports.claim(hole.public.port)
        self._owner[(hole.lan.ip, hole.lan.port)] = ((call.call_id, call.lan_ip), index)
        self._adopted = True

    def get_or_create(self, call_id: str, lan_ip: str, public_ip: str, now: float) -> Call:
        key = (call_id, lan_ip)
        call = self.calls.get(key)
        if call is None:
            call = Call(call_id, lan_ip, public_ip, now)
            self.calls[key] = call
            self.calls_of[lan_ip] = self.calls_of.get(lan_ip, 0) + 1
        return call

    def bind_stream(
        self,
        call: Call,
        index: int,
        lan_ports: tuple[int, ...],
        labels: tuple[str, ...],
        now: float,
        lan_ip: str = "",
        public_ip: str = "",
    ) -> tuple[StreamBinding, list[Pinhole], bool]:
        """Map the LAN ports of stream `index` at `lan_ip` (default: the call's host) to `public_ip` (default:
        the call's); returns the binding, the pinholes it replaced, and whether the binding is new.

        Same LAN endpoints as before: the same public ports (a re-offer refreshes). Different ones: the old
        block is released and a new one allocated (none where the public address is the LAN one). Raises
        PortsExhausted when the range is full (the state is left as it was).
        """
        lan_ip = lan_ip or call.lan_ip
        public_ip = public_ip or call.public_ip
        removed: list[Pinhole] = []
        old = call.streams.get(index)
        if old is not None and (old.lan_ip, old.lan_ports, old.public_ip) == (lan_ip, lan_ports, public_ip):
            if old.labels != labels:
                old = call.streams[index] = StreamBinding(old.lan_ports, old.public_ports, labels, lan_ip, public_ip)
            return old, removed, False
        public_ports = _allocate_run(self.ports, lan_ports, now) if public_ip != lan_ip else lan_ports
        if old is not None:
            removed.extend(self.drop_stream(call, index, now))
        owners = self._owner
        for lan in lan_ports:
            owner = owners.get((lan_ip, lan))
            if owner is not None:
                other = self.calls.get(owner[0])
                if other is not None:
                    removed.extend(self.drop_stream(other, owner[1], now))
        binding = StreamBinding(lan_ports, public_ports, labels, lan_ip, public_ip)
        call.streams[index] = binding
        self._count_pinholes(call.lan_ip, len(lan_ports))
        owner = ((call.call_id, call.lan_ip), index)
        for lan in lan_ports:
            owners[(lan_ip, lan)] = owner
        return binding, removed, True

    def drop_stream(self, call: Call, index: int, now: float) -> list[Pinhole]:
        binding = call.streams.pop(index, None)
        if binding is None:
            return []
        self._count_pinholes(call.lan_ip, -len(binding.lan_ports))
        _release(self.ports, binding, now)
        owners = self._owner
        owner = ((call.call_id, call.lan_ip), index)
        for lan in binding.lan_ports:
            if owners.get((binding.lan_ip, lan)) == owner:
                del owners[(binding.lan_ip, lan)]
        return stream_pinholes(call, index, binding, 0)

    def end(self, call: Call, now: float) -> list[Pinhole]:
        """Forget the call; returns every pinhole it held (to remove from the kernel)."""
        call.state = CallState.TERMINATED
        removed: list[Pinhole] = []
        for index in list(call.streams):
            removed.extend(self.drop_stream(call, index, now))
        if self.calls.pop((call.call_id, call.lan_ip), None) is not None:
            count = self.calls_of.get(call.lan_ip, 0) - 1
            if count > 0:
                self.calls_of[call.lan_ip] = count
            else:
                self.calls_of.pop(call.lan_ip, None)
        return removed

    def overdue(self, now: float) -> list[Call]:
        """The calls whose deadline passed (the kernel has expired their elements by itself)."""
        return [c for c in self.calls.values() if c.expires_at and c.expires_at <= now]

    def __len__(self) -> int:
        return len(self.calls)
