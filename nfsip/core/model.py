"""The vocabulary shared by the sans-I/O core and the kernel adapters.

The adapters describe a queued datagram as a `Flow` (who is the LAN host, which public address/port the
router shows for it); the engine answers with a `Decision` (new payload or none, pinholes to install or
refresh, pinholes to remove). Nothing here does I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Direction(enum.Enum):
    OUTBOUND = "out"  # LAN -> WAN
    INBOUND = "in"  # WAN -> LAN


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.ip}:{self.port}"


@dataclass(frozen=True, slots=True)
class Flow:
    """What the adapter knows about one queued SIP datagram.

    OUTBOUND: `lan` is the phone's real source (the conntrack original tuple) and `public` the translated
    source the server will see (IPv6 without NAT: the same). INBOUND: `lan` is the translated destination
    (the phone) and `public` the address the server sent to (its port may be unknown: 0; IPv6: the engine
    takes the address from the host's outbound flows).
    """

    direction: Direction
    lan: Endpoint
    public: Endpoint
    remote: Endpoint
    # The LAN host's other addresses, of either family (the neighbour table: same link-layer address): the
    # ones its SDP may name for its own media besides `lan.ip` (a dual-stack phone signalling over IPv4 with
    # IPv6 media, an IPv6 phone with several addresses).
    host_addresses: frozenset[str] = frozenset()
    # "udp": a queued datagram; "tcp": a whole message of a connection the TCP relay carries
    # (nfsip.kernel.tcprelay): `lan` is then the phone's end of its connection, `public` the router's
    # connection to the server.
    transport: str = "udp"


@dataclass(frozen=True, slots=True)
class Pinhole:
    """One public UDP port forwarded to one LAN ip:port, both ways (a DNAT and an SNAT map entry).

    kind "media": the far end may send to the public port: from anywhere when remote_ip is "" (latching:
    the far end may itself be behind NAT), else only from remote_ip (media_from = "sdp"). kind "media-out":
    strict mode before the far end's SDP is known: outgoing SNAT only, nothing inbound. kind "sip": a
    registration's SIP port, reachable only from `remote_ip` (the registrar that accepted the
    registration) unless remote_ip is "" (configured: from anywhere).
    """

    public: Endpoint
    lan: Endpoint
    call_id: str  # the call's Call-ID; for a registration, "reg:<address-of-record>"
    label: str  # which stream of the call, without spaces: "m0.rtp", "m1.rtcp"; "sip" for registrations
    timeout: int = 0  # seconds; 0 for removals
    kind: str = "media"
    remote_ip: str = ""
    established: bool = False  # the call had its 2xx (kept in the kernel element for crash recovery)
    transport: str = "udp"  # a registration over "tcp": the relay's pinhole (sip_tcp), not the UDP maps
    since: float = 0.0  # when the call or registration began: engine clock; wall clock (epoch) when read back


_COMMENT_MAX = 120  # nft limits element comments to 128 bytes (NFTNL_UDATA_COMMENT_MAXLEN)
_CALL_ID_MAX = 96


def comment_call_id(call_id: str) -> str:
    """The Call-ID as stored in a kernel element comment: itself when short enough, else a digest."""
    if len(call_id.encode("utf-8", "replace")) <= _CALL_ID_MAX:
        return call_id
    import hashlib

    return "~" + hashlib.blake2b(call_id.encode("utf-8", "replace"), digest_size=12).hexdigest()


def element_comment(pinhole: Pinhole, since_epoch: float) -> str:
    """`<label> <state> <since> <call-id>`: what `nfsip status` shows and what a restarted daemon rebuilds
    its state from (state: a = attempt, a call offered or early; e = established, a confirmed call; r =
    registration; since: epoch seconds). nfsip.core.calls.CallTable.adopt maps a and e back to call states."""
    state = "r" if pinhole.kind == "sip" else "e" if pinhole.established else "a"
    text = f"{pinhole.label} {state} {int(since_epoch)} {comment_call_id(pinhole.call_id)}"
    return text.encode("utf-8", "replace")[:_COMMENT_MAX].decode("utf-8", "ignore")


def parse_comment(comment: str) -> tuple[str, str, float, str]:
    """(label, state, since epoch, call-id) from an element comment; empty/0 for what is missing."""
    parts = comment.split(" ", 3)
    parts += [""] * (4 - len(parts))
    since = float(parts[2]) if parts[2].isdigit() else 0.0
    return parts[0], parts[1], since, parts[3]


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A call's end, for the one log line per call (the daemon adds the media packet counts)."""

    call_id: str
    lan_ip: str
    why: str
    duration: float
    pinholes: tuple[Pinhole, ...]


@dataclass(frozen=True, slots=True)
class CallEstablished:
    """A call's first 2xx: the first of its two log lines."""

    call_id: str
    lan_ip: str
    ports: tuple[tuple[int, int], ...]  # (public, LAN) port of each pinhole, in the call's stream order


@dataclass(frozen=True, slots=True)
class RegistrationOpened:
    """A registrar accepted a phone endpoint that had no registration: its SIP pinhole is opened."""

    aor: str
    lan: Endpoint
    public: Endpoint
    expires: int  # seconds, as the registrar granted them


@dataclass(frozen=True, slots=True)
class RegistrationRemoved:
    """An address-of-record was unregistered from a phone endpoint (the pinhole goes with its last one)."""

    aor: str
    lan: Endpoint


# What the engine reports about a message besides the calls it ended (Decision.ended); the daemon logs it.
Event = CallEstablished | RegistrationOpened | RegistrationRemoved


@dataclass(frozen=True, slots=True)
class Decision:
    """The engine's answer for one datagram.

    `payload` is the rewritten SIP message, or None to accept the datagram byte for byte unchanged.
    `install` must be live in the kernel BEFORE the datagram is reinjected (the far end may start sending
    media the instant it reads the SDP); `remove` may be applied after the verdict.
    """

    payload: bytes | None
    outcome: str  # "rewritten", "unchanged", "parse-error", ... (a metrics label)
    kind: str = ""  # method or status class of the message, e.g. "INVITE", "2xx"
    detail: str = ""
    install: tuple[Pinhole, ...] = ()  # every pinhole of the call, new or refreshed
    # Pinholes whose kernel elements must be re-created, not just refreshed: re-adding an existing element
    # updates its timeout but keeps its old comment, which carries the call state (nfsip.core.model.element_comment).
    recreate: tuple[Pinhole, ...] = ()
    opened: tuple[Pinhole, ...] = ()  # the part of `install` that did not exist before
    remove: tuple[Pinhole, ...] = ()
    events: tuple[Event, ...] = field(default=())  # for the log
    refusals: tuple[str, ...] = field(default=())  # policy refusals (nfsip.core.policy), a metrics label each
    ended: tuple[CallEnded, ...] = field(default=())


# One message's pinhole changes, as in its Decision: (install, remove, recreate).
Part = tuple[Iterable[Pinhole], Iterable[Pinhole], Iterable[Pinhole]]
