"""Diagnostic: what nfsip's nftables table costs every forwarded packet, old table against new, part by part.

    sudo .venv/bin/python bench/ruleset_cost.py [--seconds 0.5] [--rounds 30] [--old-rev a94ecf1] [--out DIR]
                                                 [--variants none,old,new] [--flows out,in]

bench/media.py found masquerade through a router with nfsip loaded ((n)) slower than through the same router
without it ((a)), for traffic that is neither SIP nor a pinhole. This measures that cost. One lab with
masquerade; no daemon, so no queue rule (no packet here is SIP anyway), one media pinhole's elements added by
hand (media_dnat, media_snat, and the counter sets media_to_lan and media_from_lan in the older tables that
have them: public 198.51.100.1:40000 <-> phone1:6000). Conntrack accounting (net.netfilter.nf_conntrack_acct,
which nfsip's table now turns on for its per-call media counts) is set after each table is loaded: off
unless a variant says "+acct". Variants:

  none                  no nfsip table (the baseline)
  none +acct            no nfsip table, accounting on: what accounting itself costs
  old                   the table as shipped at --old-rev (`git show REV:nft/nfsip.nft`)
  old -sip chains       old without sip_new_to_wan, sip_to_wan, sip_from_wan (the SIP divert filter chains)
  old -media_count      old without its forward chain that looks every UDP packet up in the counter sets
  counters              the table as shipped at --counters-rev: the last one that counted media per packet,
                        with two counter-set lookups in before_snat (accounting was not used then)
  new                   the table as nfsip.kernel.ruleset.render() makes it now, accounting on: as the daemon
                        runs it
  new -acct             new with accounting off
  new -before_snat      new without before_snat (the first SIP datagram of a flow before NAT)
  new -sip divert       new without sip_to_wan and sip_from_wan
  new nat only          new with none of its filter chains (the nat chains see only a flow's first packet)
  new emptied           new with its three filter base chains still hooked but without rules: what the
                        chains cost by being there, whatever their rules

and flows (172-byte UDP, bench/udpblast.c for --seconds, counted at the receiver as in bench/media.py):

  out       phone1:6100 -> server:7000, masqueraded (media.py case (a))
  in        server:7000 -> 198.51.100.1:6100, the reply direction of out's flow (case (a'); the inbound
            direction is the one that reaches the FIB lookup of sip_from_wan)
  pinhole   server:7000 -> 198.51.100.1:40000 -> phone1:6000 through the pinhole (case (b)); a table
            variant without the nat chains cannot forward it, so `none` skips it

Every measurement flushes the router's conntrack first. Variants alternate within each round (in an order
rotated by one each round) and the flows within each variant, so slow drifts of a shared machine spread over
all of them; the report gives medians, min-max and each round's value, and the ratios to `none` of the same
flow (for `pinhole`: to `none`'s `in`, plain routing + masquerade of the same direction, the goal's reference).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    PHONE,
    PHONE_IP,
    PUBLIC_IP,
    SERVER_IP,
    PartResult,
    background_busy,
    build,
    median,
    run_part,
)
from media_forwarding import PHONE_MEDIA_PORT, PHONE_PLAIN_PORT, PUBLIC_PORT, SERVER_PORT, read_counter

from nfsip.config import Config
from nfsip.kernel import ruleset
from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "a94ecf1"  # the last commit with the four-filter-chain table (media_count, sip_new_to_wan, ...)
COUNTERS_REV = "d39362f"  # the last commit whose table counted media per packet (media_to_lan, media_snat)
OLD_SIP = ["sip_new_to_wan", "sip_to_wan", "sip_from_wan"]
NEW_FILTER = [ruleset.BEFORE_SNAT_CHAIN, ruleset.SIP_TO_WAN_CHAIN, ruleset.SIP_FROM_WAN_CHAIN]
EMPTIED = "="  # a chain name with this prefix is flushed but kept: its rules go, the base chain stays hooked
ACCT = "+acct"  # in a variant's chain list: conntrack accounting on while it is measured
# name -> (which table, chains deleted from it, and ACCT if so); table None: no nfsip table at all
VARIANTS: dict[str, tuple[str | None, list[str]]] = {
    "none": (None, []),
    "none +acct": (None, [ACCT]),
    "old": ("old", []),
    "old -sip chains": ("old", OLD_SIP),
    "old -media_count": ("old", ["media_count"]),
    "counters": ("counters", []),
    "new": ("new", [ACCT]),
    "new -acct": ("new", []),
    "new -before_snat": ("new", [ACCT, ruleset.BEFORE_SNAT_CHAIN]),
    "new -sip divert": ("new", [ACCT, ruleset.SIP_TO_WAN_CHAIN, ruleset.SIP_FROM_WAN_CHAIN]),
    "new nat only": ("new", [ACCT, *NEW_FILTER]),
    "new emptied": ("new", [ACCT, *(EMPTIED + c for c in NEW_FILTER)]),
}


@dataclass(frozen=True, slots=True)
class Flow:
    sender: str
    dst_ip: str
    dst_port: int
    src_port: int
    receiver: str
    match: str  # nft match of a correctly translated packet at the receiver


# The same flows as bench/media.py's cases (a), (a') and (b), defined here so that this diagnostic does not
# depend on how media.py counts.
FLOWS = {
    "out": Flow(
        PHONE,
        SERVER_IP,
        SERVER_PORT,
        PHONE_PLAIN_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp sport != {PUBLIC_PORT} udp dport {SERVER_PORT}",
    ),
    "in": Flow(
        T.SERVER,
        PUBLIC_IP,
        PHONE_PLAIN_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_PLAIN_PORT}",
    ),
    "pinhole": Flow(
        T.SERVER,
        PUBLIC_IP,
        PUBLIC_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_MEDIA_PORT}",
    ),
}
PINHOLE_ELEMENTS = f"""\
add element inet nfsip {ruleset.DNAT_MAP} {{ {PUBLIC_IP} . {PUBLIC_PORT} timeout 1h : {PHONE_IP} . {PHONE_MEDIA_PORT} }}
add element inet nfsip {ruleset.SNAT_MAP} {{ {PHONE_IP} . {PHONE_MEDIA_PORT} timeout 1h : {PUBLIC_IP} . {PUBLIC_PORT} }}
"""
# Older tables counted media per packet in counter sets keyed by the phone's LAN address and port.
COUNTER_SETS = ("media_to_lan", "media_from_lan")


def counter_elements(table: str) -> str:
    return "".join(
        f"add element inet nfsip {name} {{ {PHONE_IP} . {PHONE_MEDIA_PORT} timeout 1h }}\n"
        for name in COUNTER_SETS
        if f"set {name} " in table
    )


def table_at(rev: str) -> str:
    """The shipped table file at `rev`, for the router's WAN interface (the file is rendered for wan0)."""
    text = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:nft/nfsip.nft"], capture_output=True, text=True, check=True
    ).stdout
    return text.replace('"wan0"', f'"{T.ROUTER_WAN_IF}"')


def chains_of(table: str) -> set[str]:
    return set(re.findall(r"^\tchain (\w+) \{", table, re.M))


def load(lab: Lab, table: str | None, drop: list[str]) -> None:
    # After the table: loading nfsip's table turns accounting on (its conntrack_accounting chain).
    acct = ["sysctl", "-qw", f"net.netfilter.nf_conntrack_acct={int(ACCT in drop)}"]
    lab.nft(T.ROUTER, "add table inet nfsip\ndelete table inet nfsip\n")
    if table is None:
        lab.run(T.ROUTER, acct)
        return
    lab.nft(T.ROUTER, table)
    lab.run(T.ROUTER, acct)
    for chain in (c for c in drop if c != ACCT):
        if chain.startswith(EMPTIED):
            lab.nft(T.ROUTER, f"flush chain inet nfsip {chain.removeprefix(EMPTIED)}\n")
        else:
            lab.nft(T.ROUTER, f"flush chain inet nfsip {chain}\ndelete chain inet nfsip {chain}\n")
    lab.nft(T.ROUTER, PINHOLE_ELEMENTS + counter_elements(table))


def receiver_table(match: str) -> str:
    """Count-and-drop at the receiver's first hook; re-creating the table zeroes the counter."""
    return f"""\
add table inet bench
delete table inet bench
table inet bench {{
  counter ok {{ }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    {match} counter name ok drop
  }}
}}
"""


def measure(lab: Lab, name: str, blaster: Path, seconds: float) -> float:
    """Packets/s of one short blast. Lean on purpose (no CPU sampling): short measurements interleaved many
    times over are what makes the comparison survive a machine shared with other work."""
    flow = FLOWS[name]
    lab.nft(flow.receiver, receiver_table(flow.match))
    lab.flush_conntrack(T.ROUTER)
    if name == "in":
        # A few packets the other way create the masquerade binding whose reply direction is measured.
        lab.run(flow.receiver, [str(blaster), SERVER_IP, str(SERVER_PORT), str(PHONE_PLAIN_PORT), "12", "1e-6"])
        time.sleep(0.05)
    argv = [str(blaster), flow.dst_ip, str(flow.dst_port), str(flow.src_port), "172", str(seconds)]
    _sent, elapsed = lab.run(flow.sender, argv, timeout=seconds + 30).stdout.split()
    time.sleep(0.05)  # let the last softirq batches land
    return read_counter(lab, flow.receiver, "bench", "ok") / float(elapsed)


def runs(variant: str, flow: str) -> bool:
    # The pinhole needs the nat chains' map lookups: no table, no pinhole.
    return not (flow == "pinhole" and VARIANTS[variant][0] is None)


def run(
    seconds: float,
    rounds: int,
    old_rev: str,
    variants: list[str],
    flows: list[str],
    workdir: Path,
    counters_rev: str = COUNTERS_REV,
) -> PartResult:
    started = time.monotonic()
    blaster = build("udpblast", workdir)
    tables = {
        "old": table_at(old_rev),
        "counters": table_at(counters_rev),
        "new": ruleset.render(ruleset.options_from(Config(wan_interface=T.ROUTER_WAN_IF), native_queue=False)),
    }
    for variant in variants:
        which, drop = VARIANTS[variant]
        named = {c.removeprefix(EMPTIED) for c in drop if c != ACCT}
        missing = named - chains_of(tables[which]) if which else set()
        if missing:
            raise SystemExit(f"{variant}: {which} table has no chain {sorted(missing)}")
    pps: dict[str, dict[str, list[float]]] = {v: {f: [] for f in flows if runs(v, f)} for v in variants}
    load_before: list[float] = []
    with Lab(phones=1) as lab:
        lab.masquerade()
        for r in range(rounds):
            load_before.append(background_busy(0.3))
            # Rotate the order each round: no variant always runs first (right after the lab settles) or
            # always right after the same neighbour.
            for variant in variants[r % len(variants) :] + variants[: r % len(variants)]:
                which, drop = VARIANTS[variant]
                load(lab, tables[which] if which else None, drop)
                for flow in pps[variant]:
                    pps[variant][flow].append(measure(lab, flow, blaster, seconds))
            print(
                f"round {r + 1}/{rounds}: load before {load_before[-1]:.2f} CPUs; "
                + ", ".join(f"{v}/{f} {vals[-1] / 1000:.0f}k" for v, fl in pps.items() for f, vals in fl.items()),
                flush=True,
            )
    revs = f"{old_rev}, counters = {counters_rev}"
    return report(pps, seconds, rounds, revs, load_before, time.monotonic() - started)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile (0 <= q <= 1) of a non-empty list."""
    vals = sorted(values)
    pos = q * (len(vals) - 1)
    low = int(pos)
    high = min(low + 1, len(vals) - 1)
    return vals[low] + (vals[high] - vals[low]) * (pos - low)


def paired(values: list[float], ref: list[float]) -> list[float]:
    """Round by round ratios: both measured seconds apart, so load drifts slower than a round cancel out."""
    return [v / b for v, b in zip(values, ref, strict=False) if b]


def spread(ratios: list[float]) -> str:
    if not ratios:
        return "-"
    return (
        f"{median(ratios):.3f} (IQR {quantile(ratios, 0.25):.2f}-{quantile(ratios, 0.75):.2f}, "
        f"min-max {min(ratios):.2f}-{max(ratios):.2f})"
    )


def report(
    pps: dict[str, dict[str, list[float]]],
    seconds: float,
    rounds: int,
    old_rev: str,
    load_before: list[float],
    elapsed: float,
) -> PartResult:
    result = PartResult(
        "ruleset_cost",
        "What nfsip's table costs every forwarded packet: old table, new table, parts",
        ["variant", "flow", "recv pps (median)", "min-max", "median / none's median", "per round / none (median)"],
    )
    ratios: dict[str, dict[str, float]] = {}
    for variant, flows in pps.items():
        for flow, values in flows.items():
            # The pinhole's reference is plain routing + masquerade of the same direction: none's `in`.
            ref = pps.get("none", {}).get("in" if flow == "pinhole" else flow, [])
            per_round = paired(values, ref)
            ratios.setdefault(variant, {})[flow] = median(per_round) if per_round else float("nan")
            result.rows.append(
                {
                    "variant": variant,
                    "flow": flow,
                    "recv pps (median)": f"{median(values):,.0f}",
                    "min-max": f"{min(values) / 1000:.0f}k-{max(values) / 1000:.0f}k",
                    "median / none's median": f"{median(values) / median(ref):.3f}" if ref else "-",
                    "per round / none (median)": spread(per_round),
                }
            )
    for other in ("old", "counters"):
        if other in pps and "new" in pps:
            for flow in pps["new"]:
                result.notes.append(
                    f"new / {other}, {flow}, per round: {spread(paired(pps['new'][flow], pps[other].get(flow, [])))}"
                )
    result.data = {
        "pps": pps,
        "ratios_per_round_median": ratios,
        "seconds": seconds,
        "rounds": rounds,
        "old_rev": old_rev,
        "load_before": load_before,
    }
    result.notes.append(
        f"{rounds} rounds x {seconds:g} s per variant and flow, variants alternated within each round (order "
        f"rotated each round); 172-byte UDP; old = nft/nfsip.nft at {old_rev}, new = the current render; no "
        "daemon (no queue rule), one pinhole's elements in the maps (and in the counter sets of tables that have "
        "them); conntrack accounting on only in the variants marked +acct and in new's (new -acct: off)"
    )
    result.notes.append(
        "pinhole is compared with none's `in` flow (plain routing + masquerade, same direction); "
        "`per round / none` divides each round's value by the same round's `none` (median, interquartile "
        "range, min-max over the rounds)"
    )
    result.notes.append(
        "other load on the VM before each round (CPUs): median "
        f"{median(load_before):.2f}, min-max {min(load_before):.2f}-{max(load_before):.2f}"
    )
    result.seconds = elapsed
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--old-rev", default=OLD_REV, help="git revision whose nft/nfsip.nft is the old table")
    parser.add_argument(
        "--counters-rev", default=COUNTERS_REV, help="git revision whose nft/nfsip.nft is the `counters` table"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--flows", default=",".join(FLOWS), help=f"comma-separated, of: {', '.join(FLOWS)}")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    flows = [f.strip() for f in args.flows.split(",") if f.strip()]
    unknown = [v for v in variants if v not in VARIANTS] + [f for f in flows if f not in FLOWS]
    if unknown:
        parser.error(f"unknown variant or flow: {', '.join(unknown)}")
    reason = can_run() or (None if shutil.which("gcc") else "needs gcc")
    return run_part(
        reason,
        lambda workdir: run(args.seconds, args.rounds, args.old_rev, variants, flows, workdir, args.counters_rev),
        args.out,
    )


if __name__ == "__main__":
    sys.exit(main())
