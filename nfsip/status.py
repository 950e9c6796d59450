"""`nfsip status`: live calls and pinholes, read back from the kernel's maps.

The kernel is the source of truth: each DNAT element carries its call in its comment and its remaining
lifetime in `expires`, so status shows what is really forwarded, even while the daemon is down.
"""

from __future__ import annotations

from typing import Any

from .kernel.nft import Nft, NftError


def collect(table: str) -> dict[str, Any]:
    nft = Nft(table)
    if not nft.table_exists():
        return {"table": table, "installed": False, "calls": [], "pinholes": 0}
    try:
        elements = nft.elements()
    except NftError as exc:
        return {"table": table, "installed": True, "error": str(exc), "calls": [], "pinholes": 0}
    calls: dict[tuple[str, str], dict[str, Any]] = {}
    for elem in elements:
        # The comment is "<label> <call-id>" (nfsip.kernel.nft.element_comment).
        label, _, call_id = elem.comment.partition(" ")
        key = (call_id, elem.value.ip)
        call = calls.setdefault(key, {"call_id": call_id, "lan_host": elem.value.ip, "pinholes": []})
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
    return {"table": table, "installed": True, "calls": list(calls.values()), "pinholes": len(elements)}


def format_table(state: dict[str, Any]) -> str:
    if not state["installed"]:
        return f"table ip {state['table']} is not installed (is `nfsip run` running?)"
    lines = [f"{len(state['calls'])} calls, {state['pinholes']} pinholes"]
    for call in state["calls"]:
        lines.append(f"call {call['call_id']}  lan host {call['lan_host']}")
        for hole in call["pinholes"]:
            left = hole["seconds_left"]
            lines.append(
                f"  {hole['label']:<10} {hole['public_ip']}:{hole['public_port']:<6} -> {hole['private']:<21}"
                f" {'' if left is None else f'{left:.0f}s left'}"
            )
    return "\n".join(lines)
