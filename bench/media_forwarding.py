"""Packets per second the lab router forwards: plain masquerade versus an nfsip media pinhole.

    sudo .venv/bin/python bench/media_forwarding.py [--seconds 3] [--size 172] [--rounds 3] [--senders 1]

Why: nfsip's claim is that media never touches Python. The daemon only writes map elements
(`media_dnat`, `media_snat` in `table ip nfsip`); the kernel's NAT then forwards RTP exactly as fast
as any other NATed flow. This script checks that claim in the namespace lab with the real daemon
running in the router, for four cases (one UDP flow each, RTP-sized payloads):

  (a)  masquerade out:   phone1:6100 -> server:7000, source NAT by the admin's masquerade
  (a') masquerade in:    server:7000 -> 198.51.100.1:6100, the reply direction of (a)'s flow
                         (an established inbound baseline for (b); not a pinhole)
  (b)  pinhole in:       server:7000 -> 198.51.100.1:40000, DNATed by media_dnat to phone1:6000
  (c)  pinhole out:      phone1:6000 -> server:7000, SNATed by media_snat to 198.51.100.1:40000

Method. The pinhole is installed with nfsip's own `Nft.apply()` from a process in the router
namespace, after the daemon has installed its table (exactly the elements a call would get). Before
every measurement the router's conntrack table is flushed so that each flow's first packet runs
through the NAT chains and binds afresh. A small C sender (bench/udpblast.c, compiled with gcc into a
temp dir: Python has no sendmmsg() and a Python loop would measure the interpreter) blasts the flow
for --seconds. The receiver counts in an nft counter at prerouting priority raw and drops there: the
counter rule matches only correctly translated packets (e.g. for (c): source 198.51.100.1:40000), a
second counter catches any other UDP, and no socket, conntrack or ICMP work is spent in the receiver.
Cases alternate round by round; the table shows medians.

Why ratios. The VM has 2 vCPUs shared by sender, both bridges, router and receiver; a veth hands
each packet on in softirq, mostly on the sending CPU, so the absolute rate is bounded by the whole
chain's CPU cost (sender syscalls included), not by the router alone, and the machine is noisy
(+-15 %). Packets/s of a pinhole divided by packets/s of plain masquerade measured side by side in
the same run is the meaningful number: ~1.0 means the pinhole path costs what kernel NAT costs.

Python is out of the media path if, during (b) and (c), the daemon process used ~0 CPU time
(/proc/<pid>/stat utime+stime, all threads) and the counter of its queue chain (`sip_queue`, every
datagram that would reach the NFQUEUE) did not move. At the LAB.md cost of ~8.6 us CPU per queued
packet, queuing the media would have cost seconds of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nfsip.kernel.ruleset import QUEUE_CHAIN
from nfsiplab import topology as T
from nfsiplab.lab import Lab, can_run
from nfsiplab.nfsipd import NfsipDaemon

BLAST_SRC = Path(__file__).with_name("udpblast.c")
PUBLIC_IP = T.ROUTER_WAN_IP
PHONE = "phone1"
PHONE_IP = T.phone_ip(1)
SERVER_IP = T.SERVER_IP
PUBLIC_PORT = 40000
PHONE_MEDIA_PORT = 6000  # the pinhole's LAN port
PHONE_PLAIN_PORT = 6100  # not in media_snat: masquerade applies
SERVER_PORT = 7000
CALL_ID = "bench-call"
US_PER_QUEUED_PACKET = 8.6  # LAB.md: trivial NFQUEUE accept loop, CPU per packet


@dataclass(frozen=True, slots=True)
class Case:
    key: str
    title: str
    sender: str
    dst_ip: str
    dst_port: int
    src_port: int
    receiver: str
    match: str  # nft match for a correctly translated packet at the receiver
    pinhole: bool
    prime: bool = False  # send a few packets the other way first (reply-direction flow)


CASES: tuple[Case, ...] = (
    Case(
        "a",
        "(a)  masquerade out  phone1 -> server",
        PHONE,
        SERVER_IP,
        SERVER_PORT,
        PHONE_PLAIN_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp dport {SERVER_PORT}",
        pinhole=False,
    ),
    Case(
        "a'",
        "(a') masquerade in   server -> phone1 (reply dir)",
        T.SERVER,
        PUBLIC_IP,
        PHONE_PLAIN_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp sport {SERVER_PORT} udp dport {PHONE_PLAIN_PORT}",
        pinhole=False,
        prime=True,
    ),
    Case(
        "b",
        "(b)  pinhole in      server -> :40000 -> phone1:6000",
        T.SERVER,
        PUBLIC_IP,
        PUBLIC_PORT,
        SERVER_PORT,
        PHONE,
        f"ip saddr {SERVER_IP} ip daddr {PHONE_IP} udp dport {PHONE_MEDIA_PORT}",
        pinhole=True,
    ),
    Case(
        "c",
        "(c)  pinhole out     phone1:6000 -> :40000 -> server",
        PHONE,
        SERVER_IP,
        SERVER_PORT,
        PHONE_MEDIA_PORT,
        T.SERVER,
        f"ip saddr {PUBLIC_IP} udp sport {PUBLIC_PORT} udp dport {SERVER_PORT}",
        pinhole=True,
    ),
)


@dataclass(slots=True)
class Sample:
    sent: int
    received: int
    other: int
    seconds: float
    backlog_drops: int
    daemon_cpu: float  # seconds of CPU the daemon used during this measurement
    queued: int  # packets that went through nfsip's sip_queue chain during this measurement

    @property
    def sent_pps(self) -> float:
        return self.sent / self.seconds

    @property
    def recv_pps(self) -> float:
        return self.received / self.seconds

    @property
    def loss(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0


@dataclass(slots=True)
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def median(self, key: str, attr: str) -> float:
        return statistics.median(float(getattr(s, attr)) for s in self.samples[key])


# ------------------------------------------------------------------------------------------ helpers
def compile_blaster(workdir: Path) -> Path:
    exe = workdir / "udpblast"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(BLAST_SRC)], check=True)
    return exe


def install_pinhole(lab: Lab) -> None:
    """Add the pinhole's DNAT and SNAT elements through nfsip's own Nft adapter, in the router."""
    code = (
        "from nfsip.kernel.nft import Nft\n"
        "from nfsip.core.model import Endpoint, Pinhole\n"
        f"hole = Pinhole(Endpoint({PUBLIC_IP!r}, {PUBLIC_PORT}), Endpoint({PHONE_IP!r}, {PHONE_MEDIA_PORT}),"
        f" {CALL_ID!r}, 'm0.rtp', timeout=600)\n"
        "Nft('nfsip').apply(install=[hole], remove=[])\n"
    )
    lab.run(T.ROUTER, [sys.executable, "-c", code])


def receiver_table(match: str) -> str:
    """Count-and-drop at the receiver's first hook; re-creating the table zeroes the counters."""
    return f"""\
add table ip bench
delete table ip bench
table ip bench {{
  counter ok {{ }}
  counter other {{ }}
  chain pre {{
    type filter hook prerouting priority raw; policy accept;
    {match} counter name ok drop
    meta l4proto udp counter name other drop
  }}
}}
"""


def read_counter(lab: Lab, node: str, table: str, name: str) -> int:
    out = lab.run(node, ["nft", "-j", "list", "counter", "ip", table, name]).stdout
    for item in json.loads(out)["nftables"]:
        if "counter" in item:
            return int(item["counter"]["packets"])
    raise RuntimeError(f"no counter {name} in {node}")


def queue_chain_packets(lab: Lab) -> int:
    """Packets counted by the `counter` statement of nfsip's sip_queue chain (every queued datagram)."""
    out = lab.run(T.ROUTER, ["nft", "-j", "list", "chain", "ip", "nfsip", QUEUE_CHAIN]).stdout
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if isinstance(expr, dict) and "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backlog_drops() -> int:
    """Sum of the per-CPU input backlog drops (/proc/net/softnet_stat column 2; global, not per netns)."""
    lines = Path("/proc/net/softnet_stat").read_text().splitlines()
    return sum(int(line.split()[1], 16) for line in lines if line.strip())


def measure(lab: Lab, case: Case, blaster: Path, args: argparse.Namespace, daemon_pid: int) -> Sample:
    lab.nft(case.receiver, receiver_table(case.match))
    lab.flush_conntrack(T.ROUTER)
    if case.prime:
        # One batch the other way creates the masquerade binding whose reply direction we measure.
        lab.run(case.receiver, [str(blaster), SERVER_IP, str(SERVER_PORT), str(PHONE_PLAIN_PORT), "12", "1e-6"])
        time.sleep(0.05)
    queued0, cpu0, drops0 = queue_chain_packets(lab), cpu_seconds(daemon_pid), backlog_drops()
    argv = [str(blaster), case.dst_ip, str(case.dst_port), str(case.src_port), str(args.size), str(args.seconds)]
    procs = [lab.popen(case.sender, argv, stdout=subprocess.PIPE, text=True) for _ in range(args.senders)]
    sent, elapsed = 0, 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=args.seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"udpblast in {case.sender} exited {proc.returncode}")
        n, secs = out.split()
        sent, elapsed = sent + int(n), max(elapsed, float(secs))
    time.sleep(0.05)  # let the last softirq batches land
    cpu1, drops1, queued1 = cpu_seconds(daemon_pid), backlog_drops(), queue_chain_packets(lab)
    return Sample(
        sent=sent,
        received=read_counter(lab, case.receiver, "bench", "ok"),
        other=read_counter(lab, case.receiver, "bench", "other"),
        seconds=elapsed,
        backlog_drops=drops1 - drops0,
        daemon_cpu=cpu1 - cpu0,
        queued=queued1 - queued0,
    )


# ------------------------------------------------------------------------------------------- report
def fmt_k(pps: float) -> str:
    return f"{pps / 1000:7.1f}k"


def report(results: Results, args: argparse.Namespace) -> bool:
    base = results.median("a", "recv_pps")
    base_in = results.median("a'", "recv_pps")
    print()
    print(
        f"UDP payload {args.size} bytes, {args.seconds:g} s per measurement, {args.rounds} rounds "
        f"(cases alternated), {args.senders} sender process(es); medians of the rounds."
    )
    print()
    header = f"{'case':<52} {'sent/s':>8} {'recv/s':>8} {'loss %':>7} {'vs (a)':>7}  recv/s per round"
    print(header)
    print("-" * len(header))
    ok = True
    for case in CASES:
        samples = results.samples[case.key]
        recv = results.median(case.key, "recv_pps")
        rounds = " ".join(fmt_k(s.recv_pps).strip() for s in samples)
        print(
            f"{case.title:<52} {fmt_k(results.median(case.key, 'sent_pps'))} {fmt_k(recv)} "
            f"{results.median(case.key, 'loss'):7.2f} {recv / base:7.3f}  {rounds}"
        )
        if any(s.received == 0 for s in samples):
            ok = False
    print()
    b, c = results.median("b", "recv_pps"), results.median("c", "recv_pps")
    print(f"ratio (b)/(a)  = {b / base:.3f}   pinhole inbound  vs masquerade outbound")
    print(f"ratio (c)/(a)  = {c / base:.3f}   pinhole outbound vs masquerade outbound")
    print(f"ratio (b)/(a') = {b / base_in:.3f}   pinhole inbound  vs masquerade reply direction")
    other = sum(s.other for ss in results.samples.values() for s in ss)
    drops = sum(s.backlog_drops for ss in results.samples.values() for s in ss)
    print(f"wrongly translated UDP at the receivers: {other}; softnet backlog drops (all CPUs, whole run): {drops}")
    print()
    media = [s for key in ("b", "c") for s in results.samples[key]]
    packets = sum(s.received for s in media)
    cpu = sum(s.daemon_cpu for s in media)
    queued = sum(s.queued for s in media)
    wall = sum(s.seconds for s in media)
    would = packets * US_PER_QUEUED_PACKET / 1e6
    print(
        f"nfsip daemon during (b)+(c): {cpu * 1000:.0f} ms CPU (clock tick {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms) "
        f"in {wall:.1f} s of blasting, "
        f"{packets:,} media packets forwarded, {queued} packets through its queue chain"
    )
    print(
        f"  (through NFQUEUE at ~{US_PER_QUEUED_PACKET} us/packet those packets would have cost ~{would:.0f} s "
        f"of CPU): no media packet went through Python."
        if queued == 0 and cpu < 0.05 * wall
        else "  WARNING: the daemon was busy or packets were queued during media: check the path!"
    )
    if queued != 0 or cpu >= 0.05 * wall:
        ok = False
    print()
    print(
        "Absolute rates are CPU-bound on this 2-vCPU VM: sender, both bridges, router and receiver share\n"
        "the cores (veth forwarding runs in softirq, mostly on the sender's CPU), so pps measures the whole\n"
        "chain. The ratios, measured side by side in one run, are the meaningful numbers (noise ~+-15 %).\n"
        "Loss is ~0 by construction: each datagram crosses the chain inside the sender's sendmmsg(), so an\n"
        "overloaded chain slows the sender down instead of dropping (softnet backlog drops show otherwise)."
    )
    return ok


# --------------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement (default 3)")
    parser.add_argument("--size", type=int, default=172, help="UDP payload bytes (default 172: RTP G.711 20 ms)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all cases (default 3)")
    parser.add_argument("--senders", type=int, default=1, help="sender processes per flow (default 1)")
    args = parser.parse_args()
    reason = can_run()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if shutil.which("gcc") is None or shutil.which("conntrack") is None:
        print("cannot run: needs gcc and conntrack", file=sys.stderr)
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="nfsip-bench-"))
    try:
        blaster = compile_blaster(workdir)
        with Lab(phones=1) as lab:
            lab.masquerade()
            daemon = NfsipDaemon(lab).start()
            try:
                assert daemon.proc is not None
                pid = daemon.proc.pid  # `ip netns exec` execs: this is the daemon's own pid
                install_pinhole(lab)
                results = Results({case.key: [] for case in CASES})
                for rnd in range(1, args.rounds + 1):
                    for case in CASES:
                        sample = measure(lab, case, blaster, args, pid)
                        results.samples[case.key].append(sample)
                        print(
                            f"round {rnd} {case.key:<2}: sent {sample.sent_pps:9,.0f}/s  recv {sample.recv_pps:9,.0f}/s"
                            f"  other {sample.other}  daemon cpu {sample.daemon_cpu * 1000:.0f} ms"
                            f"  queued {sample.queued}",
                            flush=True,
                        )
                if not daemon.alive():
                    print(f"nfsip daemon died:\n{daemon.log()}", file=sys.stderr)
                    return 1
            finally:
                daemon.stop()
            ok = report(results, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
