"""`nfsip status`: live calls and pinholes, read back from the kernel's maps.

The kernel is the source of truth: each DNAT element carries its call in its comment and its remaining
lifetime in `expires`, so status shows what is really forwarded, even while the daemon is down.
"""

from __future__ import annotations

from typing import Any

from .kernel.nft import Nft, NftError
from .kernel.ruleset import SIP_DNAT_ANY_MAP, SIP_DNAT_MAP
from .model import parse_comment


def collect(table: str) -> dict[str, Any]:
    nft = Nft(table)
    empty: dict[str, Any] = {"table": table, "calls": [], "pinholes": 0, "registrations": []}
    if not nft.table_exists():
        return {**empty, "installed": False}
    try:
        elements = nft.elements()
        sip_elements = nft.elements(SIP_DNAT_MAP) + nft.elements(SIP_DNAT_ANY_MAP)
    except NftError as exc:
        return {**empty, "installed": True, "error": str(exc)}
    calls: dict[tuple[str, str], dict[str, Any]] = {}
    for elem in elements:
        label, state, call_id = parse_comment(elem.comment)
        key = (call_id, elem.value.ip)
        call = calls.setdefault(
            key, {"call_id": call_id, "lan_host": elem.value.ip, "established": state == "e", "pinholes": []}
        )
        call["pinholes"].append(
            {
                "label": label,
                "public_ip": elem.key.ip,
                "public_port": elem.key.port,
                "private": f"{elem.value.ip}:{elem.value.port}",
                "seconds_left": elem.expires,
            }
        )
    for call in calls.values():
        call["pinholes"].sort(key=lambda p: p["public_port"])
    registrations = [
        {
            "aor": parse_comment(elem.comment)[2].removeprefix("reg:"),
            "public": f"{elem.key.ip}:{elem.key.port}",
            "private": f"{elem.value.ip}:{elem.value.port}",
            "from": elem.remote_ip or "any",
            "seconds_left": elem.expires,
        }
        for elem in sip_elements
    ]
    return {
        "table": table,
        "installed": True,
        "calls": list(calls.values()),
        "pinholes": len(elements),
        "registrations": registrations,
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
