"""Part 1, media: RTP-sized UDP packets/s the lab router forwards, through each way of getting media
through NAT, side by side in one run.

    sudo .venv/bin/python bench/media.py [--seconds 3] [--rounds 3] [--quick] [--out DIR]

Cases (one UDP flow each, 172-byte payloads = G.711 with 20 ms ptime), in two labs built side by side:

 lab P, a router without nfsip (masquerade only; the ALG table only while (c) runs):
  (a)   masquerade out     phone1:6100 -> server:7000, plain routing + the admin's masquerade: THE baseline
  (a')  masquerade in      server:7000 -> 198.51.100.1:6100, the reply direction of (a)'s flow
  (c)   kernel SIP ALG     server:7000 -> 198.51.100.1:P -> phone1:6000 through the conntrack expectation
                           nf_conntrack_sip/nf_nat_sip created for a real sipp call's SDP (`lab.kernel_sip_alg()`,
                           P read from `conntrack -L expect`)
  (d)   Python relay       server:7000 -> 198.51.100.1:30000 -> bench/udprelay.py in the router
                           (recvfrom/sendto per packet, siproxd's design) -> phone1:6200
  (e)   rtpengine          server:7000 -> rtpengine (Debian's rtpengine-daemon, userspace only: --table=-1)
                           external port -> phone1:6300, a call set up over its ng protocol
  (z)   no router          phone1 -> phone2 across the LAN switch only: sender + bridge + receiver, the part
                           of every case's CPU cost that is not the router's
 lab N, the same router with the real nfsip daemon running (its table, default config):
  (n)   masquerade out     (a) again, with nfsip's table loaded: what nfsip's chains cost other traffic
  (b)   nfsip in           server:7000 -> 198.51.100.1:40000, DNATed by nfsip's media_dnat map to phone1:6000
  (b')  nfsip out          phone1:6000 -> server:7000, SNATed by media_snat to 198.51.100.1:40000

Method. In lab N one pinhole is installed by nfsip's own `Nft.apply()` (the elements a call gets). Before
each measurement the router's conntrack table is flushed so every flow binds afresh (for (c) a new sipp
call then creates a new expectation). The C sender (udpblast.c, sendmmsg) blasts for --seconds; the
receiver counts correctly translated packets in an nft counter at prerouting priority raw and drops them
there (no socket work in the receiver). Cases alternate round by round, across both labs; the table shows
the median of the rounds (and min-max). Two identical labs measured this way agree within a few percent.

rtpengine is measured differently: under a flood its userspace loop reports "Too many packets in UDP
receive queue" and after 5 times discards packets on purpose, so a flood measures its protection, not its
capacity. It gets a paced ladder instead (udpblast RATE argument; a fresh call per step) and the table
shows the highest rate it forwarded with <= 1 % loss.

CPU. During each measurement the CPU time of the daemon, the relay and rtpengine is read from /proc, and
the machine's busy time from /proc/stat (all processes, softirq included: sender, bridges, router,
receiver), minus the busy time the VM showed in 0.4 s of idleness right before (other tenants of a shared
VM, idle daemons). "machine µs/pkt" is the whole VM's CPU per forwarded packet; "router µs/pkt" subtracts (z)'s
machine µs/pkt from it: an estimate of what the router itself spends per packet (plus one bridge hop).
The nfsip daemon's CPU during (b)/(b') must be ~0 (media never reaches Python) and its queue chain
counter must not move.

Why ratios: sender, both bridges, router and receiver share the 2 vCPUs and the machine is noisy (+-15 %),
so absolute packets/s measure the whole chain; ratios measured in the same run are what matter. With one
sender, the kernel paths run sender + router + receiver in softirq on about one core (the second core is
mostly idle), while a userspace relay gets a core of its own: the packets/s ratio understates how much
cheaper kernel forwarding is; the CPU per packet columns show it. Goals:
(b)/(a) >= 0.95 and (b)/(d) >= 2. (b)/(n) compares the pinhole with masquerade on the same nfsip router.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    PHONE,
    PHONE_IP,
    PUBLIC_IP,
    SERVER_IP,
    CpuWatch,
    PartResult,
    background_busy,
    build,
    fmt,
    make_workdir,
    median,
    write_part,
)
from media_forwarding import (
    PHONE_MEDIA_PORT,
    PHONE_PLAIN_PORT,
    PUBLIC_PORT,
    SERVER_PORT,
    backlog_drops,
    install_pinhole,
    queue_chain_packets,
    read_counter,
)

from nfsip.lab import topology as T
from nfsip.lab.lab import Lab, can_run
from nfsip.lab.nfsipd import NfsipDaemon
from nfsip.lab.sipp import SippCallee, SippCaller, have_sipp

BENCH = Path(__file__).resolve().parent
RELAY_PORT = 30000
RELAY_LAN_PORT = 30001
RELAY_PHONE_PORT = 6200
RTPENGINE_PHONE_PORT = 6300
RTPENGINE_NG_PORT = 22222
RTPENGINE_PORTS = (31000, 31999)
ALG_PHONE_PORT = 6000  # the caller_nomedia scenario's first call offers -mp (6000)
PHONE2 = "phone2"
PHONE2_IP = T.phone_ip(2)
RTPENGINE_LADDER = (10_000, 20_000, 30_000, 40_000, 60_000, 80_000, 120_000)


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    lab: str  # "P" (plain router: masquerade, ALG, relay, rtpengine) or "N" (nfsip)
    sender: str
    dst_port: int  # 0: found at run time (ALG expectation, rtpengine port)
    src_port: int
    receiver: str
    match: str  # nft match of a correctly translated packet at the receiver
    dst_ip: str = PUBLIC_IP


CASES: tuple[Case, ...] = (
    Case("a", "(a) masquerade out, router without nfsip", "P", PHONE, SERVER_PORT, PHONE_PLAIN_PORT, T.SERVER,
         f"ip saddr {PUBLIC_IP} udp dport {SERVER_PORT}", dst_ip=SERVER_IP),
    Case("n", "(n) masquerade out, nfsip loaded", "N", PHONE, SERVER_PORT, PHONE_PLAIN_PORT, T.SERVER,
         f"ip saddr {PUBLIC_IP} udp dport {SERVER_PORT}", dst_ip=SERVER_IP),
    Case("b", "(b) nfsip pinhole in", "N", T.SERVER, PUBLIC_PORT, SERVER_PORT, PHONE,
         f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_MEDIA_PORT}"),
    Case("b'", "(b') nfsip pinhole out", "N", PHONE, SERVER_PORT, PHONE_MEDIA_PORT, T.SERVER,
         f"ip saddr {PUBLIC_IP} udp sport {PUBLIC_PORT} udp dport {SERVER_PORT}", dst_ip=SERVER_IP),
    Case("a'", "(a') masquerade in (reply dir), no nfsip", "P", T.SERVER, PHONE_PLAIN_PORT, SERVER_PORT, PHONE,
         f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_PLAIN_PORT}"),
    Case("c", "(c) kernel SIP ALG expectation", "P", T.SERVER, 0, SERVER_PORT, PHONE,
         f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {ALG_PHONE_PORT}"),
    Case("d", "(d) Python relay (userspace)", "P", T.SERVER, RELAY_PORT, SERVER_PORT, PHONE,
         f"ip saddr {T.ROUTER_LAN_IP} ip daddr {PHONE_IP} udp dport {RELAY_PHONE_PORT}"),
    Case("z", "(z) no router: phone1 -> phone2, same LAN", "P", PHONE, SERVER_PORT, PHONE_PLAIN_PORT, PHONE2,
         f"ip saddr {PHONE_IP} ip daddr {PHONE2_IP} udp dport {SERVER_PORT}", dst_ip=PHONE2_IP),
)
RTPENGINE_CASE = Case(
    "e", "(e) rtpengine userspace (paced)", "P", T.SERVER, 0, SERVER_PORT, PHONE,
    f"ip saddr {T.ROUTER_LAN_IP} ip daddr {PHONE_IP} udp dport {RTPENGINE_PHONE_PORT}",
)


@dataclass
class Options:
    seconds: float = 3.0
    rounds: int = 3
    size: int = 172
    rtpengine: bool = True
    ladder_seconds: float = 2.0

    @classmethod
    def quick(cls) -> Options:
        return cls(seconds=1.0, rounds=2, ladder_seconds=1.0)


@dataclass
class Sample:
    sent: int
    received: int
    other: int
    seconds: float
    cpu: dict[str, float]
    queued: int = 0
    backlog_drops: int = 0
    rate: float = 0.0  # paced rate asked for (rtpengine ladder), 0 = flood

    @property
    def recv_pps(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    @property
    def loss(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "received": self.received,
            "other": self.other,
            "seconds": self.seconds,
            "recv_pps": self.recv_pps,
            "loss_pct": self.loss,
            "cpu": self.cpu,
            "queued": self.queued,
            "backlog_drops": self.backlog_drops,
            "rate": self.rate,
        }


# --------------------------------------------------------------------------------------------- setup
def receiver_table(match: str) -> str:
    """Count-and-drop at the receiver's first hook, SIP (port 5060) left alone for the ALG lab's sipp call;
    re-creating the table zeroes the counters."""
    return f"""\
add table ip bench
delete table ip bench
table ip bench {{
  counter ok {{ }}
  counter other {{ }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    udp sport {T.SIP_PORT} accept
    udp dport {T.SIP_PORT} accept
    {match} counter name ok drop
    meta l4proto udp counter name other drop
  }}
}}
"""


class NfsipLab:
    """The router with the real nfsip daemon (default config) and one pinhole installed by Nft.apply()."""

    def __init__(self) -> None:
        self.lab = Lab(phones=1)
        self.daemon: NfsipDaemon | None = None

    def up(self) -> NfsipLab:
        lab = self.lab.up()
        lab.masquerade()
        self.daemon = NfsipDaemon(lab).start()
        install_pinhole(lab)
        return self

    def pids(self) -> dict[str, int]:
        return {"nfsip": self.daemon.proc.pid} if self.daemon is not None and self.daemon.proc is not None else {}

    def down(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.lab.down()


class PlainLab:
    """A router without nfsip: masquerade, the Python relay and (if installed) rtpengine, idle until blasted,
    the kernel SIP ALG only while case (c) runs, and a sipp UAS (no media) on the server for the ALG's calls."""

    def __init__(self, workdir: Path, want_rtpengine: bool, calls: int) -> None:
        self.lab = Lab(phones=2)
        self.workdir = workdir
        self.want_rtpengine = want_rtpengine
        self.calls = calls
        self.relay: subprocess.Popen[str] | None = None
        self.rtpengine: subprocess.Popen[str] | None = None
        self.rtpengine_note = ""
        self.uas: SippCallee | None = None
        self.uac: SippCaller | None = None

    def up(self) -> PlainLab:
        lab = self.lab.up()
        lab.masquerade()
        self.relay = lab.popen(
            T.ROUTER,
            [sys.executable, str(BENCH / "udprelay.py"), PUBLIC_IP, str(RELAY_PORT), T.ROUTER_LAN_IP,
             str(RELAY_LAN_PORT), PHONE_IP, str(RELAY_PHONE_PORT)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != "ready":
            raise RuntimeError("udprelay.py did not start")
        if self.want_rtpengine:
            self.start_rtpengine()
        self.uas = SippCallee(lab, kind="nomedia", calls=self.calls, timeout_s=None,
                              workdir=self.workdir / "alg-uas").start()
        return self

    def start_rtpengine(self) -> None:
        if shutil.which("rtpengine") is None:
            self.rtpengine_note = "not run: rtpengine not installed (apt install rtpengine-daemon)"
            return
        log = open(self.workdir / "rtpengine.log", "w")  # noqa: SIM115 - owned by the child
        self.rtpengine = self.lab.popen(
            T.ROUTER,
            ["rtpengine", "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
             f"--interface=internal/{T.ROUTER_LAN_IP}", f"--interface=external/{PUBLIC_IP}",
             f"--listen-ng=127.0.0.1:{RTPENGINE_NG_PORT}", f"--port-min={RTPENGINE_PORTS[0]}",
             f"--port-max={RTPENGINE_PORTS[1]}", "--log-level=4", "--num-threads=2"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.rtpengine.poll() is not None:
                self.rtpengine_note = f"not run: rtpengine exited {self.rtpengine.returncode} at start"
                self.rtpengine = None
                return
            res = self.lab.run(T.ROUTER, [sys.executable, str(BENCH / "rtpengine_ng.py"), "ping",
                                          str(RTPENGINE_NG_PORT)], check=False)
            if res.returncode == 0:
                return
            time.sleep(0.2)
        self.rtpengine_note = "not run: rtpengine did not answer its ng ping within 5 s"

    def rtpengine_call(self) -> int:
        """A fresh rtpengine call (offer/answer); the external port the server must send to."""
        res = self.lab.run(
            T.ROUTER,
            [sys.executable, str(BENCH / "rtpengine_ng.py"), "offer-answer", str(RTPENGINE_NG_PORT), PHONE_IP,
             str(RTPENGINE_PHONE_PORT), SERVER_IP, str(SERVER_PORT)],
        )
        return int(json.loads(res.stdout)["port"])

    def pids(self) -> dict[str, int]:
        pids = {}
        if self.relay is not None:
            pids["relay"] = self.relay.pid
        if self.rtpengine is not None:
            pids["rtpengine"] = self.rtpengine.pid
        return pids

    def expectation_port(self) -> int:
        """Place one sipp call (held open) through the ALG; return the public port of the expectation the
        ALG created for the phone's SDP (server -> 198.51.100.1:P, to be NATed to phone1:6000)."""
        self.uac = SippCaller(self.lab, PHONE, kind="nomedia", calls=1, pause_ms=600_000, timeout_s=None,
                              trace_msg=False, workdir=self.workdir / "alg-uac").start()
        pattern = re.compile(rf"src={re.escape(SERVER_IP)} dst={re.escape(PUBLIC_IP)} sport=0 dport=(\d+)")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = self.lab.run(T.ROUTER, ["conntrack", "-L", "expect"], check=False).stdout
            ports = sorted(int(p) for p in pattern.findall(out))
            if ports:
                return ports[0]  # the RTP port (the odd one above it is RTCP)
            time.sleep(0.05)
        raise RuntimeError("the kernel SIP ALG created no expectation for the sipp call")

    def end_call(self) -> None:
        if self.uac is not None:
            self.uac.kill()
            self.uac = None

    def down(self) -> None:
        self.end_call()
        if self.uas is not None:
            self.uas.stop(grace=1)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            self.relay.communicate(timeout=10)
        self.lab.down()


# ------------------------------------------------------------------------------------------- measure
def blast(lab: Lab, case: Case, blaster: Path, dst_port: int, seconds: float, size: int, pids: dict[str, int],
          rate: float = 0.0, queue_lab: bool = False) -> Sample:
    """One measurement: blast the flow for `seconds` (flood, or paced at `rate`), count at the receiver."""
    queued0 = queue_chain_packets(lab) if queue_lab else 0
    drops0 = backlog_drops()
    argv = [str(blaster), case.dst_ip, str(dst_port), str(case.src_port), str(size), str(seconds)]
    if rate:
        argv.append(str(int(rate)))
    watch = CpuWatch(pids, background=background_busy()).start()
    out = lab.run(case.sender, argv, timeout=seconds + 30).stdout
    time.sleep(0.05)  # let the last softirq batches land
    cpu = watch.stop()
    n, secs = out.split()
    return Sample(
        sent=int(n),
        received=read_counter(lab, case.receiver, "bench", "ok"),
        other=read_counter(lab, case.receiver, "bench", "other"),
        seconds=float(secs),
        cpu=cpu,
        queued=(queue_chain_packets(lab) - queued0) if queue_lab else 0,
        backlog_drops=backlog_drops() - drops0,
        rate=rate,
    )


def measure(case: Case, nf: NfsipLab, plain: PlainLab, blaster: Path, opts: Options) -> Sample:
    if case.lab == "N":
        lab = nf.lab
        lab.nft(case.receiver, receiver_table(case.match))
        lab.flush_conntrack(T.ROUTER)
        return blast(lab, case, blaster, case.dst_port, opts.seconds, opts.size, nf.pids(), queue_lab=True)
    lab = plain.lab
    lab.nft(case.receiver, receiver_table(case.match))
    lab.flush_conntrack(T.ROUTER)
    if case.key == "a'":
        # One batch the other way creates the masquerade binding whose reply direction is measured.
        lab.run(PHONE, [str(blaster), SERVER_IP, str(SERVER_PORT), str(PHONE_PLAIN_PORT), "12", "1e-6"])
        time.sleep(0.05)
    if case.key != "c":
        return blast(lab, case, blaster, case.dst_port, opts.seconds, opts.size, plain.pids())
    lab.kernel_sip_alg()
    try:
        port = plain.expectation_port()
        return blast(lab, case, blaster, port, opts.seconds, opts.size, plain.pids())
    finally:
        plain.end_call()
        lab.remove_kernel_sip_alg()


def rtpengine_ladder(a: PlainLab, blaster: Path, opts: Options) -> list[Sample]:
    """Paced rates, a fresh rtpengine call each, until one loses more than 1 %."""
    samples = []
    for rate in RTPENGINE_LADDER:
        port = a.rtpengine_call()
        a.lab.nft(PHONE, receiver_table(RTPENGINE_CASE.match))
        sample = blast(a.lab, RTPENGINE_CASE, blaster, port, opts.ladder_seconds, opts.size, a.pids(), rate=rate)
        samples.append(sample)
        print(f"  rtpengine paced {rate:>7,} pps: sent {sample.sent_pps:9,.0f}/s recv {sample.recv_pps:9,.0f}/s "
              f"loss {sample.loss:5.1f} %", flush=True)
        if sample.loss > 1.0:
            break
    return samples


# -------------------------------------------------------------------------------------------- report
def cpu_us_per_packet(samples: list[Sample], who: str) -> float:
    packets = sum(s.received for s in samples)
    cpu = sum(s.cpu.get(who, 0.0) for s in samples)
    return cpu / packets * 1e6 if packets else float("nan")


def summarize(samples: dict[str, list[Sample]], ladder: list[Sample], plain: PlainLab, opts: Options) -> PartResult:
    result = PartResult(
        "media",
        "Media: 172-byte UDP packets/s forwarded by the router",
        ["case", "recv pps (median)", "min-max", "vs (a)", "loss %", "process CPU µs/pkt", "machine CPU µs/pkt",
         "router CPU µs/pkt (est.)"],
    )
    base = median(s.recv_pps for s in samples["a"])
    machine = {k: median(s.cpu["machine"] / s.received * 1e6 for s in ss if s.received) for k, ss in samples.items()}
    floor = machine["z"]
    process_of = {"b": "nfsip", "b'": "nfsip", "d": "relay"}
    for case in CASES:
        ss = samples[case.key]
        recv = median(s.recv_pps for s in ss)
        who = process_of.get(case.key)
        result.rows.append(
            {
                "case": case.title,
                "recv pps (median)": fmt(recv),
                "min-max": f"{min(s.recv_pps for s in ss) / 1000:.0f}k-{max(s.recv_pps for s in ss) / 1000:.0f}k",
                "vs (a)": f"{recv / base:.2f}",
                "loss %": f"{median(s.loss for s in ss):.2f}",
                "process CPU µs/pkt": (f"{cpu_us_per_packet(ss, who):.2f} ({who})" if who else "- (kernel)"),
                "machine CPU µs/pkt": f"{machine[case.key]:.2f}",
                "router CPU µs/pkt (est.)": "-" if case.key == "z" else f"{machine[case.key] - floor:.2f}",
            }
        )
    e_pps = float("nan")
    if ladder:
        ok = [s for s in ladder if s.loss <= 1.0]
        best = max(ok, key=lambda s: s.recv_pps) if ok else None
        e_pps = best.recv_pps if best else 0.0
        failed_at = next((s.rate for s in ladder if s.loss > 1.0), None)
        result.rows.append(
            {
                "case": RTPENGINE_CASE.title,
                "recv pps (median)": fmt(e_pps),
                "min-max": f"lossless up to {best.rate / 1000:.0f}k" if best else "lossy at every rate",
                "vs (a)": f"{e_pps / base:.2f}",
                "loss %": (f"{next(s.loss for s in ladder if s.rate == failed_at):.0f} at {failed_at / 1000:.0f}k pps"
                           if failed_at else "0"),
                "process CPU µs/pkt": (f"{cpu_us_per_packet([best], 'rtpengine'):.2f} (rtpengine)" if best else "-"),
                "machine CPU µs/pkt": f"{best.cpu['machine'] / best.received * 1e6:.2f}" if best else "-",
                "router CPU µs/pkt (est.)": (f"{best.cpu['machine'] / best.received * 1e6 - floor:.2f}"
                                             if best else "-"),
            }
        )
    else:
        result.rows.append({"case": RTPENGINE_CASE.title, "recv pps (median)": plain.rtpengine_note or "not run"})
    b, b_out = median(s.recv_pps for s in samples["b"]), median(s.recv_pps for s in samples["b'"])
    d, c = median(s.recv_pps for s in samples["d"]), median(s.recv_pps for s in samples["c"])
    n = median(s.recv_pps for s in samples["n"])
    a_in = median(s.recv_pps for s in samples["a'"])
    pinhole = samples["b"] + samples["b'"]
    daemon_cpu = sum(s.cpu.get("nfsip", 0.0) for s in pinhole)
    queued = sum(s.queued for s in pinhole)
    packets = sum(s.received for s in pinhole)
    wall = sum(s.seconds for s in pinhole)
    ratios = {
        "b/a": b / base,
        "b'/a": b_out / base,
        "b/a'": b / a_in if a_in else float("nan"),
        "b/n": b / n if n else float("nan"),
        "n/a": n / base,
        "b/c": b / c if c else float("nan"),
        "c/a": c / base,
        "b/d": b / d if d else float("nan"),
        "b/e": b / e_pps if e_pps and e_pps == e_pps else float("nan"),
        "router CPU/pkt d/b": (machine["d"] - floor) / (machine["b"] - floor) if machine["b"] > floor else float("nan"),
    }
    goals = {"b/a >= 0.95": ratios["b/a"] >= 0.95, "b/d >= 2": ratios["b/d"] >= 2.0}
    result.data = {
        "options": opts.__dict__,
        "samples": {k: [s.as_dict() for s in v] for k, v in samples.items()},
        "rtpengine_ladder": [s.as_dict() for s in ladder],
        "rtpengine_note": plain.rtpengine_note,
        "ratios": ratios,
        "goals": goals,
        "nfsip_during_pinhole_media": {
            "daemon_cpu_s": daemon_cpu,
            "wall_s": wall,
            "packets": packets,
            "queued_packets": queued,
            "daemon_cpu_us_per_packet": daemon_cpu / packets * 1e6 if packets else float("nan"),
        },
    }
    load = median(s.cpu.get("background", 0.0) for ss in samples.values() for s in ss)
    result.data["other_load_cpus_median"] = load
    result.notes += [
        f"other load on the VM right before each measurement (subtracted from machine CPU): median {load:.2f} "
        "CPUs" + (" - **the machine was not idle: absolute rates are depressed**" if load > 0.2 else ""),
        f"ratios (medians of {opts.rounds} alternated rounds, {opts.seconds:g} s each): "
        + ", ".join(f"{k} = {v:.2f}" for k, v in ratios.items()),
        "goals: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in goals.items()),
        f"nfsip daemon during (b)+(b'): {daemon_cpu * 1000:.0f} ms CPU in {wall:.1f} s of blasting, "
        f"{packets:,} media packets forwarded, {queued} packets through its queue chain "
        f"(CPU clock tick is 10 ms: 0 ms means under one tick per measurement)",
        "process CPU µs/pkt: the userspace process in the path (nfsip daemon: must be 0); machine CPU µs/pkt: "
        "busy time of the whole VM (sender, bridges, router softirq, receiver) per forwarded packet; router "
        "CPU µs/pkt: machine minus (z), the sender/bridge/receiver share (an estimate: difference of two "
        "noisy medians; it includes one more bridge hop)",
        "with one sender the kernel paths run on about one core (sender, router and receiver in the sender's "
        "softirq) while the relay has a second core to itself: the packets/s ratio b/d understates the "
        "difference, the CPU per packet ratio shows it",
        "(a), (a'), (c), (d), (e) run in a router without nfsip (the ALG table loaded only while (c) runs); "
        "(n), (b), (b') in the same topology with the nfsip daemon. n/a is what nfsip's table costs traffic "
        "that is not media (its SIP divert chains and media counter sets are evaluated for every forwarded "
        "packet); b/n compares a pinhole with masquerade on the same nfsip router",
        "(e) rtpengine discards packets on purpose once its socket backlog overflowed 5 times (flood "
        "protection), so it is paced: the value is the highest single-flow rate of "
        f"{', '.join(f'{r // 1000}k' for r in RTPENGINE_LADDER)} pps it forwarded with <= 1 % loss",
    ]
    return result


# ---------------------------------------------------------------------------------------------- main
def run(opts: Options, workdir: Path) -> PartResult:
    """Build both labs, alternate the cases for opts.rounds rounds, then the rtpengine ladder."""
    started = time.monotonic()
    blaster = build("udpblast", workdir)
    nf = NfsipLab()
    plain = PlainLab(workdir, opts.rtpengine, calls=opts.rounds + 5)
    try:
        nf.up()
        plain.up()
        samples: dict[str, list[Sample]] = {case.key: [] for case in CASES}
        for rnd in range(1, opts.rounds + 1):
            for case in CASES:
                sample = measure(case, nf, plain, blaster, opts)
                samples[case.key].append(sample)
                cpu = " ".join(f"{k} {v * 1000:.0f}ms" for k, v in sample.cpu.items()
                               if k not in ("machine", "machine_raw", "wall", "background"))
                print(f"round {rnd} {case.key:<3}: sent {sample.sent_pps:9,.0f}/s recv {sample.recv_pps:9,.0f}/s "
                      f"other {sample.other} queued {sample.queued} {cpu}", flush=True)
        ladder = rtpengine_ladder(plain, blaster, opts) if plain.rtpengine is not None else []
        if nf.daemon is not None and not nf.daemon.alive():
            raise RuntimeError(f"nfsip daemon died:\n{nf.daemon.log()}")
    finally:
        nf.down()
        plain.down()
    result = summarize(samples, ladder, plain, opts)
    result.seconds = time.monotonic() - started
    return result


def reason_not_runnable() -> str | None:
    reason = can_run()
    if reason:
        return reason
    missing = [t for t in ("gcc", "conntrack") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)}"
    if not have_sipp():
        return "needs sipp (apt install sip-tester) for the kernel ALG call"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="length of one measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=None, help="alternated rounds (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 s x 2 rounds, 1 s ladder steps")
    parser.add_argument("--no-rtpengine", action="store_true", help="skip rtpengine")
    parser.add_argument("--out", type=Path, default=None, help="write media.json/media.md here")
    args = parser.parse_args()
    reason = reason_not_runnable()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    opts = Options.quick() if args.quick else Options()
    if args.seconds:
        opts.seconds = args.seconds
    if args.rounds:
        opts.rounds = args.rounds
    opts.rtpengine = not args.no_rtpengine
    workdir = make_workdir()
    try:
        result = run(opts, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_part(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CASES", "Options", "run"]
