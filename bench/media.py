"""Part 1, media: RTP-sized UDP packets/s the lab router forwards, through each way of getting media
through NAT, side by side in one run.

    sudo .venv/bin/python bench/media.py [--seconds 3] [--rounds 3] [--quick] [--out DIR]
                                         [--modes unpinned,one-core] [--cases a,b,d,z]

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
there (no socket work in the receiver), one counter per CPU (`meta cpu`), which shows where the receiver's
softirq ran. Cases alternate round by round, across both labs and both CPU layouts (below); each table
shows the median of the rounds (and min-max). Two identical labs measured this way agree within a few
percent.

CPU layouts. Every case is measured twice per round, side by side:
 unpinned   the scheduler places everything on the VM's CPUs (2 here). With one sender, a veth hands each
            packet on in softirq on the CPU that transmits it (netif_rx into that CPU's backlog; no RPS),
            so a kernel path runs sender + bridges + router + receiver on one core at a time, while a
            userspace relay gets the other, otherwise idle, core to itself (its own sends then run the rest
            of the chain there). packets/s then compares a 1-core path with a 2-core one.
 one-core   every process of the case on CPU 0: the sender under `taskset -c 0`; the relay, rtpengine, the
            nfsip daemon (every thread and child) and the idle sipp processes of (c) by sched_setaffinity.
            Their softirq work follows them to CPU 0; the receiver's per-CPU counters check that (100 % on
            CPU 0 expected), and the lab's interfaces are checked for RPS/XPS masks and threaded NAPI, which
            could move it (none are set; the lab has no NIC and no hardware interrupt in the path). The
            forwarders run at nice -20 with SCHED_BATCH: at equal priority the scheduler gives the flooding
            sender about half the core and the relay drops what it cannot take (kernel paths have no such
            contest: they forward in softirq before the sender's next packet); with nice -20 alone it forwarded
            fewer packets/s than at nice 0 in trials here (woken to preempt the sender every few packets,
            about twice the relay CPU per packet). With both it drains its socket in batches whenever it has
            packets and loses none. packets/s is then "what one core can forward", the load generator's
            cost included in every case alike.

rtpengine is measured differently: under a flood its userspace loop reports "Too many packets in UDP
receive queue" and after 5 times discards packets on purpose, so a flood measures its protection, not its
capacity. It gets a paced ladder instead (udpblast RATE argument; a fresh call per step) and the table
shows the highest rate it forwarded with <= 1 % loss.

CPU. During each measurement the CPU time of the daemon, the relay and rtpengine is read from /proc, and
the machine's busy time from /proc/stat (all processes, softirq included: sender, bridges, router,
receiver), minus the busy time the VM showed in 0.4 s of idleness right before (other tenants of a shared
VM, idle daemons). "machine µs/pkt" (unpinned) is the whole VM's CPU per forwarded packet; "CPU 0 µs/pkt"
(one core) is CPU 0's busy time per forwarded packet, raw: the flood saturates CPU 0, and other tasks
move off it once it is busy, so its share in the idle window before is no estimate of what they took
during the blast. "router µs/pkt" subtracts (z)'s figure of the same layout: an estimate of what the
router itself spends per packet (plus one bridge hop). "CPUs busy" is each CPU's busy share during the
blast (whole VM, other load included). The nfsip daemon's CPU during (b)/(b') must be ~0 (media never
reaches Python) and its queue chain counter must not move.

Why ratios: sender, both bridges, router and receiver share the 2 vCPUs and the machine is noisy (+-15 %),
so absolute packets/s measure the whole chain; ratios measured in the same run are what matter. Goals:
(b)/(a) >= 0.95 and (b)/(d) >= 2, reported for each layout with its own verdict. (b)/(n) compares the
pinhole with masquerade on the same nfsip router. Which layout answers which question: the unpinned
ratios are what one flow gets on an otherwise idle 2-core box (a userspace relay can use the idle core,
kernel forwarding of one flow cannot); the one-core ratios compare the paths at the same CPU budget,
which is what counts on a router whose cores are all busy forwarding (many flows, every core loaded).
The one-core ratios include the sender's cost in every case (it shares CPU 0): they understate the
router-only difference, which router µs/pkt estimates. Other load on CPU 0 slows the sender (nice 0)
more than the forwarders (nice -20), so on a busy VM the one-core layout errs in the relay's favour.
"""

from __future__ import annotations

import argparse
import json
import os
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
    Table,
    affinity_of,
    background_busy_per_cpu,
    build,
    fmt,
    median,
    pin_processes,
    run_part,
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

from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import SippCallee, SippCaller, have_sipp

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

# CPU layouts every case is measured in, round by round side by side. "unpinned": the scheduler's choice on
# all CPUs (a userspace relay gets a core of its own while kernel forwarding runs in the sender's softirq);
# "one-core": the sender, the relay/rtpengine/nfsip processes and the softirq work they raise all on CPU 0,
# so every path gets the same CPU budget and packets/s is "what one core can forward".
MODES = ("unpinned", "one-core")
ONE_CORE = frozenset({0})
NCPU = os.cpu_count() or 1
NAN = float("nan")
# What the CPU per packet column measures in each layout (see Sample.cpu_us_per_packet).
CPU_COLUMN = {"unpinned": "machine CPU µs/pkt", "one-core": "CPU 0 µs/pkt"}
MODE_TITLES = {
    "unpinned": "unpinned (any CPU, as the scheduler places it)",
    "one-core": "one core (sender, relay/rtpengine/daemon and their softirq work all on CPU 0)",
}


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
    Case(
        "a",
        "(a) masquerade out, router without nfsip",
        "P",
        PHONE,
        SERVER_PORT,
        PHONE_PLAIN_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp dport {SERVER_PORT}",
        dst_ip=SERVER_IP,
    ),
    Case(
        "n",
        "(n) masquerade out, nfsip loaded",
        "N",
        PHONE,
        SERVER_PORT,
        PHONE_PLAIN_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp dport {SERVER_PORT}",
        dst_ip=SERVER_IP,
    ),
    Case(
        "b",
        "(b) nfsip pinhole in",
        "N",
        T.SERVER,
        PUBLIC_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_MEDIA_PORT}",
    ),
    Case(
        "b'",
        "(b') nfsip pinhole out",
        "N",
        PHONE,
        SERVER_PORT,
        PHONE_MEDIA_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp sport {PUBLIC_PORT} udp dport {SERVER_PORT}",
        dst_ip=SERVER_IP,
    ),
    Case(
        "a'",
        "(a') masquerade in (reply dir), no nfsip",
        "P",
        T.SERVER,
        PHONE_PLAIN_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_PLAIN_PORT}",
    ),
    Case(
        "c",
        "(c) kernel SIP ALG expectation",
        "P",
        T.SERVER,
        0,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {ALG_PHONE_PORT}",
    ),
    Case(
        "d",
        "(d) Python relay (userspace)",
        "P",
        T.SERVER,
        RELAY_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {T.ROUTER_LAN_IP} ip daddr {PHONE_IP} udp dport {RELAY_PHONE_PORT}",
    ),
    Case(
        "z",
        "(z) no router: phone1 -> phone2, same LAN",
        "P",
        PHONE,
        SERVER_PORT,
        PHONE_PLAIN_PORT,
        PHONE2,
        f"ip saddr {PHONE_IP} ip daddr {PHONE2_IP} udp dport {SERVER_PORT}",
        dst_ip=PHONE2_IP,
    ),
)
RTPENGINE_CASE = Case(
    "e",
    "(e) rtpengine userspace (paced)",
    "P",
    T.SERVER,
    0,
    SERVER_PORT,
    PHONE,
    f"ip saddr {T.ROUTER_LAN_IP} ip daddr {PHONE_IP} udp dport {RTPENGINE_PHONE_PORT}",
)


@dataclass
class Options:
    seconds: float = 3.0
    rounds: int = 3
    size: int = 172
    rtpengine: bool = True
    ladder_seconds: float = 2.0
    modes: tuple[str, ...] = MODES
    # Scheduling of the userspace forwarders (relay, rtpengine, nfsip daemon) in the one-core layout. Kernel
    # forwarding runs in softirq, before the sender's next packet; a userspace forwarder sharing CPU 0 with the
    # sender at equal priority gets about half the core from the scheduler and the sender spends the rest on
    # packets the relay then drops. nice -20 gives the forwarder the core whenever it has packets; SCHED_BATCH
    # stops it preempting the sender at every wakeup (nice -20 alone: woken per packet, one select() and a
    # context switch each, fewer packets/s than at nice 0). With both it drains its socket in batches.
    forwarder_nice: int = -20
    forwarder_batch: bool = True
    cases: tuple[str, ...] = ()  # a subset of case keys (debugging); () = all

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
    mode: str = "unpinned"
    cpu_busy: list[float] | None = None  # per CPU busy seconds during the measurement (raw, whole VM)
    cpu_softirq: list[float] | None = None  # per CPU softirq seconds (tick-sampled)
    net_rx: list[int] | None = None  # per CPU NET_RX softirq runs
    recv_cpu: list[int] | None = None  # correct packets counted at the receiver, per CPU that ran its softirq
    cpu_background: list[float] | None = None  # per CPU busy CPUs' worth in 0.4 s of idleness right before

    def cpu_us_per_packet(self, one_core: bool) -> float:
        """µs of CPU per received packet: the whole machine's busy time minus the other load seen right before,
        or in the one-core layout CPU 0's busy time alone, raw. Raw because a flood saturates CPU 0 (the case
        runs nowhere else) and other tasks move off it once it is busy, so CPU 0's busy share in the idle
        window before says little about the blast (subtracting it gave 0.05 µs/pkt for (a) on a loaded VM);
        time other tasks did take on CPU 0 is counted, and also lowers packets/s. For the paced rtpengine
        ladder, which leaves CPU 0 partly idle, it is an upper bound."""
        if not self.received:
            return NAN
        if not one_core or not self.cpu_busy:
            return self.cpu["machine"] / self.received * 1e6
        return self.cpu_busy[min(ONE_CORE)] / self.received * 1e6

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
            "mode": self.mode,
            "cpu_busy": self.cpu_busy,
            "cpu_softirq": self.cpu_softirq,
            "net_rx": self.net_rx,
            "recv_cpu": self.recv_cpu,
            "cpu_background": self.cpu_background,
        }


# --------------------------------------------------------------------------------------------- setup
def receiver_table(match: str) -> str:
    """Count-and-drop at the receiver's first hook, SIP (port 5060) left alone for the ALG lab's sipp call;
    re-creating the table zeroes the counters. Correct packets are counted per CPU that ran the receiver's
    softirq (`meta cpu`, one counter per CPU): in a veth chain that is also the CPU that forwarded the packet
    in the router (kernel paths) or the CPU the relay/rtpengine sent it from, so it shows where the work landed."""
    counters = "\n".join(f"  counter ok{cpu} {{ }}" for cpu in range(NCPU))
    by_cpu = ", ".join(f'{cpu} : "ok{cpu}"' for cpu in range(NCPU))
    return f"""\
add table ip bench
delete table ip bench
table ip bench {{
{counters}
  counter other {{ }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    udp sport {T.SIP_PORT} accept
    udp dport {T.SIP_PORT} accept
    {match} counter name meta cpu map {{ {by_cpu} }} drop
    meta l4proto udp counter name other drop
  }}
}}
"""


def received_per_cpu(lab: Lab, node: str) -> list[int]:
    return [read_counter(lab, node, "bench", f"ok{cpu}") for cpu in range(NCPU)]


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
            [
                sys.executable,
                str(BENCH / "udprelay.py"),
                PUBLIC_IP,
                str(RELAY_PORT),
                T.ROUTER_LAN_IP,
                str(RELAY_LAN_PORT),
                PHONE_IP,
                str(RELAY_PHONE_PORT),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.relay.stdout is not None
        if self.relay.stdout.readline().strip() != "ready":
            raise RuntimeError("udprelay.py did not start")
        if self.want_rtpengine:
            self.start_rtpengine()
        self.uas = SippCallee(
            lab, kind="nomedia", calls=self.calls, timeout_s=None, workdir=self.workdir / "alg-uas"
        ).start()
        return self

    def start_rtpengine(self) -> None:
        if shutil.which("rtpengine") is None:
            self.rtpengine_note = "not run: rtpengine not installed (apt install rtpengine-daemon)"
            return
        log = open(self.workdir / "rtpengine.log", "w")  # noqa: SIM115 - owned by the child
        self.rtpengine = self.lab.popen(
            T.ROUTER,
            [
                "rtpengine",
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--table=-1",
                f"--interface=internal/{T.ROUTER_LAN_IP}",
                f"--interface=external/{PUBLIC_IP}",
                f"--listen-ng=127.0.0.1:{RTPENGINE_NG_PORT}",
                f"--port-min={RTPENGINE_PORTS[0]}",
                f"--port-max={RTPENGINE_PORTS[1]}",
                "--log-level=4",
                "--num-threads=2",
            ],
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
            res = self.lab.run(
                T.ROUTER, [sys.executable, str(BENCH / "rtpengine_ng.py"), "ping", str(RTPENGINE_NG_PORT)], check=False
            )
            if res.returncode == 0:
                return
            time.sleep(0.2)
        self.rtpengine_note = "not run: rtpengine did not answer its ng ping within 5 s"

    def rtpengine_call(self) -> int:
        """A fresh rtpengine call (offer/answer); the external port the server must send to."""
        res = self.lab.run(
            T.ROUTER,
            [
                sys.executable,
                str(BENCH / "rtpengine_ng.py"),
                "offer-answer",
                str(RTPENGINE_NG_PORT),
                PHONE_IP,
                str(RTPENGINE_PHONE_PORT),
                SERVER_IP,
                str(SERVER_PORT),
            ],
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
        self.uac = SippCaller(
            self.lab,
            PHONE,
            kind="nomedia",
            calls=1,
            pause_ms=600_000,
            timeout_s=None,
            trace_msg=False,
            workdir=self.workdir / "alg-uac",
        ).start()
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
def sender_argv(argv: list[str], mode: str) -> list[str]:
    """The sender's command line: in the one-core layout under `taskset -c 0` (its softirq work, and with it the
    router's and the receiver's, runs on the CPU that transmits: veth hands packets on without RPS)."""
    return ["taskset", "-c", ",".join(map(str, sorted(ONE_CORE))), *argv] if mode == "one-core" else argv


def place(mode: str, nf: NfsipLab, plain: PlainLab, opts: Options, all_cpus: set[int]) -> None:
    """Move the long-lived processes of both labs into `mode`'s layout (every thread, and child processes).

    Forwarders (Python relay, rtpengine, nfsip daemon) get opts.forwarder_nice (and SCHED_BATCH) in the one-core
    layout (see Options), nice 0 and SCHED_OTHER otherwise; the idle sipp answerer of case (c) is only pinned.
    Raises if a thread's affinity did not take."""
    cpus = set(ONE_CORE) if mode == "one-core" else set(all_cpus)
    forwarders = [*nf.pids().values(), *plain.pids().values()]
    one = mode == "one-core"
    pin_processes(
        forwarders,
        cpus,
        nice=opts.forwarder_nice if one else 0,
        policy=os.SCHED_BATCH if one and opts.forwarder_batch else os.SCHED_OTHER,
    )
    idle = [plain.uas.proc.pid] if plain.uas is not None and plain.uas.proc is not None else []
    pin_processes(idle, cpus)
    wrong = {tid: aff for pid in forwarders + idle for tid, aff in affinity_of(pid).items() if set(aff) != cpus}
    if wrong:
        raise RuntimeError(f"{mode}: CPU affinity did not take for threads {wrong}")


def steering(labs: list[Lab]) -> dict[str, str]:
    """Anything that would move softirq work off the transmitting CPU, per lab interface: RPS masks (rps_cpus),
    XPS masks (xps_cpus) and threaded NAPI (a kthread the scheduler places) that are not 0. {} = none set."""
    found: dict[str, str] = {}
    script = (
        "grep -H . /sys/class/net/*/queues/rx-*/rps_cpus /sys/class/net/*/queues/tx-*/xps_cpus "
        "/sys/class/net/*/threaded 2>/dev/null; true"
    )
    for lab in labs:
        for node in lab.nodes:
            out = lab.run(node, ["sh", "-c", script], check=False).stdout
            for line in out.splitlines():
                path, _, value = line.partition(":")
                digits = value.strip().replace(",", "")
                if digits and any(c not in "0" for c in digits):
                    found[f"{node}:{path.removeprefix('/sys/class/net/')}"] = value.strip()
    return found


def blast(
    lab: Lab,
    case: Case,
    blaster: Path,
    dst_port: int,
    seconds: float,
    size: int,
    pids: dict[str, int],
    rate: float = 0.0,
    queue_lab: bool = False,
    mode: str = "unpinned",
) -> Sample:
    """One measurement: blast the flow for `seconds` (flood, or paced at `rate`), count at the receiver."""
    queued0 = queue_chain_packets(lab) if queue_lab else 0
    drops0 = backlog_drops()
    argv = [str(blaster), case.dst_ip, str(dst_port), str(case.src_port), str(size), str(seconds)]
    if rate:
        argv.append(str(int(rate)))
    idle = background_busy_per_cpu()  # per CPU, so the one-core layout can subtract CPU 0's own share
    watch = CpuWatch(pids, background=sum(idle)).start()
    out = lab.run(case.sender, sender_argv(argv, mode), timeout=seconds + 30).stdout
    time.sleep(0.05)  # let the last softirq batches land
    cpu = watch.stop()
    n, secs = out.split()
    per_cpu = received_per_cpu(lab, case.receiver)
    return Sample(
        sent=int(n),
        received=sum(per_cpu),
        recv_cpu=per_cpu,
        other=read_counter(lab, case.receiver, "bench", "other"),
        seconds=float(secs),
        cpu=cpu,
        queued=(queue_chain_packets(lab) - queued0) if queue_lab else 0,
        backlog_drops=backlog_drops() - drops0,
        rate=rate,
        mode=mode,
        cpu_busy=watch.per_cpu_busy,
        cpu_background=idle,
        cpu_softirq=watch.per_cpu_softirq,
        net_rx=watch.per_cpu_net_rx,
    )


def measure(case: Case, nf: NfsipLab, plain: PlainLab, blaster: Path, opts: Options, mode: str) -> Sample:
    if case.lab == "N":
        lab = nf.lab
        lab.nft(case.receiver, receiver_table(case.match))
        lab.flush_conntrack(T.ROUTER)
        return blast(lab, case, blaster, case.dst_port, opts.seconds, opts.size, nf.pids(), queue_lab=True, mode=mode)
    lab = plain.lab
    lab.nft(case.receiver, receiver_table(case.match))
    lab.flush_conntrack(T.ROUTER)
    if case.key == "a'":
        # One batch the other way creates the masquerade binding whose reply direction is measured.
        lab.run(PHONE, [str(blaster), SERVER_IP, str(SERVER_PORT), str(PHONE_PLAIN_PORT), "12", "1e-6"])
        time.sleep(0.05)
    if case.key != "c":
        return blast(lab, case, blaster, case.dst_port, opts.seconds, opts.size, plain.pids(), mode=mode)
    lab.kernel_sip_alg()
    try:
        port = plain.expectation_port()
        if mode == "one-core" and plain.uac is not None and plain.uac.proc is not None:
            pin_processes([plain.uac.proc.pid], set(ONE_CORE))  # idle while the call is held, pinned anyway
        return blast(lab, case, blaster, port, opts.seconds, opts.size, plain.pids(), mode=mode)
    finally:
        plain.end_call()
        lab.remove_kernel_sip_alg()


def rtpengine_ladder(a: PlainLab, blaster: Path, opts: Options, mode: str) -> list[Sample]:
    """Paced rates, a fresh rtpengine call each, until one loses more than 1 %."""
    samples = []
    for rate in RTPENGINE_LADDER:
        port = a.rtpengine_call()
        a.lab.nft(PHONE, receiver_table(RTPENGINE_CASE.match))
        sample = blast(
            a.lab, RTPENGINE_CASE, blaster, port, opts.ladder_seconds, opts.size, a.pids(), rate=rate, mode=mode
        )
        samples.append(sample)
        print(
            f"  {mode:<8} rtpengine paced {rate:>7,} pps: sent {sample.sent_pps:9,.0f}/s recv "
            f"{sample.recv_pps:9,.0f}/s loss {sample.loss:5.1f} %",
            flush=True,
        )
        if sample.loss > 1.0:
            break
    return samples


# -------------------------------------------------------------------------------------------- report
COLUMNS = [
    "case",
    "recv pps (median)",
    "min-max",
    "vs (a)",
    "loss %",
    "process CPU µs/pkt",
    "machine CPU µs/pkt",
    "router CPU µs/pkt (est.)",
    "CPUs busy cpu0 / cpu1",
    "received on cpu0 / cpu1",
]


def cpu_us_per_packet(samples: list[Sample], who: str) -> float:
    packets = sum(s.received for s in samples)
    cpu = sum(s.cpu.get(who, 0.0) for s in samples)
    return cpu / packets * 1e6 if packets else NAN


def per_cpu_text(samples: list[Sample], attr: str) -> str:
    """Median over the samples of each CPU's seconds per wall second ("0.97 / 0.08"): where the work ran."""
    rows = [(getattr(s, attr), s.cpu.get("wall", s.seconds)) for s in samples if getattr(s, attr)]
    if not rows:
        return "-"
    ncpu = min(len(v) for v, _ in rows)
    return " / ".join(f"{median(v[i] / wall for v, wall in rows if wall):.2f}" for i in range(ncpu))


def recv_cpu_text(samples: list[Sample]) -> str:
    """Share of the correctly received packets whose receiver softirq ran on each CPU ("100% / 0%")."""
    per = [sum((s.recv_cpu or [0] * NCPU)[i] for s in samples) for i in range(NCPU)]
    total = sum(per)
    return " / ".join(f"{100 * n / total:.0f}%" for n in per) if total else "-"


def placement_text(samples: dict[str, dict[str, list[Sample]]], modes: tuple[str, ...]) -> str:
    """Where the receivers' softirq ran, per layout: the evidence that pinning kept a case on CPU 0."""
    parts = []
    for mode in modes:
        per = [0] * NCPU
        for ss in samples[mode].values():
            for s in ss:
                per = [a + b for a, b in zip(per, s.recv_cpu or [0] * NCPU, strict=True)]
        total = sum(per)
        if total:
            parts.append(
                f"{mode}: "
                + ", ".join(f"{100 * n / total:.1f} % on cpu{i}" for i, n in enumerate(per))
                + " of all packets counted at the receivers"
            )
    return "; ".join(parts)


def ratio(x: float, y: float) -> float:
    return x / y if y and y == y and x == x else NAN


def columns(mode: str) -> list[str]:
    """The table's columns in a layout: the first names the layout, the CPU column says whose busy time it is."""
    cols = [f"case, {MODE_TITLES[mode].split(' (')[0]}", *COLUMNS[1:]]
    cols[cols.index("machine CPU µs/pkt")] = CPU_COLUMN[mode]
    return cols


def summarize_mode(samples: dict[str, list[Sample]], ladder: list[Sample], note: str, mode: str) -> dict[str, Any]:
    """One layout's table rows (keyed by columns(mode)), ratios and goals (the same computation for both)."""
    one = mode == "one-core"
    cpu_col = CPU_COLUMN[mode]

    def pps(key: str) -> float:
        return median(s.recv_pps for s in samples.get(key, []))

    whole = {k: median(s.cpu["machine"] / s.received * 1e6 for s in ss if s.received) for k, ss in samples.items()}
    machine = {k: median(s.cpu_us_per_packet(one) for s in ss if s.received) for k, ss in samples.items()}
    floor = machine.get("z", NAN)
    base = pps("a")
    process_of = {"b": "nfsip", "b'": "nfsip", "d": "relay"}
    rows: list[dict[str, Any]] = []
    for case in CASES:
        ss = samples.get(case.key)
        if not ss:
            continue
        recv = median(s.recv_pps for s in ss)
        who = process_of.get(case.key)
        rows.append(
            {
                columns(mode)[0]: case.title,
                "recv pps (median)": fmt(recv),
                "min-max": f"{min(s.recv_pps for s in ss) / 1000:.0f}k-{max(s.recv_pps for s in ss) / 1000:.0f}k",
                "vs (a)": f"{ratio(recv, base):.2f}",
                "loss %": f"{median(s.loss for s in ss):.2f}",
                "process CPU µs/pkt": (f"{cpu_us_per_packet(ss, who):.2f} ({who})" if who else "- (kernel)"),
                cpu_col: f"{machine[case.key]:.2f}",
                "router CPU µs/pkt (est.)": "-" if case.key == "z" else f"{machine[case.key] - floor:.2f}",
                "CPUs busy cpu0 / cpu1": per_cpu_text(ss, "cpu_busy"),
                "received on cpu0 / cpu1": recv_cpu_text(ss),
            }
        )
    e_pps = NAN
    best = None
    if ladder:
        ok = [s for s in ladder if s.loss <= 1.0]
        best = max(ok, key=lambda s: s.recv_pps) if ok else None
        e_pps = best.recv_pps if best else 0.0
        failed_at = next((s.rate for s in ladder if s.loss > 1.0), None)
        e_machine = best.cpu_us_per_packet(one) if best else NAN
        rows.append(
            {
                columns(mode)[0]: RTPENGINE_CASE.title,
                "recv pps (median)": fmt(e_pps),
                "min-max": f"lossless up to {best.rate / 1000:.0f}k" if best else "lossy at every rate",
                "vs (a)": f"{ratio(e_pps, base):.2f}",
                "loss %": (
                    f"{next(s.loss for s in ladder if s.rate == failed_at):.0f} at {failed_at / 1000:.0f}k pps"
                    if failed_at
                    else "0"
                ),
                "process CPU µs/pkt": (f"{cpu_us_per_packet([best], 'rtpengine'):.2f} (rtpengine)" if best else "-"),
                cpu_col: f"{e_machine:.2f}" if best else "-",
                "router CPU µs/pkt (est.)": f"{e_machine - floor:.2f}" if best else "-",
                "CPUs busy cpu0 / cpu1": per_cpu_text([best], "cpu_busy") if best else "-",
                "received on cpu0 / cpu1": recv_cpu_text([best]) if best else "-",
            }
        )
    else:
        rows.append({columns(mode)[0]: RTPENGINE_CASE.title, "recv pps (median)": note or "not run"})
    b = pps("b")
    mb, md = machine.get("b", NAN), machine.get("d", NAN)
    ratios = {
        "b/a": ratio(b, base),
        "b'/a": ratio(pps("b'"), base),
        "b/a'": ratio(b, pps("a'")),
        "b/n": ratio(b, pps("n")),
        "n/a": ratio(pps("n"), base),
        "b/c": ratio(b, pps("c")),
        "c/a": ratio(pps("c"), base),
        "b/d": ratio(b, pps("d")),
        "b/e": ratio(b, e_pps),
        "router CPU/pkt d/b": ratio(md - floor, mb - floor) if mb > floor else NAN,
    }
    goals = {"b/a >= 0.95": ratios["b/a"] >= 0.95, "b/d >= 2": ratios["b/d"] >= 2.0}
    return {"rows": rows, "ratios": ratios, "goals": goals, "cpu_us_per_pkt": machine, "machine_us_per_pkt": whole}


def summarize(
    samples: dict[str, dict[str, list[Sample]]],
    ladders: dict[str, list[Sample]],
    plain: PlainLab,
    opts: Options,
    steered: dict[str, str],
) -> PartResult:
    """Both layouts' tables: the first of opts.modes is the part's main table, the other an extra table."""
    per_mode = {
        mode: summarize_mode(samples[mode], ladders.get(mode, []), plain.rtpengine_note, mode) for mode in opts.modes
    }
    first = opts.modes[0]
    result = PartResult(
        "media", "Media: 172-byte UDP packets/s forwarded by the router", columns(first), rows=per_mode[first]["rows"]
    )
    for mode in opts.modes[1:]:
        result.extra_tables.append(Table(f"The same cases, {MODE_TITLES[mode]}", columns(mode), per_mode[mode]["rows"]))
    pinhole = [s for mode in opts.modes for k in ("b", "b'") for s in samples[mode].get(k, [])]
    daemon_cpu = sum(s.cpu.get("nfsip", 0.0) for s in pinhole)
    queued = sum(s.queued for s in pinhole)
    packets = sum(s.received for s in pinhole)
    wall = sum(s.seconds for s in pinhole)
    result.data = {
        "options": {**opts.__dict__, "one_core_cpus": sorted(ONE_CORE)},
        "modes": list(opts.modes),
        "rtpengine_note": plain.rtpengine_note,
        "steering": steered,
        "nfsip_during_pinhole_media": {
            "daemon_cpu_s": daemon_cpu,
            "wall_s": wall,
            "packets": packets,
            "queued_packets": queued,
            "daemon_cpu_us_per_packet": daemon_cpu / packets * 1e6 if packets else NAN,
        },
    }
    # The unpinned layout keeps the keys the suite has always used (run_all.py, plots.py, older results.json);
    # the one-core layout's are under "one_core".
    for mode in opts.modes:
        block = {
            "samples": {k: [s.as_dict() for s in v] for k, v in samples[mode].items()},
            "rtpengine_ladder": [s.as_dict() for s in ladders.get(mode, [])],
            "ratios": per_mode[mode]["ratios"],
            "goals": per_mode[mode]["goals"],
            "machine_us_per_pkt": per_mode[mode]["machine_us_per_pkt"],
            "cpu_us_per_pkt": per_mode[mode]["cpu_us_per_pkt"],
        }
        if mode == "unpinned":
            result.data.update(block)
        else:
            result.data["one_core"] = block
    all_samples = [s for mode in opts.modes for ss in samples[mode].values() for s in ss]
    load = median(s.cpu.get("background", 0.0) for s in all_samples)
    result.data["other_load_cpus_median"] = load
    result.notes.append(
        f"other load on the VM right before each measurement (subtracted from machine CPU): median {load:.2f} "
        "CPUs" + (" - **the machine was not idle: absolute rates are depressed**" if load > 0.2 else "")
    )
    for mode in opts.modes:
        r, g = per_mode[mode]["ratios"], per_mode[mode]["goals"]
        result.notes.append(
            f"**{mode}** ratios (medians of {opts.rounds} alternated rounds, {opts.seconds:g} s each): "
            + ", ".join(f"{k} = {v:.2f}" for k, v in r.items())
            + "; goals: "
            + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in g.items())
        )
    result.notes += [
        f"nfsip daemon during (b)+(b'), both layouts: {daemon_cpu * 1000:.0f} ms CPU in {wall:.1f} s of blasting, "
        f"{packets:,} media packets forwarded, {queued} packets through its queue chain "
        f"(CPU clock tick is 10 ms: 0 ms means under one tick per measurement)",
        "process CPU µs/pkt: the userspace process in the path (nfsip daemon: must be 0); machine CPU µs/pkt "
        "(unpinned): busy time of the whole VM (sender, bridges, router softirq, receiver) per forwarded packet, "
        "other load subtracted; CPU 0 µs/pkt (one core): busy time of CPU 0, where the whole case ran, per "
        "forwarded packet, raw (nothing subtracted: the flood saturates CPU 0; an upper bound for paced (e)); "
        "router CPU µs/pkt: that minus (z) of the same layout, the sender/bridge/receiver share (an estimate: "
        "difference of two noisy medians; it includes one more bridge hop); CPUs busy cpu0 / cpu1: median busy "
        "seconds per second of each CPU during the blast (whole VM, other load included); received on cpu0 / "
        "cpu1: share of the counted packets whose receiver softirq ran on each CPU (nft `meta cpu`)",
        "unpinned: with one sender the kernel paths run sender, router and receiver in the sender's softirq on "
        "one core at a time (whichever the scheduler gives the sender), while the Python relay and rtpengine get "
        "the second core to themselves: the packets/s ratios b/d and b/e are what an otherwise idle 2-core box "
        "gives one flow, not what the paths cost",
        "one core: the sender (`taskset -c 0`), the Python relay, rtpengine, the nfsip daemon (every thread and "
        "child, sched_setaffinity) and the idle sipp processes of (c) on CPU 0; the forwarders at nice "
        f"{opts.forwarder_nice}{' and SCHED_BATCH' if opts.forwarder_batch else ''}, so that the scheduler "
        "does not give half the core to the sender (kernel paths forward in softirq before the sender's next "
        "packet; the relay drains its socket in batches whenever it has packets, without preempting the sender "
        "per packet). Packets/s is then what one core can forward, the load generator's own cost included in "
        "every case: the relevant figure for a router whose cores are all busy forwarding. Other load that "
        "lands on CPU 0 slows the sender (nice 0) more than the forwarders, which favours (d) and (e)",
        f"where the work ran: {placement_text(samples, opts.modes)}",
        "softirq placement: the lab is veth pairs and bridges only (no NIC, no hardware interrupt in the path); "
        "a veth delivers on the CPU that transmits (netif_rx to that CPU's backlog) unless RPS is set: "
        + (
            "RPS/XPS/threaded NAPI: none set on any lab interface"
            if not steered
            else "**set on some lab interfaces, softirq work may run elsewhere**: "
            + ", ".join(f"{k}={v}" for k, v in steered.items())
        ),
        "(a), (a'), (c), (d), (e) run in a router without nfsip (the ALG table loaded only while (c) runs); "
        "(n), (b), (b') in the same topology with the nfsip daemon. n/a is what nfsip's table costs traffic "
        "that is not media (its SIP divert chains are evaluated for every forwarded packet, and the daemon "
        "has turned conntrack accounting on); b/n compares a pinhole with masquerade on the same nfsip router",
        "(e) rtpengine discards packets on purpose once its socket backlog overflowed 5 times (flood "
        "protection), so it is paced: the value is the highest single-flow rate of "
        f"{', '.join(f'{r // 1000}k' for r in RTPENGINE_LADDER)} pps it forwarded with <= 1 % loss",
    ]
    return result


# ---------------------------------------------------------------------------------------------- main
def run(opts: Options, workdir: Path) -> PartResult:
    """Build both labs; each round measures every case in every layout (opts.modes), then the rtpengine ladder
    once per layout."""
    started = time.monotonic()
    blaster = build("udpblast", workdir)
    all_cpus = os.sched_getaffinity(0)
    cases = [c for c in CASES if not opts.cases or c.key in opts.cases]
    nf = NfsipLab()
    plain = PlainLab(workdir, opts.rtpengine, calls=opts.rounds * len(opts.modes) + 5)
    try:
        nf.up()
        plain.up()
        steered = steering([nf.lab, plain.lab])
        samples: dict[str, dict[str, list[Sample]]] = {m: {c.key: [] for c in cases} for m in opts.modes}
        for rnd in range(1, opts.rounds + 1):
            for mode in opts.modes:
                place(mode, nf, plain, opts, all_cpus)
                for case in cases:
                    sample = measure(case, nf, plain, blaster, opts, mode)
                    samples[mode][case.key].append(sample)
                    cpu = " ".join(
                        f"{k} {v * 1000:.0f}ms"
                        for k, v in sample.cpu.items()
                        if k not in ("machine", "machine_raw", "wall", "background")
                    )
                    where = " ".join(
                        f"cpu{i} {b / sample.cpu['wall']:.2f}" for i, b in enumerate(sample.cpu_busy or [])
                    )
                    print(
                        f"round {rnd} {mode:<8} {case.key:<3}: sent {sample.sent_pps:9,.0f}/s recv "
                        f"{sample.recv_pps:9,.0f}/s other {sample.other} queued {sample.queued} {cpu} busy {where}",
                        flush=True,
                    )
        ladders: dict[str, list[Sample]] = {}
        if plain.rtpengine is not None and (not opts.cases or "e" in opts.cases):
            for mode in opts.modes:
                place(mode, nf, plain, opts, all_cpus)
                ladders[mode] = rtpengine_ladder(plain, blaster, opts, mode)
        if nf.daemon is not None and not nf.daemon.alive():
            raise RuntimeError(f"nfsip daemon died:\n{nf.daemon.log()}")
    finally:
        nf.down()
        plain.down()
    result = summarize(samples, ladders, plain, opts, steered)
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
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"CPU layouts, comma-separated (default {','.join(MODES)}: both, side by side)",
    )
    parser.add_argument(
        "--forwarder-nice",
        type=int,
        default=None,
        help="nice of relay/rtpengine/daemon in the one-core layout (default -20)",
    )
    parser.add_argument(
        "--forwarder-sched",
        choices=("batch", "other"),
        default="batch",
        help="their scheduling policy in the one-core layout (default batch: SCHED_BATCH)",
    )
    parser.add_argument("--cases", default="", help="only these case keys, comma-separated (e.g. a,b,d,z)")
    parser.add_argument("--out", type=Path, default=None, help="write media.json/media.md here")
    args = parser.parse_args()
    opts = Options.quick() if args.quick else Options()
    if args.seconds:
        opts.seconds = args.seconds
    if args.rounds:
        opts.rounds = args.rounds
    opts.rtpengine = not args.no_rtpengine
    opts.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if not opts.modes or any(m not in MODES for m in opts.modes):
        parser.error(f"--modes: one or more of {', '.join(MODES)}")
    if args.forwarder_nice is not None:
        opts.forwarder_nice = args.forwarder_nice
    opts.forwarder_batch = args.forwarder_sched == "batch"
    opts.cases = tuple(k.strip() for k in args.cases.split(",") if k.strip())
    return run_part(reason_not_runnable(), lambda workdir: run(opts, workdir), args.out)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CASES", "Options", "run"]
