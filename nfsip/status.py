"""`nfsip status`: live calls and pinholes, read back from the kernel's maps.

The kernel is the source of truth: each DNAT element carries its call in its comment and its remaining
lifetime in `expires`, so status shows what is really forwarded, even while the daemon is down.
"""

from __future__ import annotations

import time
from typing import Any

from .core.addresses import hostport
from .kernel.conntrack import read_media_counters
from .kernel.nft import Nft, NftError


def collect(table: str) -> dict[str, Any]:
    nft = Nft(table)
    empty: dict[str, Any] = {"table": table, "calls": [], "pinholes": 0, "registrations": [], "tls_hosts": []}
    if not nft.table_exists():
        return {**empty, "installed": False}
    try:
        media = nft.media_pinholes()
        registrations = nft.registration_pinholes()
        tls_hosts = nft.tls_hosts()
    except NftError as exc:
        return {**empty, "installed": True, "error": str(exc)}
    extra: dict[str, Any] = {}
    try:
        counters = read_media_counters({hole.lan for hole in media})
    except OSError as exc:  # the pinholes are still worth showing without their counts
        counters = {}
        extra["counters_error"] = f"cannot read the media flows' conntrack counters: {exc}"
    now = time.time()
    calls: dict[tuple[str, str], dict[str, Any]] = {}
    for hole in media:
        call = calls.setdefault(
            (hole.call_id, hole.lan.ip),
            {
                "call_id": hole.call_id,
                "lan_host": hole.lan.ip,
                "family": _family(hole.lan.ip),
                "established": hole.established,
                "age_seconds": round(now - hole.since) if hole.since else None,
                "pinholes": [],
            },
        )
        to_lan, _, from_lan, _ = counters.get(hole.lan, (0, 0, 0, 0))
        call["pinholes"].append(
            {
                "label": hole.label,
                "family": _family(hole.lan.ip),
                "public_ip": hole.public.ip,
                "public_port": hole.public.port,
                "private": _hostport(hole.lan.ip, hole.lan.port),
                "media_from": hole.remote_ip or ("anywhere" if hole.kind == "media" else "nowhere yet"),
                "seconds_left": hole.timeout,
                "packets_to_lan": to_lan,
                "packets_from_lan": from_lan,
            }
        )
    for call in calls.values():
        call["pinholes"].sort(key=lambda p: p["public_port"])
    return {
        "table": table,
        "installed": True,
        "calls": list(calls.values()),
        "pinholes": len(media),
        "registrations": [
            {
                "aor": hole.call_id.removeprefix("reg:"),
                "family": _family(hole.lan.ip),
                "transport": hole.transport,
                "public": _hostport(hole.public.ip, hole.public.port),
                "private": _hostport(hole.lan.ip, hole.lan.port),
                "from": hole.remote_ip or "any",
                "age_seconds": round(now - hole.since) if hole.since else None,
                "seconds_left": hole.timeout,
            }
            for hole in registrations
        ],
        # LAN hosts that used SIP over TLS in the last hour: nfsip cannot read it and leaves them alone.
        "tls_hosts": sorted(tls_hosts),
        **extra,
    }


def _family(ip: str) -> str:
    return "ipv6" if ":" in ip else "ipv4"


def _hostport(ip: str, port: int) -> str:
    return hostport(ip, port).decode()


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_table(state: dict[str, Any]) -> str:
    if not state["installed"]:
        return f"table inet {state['table']} is not installed (is `nfsip run` running?)"
    lines = [f"{len(state['registrations'])} registrations, {len(state['calls'])} calls, {state['pinholes']} pinholes"]
    if state["registrations"]:
        lines.append("")
        lines.append(f"{'REGISTRATION':<32} {'PUBLIC':<21} {'PHONE':<21} {'FROM':<15} {'AGE':>7} {'LEFT':>6}")
        for reg in state["registrations"]:
            lines.append(
                f"{reg['aor'][:32]:<32} {reg['public']:<21} {reg['private']:<21} {reg['from']:<15}"
                f" {_age(reg['age_seconds']):>7} {reg['seconds_left']:>5}s"
                + (" IPv6" if reg["family"] == "ipv6" else "")
                + (" TCP" if reg.get("transport") == "tcp" else "")
            )
    for call in state["calls"]:
        lines.append("")
        status = "established" if call["established"] else "setting up"
        family = "IPv6" if call["family"] == "ipv6" else "IPv4"
        lines.append(
            f"call {call['call_id']}  phone {call['lan_host']} ({family})  {status}, age {_age(call['age_seconds'])}"
        )
        lines.append(
            f"  {'STREAM':<10} {'PUBLIC':<21} {'PHONE':<21} {'MEDIA FROM':<15}"
            f" {'TO PHONE':>9} {'FROM PHONE':>10} {'LEFT':>6}"
        )
        for hole in call["pinholes"]:
            lines.append(
                f"  {hole['label']:<10} {_hostport(hole['public_ip'], hole['public_port']):<21} {hole['private']:<21}"
                f" {hole['media_from']:<15} {hole['packets_to_lan']:>9} {hole['packets_from_lan']:>10}"
                f" {hole['seconds_left']:>5}s"
            )
    if state.get("tls_hosts"):
        lines.append("")
        lines.append(f"SIP over TLS (not readable, left alone) from: {', '.join(state['tls_hosts'])}")
    if "counters_error" in state:
        lines.append("")
        lines.append(f"packet counts not shown: {state['counters_error']}")
    return "\n".join(lines)
