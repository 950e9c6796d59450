"""Diagnostic: what nfsip's nftables table costs every forwarded packet, chain group by chain group.

    sudo .venv/bin/python bench/ruleset_cost.py [--seconds 2] [--rounds 4] [--out DIR]

bench/media.py finds masquerade through a router with nfsip loaded ((n)) slower than through the same
router without it ((a)), for traffic that is not SIP and not a pinhole. This splits that cost. One lab
with masquerade; nfsip's table as the daemon renders it (nfsip.kernel.ruleset.render, no daemon, so no
queue rule: no packet here is SIP anyway) is loaded in variants with chain groups deleted:

  none            no nfsip table (the baseline)
  full            the whole table
  -media_count    without the forward chain that looks every UDP packet up in the two counter sets
  -sip chains     without sip_new_to_wan, sip_to_wan, sip_from_wan (the SIP divert filter chains)
  -pinhole nat    without the nat chains (they only see the first packet of a connection)
  only counters   media_count alone

Each variant: conntrack flushed, phone1:6100 -> server:7000 blasted with bench/udpblast.c for --seconds,
counted at the server (as media.py case (a)). Variants alternate round by round; medians.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from common import PartResult, build, make_workdir, median, write_part
from media import CASES, blast, receiver_table

from nfsip.config import Config
from nfsip.kernel import ruleset
from nfsip.lab import topology as T
from nfsip.lab.lab import Lab, can_run

VARIANTS: dict[str, list[str] | None] = {
    "none": None,
    "full": [],
    "-media_count": ["media_count"],
    "-sip chains": ["sip_new_to_wan", "sip_to_wan", "sip_from_wan"],
    "-pinhole nat": ["pinholes_prerouting", "pinholes_postrouting"],
    "only counters": ["sip_new_to_wan", "sip_to_wan", "sip_from_wan", "pinholes_prerouting", "pinholes_postrouting"],
}


def run(seconds: float, rounds: int, workdir: Path) -> PartResult:
    started = time.monotonic()
    blaster = build("udpblast", workdir)
    case = next(c for c in CASES if c.key == "a")
    table = ruleset.render(ruleset.options_from(Config(wan_interface=T.ROUTER_WAN_IF), native_queue=False))
    pps: dict[str, list[float]] = {k: [] for k in VARIANTS}
    with Lab(phones=1) as lab:
        lab.masquerade()
        for _ in range(rounds):
            for name, drop in VARIANTS.items():
                lab.nft(T.ROUTER, "add table ip nfsip\ndelete table ip nfsip\n")
                if drop is not None:
                    lab.nft(T.ROUTER, table)
                    for chain in drop:
                        lab.nft(T.ROUTER, f"flush chain ip nfsip {chain}\ndelete chain ip nfsip {chain}\n")
                lab.nft(case.receiver, receiver_table(case.match))
                lab.flush_conntrack(T.ROUTER)
                pps[name].append(blast(lab, case, blaster, case.dst_port, seconds, 172, {}).recv_pps)
    base = median(pps["none"])
    result = PartResult("ruleset_cost", "What nfsip's table costs every forwarded packet",
                        ["variant", "recv pps (median)", "per round", "vs no table"])
    for name, values in pps.items():
        result.rows.append({"variant": name, "recv pps (median)": f"{median(values):,.0f}",
                            "per round": " ".join(f"{v / 1000:.0f}k" for v in values),
                            "vs no table": f"{median(values) / base:.3f}"})
    result.data = {"pps": pps, "seconds": seconds, "rounds": rounds}
    result.notes.append(f"{rounds} rounds x {seconds:g} s, masquerade out phone1 -> server, 172-byte UDP")
    result.seconds = time.monotonic() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    reason = can_run()
    if reason or shutil.which("gcc") is None:
        print(f"cannot run: {reason or 'needs gcc'}", file=sys.stderr)
        return 2
    workdir = make_workdir()
    try:
        result = run(args.seconds, args.rounds, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_part(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
