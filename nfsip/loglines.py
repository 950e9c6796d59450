"""The daemon's log lines, formatted from what the engine decided and reported (docs/troubleshooting.md
quotes them; tests/test_docs_claims.py checks the quotes against these format strings)."""

from __future__ import annotations

import logging

from .core.mediastats import CallMedia
from .core.model import (
    CallEnded,
    CallEstablished,
    Decision,
    Direction,
    Event,
    RegistrationOpened,
    RegistrationRemoved,
)
from .core.packet import PacketError, decode_udp
from .core.sip.errors import SipParseError
from .core.sip.message import parse_message
from .kernel.conntrack import MediaCounts

log = logging.getLogger("nfsip")

NF_INET_PRE_ROUTING = 0
NF_INET_POST_ROUTING = 4
_HOOK_DIRECTION = {NF_INET_PRE_ROUTING: "in", NF_INET_POST_ROUTING: "out"}


def log_datagram(hook: int, raw: bytes, decision: Decision | None, outcome: str) -> None:
    """log_level = "debug": one line per queued datagram, after its verdict: the hook it was queued from
    and its direction, the message's method (or status and CSeq method), its Call-ID, and what was done
    (the verdict's outcome, with the engine's reason when it gave one); " IPv6" after the direction for an
    IPv6 datagram. Parses the datagram a second time:
    only at debug level."""
    family, payload = "", b""
    try:
        dgram = decode_udp(raw)
        family = " IPv6" if dgram.family == "ipv6" else ""
        payload = dgram.payload
    except PacketError:
        pass
    what, call_id, reason = _described(payload, decision)
    log.debug(
        "hook %s %s%s: %s, Call-ID %s: %s%s",
        hook,
        _HOOK_DIRECTION.get(hook, "?"),
        family,
        what,
        call_id,
        outcome,
        f" ({reason})" if reason else "",
    )


def log_tcp_message(direction: Direction, raw: bytes, decision: Decision | None, outcome: str) -> None:
    """log_level = "debug": the same line for a message the TCP relay carried, "tcp" for the hook."""
    what, call_id, reason = _described(raw, decision)
    log.debug("tcp %s: %s, Call-ID %s: %s%s", direction.value, what, call_id, outcome, f" ({reason})" if reason else "")


def _described(payload: bytes, decision: Decision | None) -> tuple[str, str, str]:
    """(method or status and CSeq method, Call-ID, the engine's reason) of a message, "-" when unparsable."""
    what, call_id = "-", "-"
    try:
        msg = parse_message(payload)
        what = msg.method if msg.is_request else f"{msg.status} ({msg.cseq_method})"
        call_id = msg.call_id
    except SipParseError:
        pass
    reason = ""
    if decision is not None:
        reason = "; ".join(filter(None, (", ".join(decision.refusals), decision.detail)))
    return what, call_id, reason


def log_call_ended(end: CallEnded, sampled: CallMedia | None, final: MediaCounts | OSError | None) -> None:
    """The `call ... ended` line. `final`: the counts read as the call ended (per LAN media endpoint), or
    the error that read met (then the last sample is shown, and said to be one), or None: no media pinhole."""
    ports = ",".join(f"{h.public.port}->{h.lan.port}" for h in end.pinholes) or "-"
    if isinstance(final, dict):
        to_lan = sum(c[0] for c in final.values())
        from_lan = sum(c[2] for c in final.values())
        media = f"media to phone {to_lan} pkts, from phone {from_lan} pkts"
    elif final is None:
        media = "no media pinholes"
    elif sampled is not None:
        media = (
            f"media to phone {sampled.to_lan_packets} pkts, from phone {sampled.from_lan_packets} pkts at the last "
            f"sample (reading the final counts failed: {final})"
        )
    else:
        media = f"media not counted (reading the counts failed: {final})"
    log.info("call %s ended: %s; %.1fs; ports %s; %s", end.call_id, end.why, end.duration, ports, media)


def log_event(event: Event) -> None:
    """The log line of an engine event (troubleshooting.md quotes them)."""
    match event:
        case CallEstablished(call_id, lan_ip, ports):
            pairs = ",".join(f"{public}->{lan}" for public, lan in ports) or "-"
            log.info("call %s established: phone %s; ports %s", call_id, lan_ip, pairs)
        case RegistrationOpened(aor, lan, public, expires):
            log.info("registration of %s from %s as %s, %ds", aor, lan, public, expires)
        case RegistrationRemoved(aor, lan):
            log.info("registration of %s from %s removed", aor, lan)
