"""SIP over TCP beside UDP: messages/s and added latency through nfsip, each against its plain floor, in one run.

    sudo .venv/bin/python bench/tcp_signalling.py [--seconds 5] [--rounds 2] [--connections 4] [--quick] [--out DIR]

Cases (two labs, both up at once; the four cases measured in alternation, round by round):

  udp plain   masquerade only, SIP over UDP: the UDP floor
  udp nfsip   the nfsip daemon, every datagram through its queue (bench/signalling.py's "nfsip")
  tcp plain   masquerade only, SIP over TCP: the TCP floor
  tcp nfsip   the same daemon: the phone's connections are redirected to its TCP relay (nfsip.kernel.
              tcprelay), which frames each whole message, decides and rewrites it as for a datagram (pinholes
              installed before it goes on) and sends it over the router's own connection to the server

The nfsip cases share one lab and daemon, the plain ones one lab without nfsip. A separate script rather than
a --transport of bench/signalling.py: its cases (an accept-only queue loop, the kernel ALG) are about the
queue path, which TCP does not take, while this comparison crosses transport with path; both use the same
run (signalling.one_run, given a transport) and load generator.

Load: bench/sipload.c, the same call flow as bench/signalling.py (INVITE+SDP, 200+SDP, ACK, BYE, 200; a new
Call-ID and SDP port per call, so nfsip installs, re-makes and removes pinholes for every call). Over TCP the
UAC opens --connections persistent connections before the clock starts and sends call i on connection
i % N; the UAS answers each request on the connection it came on; both cut their streams by Content-Length
and set TCP_NODELAY (the generator adds no Nagle delay of its own). Per case and round:
- throughput: closed loop, --window calls in progress (over all connections), for --seconds: messages that
  crossed the router per second (received at either end);
- latency: open loop at --latency-rate calls/s for --seconds; each message carries its send time
  (CLOCK_MONOTONIC, shared by the namespaces), the receiver subtracts: one-way latency per message, pooled
  over the five kinds (p50, p99, max) and per kind; "added" is a case's percentile minus its floor's (the
  plain case of the same transport).
CPU: the daemon's (from /proc: its queue loop and its relay are one thread's work), the load generator's own
(getrusage; it shares the 2 vCPUs), the whole machine's (other load subtracted); each per message crossed.
Checks: over UDP every message was queued; over TCP none was, every one was a message the daemon's relay
framed (nfsip_sip_messages_total{transport="tcp"} = messages crossed), no relay error, no connection lost.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import CONFIG_NOTE, PartResult, Table, build, fmt, median, run_part
from signalling import PathLab, Run, one_run, per_kind, pooled, reason_not_runnable

# (transport, path): the four cases, in the order they run within a round
CASES = (("udp", "plain"), ("udp", "nfsip"), ("tcp", "plain"), ("tcp", "nfsip"))
TITLES = {
    ("udp", "plain"): "UDP, plain masquerade",
    ("udp", "nfsip"): "UDP through nfsip (queue)",
    ("tcp", "plain"): "TCP, plain masquerade",
    ("tcp", "nfsip"): "TCP through nfsip (relay)",
}
KINDS = ("INVITE", "200-INVITE", "ACK", "BYE", "200-BYE")


@dataclass
class Options:
    seconds: float = 5.0
    rounds: int = 2
    window: int = 16
    connections: int = 4
    latency_rate: float = 10.0

    @classmethod
    def quick(cls) -> Options:
        return cls(seconds=2.0, rounds=1)


Case = tuple[str, str]


def name(case: Case) -> str:
    return f"{case[0]} {case[1]}"


def samples_of(runs: list[Run]) -> list[tuple[str, int]]:
    return [s for r in runs for s in r.samples]


def check(case: Case, run: Run) -> list[str]:
    """What a run shows went wrong: failed calls, and for nfsip, messages that missed the path under test."""
    problems = []
    failed = run.uac["calls_failed"]
    if failed:
        problems.append(f"{failed} failed calls")
    if run.uac.get("conn_lost"):
        problems.append(f"{run.uac['conn_lost']} TCP connections closed under the load generator")
    transport, path = case
    if path != "nfsip":
        return problems
    if transport == "udp" and run.queued < run.messages:
        problems.append(f"queued {run.queued} of {run.messages} messages")
    if transport == "tcp":
        relayed = run.metrics.get("messages", {}).get("tcp", 0.0)
        if run.queued:
            problems.append(f"{run.queued} packets queued")
        if relayed != run.messages:
            problems.append(f"the relay handled {relayed:.0f} of {run.messages} messages")
        errors = {k: v for k, v in run.metrics.get("tcp_errors", {}).items() if v}
        if errors:
            problems.append(f"relay errors {errors}")
    return problems


def summarize(tput: dict[Case, list[Run]], lat: dict[Case, list[Run]], opts: Options) -> PartResult:
    result = PartResult(
        "tcp_signalling",
        "SIP over TCP beside UDP: messages/s and added latency through nfsip, each against its plain floor",
        [
            "case",
            f"msg/s (window {opts.window})",
            "of its floor",
            "failed calls",
            "latency p50 µs",
            "p99 µs",
            "max µs",
            "added p50 µs",
            "added p99 µs",
            "daemon µs/msg",
            "load generator µs/msg",
            "machine µs/msg",
        ],
    )
    msg = {c: median(r.msg_per_s for r in tput[c]) for c in CASES}
    daemon = {c: median(r.per_msg_us(r.cpu.get("queue", float("nan"))) for r in tput[c]) for c in CASES}
    lat_all = {c: samples_of(lat[c]) for c in CASES}
    p50 = {c: pooled(lat_all[c], 0.5) for c in CASES}
    p99 = {c: pooled(lat_all[c], 0.99) for c in CASES}
    for case in CASES:
        transport, path = case
        floor = (transport, "plain")
        runs = tput[case]
        result.rows.append(
            {
                "case": TITLES[case],
                result.columns[1]: fmt(msg[case]),
                "of its floor": "1 (floor)" if path == "plain" else fmt(msg[case] / msg[floor], 3),
                "failed calls": str(sum(r.uac["calls_failed"] for r in runs + lat[case])),
                "latency p50 µs": fmt(p50[case]),
                "p99 µs": fmt(p99[case]),
                "max µs": fmt(pooled(lat_all[case], 1.0)),
                "added p50 µs": "0 (floor)" if path == "plain" else fmt(p50[case] - p50[floor]),
                "added p99 µs": "0 (floor)" if path == "plain" else fmt(p99[case] - p99[floor]),
                "daemon µs/msg": "-" if path == "plain" else fmt(daemon[case], 1),
                "load generator µs/msg": fmt(median(r.per_msg_us(r.uac["cpu"] + r.uas["cpu"]) for r in runs), 1),
                "machine µs/msg": fmt(median(r.per_msg_us(r.cpu["machine"]) for r in runs), 1),
            }
        )
    kinds = {c: per_kind(lat_all[c]) for c in CASES}
    result.extra_tables.append(
        Table(
            "One-way latency per message kind, p50 / p99 / max µs (latency runs)",
            ["case", *KINDS],
            [
                {
                    "case": TITLES[c],
                    **{
                        k: f"{fmt(kinds[c][k]['p50_us'])} / {fmt(kinds[c][k]['p99_us'])} / {fmt(kinds[c][k]['max_us'])}"
                        for k in KINDS
                        if k in kinds[c]
                    },
                }
                for c in CASES
            ],
        )
    )
    tcp, udp = ("tcp", "nfsip"), ("udp", "nfsip")
    added = {c: p50[c] - p50[(c[0], "plain")] for c in (tcp, udp)}
    added99 = {c: p99[c] - p99[(c[0], "plain")] for c in (tcp, udp)}
    problems = {name(c): [p for r in tput[c] + lat[c] for p in check(c, r)] for c in CASES}
    result.data = {
        "options": opts.__dict__,
        "throughput": {name(c): [r.as_dict() for r in tput[c]] for c in CASES},
        "latency": {name(c): [r.as_dict() for r in lat[c]] for c in CASES},
        "latency_per_kind": {name(c): kinds[c] for c in CASES},
        "ratios": {
            "tcp_over_udp_nfsip_msg_per_s": msg[tcp] / msg[udp],
            "tcp_over_udp_nfsip_daemon_us_per_msg": daemon[tcp] / daemon[udp],
            "udp_nfsip_over_floor": msg[udp] / msg[("udp", "plain")],
            "tcp_nfsip_over_floor": msg[tcp] / msg[("tcp", "plain")],
        },
        "problems": problems,
    }
    verdicts = {name(c): [r.metrics.get("verdicts", {}) for r in tput[c]] for c in (udp, tcp)}
    result.data["verdicts"] = verdicts
    load = median(r.cpu.get("background", 0.0) for c in CASES for r in tput[c] + lat[c])
    result.notes += [
        f"**TCP / UDP through nfsip: {msg[tcp] / msg[udp]:.2f}x the messages/s, "
        f"{daemon[tcp] / daemon[udp]:.2f}x the daemon's CPU per message, added one-way latency p50 "
        f"{fmt(added[tcp])} against {fmt(added[udp])} µs, p99 {fmt(added99[tcp])} against {fmt(added99[udp])} µs**",
        f"against its plain floor (messages/s): UDP through nfsip {msg[udp] / msg[('udp', 'plain')]:.3f}, "
        f"TCP through nfsip {msg[tcp] / msg[('tcp', 'plain')]:.3f}; TCP / UDP on the plain floor "
        f"{msg[('tcp', 'plain')] / msg[('udp', 'plain')]:.2f}",
        f"throughput: closed loop, {opts.window} calls in progress (over TCP spread over {opts.connections} "
        f"persistent connections), {opts.seconds:g} s per run, median of {opts.rounds} alternated rounds; latency: "
        f"{opts.latency_rate:g} calls/s ({5 * opts.latency_rate:g} msg/s) open loop, one-way per message pooled "
        "over INVITE/200/ACK/BYE/200; added = the case's percentile minus its transport's plain floor's",
        "checks (every run): "
        + (
            "none failed: no failed call, no TCP connection lost, every UDP message queued, no TCP packet "
            "queued and every TCP message framed by the relay, no relay error"
            if not any(problems.values())
            else f"**problems**: { {k: v for k, v in problems.items() if v} }"
        ),
        "daemon µs/msg: the daemon's CPU (from /proc) per message crossed; over TCP it includes the relay's "
        "socket system calls (two connections per phone connection), over UDP the queue's netlink reads and "
        "verdicts. The kernel's forwarding, NAT and TCP work runs partly in softirq and is in 'machine' only",
        "the load generator is C (bench/sipload.c) and runs on the same 2 vCPUs: on the plain floors it is the "
        "bottleneck, so their msg/s (and the 'of its floor' ratios) are lower bounds",
        f"other load on the VM right before each run (subtracted from machine CPU): median {load:.2f} CPUs"
        + (" - **the machine was not idle**" if load > 0.2 else ""),
        CONFIG_NOTE,
    ]
    return result


def run(opts: Options, workdir: Path) -> PartResult:
    started = time.monotonic()
    exe = build("sipload", workdir)
    labs = {path: PathLab(path, workdir) for path in ("plain", "nfsip")}
    tput: dict[Case, list[Run]] = {c: [] for c in CASES}
    lat: dict[Case, list[Run]] = {c: [] for c in CASES}
    try:
        for pl in labs.values():
            pl.up()
        for rnd in range(1, opts.rounds + 1):
            for case in CASES:
                transport, path = case
                pl = labs[path]
                shared: dict[str, Any] = {
                    "seconds": opts.seconds,
                    "transport": transport,
                    "connections": opts.connections,
                }
                t = one_run(pl, exe, workdir, f"{transport}{path}-t{rnd}", window=opts.window, **shared)
                lr = one_run(
                    pl,
                    exe,
                    workdir,
                    f"{transport}{path}-l{rnd}",
                    window=1000,
                    rate=opts.latency_rate,
                    samples=True,
                    **shared,
                )
                tput[case].append(t)
                lat[case].append(lr)
                trouble = check(case, t) + check(case, lr)
                print(
                    f"round {rnd} {name(case):<9}: {t.msg_per_s:9,.0f} msg/s  failed {t.uac['calls_failed']}  "
                    f"daemon cpu {t.cpu.get('queue', 0):.2f}s  gen cpu {t.uac['cpu'] + t.uas['cpu']:.2f}s  "
                    f"latency p50 {pooled(lr.samples, 0.5):,.0f} µs p99 {pooled(lr.samples, 0.99):,.0f} µs "
                    f"max {pooled(lr.samples, 1.0):,.0f} µs" + (f"  PROBLEMS: {trouble}" if trouble else ""),
                    flush=True,
                )
        daemon = labs["nfsip"].daemon
        if daemon is not None and not daemon.alive():
            raise RuntimeError(f"nfsip daemon died:\n{daemon.log()}")
    finally:
        for pl in labs.values():
            pl.down()
    result = summarize(tput, lat, opts)
    result.seconds = time.monotonic() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="length of one run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 2)")
    parser.add_argument("--window", type=int, default=None, help="calls in progress, throughput runs (default 16)")
    parser.add_argument("--connections", type=int, default=None, help="TCP connections of the UAC (default 4)")
    parser.add_argument("--latency-rate", type=float, default=None, help="calls/s of the latency runs (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 s x 1 round")
    parser.add_argument("--out", type=Path, default=None, help="write tcp_signalling.json/.md here")
    args = parser.parse_args()
    opts = Options.quick() if args.quick else Options()
    for key in ("seconds", "rounds", "window", "connections", "latency_rate"):
        if getattr(args, key):
            setattr(opts, key, getattr(args, key))
    return run_part(reason_not_runnable(), lambda workdir: run(opts, workdir), args.out)


if __name__ == "__main__":
    sys.exit(main())
