"""`nfsip status`: live calls and pinholes, read back from the kernel's maps.

The kernel is the source of truth: each DNAT element carries its call in its comment and its remaining
lifetime in `expires`, so status shows what is really forwarded, even while the daemon is down.
"""

from __future__ import annotations

from typing import Any

from .kernel.nft import Nft, NftError


def collect(table: str) -> dict[str, Any]:
    nft = Nft(table)
    empty: dict[str, Any] = {"table": table, "calls": [], "pinholes": 0, "registrations": []}
    if not nft.table_exists():
        return {**empty, "installed": False}
    try:
        media = nft.media_pinholes()
        registrations = nft.registration_pinholes()
    except NftError as exc:
        return {**empty, "installed": True, "error": str(exc)}
    calls: dict[tuple[str, str], dict[str, Any]] = {}
    for hole in media:
        call = calls.setdefault(
            (hole.call_id, hole.lan.ip),
            {"call_id": hole.call_id, "lan_host": hole.lan.ip, "established": hole.established, "pinholes": []},
        )
        call["pinholes"].append(
            {
                "label": hole.label,
                "public_ip": hole.public.ip,
                "public_port": hole.public.port,
                "private": f"{hole.lan.ip}:{hole.lan.port}",
                "media_from": hole.remote_ip or ("anywhere" if hole.kind == "media" else "nowhere yet"),
                "seconds_left": hole.timeout,
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
                "public": f"{hole.public.ip}:{hole.public.port}",
                "private": f"{hole.lan.ip}:{hole.lan.port}",
                "from": hole.remote_ip or "any",
                "seconds_left": hole.timeout,
            }
            for hole in registrations
        ],
    }


def format_table(state: dict[str, Any]) -> str:
    if not state["installed"]:
        return f"table ip {state['table']} is not installed (is `nfsip run` running?)"
    lines = [f"{len(state['registrations'])} registrations, {len(state['calls'])} calls, {state['pinholes']} pinholes"]
    for reg in state["registrations"]:
        left = reg["seconds_left"]
        lines.append(
            f"registration {reg['aor']}  {reg['public']} -> {reg['private']}  from {reg['from']}"
            f"  {'' if left is None else f'{left:.0f}s left'}"
        )
    for call in state["calls"]:
        lines.append(f"call {call['call_id']}  lan host {call['lan_host']}")
        for hole in call["pinholes"]:
            left = hole["seconds_left"]
            lines.append(
                f"  {hole['label']:<10} {hole['public_ip']}:{hole['public_port']:<6} -> {hole['private']:<21}"
                f" {'' if left is None else f'{left:.0f}s left'}"
            )
    return "\n".join(lines)
