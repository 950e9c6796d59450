"""Part 4, scale: 10,000 concurrent calls (20,000 pinholes) held through nfsip, then torn down.

    sudo .venv/bin/python bench/scale.py [--calls 10000] [--quick] [--out DIR]

Method. The real daemon runs in the router (limits raised: see bench/common.py BENCH_CONFIG; the defaults
would stop one phone at 16 calls, and the whole router at 5000 calls / 20000 pinholes). The calls are
real SIP through the queue, not internal API calls: bench/sipload.c in hold mode on phone1 sends
INVITE (distinct Call-ID, SDP m=audio 10000 + 2i: 2 pinholes each, RTP + RTCP) -> the sipload UAS on the
server answers 200 OK with SDP -> ACK, and keeps each call up; later BYE -> 200 OK. At most 64 call steps
are in flight. So every number includes the whole path: queue, parse, rewrite, port allocation, the nft
transactions (INVITE: install, 200: re-create with the established state) and the conntrack purges.

Calls are brought up in stages to N/4, N/2, N (pinholes 0 -> N/2 -> N -> 2N: 0, 5k, 10k, 20k for N = 10000)
and torn down in stages N/2, N/4, 0. At every level:
- the daemon's resident memory (VmRSS of /proc/<pid>/status); per call = (RSS at N - RSS at 0) / N;
- the cost of the daemon's own nft transactions during the stage that led there (deltas of its
  nfsip_nft_transaction_seconds histogram: mean, and p50/p99 as precise as the Prometheus buckets);
- a probe: in the router namespace, `Nft.apply()` (nfsip's adapter, a raw nfnetlink batch) adds and then
  removes the 2 pinholes of one extra audio stream in the same table, --probe times (median, p99), so
  the element insert/delete cost is seen against the size of the maps (each media pinhole is 2 elements:
  media_snat and media_dnat); and what the daemon's housekeeping reads back at that size: the table check,
  and the per-call media counts (one dump of the UDP conntrack table). At the peak, before the probe,
  phone1 sends one datagram from every held call's RTP and RTCP port, so that the counts are read over a
  media flow per pinhole (2 conntrack entries per call, which the teardown must then purge);
- the stage's duration (calls/s the daemon sustained bringing calls up or down).
At N: `nfsip status --json` (its run time and what it reports). After teardown, leftovers: calls and
pinholes in `nfsip status`, and UDP conntrack entries in the router other than the SIP flow itself; all
must be zero.

Time budget: bringing calls up stops (sipload "stop": no new INVITEs, the ones in flight finish) once half
of --budget has passed; the level reached is then the peak, the table says so, and teardown still runs to
zero so leftovers are always checked.
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_CONFIG,
    CONFIG_NOTE,
    PHONE,
    PartResult,
    build,
    cpu_seconds,
    finish,
    fmt,
    hist_summary,
    parse_histogram,
    profile_frames,
    profile_summary,
    rss_kib,
    run_part,
    sipload_uac_args,
    sipload_uas,
    start_profile,
)

from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run
from nfsiplab.nfsipd import NfsipDaemon

PROBE = "--probe-child"
PROBE_LAN_IP = "10.0.0.250"  # no such phone: probe elements never match traffic
PROBE_PORT = 8000  # below the daemon's media range (10000-65000)
MEDIA_BASE = 10000  # sipload -m: call i offers m=audio MEDIA_BASE + 2i (RTP) and + 1 (RTCP)
DISCARD_PORT = 9  # the media touch's destination on the server (nothing listens)
# One datagram from each of n consecutive LAN ports, starting at base: a conntrack entry per pinhole.
TOUCH = """
import socket, sys
dst, base, n = (sys.argv[1], int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
for port in range(base, base + n):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.sendto(b"rtp", dst)
"""


@dataclass
class Options:
    calls: int = 10_000
    window: int = 64
    probe: int = 200
    budget_s: float = 300.0
    profile: bool = False

    @classmethod
    def quick(cls) -> Options:
        return cls(calls=2500, probe=50, budget_s=60.0)


@dataclass
class Level:
    phase: str  # "start", "up", "down"
    calls: int  # calls up after the stage
    seconds: float  # stage duration
    failed: int
    rss_kib: int
    nft: dict[str, float] = field(default_factory=dict)
    probe: dict[str, float] = field(default_factory=dict)
    verdict: dict[str, float] = field(default_factory=dict)
    daemon_cpu: float = 0.0


# --------------------------------------------------------------------------------------------- probe
def probe_child(n: int) -> None:
    """Inside the router namespace: time n add and n remove transactions of one 2-pinhole audio stream."""
    from nfsip.core.model import Endpoint, Pinhole
    from nfsip.kernel.conntrack import read_media_counters
    from nfsip.kernel.nft import Nft
    from nfsip.kernel.ruleset import SNAT_MAP

    nft = Nft("nfsip")
    add, remove = [], []
    for i in range(n):
        port = PROBE_PORT + 2 * (i % 500)
        holes = [
            Pinhole(
                Endpoint(T.ROUTER_WAN_IP, port + k),
                Endpoint(PROBE_LAN_IP, port + k),
                f"probe-{i}",
                f"m0.{'rtcp' if k else 'rtp'}",
                60,
            )
            for k in (0, 1)
        ]
        t0 = time.perf_counter()
        nft.apply(holes, ())
        t1 = time.perf_counter()
        nft.apply((), holes)
        t2 = time.perf_counter()
        add.append(t1 - t0)
        remove.append(t2 - t1)
    t0 = time.perf_counter()
    elements = len(nft.elements(SNAT_MAP))
    list_s = time.perf_counter() - t0
    # What the daemon's tick reads back from the kernel while the maps are this big: every 5 s the table
    # check (Daemon.ensure_installed) and the media counter sample (Daemon.sample_media); the packet loop
    # waits meanwhile.
    t0 = time.perf_counter()
    nft.table_exists()
    nft.has_queue_rule()
    check_s = time.perf_counter() - t0
    lan = {hole.lan for hole in nft.media_pinholes() if hole.lan.ip != PROBE_LAN_IP}
    t0 = time.perf_counter()
    counts = read_media_counters(lan)
    counters_s = time.perf_counter() - t0

    def pct(v: list[float], q: float) -> float:
        v = sorted(v)
        return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))] * 1e6

    print(
        json.dumps(
            {
                "add_p50_us": statistics.median(add) * 1e6,
                "add_p99_us": pct(add, 0.99),
                "remove_p50_us": statistics.median(remove) * 1e6,
                "remove_p99_us": pct(remove, 0.99),
                "snat_elements": elements,
                "list_snat_s": list_s,
                "table_check_s": check_s,
                "media_counters_s": counters_s,
                "media_endpoints": len(lan),
                "media_endpoints_counted": sum(1 for v in counts.values() if v[2]),
            }
        )
    )


def touch_media(lab: Lab, calls: int) -> None:
    """One datagram from the RTP and RTCP port of each of the `calls` held calls (all of them pinholes now),
    through the router to the server: SNATed by media_snat, one conntrack entry each."""
    argv = [sys.executable, "-c", TOUCH, T.SERVER_IP, str(DISCARD_PORT), str(MEDIA_BASE), str(2 * calls)]
    lab.run(PHONE, argv, timeout=300)
    time.sleep(0.5)


def probe(lab: Lab, n: int) -> dict[str, float]:
    res = lab.run(T.ROUTER, [sys.executable, __file__, PROBE, str(n)], timeout=300)
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def command(proc: subprocess.Popen[str], line: str, timeout: float) -> tuple[int, int, float]:
    """Send one hold-mode command to the sipload UAC; return (calls up, failed so far, seconds)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"sipload did not finish {line!r} within {timeout:.0f} s")
    reply = proc.stdout.readline().split()
    if len(reply) != 4 or reply[0] != "done":
        raise RuntimeError(f"sipload answered {reply!r} to {line!r}")
    return int(reply[1]), int(reply[2]), float(reply[3])


def conntrack_entries(lab: Lab) -> list[str]:
    """The router's UDP conntrack entries other than the SIP signalling flow (port 5060 both ends); the
    TCP connections of the /metrics scrapes are not counted."""
    out = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    return [line for line in out.splitlines() if line.strip() and "sport=5060 dport=5060" not in line]


def run(opts: Options, workdir: Path) -> PartResult:
    started = time.monotonic()
    exe = build("sipload", workdir)
    n = opts.calls
    levels: list[Level] = []
    data: dict[str, Any] = {"options": opts.__dict__}
    lab = Lab(phones=1)
    daemon: NfsipDaemon | None = None
    stopped_early = ""
    try:
        lab.up()
        lab.masquerade()
        daemon = NfsipDaemon(lab, config=BENCH_CONFIG, log_level="warning").start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        uas = sipload_uas(lab, exe)
        argv = sipload_uac_args(
            exe, lab, n=n, w=opts.window, H=True, T=30000, m=MEDIA_BASE, s=25000, p=f"scale{int(time.time())}"
        )
        uac = lab.popen(PHONE, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        levels.append(Level("start", 0, 0.0, 0, rss_kib(pid), probe=probe(lab, opts.probe)))
        print(f"start: RSS {levels[0].rss_kib / 1024:.1f} MiB probe {levels[0].probe}", flush=True)
        # Bringing calls up may use half the budget; tearing them down always runs to the end (leftovers).
        up_deadline = started + opts.budget_s / 2
        metrics = daemon.metrics()
        plan = [n // 4, n // 2, n]
        peak = 0
        while plan:
            target = plan.pop(0)
            phase = "up" if target > peak else "down"
            cpu0 = cpu_seconds(pid)
            timeout = max(5.0, up_deadline - time.monotonic()) if phase == "up" else 1800.0
            spy = None
            if opts.profile and phase == "up" and len(plan) == 1:  # the second stage up: N/4 -> N/2 calls
                spy = start_profile(pid, min(20.0, max(2.0, timeout - 1)), workdir / "scale-profile.txt")
            try:
                up, failed, secs = command(uac, f"{phase} {target}", timeout)
            except TimeoutError:
                up, failed, secs = command(uac, "stop", 300.0)
                stopped_early = (
                    f"{n:,} calls not reached: bringing calls up stopped at {up:,} calls when half of the "
                    f"{opts.budget_s:.0f} s budget was used (bench/scale.py --budget raises it)"
                )
                plan = []
            if spy is not None:
                spy.wait(timeout=60)
                if (workdir / "scale-profile.txt").exists():
                    data["profile_second_up_stage"] = profile_summary(workdir / "scale-profile.txt")
            now_metrics = daemon.metrics()
            level = Level(
                phase,
                up,
                secs,
                failed,
                rss_kib(pid),
                nft=hist_summary(
                    parse_histogram(now_metrics, "nfsip_nft_transaction_seconds")
                    - parse_histogram(metrics, "nfsip_nft_transaction_seconds")
                ),
                verdict=hist_summary(
                    parse_histogram(now_metrics, "nfsip_verdict_seconds")
                    - parse_histogram(metrics, "nfsip_verdict_seconds")
                ),
                daemon_cpu=cpu_seconds(pid) - cpu0,
            )
            metrics = now_metrics
            if phase == "up" and (target == n or stopped_early):
                peak_status(daemon, data)
                touch_media(lab, up)
            if phase == "up":
                peak = up
                if not plan:
                    plan = [peak // 2, peak // 4, 0]
            level.probe = probe(lab, opts.probe)
            if phase == "up" and (target == n or stopped_early):
                data["peak_endpoints"] = level.probe.get("media_endpoints")
                data["peak_counted"] = level.probe.get("media_endpoints_counted")
            levels.append(level)
            print(
                f"{phase} -> {up} calls in {secs:.1f} s ({failed} failed), RSS {level.rss_kib / 1024:.1f} MiB, "
                f"nft mean {level.nft.get('mean_us', 0):.0f} µs, probe add p50 {level.probe['add_p50_us']:.0f} µs "
                f"({level.probe['snat_elements']} snat elements)",
                flush=True,
            )
            if phase == "down" and up == 0:
                break
        uac_summary = _quit(uac)
        finish(uas)
        time.sleep(1.5)  # a tick of the daemon: expired state, purges after the last verdicts
        status = daemon.status()
        leftovers = conntrack_entries(lab)
        data["after"] = {
            "status_calls": len(status.get("calls", [])),
            "status_pinholes": status.get("pinholes"),
            "status_registrations": len(status.get("registrations", [])),
            "conntrack_other_than_sip": len(leftovers),
            "conntrack_sample": leftovers[:5],
            "rss_kib": rss_kib(pid),
            "calls_active_gauge": daemon.metric("nfsip_calls_active"),
            "pinholes_active_gauge": daemon.metric("nfsip_pinholes_active"),
        }
        data["uac"] = uac_summary
        data["daemon_alive"] = daemon.alive()
        data["log_tail"] = daemon.log()[-1500:]
    finally:
        if daemon is not None:
            daemon.stop()
        lab.down()
    result = summarize(levels, data, opts, stopped_early)
    result.seconds = time.monotonic() - started
    return result


def peak_status(daemon: NfsipDaemon, data: dict[str, Any]) -> None:
    """`nfsip status --json` at the peak (how long it takes, what it lists) and the daemon's gauges."""
    t0 = time.monotonic()
    status = daemon.status()
    data["status_at_top"] = {
        "seconds": time.monotonic() - t0,
        "calls": len(status.get("calls", [])),
        "pinholes": status.get("pinholes"),
    }
    data["gauges_at_top"] = {
        "calls_active": daemon.metric("nfsip_calls_active"),
        "pinholes_active": daemon.metric("nfsip_pinholes_active"),
    }


def _quit(uac: subprocess.Popen[str]) -> dict[str, Any]:
    assert uac.stdin is not None
    uac.stdin.write("quit\n")
    uac.stdin.flush()
    return finish(uac, timeout=30)


def summarize(levels: list[Level], data: dict[str, Any], opts: Options, stopped_early: str) -> PartResult:
    result = PartResult(
        "scale",
        f"Scale: {opts.calls:,} concurrent calls through nfsip, held and torn down",
        [
            "stage",
            "calls up",
            "pinholes",
            "stage s",
            "calls/s",
            "failed",
            "daemon CPU ms/call",
            "daemon RSS MiB",
            "daemon nft tx mean µs",
            "probe add p50/p99 µs",
            "probe remove p50/p99 µs",
            "table check / counters read s",
        ],
    )
    prev = 0
    for lv in levels:
        delta = abs(lv.calls - prev)
        result.rows.append(
            {
                "stage": {"start": "start", "up": "bring up", "down": "tear down"}[lv.phase],
                "calls up": f"{lv.calls:,}",
                "pinholes": f"{2 * lv.calls:,}",
                "stage s": fmt(lv.seconds, 1),
                "calls/s": fmt(delta / lv.seconds, 0) if lv.seconds else "-",
                "failed": lv.failed,
                "daemon CPU ms/call": fmt(lv.daemon_cpu / delta * 1000, 2) if delta else "-",
                "daemon RSS MiB": fmt(lv.rss_kib / 1024, 1),
                "daemon nft tx mean µs": fmt(lv.nft.get("mean_us"), 0) if lv.nft.get("count") else "-",
                "probe add p50/p99 µs": f"{lv.probe.get('add_p50_us', 0):.0f} / {lv.probe.get('add_p99_us', 0):.0f}",
                "probe remove p50/p99 µs": (
                    f"{lv.probe.get('remove_p50_us', 0):.0f} / {lv.probe.get('remove_p99_us', 0):.0f}"
                ),
                "table check / counters read s": (
                    f"{lv.probe.get('table_check_s', 0):.3f} / {lv.probe.get('media_counters_s', 0):.3f}"
                ),
            }
        )
        prev = lv.calls
    top = max(levels, key=lambda lv: lv.calls)
    per_call = (top.rss_kib - levels[0].rss_kib) * 1024 / top.calls if top.calls else float("nan")
    after = data.get("after", {})
    data["levels"] = [lv.__dict__ for lv in levels]
    data["per_call_bytes"] = per_call
    result.data = data
    if stopped_early:
        result.notes.append(f"**{stopped_early}**")
    prof = data.get("profile_second_up_stage")
    if prof:
        result.notes.append(
            f"py-spy, daemon during the second stage up ({levels[1].calls if len(levels) > 1 else 0:,}"
            f" -> {levels[2].calls if len(levels) > 2 else 0:,} calls; % of samples on stack): "
            f"{profile_frames(prof)}"
        )
    result.notes += [
        f"peak: {top.calls:,} calls up = {2 * top.calls:,} media pinholes ({4 * top.calls:,} nft elements: "
        f"media_snat and media_dnat); daemon RSS {levels[0].rss_kib / 1024:.1f} MiB at "
        f"start -> {top.rss_kib / 1024:.1f} MiB: **{per_call:,.0f} bytes per call**",
        f"`nfsip status --json` at the peak took {data.get('status_at_top', {}).get('seconds', float('nan')):.1f} s "
        f"and listed {data.get('status_at_top', {}).get('calls', '-')} calls / "
        f"{data.get('status_at_top', {}).get('pinholes', '-')} pinholes",
        f"leftovers after teardown: nfsip status {after.get('status_calls', '-')} calls, "
        f"{after.get('status_pinholes', '-')} pinholes; router conntrack entries other than the SIP flow: "
        f"{after.get('conntrack_other_than_sip', '-')}; gauges calls {after.get('calls_active_gauge', '-')}, "
        f"pinholes {after.get('pinholes_active_gauge', '-')}; daemon RSS after "
        f"{after.get('rss_kib', 0) / 1024:.1f} MiB",
        "table check / counters read: Nft.table_exists() + has_queue_rule() (the daemon's ensure_installed, "
        "every 5 s) and conntrack.read_media_counters() of every media pinhole's LAN endpoint (sample_media, "
        "every media_sample_interval = 5 s: one dump of the UDP conntrack table), timed once at each level in "
        "the router; the daemon runs them in its reader thread (nfsip.kernel.reader), off the packet loop. At "
        "the peak every pinhole has a media flow (one datagram from each RTP and RTCP port: "
        f"{data.get('peak_counted', '-')} of {data.get('peak_endpoints', '-')} endpoints counted)",
        "probe: one extra audio stream (2 pinholes = 4 elements) added and removed by nfsip's Nft.apply() "
        f"{opts.probe} times at each level, in the daemon's table; daemon nft tx mean: the daemon's own "
        "transactions during the stage that led to the level (INVITE install + 200 re-create, or BYE removal)",
        f"calls driven by real SIP through the queue (bench/sipload.c hold mode, {opts.window} call steps in "
        "flight); " + CONFIG_NOTE,
    ]
    return result


def reason_not_runnable() -> str | None:
    reason = can_run()
    if reason:
        return reason
    if shutil.which("gcc") is None or shutil.which("conntrack") is None:
        return "needs gcc and conntrack"
    return None


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == PROBE:
        probe_child(int(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None, help="concurrent calls at the peak (default 10000)")
    parser.add_argument("--quick", action="store_true", help="2500 calls, 60 s budget")
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for the whole part (default 300); bringing calls up stops at half of it",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon during the second stage up")
    parser.add_argument("--out", type=Path, default=None, help="write scale.json/.md here")
    args = parser.parse_args()
    opts = Options.quick() if args.quick else Options()
    if args.calls:
        opts.calls = args.calls
    if args.budget:
        opts.budget_s = args.budget
    opts.profile = args.profile
    return run_part(reason_not_runnable(), lambda workdir: run(opts, workdir), args.out)


if __name__ == "__main__":
    sys.exit(main())
