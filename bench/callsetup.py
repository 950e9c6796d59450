"""Part 3, call setup: calls/s sipp completes through nfsip, how long a pinhole takes, and proof that no
media is lost at call start.

    sudo .venv/bin/python bench/callsetup.py [--step-seconds 5] [--quick] [--out DIR]

1. Rate ladder. A sipp UAC on phone1 (scenario caller_nomedia: INVITE with SDP -> 180/200 -> ACK -> 100 ms
   -> BYE -> 200, no RTP, every call its own SDP port) against a sipp UAS on the server (callee_nomedia),
   through the real nfsip daemon (pinholes installed at INVITE, re-created at 200, removed at BYE; raised
   per-host limits, see bench/common.py). Each step runs `-r RATE -m RATE*step_seconds`; sipp fails a call
   whose answer takes over 5 s (-recv_timeout). The ladder climbs until a step fails more than 1 % of its
   calls or completes fewer than 90 % of the asked rate; the max rate is the last step that passed. The
   same sipp load at the top rates through plain masquerade and through the kernel SIP ALG shows what the
   lab itself sustains (sipp, not nfsip, is then the limit). After each step, once the queue has drained,
   the daemon's nfsip_calls_active gauge must be 0 (every call ended by its BYE): a non-zero value means
   SIP went past the daemon unseen (fail-open, counted as datagrams that hit the queue rule without a verdict
   from the daemon) and state was left behind.
2. Pinhole time. From the daemon's /metrics (NfsipDaemon.metrics()), the deltas of
   nfsip_nft_transaction_seconds (one pinhole transaction) and nfsip_verdict_seconds (read from the queue
   to verdict: the pinhole is live before the verdict releases the SDP-carrying packet) over the ladder
   steps that passed. Prometheus buckets (25 µs ... 0.5 s) bound the percentiles' precision. The
   one-way INVITE latency phone -> server measured by sipload in step 3 is the same thing seen from outside
   (queue wait + verdict + pinhole install + forwarding).
3. Zero media lost at call start (run first, on a fresh daemon). bench/sipload.c UAS on the server sends
   4 RTP packets to the address and port of each INVITE's SDP the instant it receives the INVITE (before
   its 200 OK, as early media would)
   and 4 more right after the 200 OK (while nfsip re-creates the pinholes for the 200). The phone counts
   RTP arriving for any of its call ports in an nft counter at prerouting raw. Every packet sent must
   arrive: nfsip installs the pinhole before it releases the INVITE. Run through nfsip and, for
   comparison, through the kernel ALG.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    BENCH_CONFIG,
    CONFIG_NOTE,
    PHONE,
    PHONE_IP,
    QUEUE_NUM,
    SERVER_IP,
    CpuWatch,
    PartResult,
    build,
    finish,
    fmt,
    hist_summary,
    nfqueue_stats,
    parse_counters,
    parse_histogram,
    run_part,
    sipload_uac_args,
    sipload_uas,
    wait_queue_idle,
)
from media_forwarding import queue_chain_packets, read_counter

from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import SippCallee, SippCaller, have_sipp

PAUSE_MS = 100
RTP_BEFORE, RTP_AFTER = 4, 4


@dataclass
class Options:
    step_seconds: float = 5.0
    ladder: tuple[int, ...] = (20, 40, 80, 120, 160, 240, 320, 480, 640)
    zero_loss_calls: int = 60
    zero_loss_rate: float = 10.0
    baseline_rates: tuple[int, ...] = (320,)

    @classmethod
    def quick(cls) -> Options:
        return cls(step_seconds=2.5, ladder=(20, 80, 240, 480), zero_loss_calls=30, baseline_rates=(240,))


@dataclass
class Step:
    path: str
    rate: int
    calls: int
    ok: int
    failed: int
    seconds: float
    response_ms: float  # sipp's mean INVITE -> 200 time (ResponseTime1)
    cpu: dict[str, float]
    verdict: dict[str, float]
    nft: dict[str, float]
    left: int = 0  # calls still in nfsip's state once sipp is done and the queue is drained (should be 0)
    queued: int = 0  # packets that went through the queue during the step
    bypassed: int = 0  # datagrams that reached the queue rule but got no verdict from nfsip (fail-open)
    dropped: int = 0  # queue drops counted by the kernel (queue_dropped + user_dropped)
    drain_s: float = 0.0  # how long the queue took to drain after sipp ended

    @property
    def completed_rate(self) -> float:
        busy = self.seconds - PAUSE_MS / 1000
        return self.ok / busy if busy > 0 else 0.0

    @property
    def passed(self) -> bool:
        return self.failed <= 0.01 * self.calls and self.completed_rate >= 0.9 * self.rate

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "completed_rate": self.completed_rate, "passed": self.passed}


def sipp_stats(stat_file: Path) -> dict[str, str]:
    """The last line of a sipp -trace_stat CSV as a dict (empty if absent)."""
    try:
        rows = list(csv.reader(io.StringIO(stat_file.read_text(errors="replace")), delimiter=";"))
    except FileNotFoundError:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False)) if len(rows) >= 2 else {}


def hhmmss_ms(text: str) -> float:
    """sipp's 'HH:MM:SS:mmm000' response time (ResponseTime1(C)) in milliseconds."""
    parts = text.split(":")
    if len(parts) < 4:
        return float("nan")
    h, m, s, rest = parts[:4]
    return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(rest[:3])


class SippLab:
    """A lab (path "nfsip", "plain" or "alg") with a sipp UAS answering on the server."""

    def __init__(self, path: str, workdir: Path) -> None:
        self.path = path
        self.workdir = workdir / path
        self.lab = Lab(phones=1)
        self.daemon: NfsipDaemon | None = None
        self.uas: SippCallee | None = None

    def up(self) -> SippLab:
        lab = self.lab.up()
        lab.masquerade()
        if self.path == "nfsip":
            self.daemon = NfsipDaemon(lab, config=BENCH_CONFIG, log_level="warning").start()
        elif self.path == "alg":
            lab.kernel_sip_alg()
        return self

    def start_uas(self) -> None:
        self.uas = SippCallee(
            self.lab, kind="nomedia", calls=10_000_000, timeout_s=None, workdir=self.workdir / "uas"
        ).start()

    def stop_uas(self) -> None:
        if self.uas is not None:
            self.uas.stop(grace=1)
            self.uas = None

    def step(self, rate: int, seconds: float) -> Step:
        calls = max(1, int(rate * seconds))
        pids = {"nfsip": self.daemon.proc.pid} if self.daemon and self.daemon.proc else {}
        m0 = self.daemon.metrics() if self.daemon else ""
        q0 = nfqueue_stats(self.lab).get(QUEUE_NUM, {})
        chain0 = queue_chain_packets(self.lab) if self.daemon is not None else 0
        caller = SippCaller(
            self.lab,
            PHONE,
            kind="nomedia",
            calls=calls,
            rate=rate,
            pause_ms=PAUSE_MS,
            media_port=20000,
            timeout_s=int(seconds) + 30,
            trace_msg=False,
            workdir=self.workdir / f"uac-{rate}",
            extra_args=("-recv_timeout", "5000"),
        )
        watch = CpuWatch(pids).start()
        res = caller.start().wait(seconds + 60)
        cpu = watch.stop()
        stats = sipp_stats(caller.stat_file)
        verdict = nft = {}
        bypassed = 0
        drain = wait_queue_idle(self.lab) if self.daemon is not None else 0.0
        q1 = nfqueue_stats(self.lab).get(QUEUE_NUM, {})
        queued = q1.get("id_sequence", 0) - q0.get("id_sequence", 0)
        dropped = sum(q1.get(k, 0) - q0.get(k, 0) for k in ("queue_dropped", "user_dropped"))
        chain = queue_chain_packets(self.lab) - chain0 if self.daemon is not None else 0
        left = 0
        if self.daemon is not None:
            time.sleep(0.3)  # the daemon's tick after the last verdict
            left = int(self.daemon.metric("nfsip_calls_active"))
            m1 = self.daemon.metrics()
            decided = sum(parse_counters(m1, "nfsip_verdicts").values()) - sum(
                parse_counters(m0, "nfsip_verdicts").values()
            )
            bypassed = int(chain - decided - dropped)
            verdict = hist_summary(
                parse_histogram(m1, "nfsip_verdict_seconds") - parse_histogram(m0, "nfsip_verdict_seconds")
            )
            nft = hist_summary(
                parse_histogram(m1, "nfsip_nft_transaction_seconds")
                - parse_histogram(m0, "nfsip_nft_transaction_seconds")
            )
        step = Step(
            self.path,
            rate,
            calls,
            res.successful_calls,
            res.failed_calls + max(0, calls - res.successful_calls - res.failed_calls),
            res.duration_s,
            hhmmss_ms(stats.get("ResponseTime1(C)", "")),
            cpu,
            verdict,
            nft,
            left=left,
            queued=queued,
            drain_s=drain,
            bypassed=bypassed,
            dropped=dropped,
        )
        caller.cleanup()
        return step

    def down(self) -> None:
        self.stop_uas()
        if self.daemon is not None:
            self.daemon.stop()
        self.lab.down()


def zero_loss(sl: SippLab, exe: Path, opts: Options) -> dict[str, Any]:
    """sipload calls whose far end sends RTP the instant it has the SDP; count what reaches the phone."""
    lab = sl.lab
    wait_queue_idle(lab)  # a backlog from the ladder's last (overloaded) step must not reach this test
    lab.nft(
        PHONE,
        f"""\
add table ip bench
delete table ip bench
table ip bench {{
  counter rtp {{ }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp sport 7000 udp dport 10000-65000 counter name rtp drop
  }}
}}
""",
    )
    lab.flush_conntrack(T.ROUTER)
    uas = sipload_uas(lab, exe, rtp_before=RTP_BEFORE, rtp_after=RTP_AFTER)
    argv = sipload_uac_args(
        exe,
        lab,
        n=opts.zero_loss_calls,
        w=1000,
        r=opts.zero_loss_rate,
        T=5000,
        p=f"zl{sl.path}{int(time.time())}",
        m=30000,
        s=10000,
    )
    res = lab.run(PHONE, argv, timeout=opts.zero_loss_calls / opts.zero_loss_rate + 60)
    time.sleep(0.3)
    uas_summary = finish(uas)
    uac_summary = json.loads(res.stdout.strip().splitlines()[-1])
    received = read_counter(lab, PHONE, "bench", "rtp")
    lab.nft(PHONE, "delete table ip bench\n")
    return {
        "path": sl.path,
        "calls": uac_summary["calls_done"],
        "failed": uac_summary["calls_failed"],
        "rtp_sent": uas_summary["rtp_sent"],
        "rtp_received": received,
        "lost": uas_summary["rtp_sent"] - received,
        "invite_latency_us": uas_summary["latency_us"].get("INVITE", {}),
        "uac": uac_summary,
        "uas": uas_summary,
    }


def merged(steps: list[Step], key: str) -> dict[str, float]:
    """Count-weighted mean of the histogram summaries of several steps (p50/p99: of the worst step)."""
    parts = [getattr(s, key) for s in steps if getattr(s, key).get("count")]
    if not parts:
        return {}
    count = sum(p["count"] for p in parts)
    return {
        "count": count,
        "mean_us": sum(p["mean_us"] * p["count"] for p in parts) / count,
        "p50_us": max(p["p50_us"] for p in parts),
        "p99_us": max(p["p99_us"] for p in parts),
    }


def summarize(ladder: list[Step], baselines: list[Step], losses: list[dict[str, Any]], opts: Options) -> PartResult:
    result = PartResult(
        "callsetup",
        "Call setup: sipp calls/s through nfsip, pinhole time, media at call start",
        [
            "path",
            "asked calls/s",
            "calls",
            "ok",
            "failed",
            "completed calls/s",
            "INVITE->200 ms (sipp mean)",
            "nfsip CPU %",
            "queue drained after s",
            "SIP bypassing nfsip",
            "calls left in nfsip",
            "passed",
        ],
    )
    for step in ladder + baselines:
        result.rows.append(
            {
                "path": {"nfsip": "nfsip", "plain": "plain masquerade", "alg": "kernel SIP ALG"}[step.path],
                "asked calls/s": step.rate,
                "calls": step.calls,
                "ok": step.ok,
                "failed": step.failed,
                "completed calls/s": fmt(step.completed_rate, 1),
                "INVITE->200 ms (sipp mean)": fmt(step.response_ms),
                "nfsip CPU %": fmt(100 * step.cpu["nfsip"] / step.cpu["wall"]) if "nfsip" in step.cpu else "-",
                "queue drained after s": fmt(step.drain_s, 1) if step.path == "nfsip" else "-",
                "SIP bypassing nfsip": f"{step.bypassed:,}" + (f" (+{step.dropped:,} dropped)" if step.dropped else "")
                if step.path == "nfsip"
                else "-",
                "calls left in nfsip": str(step.left) if step.path == "nfsip" else "-",
                "passed": "yes" if step.passed else "NO",
            }
        )
    passed = [s for s in ladder if s.passed]
    max_rate = max((s.rate for s in passed), default=0)
    best = max((s.completed_rate for s in ladder), default=0.0)
    verdict, nft = merged(passed, "verdict"), merged(passed, "nft")
    result.data = {
        "options": opts.__dict__,
        "ladder": [s.as_dict() for s in ladder],
        "baselines": [s.as_dict() for s in baselines],
        "max_rate_passed": max_rate,
        "best_completed_rate": best,
        "pinhole_time": {"verdict": verdict, "nft_transaction": nft},
        "zero_loss": losses,
    }
    result.notes.append(
        f"max sipp rate through nfsip with <= 1 % failed calls: {max_rate} calls/s asked "
        f"(ladder {', '.join(map(str, opts.ladder))}; highest completed rate seen {best:.1f} calls/s); "
        f"{opts.step_seconds:g} s of calls per step, {PAUSE_MS} ms call length, sipp -recv_timeout 5 s"
    )
    leaky = [s for s in ladder if s.left]
    if leaky:
        worst = max(leaky, key=lambda s: s.left)
        result.notes.append(
            f"**state left behind under overload**: after the {worst.rate} calls/s step sipp had completed "
            f"{worst.ok} calls (each ended by BYE/200) but nfsip still held {worst.left} calls once its queue had "
            f"drained ({worst.drain_s:.1f} s after sipp ended): {worst.bypassed:,} SIP datagrams reached the queue "
            "rule but never got a verdict from the daemon (counter of nfsip's sip_queue chain minus the daemon's "
            "nfsip_verdicts_total): with the daemon behind, the kernel could not deliver them to its netlink "
            "socket (or the queue was full) and NFQA_CFG_F_FAIL_OPEN let them through unseen and unrewritten - "
            "no kernel drop counter moves for that. Calls whose BYE went by unseen keep their pinholes until "
            "their timers expire (Timer B 32 s when no answer was seen, the call timeout once established) and "
            "make every later message slower while they last (per-message cost grows with the number of calls)"
        )
    if nft:
        result.notes.append(
            f"pinhole time (daemon histograms over the passed steps): nft transaction mean {nft['mean_us']:.0f} µs, "
            f"p50 <= {nft['p50_us']:.0f} µs, p99 <= {nft['p99_us']:.0f} µs ({nft['count']:.0f} transactions); "
            f"whole verdict (queue read -> accept, pinhole live before it) mean {verdict['mean_us']:.0f} µs, "
            f"p50 <= {verdict['p50_us']:.0f} µs, p99 <= {verdict['p99_us']:.0f} µs"
        )
    for loss in losses:
        inv = loss["invite_latency_us"]
        result.notes.append(
            f"media at call start via {loss['path']}: {loss['calls']} calls ({loss['failed']} failed), far end sent "
            f"{RTP_BEFORE} RTP packets on receiving each INVITE and {RTP_AFTER} after its 200: "
            f"{loss['rtp_sent']:,} sent, {loss['rtp_received']:,} arrived at the phone, "
            f"**{loss['lost']} lost**; INVITE one-way latency p50 {inv.get('p50', float('nan')):.0f} µs, "
            f"p99 {inv.get('p99', float('nan')):.0f} µs"
        )
    result.notes.append(CONFIG_NOTE)
    return result


def run(opts: Options, workdir: Path) -> PartResult:
    started = time.monotonic()
    exe = build("sipload", workdir)
    labs = {p: SippLab(p, workdir) for p in ("nfsip", "plain", "alg")}
    ladder: list[Step] = []
    baselines: list[Step] = []
    losses: list[dict[str, Any]] = []
    try:
        for sl in labs.values():
            sl.up()
        # The zero-loss test first, on a fresh daemon: an overloaded ladder step can leave state behind.
        for path in ("nfsip", "alg"):
            loss = zero_loss(labs[path], exe, opts)
            losses.append(loss)
            print(
                f"zero-loss {path}: sent {loss['rtp_sent']} received {loss['rtp_received']} lost {loss['lost']}",
                flush=True,
            )
        nf = labs["nfsip"]
        nf.start_uas()
        for rate in opts.ladder:
            step = nf.step(rate, opts.step_seconds)
            ladder.append(step)
            print(
                f"nfsip {rate:>4} calls/s: ok {step.ok} failed {step.failed} completed "
                f"{step.completed_rate:.1f}/s response {step.response_ms:.0f} ms nft p50 "
                f"{step.nft.get('p50_us', 0):.0f} µs; queue drained {step.drain_s:.1f} s after sipp, "
                f"{step.left} calls left in nfsip",
                flush=True,
            )
            if not step.passed:
                break
        nf.stop_uas()
        for path in ("plain", "alg"):
            sl = labs[path]
            sl.start_uas()
            for rate in opts.baseline_rates:
                step = sl.step(rate, opts.step_seconds)
                baselines.append(step)
                print(
                    f"{path} {rate:>4} calls/s: ok {step.ok} failed {step.failed} completed "
                    f"{step.completed_rate:.1f}/s",
                    flush=True,
                )
            sl.stop_uas()
        if nf.daemon is not None and not nf.daemon.alive():
            raise RuntimeError(f"nfsip daemon died:\n{nf.daemon.log()}")
    finally:
        for sl in labs.values():
            sl.down()
    result = summarize(ladder, baselines, losses, opts)
    result.seconds = time.monotonic() - started
    return result


def reason_not_runnable() -> str | None:
    reason = can_run()
    if reason:
        return reason
    if not have_sipp():
        return "needs sipp (apt install sip-tester)"
    if shutil.which("gcc") is None:
        return "needs gcc"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-seconds", type=float, default=None, help="seconds of calls per step (default 5)")
    parser.add_argument("--quick", action="store_true", help="2.5 s steps, a shorter ladder, fewer zero-loss calls")
    parser.add_argument("--out", type=Path, default=None, help="write callsetup.json/.md here")
    args = parser.parse_args()
    opts = Options.quick() if args.quick else Options()
    if args.step_seconds:
        opts.step_seconds = args.step_seconds
    return run_part(reason_not_runnable(), lambda workdir: run(opts, workdir), args.out)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["Options", "run"]
