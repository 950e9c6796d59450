"""Shared helpers of the nfsip benchmark suite (bench/media.py, signalling.py, callsetup.py, scale.py).

Nothing here measures by itself. What it provides, and why:

- `build()` compiles the two C load tools (udpblast.c: RTP-sized UDP at full speed with sendmmsg();
  sipload.c: SIP calls with valid INVITE/200/ACK/BYE messages) once per run: a Python generator would
  measure the interpreter, not the router, and it shares the VM's 2 vCPUs with what it measures.
- `BENCH_CONFIG`: the daemon configuration for load runs. nfsip's default policy (nfsip.core.policy.Limits:
  16 calls / 64 pinholes per LAN host, 20 new pinholes/s per host, 5000 calls / 20000 pinholes in all)
  would refuse almost all of a one-phone load test (refused messages pass unchanged and skip the pinhole
  path), so the limits are raised and the media port range widened. Every part says so in its notes.
- CPU accounting from /proc (a process's utime+stime, the machine's busy time), resident memory, the
  NFQUEUE statistics of a namespace, and Prometheus histogram deltas from the daemon's /metrics.
- `PartResult`: what each part returns to bench/run_all.py (table rows, raw data, notes).

All lab traffic stays inside the lab's namespaces (10.0.0.0/24 and 198.51.100.0/24, TEST-NET-2).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nfsiplab import topology as T  # noqa: E402
from nfsiplab.lab import Lab  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
PHONE = "phone1"
PHONE_IP = T.phone_ip(1)
PUBLIC_IP = T.ROUTER_WAN_IP
SERVER_IP = T.SERVER_IP
QUEUE_NUM = 5060  # nfsip's default queue number (nfsip.config.Config.queue_num)

BENCH_CONFIG: dict[str, Any] = {
    "max_calls_per_host": 100_000,
    "max_pinholes_per_host": 200_000,
    "max_calls": 100_000,
    "max_pinholes": 200_000,
    "pinhole_rate_per_host": 1_000_000,
    "pinhole_burst_per_host": 1_000_000,
    "sip_rate_per_host": 1_000_000,
    "sip_burst_per_host": 1_000_000,
    "media_port_min": 10_000,
    "media_port_max": 65_000,
    # The TCP relay's port must lie outside the media range (the default, 15060, is inside the one above).
    "tcp_relay_port": 9_060,
    "log_level": "warning",
}
"""Daemon settings for load runs: limits raised far above the load, media ports 10000-65000, the TCP relay
on port 9060 (outside that range)."""

CONFIG_NOTE = (
    "daemon config raised for load: max_calls_per_host/max_calls 100000, max_pinholes(_per_host) 200000, "
    "pinhole_rate/burst_per_host and sip_rate/burst_per_host 1000000, media ports 10000-65000 (so tcp_relay_port "
    "9060), log_level warning "
    "(defaults: 16 calls/64 pinholes per host, 20 pinholes/s, 5000 calls/20000 pinholes)"
)


# ------------------------------------------------------------------------------------------- results
@dataclass
class PartResult:
    """One part's outcome: table rows (dicts with the same keys within a part), raw data, notes."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra_tables: list[Table] = field(default_factory=list)
    """More tables of the same part, shown after the main one (media: the one-core table)."""

    def markdown(self) -> str:
        """The part as a markdown section: a title, its table(s), its notes."""
        lines = [f"### {self.title}", ""]
        if self.rows:
            lines += markdown_table(self.columns, self.rows)
        for table in self.extra_tables:
            lines += [f"**{table.title}**", ""]
            lines += markdown_table(table.columns, table.rows)
        for note in self.notes:
            lines.append(f"- {note}")
        if self.notes:
            lines.append("")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "data": self.data,
            "notes": self.notes,
            "seconds": round(self.seconds, 1),
            "extra_tables": [t.__dict__ for t in self.extra_tables],
        }


@dataclass
class Table:
    """A further table of a part (title, columns, rows as in PartResult)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of one table (and a blank line after it)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return [*lines, ""]


def write_part(result: PartResult, out: Path | None) -> None:
    """Print a part's table; with `out`, also write <name>.json and <name>.md there."""
    print()
    print(result.markdown())
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{result.name}.json").write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        (out / f"{result.name}.md").write_text(result.markdown() + "\n")


def run_part(reason: str | None, measure: Callable[[Path], PartResult], out: Path | None) -> int:
    """The end of a part's main(): exit 2 saying why when it cannot run (`reason`), else measure in a
    scratch folder (removed afterwards) and print the result, also writing it to `out` if given."""
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    workdir = make_workdir()
    try:
        result = measure(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_part(result, out)
    return 0


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    """A number for the table: thousands separators, fixed digits; '-' for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


# --------------------------------------------------------------------------------------------- tools
def build(tool: str, workdir: Path) -> Path:
    """Compile bench/<tool>.c with gcc -O2 into workdir (once per workdir) and return the binary."""
    exe = workdir / tool
    if not exe.exists():
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(BENCH_DIR / f"{tool}.c")], check=True)
    return exe


def missing_tools(*tools: str) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def make_workdir(prefix: str = "nfsip-bench-") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# ----------------------------------------------------------------------------------------------- CPU
def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all threads), from /proc/<pid>/stat; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent not idle (user+nice+system+irq+softirq+steal), from /proc/stat.

    Global, not per namespace: it includes every process of the VM. Used to compare the whole-system
    cost per packet of paths measured one after another (kernel forwarding runs in softirq and cannot be
    attributed to a process)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in parts[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def per_cpu_seconds() -> list[tuple[float, float]]:
    """(busy, softirq) CPU seconds of each CPU (cpu0, cpu1, ...) from /proc/stat.

    Shows where work ran: kernel forwarding is softirq work on whichever CPU raised it (veth delivers on the
    transmitting CPU unless RPS is set). Without CONFIG_IRQ_TIME_ACCOUNTING the softirq figure is sampled at
    each timer tick (the tick that lands in softirq charges it), so it is statistical over short windows."""
    hz = os.sysconf("SC_CLK_TCK")
    out = []
    for line in Path("/proc/stat").read_text().splitlines()[1:]:
        if not line.startswith("cpu"):
            break
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in line.split()[1:9])
        out.append(((user + nice + system + irq + softirq + steal) / hz, softirq / hz))
    return out


def softirq_counts(kind: str = "NET_RX") -> list[int]:
    """Per-CPU count of `kind` softirqs run so far (/proc/softirqs): how often, not how long."""
    for line in Path("/proc/softirqs").read_text().splitlines():
        name, _, counts = line.partition(":")
        if name.strip() == kind:
            return [int(x) for x in counts.split()]
    return []


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (through /proc/<pid>/task/<tid>/children), parents first."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        for tid in threads(p):
            try:
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
            except OSError:
                continue
    return out


def threads(pid: int) -> list[int]:
    """Thread ids of a process ([] if it is gone)."""
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def pin_processes(pids: Iterable[int], cpus: set[int], nice: int | None = None, policy: int | None = None) -> int:
    """Set the CPU affinity (and, if given, the nice value) of every thread of each pid and of its descendants.

    sched_setaffinity() and setpriority() act on one thread: a running multi-threaded process (rtpengine,
    a daemon with worker processes) needs every task changed; threads created later inherit. Returns the
    number of threads changed (threads that exit meanwhile are skipped)."""
    changed = 0
    for root in pids:
        for pid in process_tree(root):
            for tid in threads(pid):
                try:
                    os.sched_setaffinity(tid, cpus)
                    if policy is not None:
                        os.sched_setscheduler(tid, policy, os.sched_param(0))
                    if nice is not None:
                        os.setpriority(os.PRIO_PROCESS, tid, nice)
                    changed += 1
                except (ProcessLookupError, PermissionError, OSError):
                    continue
    return changed


def affinity_of(pid: int) -> dict[int, list[int]]:
    """CPU affinity of every thread of pid and its descendants (tid -> sorted CPUs): to check the pinning held."""
    out = {}
    for p in process_tree(pid):
        for tid in threads(p):
            try:
                out[tid] = sorted(os.sched_getaffinity(tid))
            except OSError:
                continue
    return out


def background_busy_per_cpu(seconds: float = 0.4) -> list[float]:
    """background_busy() per CPU (CPUs' worth of busy time on each CPU while the benchmark is idle)."""
    before, t0 = per_cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    after, wall = per_cpu_seconds(), time.monotonic() - t0
    return [(b1 - b0) / wall for (b0, _), (b1, _) in zip(before, after, strict=False)]


def background_busy(seconds: float = 0.4) -> float:
    """CPUs' worth of busy time on the VM while the benchmark itself is idle (other processes, other tenants
    of a shared machine), measured over `seconds`: subtracted from a measurement's machine busy time."""
    before, t0 = machine_busy_seconds(), time.monotonic()
    time.sleep(seconds)
    return (machine_busy_seconds() - before) / (time.monotonic() - t0)


class CpuWatch:
    """CPU used by some processes (and the whole machine) between start() and stop()."""

    def __init__(self, pids: dict[str, int], background: float = 0.0) -> None:
        """background: CPUs' worth of busy time not caused by the measurement (see background_busy()); the
        machine figure has background * wall time subtracted (the raw one is kept as machine_raw)."""
        self.pids = dict(pids)
        self.background = background
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.t0 = 0.0
        # Per CPU, kept apart from `used` (a flat name -> seconds dict other parts iterate over): busy and softirq
        # seconds and NET_RX softirq runs on each CPU between start() and stop(), raw (background not subtracted).
        self.per_cpu_busy: list[float] = []
        self.per_cpu_softirq: list[float] = []
        self.per_cpu_net_rx: list[int] = []
        self._cpu0: list[tuple[float, float]] = []
        self._net_rx0: list[int] = []

    def start(self) -> CpuWatch:
        self.before = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.before["machine"] = machine_busy_seconds()
        self._cpu0 = per_cpu_seconds()
        self._net_rx0 = softirq_counts("NET_RX")
        self.t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        self.used["wall"] = time.monotonic() - self.t0
        self.used["machine_raw"] = machine_busy_seconds() - self.before["machine"]
        self.used["machine"] = max(0.0, self.used["machine_raw"] - self.background * self.used["wall"])
        self.used["background"] = self.background
        cpus = per_cpu_seconds()
        self.per_cpu_busy = [b1 - b0 for (b0, _), (b1, _) in zip(self._cpu0, cpus, strict=False)]
        self.per_cpu_softirq = [s1 - s0 for (_, s0), (_, s1) in zip(self._cpu0, cpus, strict=False)]
        self.per_cpu_net_rx = [n1 - n0 for n0, n1 in zip(self._net_rx0, softirq_counts("NET_RX"), strict=False)]
        return self.used


# ------------------------------------------------------------------------------------------- NFQUEUE
def nfqueue_stats(lab: Lab, node: str = T.ROUTER) -> dict[int, dict[str, int]]:
    """/proc/net/netfilter/nfnetlink_queue of a namespace: per queue number, the kernel's counters.

    Columns (Linux): queue, portid, queue_total (waiting now), copy_mode, copy_range, queue_dropped
    (queue full), user_dropped (netlink buffer full), id_sequence (last packet id = packets queued so far),
    always 1."""
    out = lab.run(node, ["cat", "/proc/net/netfilter/nfnetlink_queue"], check=False).stdout
    stats = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8:
            stats[int(f[0])] = {
                "waiting": int(f[2]),
                "queue_dropped": int(f[5]),
                "user_dropped": int(f[6]),
                "id_sequence": int(f[7]),
            }
    return stats


def wait_queue_idle(lab: Lab, timeout: float = 60.0, quiet: float = 0.5) -> float:
    """Wait until the router's queue is empty and no packet entered it for `quiet` seconds (the backlog of
    an overloaded step would otherwise reach the next measurement); returns the seconds waited."""
    t0 = time.monotonic()
    last = None
    last_change = t0
    while time.monotonic() - t0 < timeout:
        q = nfqueue_stats(lab).get(QUEUE_NUM, {})
        state = (q.get("waiting", 0), q.get("id_sequence", 0))
        now = time.monotonic()
        if state != last:
            last, last_change = state, now
        elif state[0] == 0 and now - last_change >= quiet:
            break
        time.sleep(0.1)
    return time.monotonic() - t0


# ------------------------------------------------------------------------------------------- metrics
@dataclass
class Histogram:
    """A Prometheus histogram (cumulative buckets) as scraped, or the difference of two scrapes."""

    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ascending, +Inf last
    total: float
    count: float

    def __sub__(self, other: Histogram) -> Histogram:
        old = dict(other.buckets)
        return Histogram(
            [(le, c - old.get(le, 0.0)) for le, c in self.buckets], self.total - other.total, self.count - other.count
        )

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def quantile(self, q: float) -> float:
        """Linear interpolation inside the bucket holding the q-quantile (Prometheus histogram_quantile):
        only as precise as the buckets (25 µs, 50 µs, 100 µs, 250 µs, 500 µs, 1 ms, 2.5 ms, ...)."""
        if not self.count:
            return float("nan")
        rank = q * self.count
        prev_le, prev_c = 0.0, 0.0
        for le, c in self.buckets:
            if c >= rank:
                if math.isinf(le):
                    return prev_le
                if c == prev_c:
                    return le
                return prev_le + (le - prev_le) * (rank - prev_c) / (c - prev_c)
            prev_le, prev_c = le, c
        return prev_le


def parse_histogram(text: str, name: str) -> Histogram:
    """The histogram `name` from a Prometheus text scrape (no labels)."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum "):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count "):
            count = float(line.rsplit(" ", 1)[1])
    buckets.sort()
    return Histogram(buckets, total, count)


def parse_counters(text: str, name: str) -> dict[str, float]:
    """Samples of counter `name` (`<name>_total{labels} value`) keyed by their label text ('' if none)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_total"):
            sample, _, value = line.rpartition(" ")
            labels = sample[len(name) + 6 :].strip("{}")
            out[labels] = float(value)
    return out


def hist_summary(h: Histogram) -> dict[str, float]:
    """count, mean, p50, p99 (µs) of a histogram delta."""
    return {
        "count": h.count,
        "mean_us": h.mean * 1e6,
        "p50_us": h.quantile(0.5) * 1e6,
        "p99_us": h.quantile(0.99) * 1e6,
    }


# ------------------------------------------------------------------------------------------- sipload
def sipload_uas(
    lab: Lab,
    exe: Path,
    *,
    rtp_before: int = 0,
    rtp_after: int = 0,
    node: str = T.SERVER,
    samples: Path | None = None,
    transport: str = "udp",
) -> subprocess.Popen[str]:
    """Start the sipload answerer on the server (198.51.100.2:5060); stop it with `finish()`.

    rtp_before/rtp_after: RTP packets it sends to each INVITE's SDP address right before/after its 200 OK;
    samples: file for its raw latency samples; transport: "udp", or "tcp" (it listens and answers each
    request on the connection it came on)."""
    argv = [str(exe), "uas", lab.ip_of(node), str(T.SIP_PORT), "-x", transport]
    if rtp_before or rtp_after:
        argv += ["-k", str(rtp_before), "-K", str(rtp_after), "-P", "7000"]
    if samples is not None:
        argv += ["-o", str(samples)]
    proc = lab.popen(node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_bound(lab, node, f"{lab.ip_of(node)}:{T.SIP_PORT}", transport)
    return proc


def sipload_uac_args(exe: Path, lab: Lab, node: str = PHONE, **opts: Any) -> list[str]:
    """argv of a sipload UAC from `node` to the server; opts are the flags without '-' (n=100, w=16, H=True)."""
    argv = [str(exe), "uac", lab.ip_of(node), str(T.SIP_PORT), SERVER_IP, str(T.SIP_PORT)]
    for key, value in opts.items():
        if value is True:
            argv.append(f"-{key}")
        elif value is not None and value is not False:
            argv += [f"-{key}", str(value)]
    return argv


def finish(proc: subprocess.Popen[str], timeout: float = 10.0) -> dict[str, Any]:
    """SIGTERM a sipload process (if still running) and parse the JSON summary it prints at exit."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"sipload printed no summary (rc {proc.returncode}): {err.strip()[-500:]}")


def wait_bound(lab: Lab, node: str, needle: str, transport: str = "udp", timeout: float = 5.0) -> None:
    """Wait until a UDP socket bound to `needle` (ip:port), or with transport "tcp" a listening TCP one, shows
    in `ss` inside `node`."""
    flags = "-Hnlt" if transport == "tcp" else "-Hnlu"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"{needle} " in lab.run(node, ["ss", flags], check=False).stdout:
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing bound to {needle} in {node} after {timeout}s")


def messages_crossed(uac: dict[str, Any], uas: dict[str, Any]) -> int:
    """SIP messages that crossed the router (received at either end)."""
    return sum(uac["received"].values()) + sum(uas["received"].values())


def latency_pool(uac: dict[str, Any], uas: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per message kind one-way latency stats (µs) from both ends' summaries."""
    return {**uas.get("latency_us", {}), **uac.get("latency_us", {})}


def weighted_median(stats: dict[str, dict[str, float]], key: str = "p50") -> float:
    """A count-weighted mean of a per-kind percentile: one number for a mix of message kinds."""
    n = sum(s["n"] for s in stats.values())
    return sum(s[key] * s["n"] for s in stats.values()) / n if n else float("nan")


# ------------------------------------------------------------------------------------------- helpers
def conntrack_count(lab: Lab, node: str = T.ROUTER, args: Sequence[str] = ()) -> int:
    """Number of conntrack entries in a namespace matching `conntrack -L` filter args."""
    res = lab.run(node, ["conntrack", "-L", *args], check=False)
    return sum(1 for line in res.stdout.splitlines() if line.strip())


def py_spy_available() -> bool:
    return shutil.which("py-spy") is not None or (ROOT / ".venv/bin/py-spy").exists()


def py_spy_exe() -> str:
    venv = ROOT / ".venv/bin/py-spy"
    return str(venv) if venv.exists() else "py-spy"


def profile_summary(raw: Path, top: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Top frames of a py-spy `--format raw` file: 'inclusive' (% of samples with the frame on the stack)
    and 'self' (% of samples with the frame on top)."""
    import re
    from collections import Counter

    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    line_no = re.compile(r":\d+\)$")
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not n_text.isdigit():
            continue
        n = int(n_text)
        total += n
        # "func (path/file.py:123)" -> "func (file.py)": one entry per function, whatever the line
        frames = [line_no.sub(")", f).replace("site-packages/", "") for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"inclusive": [], "self": []}
    return {
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(top)],
        "self": [(f, round(100 * c / total, 1)) for f, c in own.most_common(top)],
    }


ENTRY_FRAMES = ("<module>", "main", "cmd_run", "Daemon.run", "_run_code", "_run_module_as_main", "Queue.drain")


def profile_frames(prof: dict[str, list[tuple[str, float]]], limit: int = 8) -> str:
    """The nfsip frames of a profile_summary() below the daemon's entry points, as 'func 12.3%' text."""
    out = []
    for frame, pct in prof["inclusive"]:
        name = frame.split(" (")[0]
        if "nfsip/" in frame and name not in ENTRY_FRAMES:
            out.append(f"{name} {pct}%")
    return ", ".join(out[:limit])


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy record of a running process (sampling at 100 Hz, non-blocking) into `out`, if installed."""
    if not py_spy_available():
        return None
    return subprocess.Popen(
        [
            py_spy_exe(),
            "record",
            "-p",
            str(pid),
            "-d",
            str(max(1, int(seconds))),
            "-r",
            "100",
            "--nonblocking",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
