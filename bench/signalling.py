"""Part 2, signalling: SIP messages/s through the router and the latency each path adds, side by side.

    sudo .venv/bin/python bench/signalling.py [--seconds 5] [--rounds 2] [--quick] [--profile] [--out DIR]

Paths (one lab each, all up at once, measured in alternation):

  plain    masquerade only: no queue, nothing parses SIP (the floor for latency)
  accept   nfsip's table and queue, but bench/queue_accept.py bound to the queue: it accepts every datagram
           untouched (the cost of NFQUEUE + netfilterqueue alone)
  nfsip    the real daemon (python -m nfsip run), every message parsed, decided, rewritten; pinholes
           installed for INVITE and 200 OK (one nft transaction each) and removed for BYE
  alg      the kernel SIP ALG (nf_conntrack_sip + nf_nat_sip) with masquerade

Load. bench/sipload.c (gcc -O2): a UAC on phone1 (10.0.0.2:5060) places calls to a UAS on the server
(198.51.100.2:5060). Each call is INVITE with SDP -> 200 OK with SDP -> ACK -> BYE -> 200 OK: five valid
SIP messages, each a distinct Call-ID and a distinct SDP media port (10000 + 2i), so nfsip does the full
path for every call (parse, rewrite Via/Contact/SDP, allocate ports, 1 nft transaction at INVITE, 1 at
200, 1 at BYE, conntrack purges after INVITE and BYE). The daemon runs with raised limits (see
bench/common.py BENCH_CONFIG): with the default per-host limits one phone could open 10 calls/s at most
and further messages would pass unchanged, skipping the pinhole path.

Two measurements per path and round:
- throughput: closed loop, at most --window calls in progress, for --seconds: messages that crossed the
  router per second (received at either end). A call step unanswered within 5 s fails the call.
- latency: open loop at --latency-rate calls/s (well under nfsip's capacity) for --seconds: every message
  carries its send time (CLOCK_MONOTONIC, shared by all namespaces); the receiver subtracts. One-way
  latency per message, pooled over all five kinds (p50, p99), and "added" = p50 minus the plain path's p50.

CPU: the queue process (nfsip daemon / accept loop) from /proc/<pid>/stat; the load generator's own
getrusage (UAC + UAS: it shares the 2 vCPUs with the router); the whole machine's busy time. All per
message crossed. The kernel's NFQUEUE counters (/proc/net/netfilter/nfnetlink_queue) check that every
message went through the queue (fail-open would let packets bypass a full queue silently; the window
keeps the queue far below its 4096 limit).

With --profile (needs py-spy: .venv/bin/pip install py-spy) the daemon is sampled during its first
throughput run and the top frames go into the JSON (where the daemon spends its time).

    sudo .venv/bin/python bench/signalling.py --workers 1,2 [--seconds 5] [--rounds 2] [--profile]

compares nfsip with 1 and with 2 worker processes (config `workers`) instead: one lab per worker count,
both up at once, measured in alternation. The load comes from two LAN hosts, phone1 (10.0.0.2) and phone2
(10.0.0.3), one per shard of two workers (a single host's SIP always goes to one worker): one sipload UAC
on each, closed loop with --window calls in progress each, one UAS. Reported: messages/s crossed, the CPU
of nfsip's processes (supervisor and workers, from /proc), of the load generator (its getrusage: it runs
on the same 2 vCPUs) and of the whole machine. With --profile, worker 0 of the multi-worker daemon is
sampled by py-spy during the first round (signalling_workers.json holds the top frames). --one-host loads
from phone1 only: all SIP on one shard, so a second worker cannot help (the cost of the worker machinery).
"""

from __future__ import annotations

import argparse
import json
import os
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
    QUEUE_NUM,
    CpuWatch,
    PartResult,
    background_busy,
    build,
    finish,
    fmt,
    hist_summary,
    median,
    messages_crossed,
    nfqueue_stats,
    parse_counters,
    parse_histogram,
    profile_frames,
    profile_summary,
    run_part,
    sipload_uac_args,
    sipload_uas,
    start_profile,
)

from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run
from nfsiplab.nfsipd import NfsipDaemon

BENCH = Path(__file__).resolve().parent
PATHS = ("plain", "accept", "nfsip", "alg")
TITLES = {
    "plain": "plain masquerade (no queue)",
    "accept": "accept-only queue loop (Python)",
    "nfsip": "nfsip daemon",
    "alg": "kernel SIP ALG",
    "base": "nfsip at the --baseline checkout",
}


@dataclass
class Options:
    seconds: float = 5.0
    rounds: int = 2
    window: int = 16
    latency_rate: float = 10.0
    profile: bool = False
    # Another checkout of nfsip (e.g. `git worktree add /tmp/base <commit>`): its daemon runs as one more
    # path, "base", in the same rounds, so that a change is measured before and after side by side.
    baseline: Path | None = None

    @classmethod
    def quick(cls) -> Options:
        return cls(seconds=2.0, rounds=1)


@dataclass
class Run:
    """One sipload run through one path."""

    uac: dict[str, Any]
    uas: dict[str, Any]
    cpu: dict[str, float]
    queued: int
    queue_dropped: int
    samples: list[tuple[str, int]] = field(default_factory=list)  # (kind, ns), latency runs only
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(self.uac["elapsed"])

    @property
    def messages(self) -> int:
        return messages_crossed(self.uac, self.uas)

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def calls_per_s(self) -> float:
        return self.uac["calls_done"] / self.seconds if self.seconds else 0.0

    def per_msg_us(self, cpu: float) -> float:
        return cpu / self.messages * 1e6 if self.messages else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "uac": self.uac,
            "uas": self.uas,
            "cpu": self.cpu,
            "queued": self.queued,
            "queue_dropped": self.queue_dropped,
            "messages": self.messages,
            "msg_per_s": self.msg_per_s,
            "calls_per_s": self.calls_per_s,
            "metrics": self.metrics,
        }


def config_known_to(checkout: Path | None) -> dict[str, Any]:
    """BENCH_CONFIG without the keys an older checkout's Config does not have (it refuses unknown keys)."""
    if checkout is None:
        return BENCH_CONFIG
    code = "import dataclasses, nfsip.config as c; print(' '.join(f.name for f in dataclasses.fields(c.Config)))"
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    # Run from the checkout: the current directory comes first on the import path, before PYTHONPATH.
    known = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=checkout, capture_output=True, text=True, check=True
    )
    keys = set(known.stdout.split())
    return {k: v for k, v in BENCH_CONFIG.items() if k in keys}


class PathLab:
    """One lab for one path, with its queue process (if any) kept running across runs."""

    def __init__(self, path: str, workdir: Path, baseline: Path | None = None) -> None:
        self.path = path
        self.baseline = baseline
        self.workdir = workdir
        self.lab = Lab(phones=1)
        self.daemon: NfsipDaemon | None = None
        self.accept: subprocess.Popen[str] | None = None

    def up(self) -> PathLab:
        lab = self.lab.up()
        lab.masquerade()
        if self.path == "nfsip":
            self.daemon = NfsipDaemon(lab, config=BENCH_CONFIG, log_level="warning").start()
        elif self.path == "base":
            self.daemon = NfsipDaemon(
                lab, config=config_known_to(self.baseline), log_level="warning", source=self.baseline
            ).start()
        elif self.path == "accept":
            self.accept = lab.popen(
                T.ROUTER,
                [sys.executable, str(BENCH / "queue_accept.py"), "--wan-interface", T.ROUTER_WAN_IF],
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.accept.stdout is not None
            if self.accept.stdout.readline().strip() != "ready":
                raise RuntimeError("queue_accept.py did not start")
        elif self.path == "alg":
            lab.kernel_sip_alg()
        return self

    @property
    def queue_pid(self) -> int | None:
        if self.daemon is not None and self.daemon.proc is not None:
            return self.daemon.proc.pid
        if self.accept is not None:
            return self.accept.pid
        return None

    def down(self) -> None:
        if self.accept is not None and self.accept.poll() is None:
            self.accept.terminate()
            self.accept.communicate(timeout=10)
        if self.daemon is not None:
            self.daemon.stop()
        self.lab.down()


def one_run(
    pl: PathLab,
    exe: Path,
    workdir: Path,
    tag: str,
    *,
    seconds: float,
    window: int,
    rate: float = 0.0,
    samples: bool = False,
    profile: Path | None = None,
    transport: str = "udp",
    connections: int = 4,
) -> Run:
    """UAS on the server, UAC on the phone for `seconds`; CPU, queue counters and daemon metrics around it.
    transport "tcp": SIP over `connections` persistent TCP connections (bench/tcp_signalling.py)."""
    lab = pl.lab
    uac_file, uas_file = workdir / f"{tag}-uac.txt", workdir / f"{tag}-uas.txt"
    uas = sipload_uas(lab, exe, samples=uas_file if samples else None, transport=transport)
    pids = {"queue": pl.queue_pid} if pl.queue_pid else {}
    q0 = nfqueue_stats(lab).get(QUEUE_NUM, {})
    m0 = pl.daemon.metrics() if pl.daemon else ""
    argv = sipload_uac_args(
        exe,
        lab,
        n=2_000_000,
        w=window,
        r=rate or None,
        t=seconds,
        T=5000,
        p=f"{tag.replace('-', '')}x{int(time.time())}",
        o=str(uac_file) if samples else None,
        x=transport,
        c=connections if transport == "tcp" else None,
    )
    watch = CpuWatch(pids, background=background_busy()).start()
    spy = start_profile(pl.queue_pid, seconds - 0.5, profile) if profile and pl.queue_pid else None
    res = lab.run(PHONE, argv, timeout=seconds + 60)
    cpu = watch.stop()
    time.sleep(0.1)
    uas_summary = finish(uas)
    if spy is not None:
        spy.wait(timeout=30)
    q1 = nfqueue_stats(lab).get(QUEUE_NUM, {})
    run = Run(
        uac=json.loads(res.stdout.strip().splitlines()[-1]),
        uas=uas_summary,
        cpu=cpu,
        queued=q1.get("id_sequence", 0) - q0.get("id_sequence", 0),
        queue_dropped=(q1.get("queue_dropped", 0) + q1.get("user_dropped", 0))
        - (q0.get("queue_dropped", 0) + q0.get("user_dropped", 0)),
    )
    if pl.daemon is not None:
        m1 = pl.daemon.metrics()
        run.metrics = {
            "verdict": hist_summary(
                parse_histogram(m1, "nfsip_verdict_seconds") - parse_histogram(m0, "nfsip_verdict_seconds")
            ),
            "nft": hist_summary(
                parse_histogram(m1, "nfsip_nft_transaction_seconds")
                - parse_histogram(m0, "nfsip_nft_transaction_seconds")
            ),
            "verdicts": {
                k: v - parse_counters(m0, "nfsip_verdicts").get(k, 0.0)
                for k, v in parse_counters(m1, "nfsip_verdicts").items()
            },
            "refusals": {
                k: v - parse_counters(m0, "nfsip_policy_refusals").get(k, 0.0)
                for k, v in parse_counters(m1, "nfsip_policy_refusals").items()
            },
            # messages the daemon handled per transport label (a TCP one: framed by its relay)
            "messages": {
                label: sum(
                    v - parse_counters(m0, "nfsip_sip_messages").get(k, 0.0)
                    for k, v in parse_counters(m1, "nfsip_sip_messages").items()
                    if f'transport="{label}"' in k
                )
                for label in ("udp", "tcp")
            },
            "tcp_errors": {
                k: v - parse_counters(m0, "nfsip_tcp_relay_errors").get(k, 0.0)
                for k, v in parse_counters(m1, "nfsip_tcp_relay_errors").items()
            },
        }
    if samples:
        for path in (uac_file, uas_file):
            if path.exists():
                for line in path.read_text().splitlines():
                    kind, ns = line.split()
                    run.samples.append((kind, int(ns)))
    if profile is not None and profile.exists():
        run.metrics["profile"] = profile_summary(profile)
    return run


def pooled(samples: list[tuple[str, int]], q: float) -> float:
    """Percentile (µs) over all message kinds."""
    values = sorted(ns for _kind, ns in samples)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] / 1000.0


def per_kind(samples: list[tuple[str, int]]) -> dict[str, dict[str, float]]:
    kinds: dict[str, list[int]] = {}
    for kind, ns in samples:
        kinds.setdefault(kind, []).append(ns)
    out = {}
    for kind, values in kinds.items():
        values.sort()
        out[kind] = {
            "n": len(values),
            "p50_us": statistics.median(values) / 1000.0,
            "p99_us": values[min(len(values) - 1, int(0.99 * (len(values) - 1) + 0.5))] / 1000.0,
            "max_us": values[-1] / 1000.0,
        }
    return out


def summarize(tput: dict[str, list[Run]], lat: dict[str, list[Run]], opts: Options) -> PartResult:
    result = PartResult(
        "signalling",
        "Signalling: SIP messages/s through the router, and the latency each path adds",
        [
            "path",
            "msg/s (window 16)",
            "calls/s",
            "failed calls",
            "latency p50 µs",
            "p99 µs",
            "added p50 µs",
            "queue process µs/msg",
            "load generator µs/msg",
            "machine µs/msg",
        ],
    )
    result.columns[1] = f"msg/s (window {opts.window})"
    paths = list(tput)
    lat_all = {p: [s for r in lat[p] for s in r.samples] for p in paths}
    plain_p50 = pooled(lat_all["plain"], 0.5)
    for path in paths:
        runs = tput[path]
        msg = median(r.msg_per_s for r in runs)
        queue_cpu = median(r.per_msg_us(r.cpu.get("queue", float("nan"))) for r in runs)
        gen_cpu = median(r.per_msg_us(r.uac["cpu"] + r.uas["cpu"]) for r in runs)
        machine = median(r.per_msg_us(r.cpu["machine"]) for r in runs)
        p50, p99 = pooled(lat_all[path], 0.5), pooled(lat_all[path], 0.99)
        result.rows.append(
            {
                "path": TITLES[path],
                result.columns[1]: fmt(msg),
                "calls/s": fmt(median(r.calls_per_s for r in runs)),
                "failed calls": str(sum(r.uac["calls_failed"] for r in runs + lat[path])),
                "latency p50 µs": fmt(p50),
                "p99 µs": fmt(p99),
                "added p50 µs": "0 (baseline)" if path == "plain" else fmt(p50 - plain_p50),
                "queue process µs/msg": "-" if path in ("plain", "alg") else fmt(queue_cpu, 1),
                "load generator µs/msg": fmt(gen_cpu, 1),
                "machine µs/msg": fmt(machine, 1),
            }
        )
    nf = median(r.msg_per_s for r in tput["nfsip"])
    acc = median(r.msg_per_s for r in tput["accept"])
    alg = median(r.msg_per_s for r in tput["alg"])
    queued = {p: sum(r.queued for r in tput[p]) for p in ("accept", "nfsip")}
    crossed = {p: sum(r.messages for r in tput[p]) for p in ("accept", "nfsip")}
    dropped = {p: sum(r.queue_dropped for r in tput[p] + lat[p]) for p in ("accept", "nfsip")}
    nfsip_metrics = [r.metrics for r in tput["nfsip"]]
    result.data = {
        "options": opts.__dict__,
        "throughput": {p: [r.as_dict() for r in tput[p]] for p in paths},
        "latency": {
            p: {
                "runs": [r.as_dict() for r in lat[p]],
                "per_kind": per_kind(lat_all[p]),
                "p50_us": pooled(lat_all[p], 0.5),
                "p99_us": pooled(lat_all[p], 0.99),
            }
            for p in paths
        },
        "ratios": {"nfsip/accept": nf / acc if acc else float("nan"), "nfsip/alg": nf / alg if alg else float("nan")},
        "queued_vs_crossed": {p: [queued[p], crossed[p]] for p in queued},
    }
    if "base" in tput:
        base = median(r.msg_per_s for r in tput["base"])
        result.data["ratios"]["nfsip/base"] = nf / base if base else float("nan")
        result.notes.append(f"nfsip / base ({opts.baseline}) = {nf / base:.3f} (messages/s, same rounds)")
    load = median(r.cpu.get("background", 0.0) for p in paths for r in tput[p] + lat[p])
    result.data["other_load_cpus_median"] = load
    result.notes.append(
        f"other load on the VM right before each run (subtracted from machine CPU): median {load:.2f} CPUs"
        + (" - **the machine was not idle: absolute rates are depressed**" if load > 0.2 else "")
    )
    verdict = nfsip_metrics[0].get("verdict", {}) if nfsip_metrics else {}
    nft = nfsip_metrics[0].get("nft", {}) if nfsip_metrics else {}
    result.notes += [
        f"throughput: closed loop, {opts.window} calls in progress, {opts.seconds:g} s per run, median of "
        f"{opts.rounds} alternated rounds; latency: {opts.latency_rate:g} calls/s "
        f"({5 * opts.latency_rate:g} msg/s) open loop, one-way per message pooled over INVITE/200/ACK/BYE/200",
        f"nfsip / accept-only loop = {nf / acc:.3f}, nfsip / kernel ALG = {nf / alg:.3f} (messages/s)",
        f"queue check: packets queued / messages crossed: accept {queued['accept']:,}/{crossed['accept']:,}, "
        f"nfsip {queued['nfsip']:,}/{crossed['nfsip']:,} (> 1: the first datagram of a new flow is queued twice); "
        f"queue drops {dropped}",
        f"nfsip's own histograms in its first throughput run: verdict (read to accept) mean "
        f"{verdict.get('mean_us', float('nan')):.0f} µs, p50 {verdict.get('p50_us', float('nan')):.0f} µs, p99 "
        f"{verdict.get('p99_us', float('nan')):.0f} µs; nft transaction mean {nft.get('mean_us', float('nan')):.0f} "
        f"µs ({nft.get('count', 0):.0f} transactions). Conntrack purges run after the verdict and are not in "
        "these histograms",
        CONFIG_NOTE,
        "the load generator is C (bench/sipload.c) and runs on the same 2 vCPUs: for the fast paths "
        "(plain, alg) it is the bottleneck, so their msg/s are lower bounds",
    ]
    prof = next((m.get("profile") for m in nfsip_metrics if m.get("profile")), None)
    if prof:
        result.data["profile"] = prof
        result.notes.append(f"py-spy (daemon, throughput run, % of samples on stack): {profile_frames(prof)}")
    return result


def run(opts: Options, workdir: Path) -> PartResult:
    started = time.monotonic()
    exe = build("sipload", workdir)
    paths = (*PATHS, "base") if opts.baseline else PATHS
    labs = {p: PathLab(p, workdir, opts.baseline) for p in paths}
    tput: dict[str, list[Run]] = {p: [] for p in paths}
    lat: dict[str, list[Run]] = {p: [] for p in paths}
    try:
        for pl in labs.values():
            pl.up()
        for rnd in range(1, opts.rounds + 1):
            for path, pl in labs.items():
                prof = workdir / "nfsip-profile.txt" if opts.profile and path == "nfsip" and rnd == 1 else None
                t = one_run(pl, exe, workdir, f"{path}-t{rnd}", seconds=opts.seconds, window=opts.window, profile=prof)
                tput[path].append(t)
                lr = one_run(
                    pl,
                    exe,
                    workdir,
                    f"{path}-l{rnd}",
                    seconds=opts.seconds,
                    window=1000,
                    rate=opts.latency_rate,
                    samples=True,
                )
                lat[path].append(lr)
                print(
                    f"round {rnd} {path:<6}: {t.msg_per_s:9,.0f} msg/s {t.calls_per_s:8,.0f} calls/s "
                    f"failed {t.uac['calls_failed']}  queue cpu {t.cpu.get('queue', 0):.2f}s  "
                    f"gen cpu {t.uac['cpu'] + t.uas['cpu']:.2f}s  latency p50 {pooled(lr.samples, 0.5):,.0f} µs "
                    f"p99 {pooled(lr.samples, 0.99):,.0f} µs",
                    flush=True,
                )
        for pl in labs.values():
            if pl.daemon is not None and not pl.daemon.alive():
                raise RuntimeError(f"nfsip daemon died:\n{pl.daemon.log()}")
    finally:
        for pl in labs.values():
            pl.down()
    result = summarize(tput, lat, opts)
    result.seconds = time.monotonic() - started
    return result


# ------------------------------------------------------------------------------------------ --workers
WORKER_PHONES = ("phone1", "phone2")  # 10.0.0.2 and 10.0.0.3: shard 0 and shard 1 of two workers


def daemon_pids(daemon: NfsipDaemon) -> dict[str, int]:
    """The daemon's processes: "main" (the single daemon, or the supervisor) and "worker<i>"."""
    assert daemon.proc is not None
    pids = {"main": daemon.proc.pid}
    pids.update({f"worker{i}": pid for i, pid in sorted(daemon.worker_pids().items())})
    return pids


@dataclass
class WorkersRun:
    """One run of the --workers comparison: two UACs (one per phone, one per shard) against one UAS."""

    workers: int
    uacs: list[dict[str, Any]]
    uas: dict[str, Any]
    cpu: dict[str, float]
    queued: dict[int, int]
    verdicts: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return max(float(u["elapsed"]) for u in self.uacs)

    @property
    def messages(self) -> int:
        return sum(sum(u["received"].values()) for u in self.uacs) + sum(self.uas["received"].values())

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    @property
    def generator_cpu(self) -> float:
        return sum(float(u["cpu"]) for u in self.uacs) + float(self.uas["cpu"])

    @property
    def daemon_cpu(self) -> float:
        return sum(v for k, v in self.cpu.items() if k == "main" or k.startswith("worker"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "uacs": self.uacs,
            "uas": self.uas,
            "cpu": self.cpu,
            "queued": self.queued,
            "verdicts": self.verdicts,
            "messages": self.messages,
            "msg_per_s": self.msg_per_s,
            "generator_cpu_s": self.generator_cpu,
            "daemon_cpu_s": self.daemon_cpu,
        }


def workers_run(
    lab: Lab,
    daemon: NfsipDaemon,
    exe: Path,
    tag: str,
    workers: int,
    *,
    seconds: float,
    window: int,
    profile: Path | None = None,
    phones: tuple[str, ...] = WORKER_PHONES,
) -> WorkersRun:
    """Both phones load the router at once (closed loop, `window` calls in progress each) for `seconds`."""
    uas = sipload_uas(lab, exe)
    pids = daemon_pids(daemon)
    q0 = nfqueue_stats(lab)
    m0 = daemon.metrics()
    stamp = int(time.time())
    watch = CpuWatch(pids, background=background_busy()).start()
    spy = None
    if profile is not None and "worker0" in pids:
        spy = start_profile(pids["worker0"], seconds - 0.5, profile)
    uacs = [
        lab.popen(
            node,
            sipload_uac_args(
                exe, lab, node=node, n=2_000_000, w=window, t=seconds, T=5000, p=f"{tag.replace('-', '')}{node}x{stamp}"
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in phones
    ]
    summaries = []
    for proc in uacs:
        out, err = proc.communicate(timeout=seconds + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"sipload uac failed ({proc.returncode}): {err.strip()[-500:]}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    cpu = watch.stop()
    time.sleep(0.1)
    uas_summary = finish(uas)
    if spy is not None:
        spy.wait(timeout=30)
    q1 = nfqueue_stats(lab)
    m1 = daemon.metrics()
    verdicts0 = parse_counters(m0, "nfsip_verdicts")
    return WorkersRun(
        workers=workers,
        uacs=summaries,
        uas=uas_summary,
        cpu=cpu,
        queued={q: q1[q]["id_sequence"] - q0.get(q, {}).get("id_sequence", 0) for q in q1},
        verdicts={k: v - verdicts0.get(k, 0.0) for k, v in parse_counters(m1, "nfsip_verdicts").items()},
    )


def warm_up(lab: Lab, exe: Path) -> None:
    """One call from each phone in turn, so that each phone's SIP flow has its conntrack entry and its
    masquerade port before the measurement. Both phones send from port 5060: when their first datagrams
    cross the router at the same instant, both can be given public port 5060, and the kernel's UDP clash
    resolution then sends every reply to one of them (the other's calls all fail, whatever nfsip does)."""
    for node in WORKER_PHONES:
        uas = sipload_uas(lab, exe)
        res = lab.run(node, sipload_uac_args(exe, lab, node=node, n=1, w=1, t=5, T=5000, p=f"warm{node}"), timeout=30)
        finish(uas)
        summary = json.loads(res.stdout.strip().splitlines()[-1])
        if summary["calls_done"] != 1:
            raise RuntimeError(f"warm-up call from {node} failed: {summary}")


def run_workers(opts: Options, counts: list[int], workdir: Path, phones: tuple[str, ...] = WORKER_PHONES) -> PartResult:
    """nfsip with 1 and with N workers side by side: one lab each (two phones, one per shard), both up at
    once, measured in alternation. `phones` = ("phone1",): load from one host only (one shard: the cost of
    the worker machinery without its benefit)."""
    started = time.monotonic()
    exe = build("sipload", workdir)
    labs: dict[int, tuple[Lab, NfsipDaemon]] = {}
    runs: dict[int, list[WorkersRun]] = {n: [] for n in counts}
    profile_data: dict[str, list[tuple[str, float]]] | None = None
    try:
        for n in counts:
            lab = Lab(phones=len(WORKER_PHONES)).up()
            lab.masquerade()
            labs[n] = (lab, NfsipDaemon(lab, config={**BENCH_CONFIG, "workers": n}, log_level="warning").start())
            warm_up(lab, exe)
        for rnd in range(1, opts.rounds + 1):
            for n, (lab, daemon) in labs.items():
                prof = workdir / f"workers{n}-profile.txt" if opts.profile and n > 1 and rnd == 1 else None
                r = workers_run(
                    lab,
                    daemon,
                    exe,
                    f"w{n}-r{rnd}",
                    n,
                    seconds=opts.seconds,
                    window=opts.window,
                    profile=prof,
                    phones=phones,
                )
                runs[n].append(r)
                per_process = ", ".join(f"{k} {v:.2f}s" for k, v in r.cpu.items() if k == "main" or "worker" in k)
                print(
                    f"round {rnd} workers {n}: {r.msg_per_s:9,.0f} msg/s  failed "
                    f"{sum(u['calls_failed'] for u in r.uacs)}  nfsip cpu {r.daemon_cpu:.2f}s ({per_process})  "
                    f"generator cpu {r.generator_cpu:.2f}s  machine {r.cpu['machine']:.2f}s of "
                    f"{2 * r.cpu['wall']:.2f}s  queued {r.queued}",
                    flush=True,
                )
                if prof is not None and prof.exists():
                    profile_data = profile_summary(prof)
        for n, (_lab, daemon) in labs.items():
            if not daemon.alive():
                raise RuntimeError(f"nfsip (workers {n}) died:\n{daemon.log()}")
    finally:
        for lab, daemon in labs.values():
            daemon.stop()
            lab.down()
    result = PartResult(
        "signalling_workers",
        f"Signalling with several workers: SIP messages/s from {len(phones)} LAN host(s)",
        [
            "workers",
            f"msg/s (2 x window {opts.window})",
            "failed calls",
            "nfsip CPU (s per s)",
            "load generator CPU (s per s)",
            "machine busy (of 2 CPUs)",
            "nfsip µs/msg",
            "generator µs/msg",
        ],
    )
    base = median(r.msg_per_s for r in runs[counts[0]])
    for n in counts:
        rs = runs[n]
        msg = median(r.msg_per_s for r in rs)
        result.rows.append(
            {
                "workers": str(n) + ("" if n == counts[0] else f" (x{msg / base:.2f})"),
                result.columns[1]: fmt(msg),
                "failed calls": str(sum(u["calls_failed"] for r in rs for u in r.uacs)),
                "nfsip CPU (s per s)": fmt(median(r.daemon_cpu / r.cpu["wall"] for r in rs), 2),
                "load generator CPU (s per s)": fmt(median(r.generator_cpu / r.cpu["wall"] for r in rs), 2),
                "machine busy (of 2 CPUs)": fmt(median(r.cpu["machine"] / r.cpu["wall"] for r in rs), 2),
                "nfsip µs/msg": fmt(median(r.daemon_cpu / r.messages * 1e6 for r in rs), 1),
                "generator µs/msg": fmt(median(r.generator_cpu / r.messages * 1e6 for r in rs), 1),
            }
        )
    result.data = {"options": opts.__dict__, "runs": {n: [r.as_dict() for r in runs[n]] for n in counts}}
    load = median(r.cpu.get("background", 0.0) for n in counts for r in runs[n])
    result.notes += [
        f"closed loop: {' and '.join(phones)} (phone1 10.0.0.2 is shard 0, phone2 10.0.0.3 shard 1) each keep "
        f"{opts.window} calls "
        f"in progress against one UAS, {opts.seconds:g} s per run, median of {opts.rounds} alternated rounds; "
        "one warm-up call per phone first (both phones send from port 5060: see warm_up())",
        "the load generator (bench/sipload.c: two UACs and the UAS) runs on the same 2 vCPUs as the router and "
        "nfsip; its CPU (getrusage) is in the table. The kernel's forwarding and NAT work runs in softirq on the "
        "same CPUs and is in 'machine busy' only",
        "nfsip CPU: the single daemon, or supervisor + workers (from /proc); per process in the JSON",
        f"other load on the VM right before each run: median {load:.2f} CPUs"
        + (" - **the machine was not idle**" if load > 0.2 else ""),
        CONFIG_NOTE + "; global caps are divided by the number of workers",
    ]
    if profile_data:
        result.data["profile_worker0"] = profile_data
        result.notes.append(
            f"py-spy of worker 0 (2 workers, first round), % of samples on stack: "
            f"{profile_frames(profile_data, limit=12)}"
        )
    result.seconds = time.monotonic() - started
    return result


def reason_not_runnable() -> str | None:
    reason = can_run()
    if reason:
        return reason
    if shutil.which("gcc") is None:
        return "needs gcc"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="length of one run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 s x 1 round")
    parser.add_argument("--profile", action="store_true", help="py-spy the daemon during its throughput run")
    parser.add_argument("--out", type=Path, default=None, help="write signalling.json/.md here")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="DIR",
        help="another checkout of nfsip (git worktree) whose daemon runs as one more path, 'base', in the same rounds",
    )
    parser.add_argument(
        "--one-host", action="store_true", help="with --workers: load from phone1 only (all SIP on one shard)"
    )
    parser.add_argument(
        "--workers",
        default=None,
        metavar="N,M",
        help="instead of the path comparison: nfsip with these worker counts side by side (e.g. 1,2), load "
        "from two LAN hosts (one per shard); with --profile, py-spy of worker 0",
    )
    args = parser.parse_args()
    opts = Options.quick() if args.quick else Options()
    if args.seconds:
        opts.seconds = args.seconds
    if args.rounds:
        opts.rounds = args.rounds
    opts.profile = args.profile
    opts.baseline = args.baseline.resolve() if args.baseline else None
    if args.workers:
        phones = WORKER_PHONES[:1] if args.one_host else WORKER_PHONES
        counts = [int(n) for n in args.workers.split(",")]
        return run_part(reason_not_runnable(), lambda workdir: run_workers(opts, counts, workdir, phones), args.out)
    return run_part(reason_not_runnable(), lambda workdir: run(opts, workdir), args.out)


if __name__ == "__main__":
    sys.exit(main())
