"""Real SIP calls in the lab with sipp: a UAS on the server, UACs on the phones, RTP both ways.

Why sipp: it is a real, independent SIP implementation (nfsip must interoperate with others,
not with itself), and ``play_pcap_audio`` sends genuine RTP to whatever the peer's SDP says,
so an SDP that nfsip failed to rewrite shows up as missing packets, not as a passing test.

Measured with sipp 3.6.1 in this lab (plain masquerade, one call): the UAC returns after about
8.1 s (8 s pause + signalling), the UAS exits at the same moment; each direction carries 236 RTP
packets when routable.

sipp facts that shaped this module (pitfalls):

* ``play_pcap_audio`` sends through a raw socket from ``-mi``:``-mp`` to the address and port of
  the *peer's* SDP, taken per call (so one UAS serves concurrent calls, each with its own
  destination; all calls share the UAS's source port ``-mp``). It rewrites the UDP ports and
  checksum itself. The first ``sendto`` error (ENETUNREACH towards an unroutable private SDP
  address) ends that call's playback with a warning in the error log; the call itself succeeds.
* A call's playback stops when the call ends, so the UAC pause (``-d``) must outlast the 7.1 s
  pcap; the BYE then comes after both directions are done.
* sipp binds ``-mp`` and ``-mp``+2 (audio, video) at startup in UAS and UAC mode, and a control
  socket on UDP 8888 (8889 for a second sipp in the same namespace): harmless, but they show in
  ``ss``. A second UAS in one namespace (e.g. ``sip_port=5062``) needs its own ``media_port``.
* Without ``-rtp_echo`` sipp never reads its RTP socket: its Recv-Q fills (17920 bytes seen) and
  the kernel then drops further RTP there (UdpRcvbufErrors). Count media in captures, never in
  socket statistics of the endpoints.
* In the foreground sipp redraws its statistics screen on stdout every second: never give it a
  pipe nobody reads (the 64 KiB pipe buffer fills and sipp blocks); it writes to files here.
  ``-nostdin`` plus stdin=/dev/null keep it from touching a terminal (CI has none).
* ``play_pcap_audio`` is resolved when the scenario is loaded and does not expand ``[$var]``:
  another pcap means another scenario file (``_scenario_file`` writes a copy).
* ``stop()`` sends SIGUSR1 first (sipp's soft quit), which waits for active calls to end: on a
  call in progress it takes the full grace time before SIGTERM.
* Exit codes: 0 all calls succeeded, 1 at least one failed, 97 internal exit command, 99 normal
  exit without processed calls, -1/-2 (255/254) fatal error / cannot bind a socket. The counters
  come from the ``-trace_stat`` CSV (last line, columns SuccessfulCall(C)/FailedCall(C)).

IPv6 (sipp 3.6.1, measured in the dual-stack lab):

* ``-i`` takes an IPv6 address as is, the remote host is given in brackets (``[2001:db8:f::2]:5060``,
  ``topology.hostport``), and ``ss`` prints the socket the same way.
* ``[local_ip]`` and ``[remote_ip]`` of an IPv6 endpoint come out in brackets (right for Via,
  Contact and URIs, RFC 5118), ``[media_ip]`` without. An SDP ``o=`` line with a bracketed address
  is not SDP, so the scenarios write ``o=`` with ``[media_ip_type] [media_ip]`` (for IPv4 the same
  bytes as before, since ``-mi`` is ``-i`` there).
* ``play_pcap_audio`` works over IPv6: it sends through a raw IPv6 socket from ``-mi`` with a
  correct UDP checksum (236 packets each way, all arriving).
* ``-mi`` may differ from ``-i``, even in family: ``media_ip`` is the SDP ``c=`` address and the
  source of the RTP. A dual-stack phone is ``ip`` IPv4 and ``media_ip`` IPv6; a far end whose
  media comes from another address than its signalling is ``media_ip=lab.media_ip6_of(node)``.
* A client's default ``ip`` is of the remote's family: ``lab.ip6_of(node)`` for an IPv6 remote.

TCP (``transport="t1"`` or ``"tn"``, sipp's ``-t``; measured with sipp 3.6.1 in this lab):

* ``t1``: one connection for all calls, bound to ``-i``:``-p``, so it leaves from the SIP port that
  Via and Contact name. In client mode sipp also listens on TCP ``-p``: a peer may open a new
  connection to the Contact, and sipp takes it. ``tn``: one connection per call from an ephemeral port,
  which sipp writes as that call's ``[local_port]`` (Via and Contact name the connection's own port, as
  Zoiper's TCP REGISTER in the corpus does). RTP is UDP either way.
* Every Contact of the scenarios ends in ``[transport_param]``: empty over UDP (the UDP bytes are what
  they always were), ``;transport=tcp`` over TCP, without which Kamailio sends in-dialog requests and
  inbound calls to the Contact over UDP. uas.xml's Contact has always said ``;transport=[transport]``.
* ``retrans`` does nothing over TCP (0 retransmissions); caller_noanswer.xml still ends at its 33 s
  timeout against a listener that never answers.
* By default sipp fails every call on a connection the peer closed, and a ``t1`` client exits ("Exit
  problem event on socket"): callee_busy.xml and callee_ring.xml end right after the ACK, closing the
  connection while the caller still pauses. Over TCP the lab passes ``-max_reconnect`` and
  ``-reconnect_close false``: the calls go on, and sipp opens a new connection only when it next sends
  (none while idle). A phone therefore outlives a registrar that closes its idle connection.
* ``tn`` refuses to start when its socket limit (50000) exceeds the open files limit (20000 here):
  ``-max_socket`` is set below that limit.
* A phone (client mode with ``-oocsf``) in ``tn`` answers inbound calls with Contact port 0: SippPhone
  refuses ``tn``.
* ``-trace_msg`` heads TCP messages "TCP message received [N] bytes": ``messages()`` reads both.
* ``tcp_connections()`` lists a sipp's established connections (``ss -p``, by its pid).
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nfsiplab import topology as T
from nfsiplab.lab import Lab, LabError

SCENARIO_DIR = Path(__file__).with_name("scenarios")
UAC_SCENARIO = SCENARIO_DIR / "uac.xml"
UAS_SCENARIO = SCENARIO_DIR / "uas.xml"
DEFAULT_PCAP = "/usr/share/sip-tester/g711a.pcap"
PCAP_RTP_PACKETS = 236
"""RTP packets in g711a.pcap: one PCMA stream, 240 bytes of audio every 30 ms, 7.05 s in all."""
UAC_PAUSE_MS = 8000
"""Time between ACK and BYE on the UAC: the 7.05 s playback plus margin (see module doc)."""

TRANSPORTS: dict[str, str] = {"u1": "udp", "t1": "tcp", "tn": "tcp"}
"""sipp's ``-t`` modes the lab uses, with the protocol each carries SIP over: one UDP socket, one TCP
connection for all calls, one TCP connection per call. RTP is UDP in all of them."""

MAX_RECONNECTS = 100_000
"""sipp's ``-max_reconnect`` over TCP: never the limit (each reconnect is a connection the peer closed)."""
FILES_KEPT_FREE = 64
"""File descriptors a "tn" sipp keeps for its logs, pcap and media sockets below its open files limit."""

_counter = iter(range(1, 1 << 30))


def have_sipp() -> bool:
    """True if the sipp binary is on PATH."""
    return shutil.which("sipp") is not None


@dataclass
class SippResult:
    """Outcome of one sipp process (UAC or UAS)."""

    returncode: int
    successful_calls: int
    failed_calls: int
    stdout: str
    stderr: str
    log: str
    """The -trace_err error log plus the final statistics screen: the first thing to read on failure."""
    duration_s: float

    @property
    def ok(self) -> bool:
        """All calls succeeded and at least one was made."""
        return self.returncode == 0 and self.failed_calls == 0 and self.successful_calls > 0

    def describe(self) -> str:
        """Multi-line summary for assertion messages."""
        return (
            f"sipp rc={self.returncode} successful={self.successful_calls} failed={self.failed_calls} "
            f"in {self.duration_s:.1f}s\n--- stderr ---\n{self.stderr.strip()[-3000:]}\n"
            f"--- log ---\n{self.log.strip()[-3000:]}"
        )


def _scenario_file(template: Path, pcap: str, workdir: Path) -> Path:
    """The scenario to use: the packaged file, or a copy in ``workdir`` playing ``pcap``."""
    if pcap == DEFAULT_PCAP:
        return template
    text = template.read_text(encoding="latin-1").replace(DEFAULT_PCAP, pcap)
    out = workdir / template.name
    out.write_text(text, encoding="latin-1")
    return out


def _local_ip(lab: Lab, node: str, remote: str | None) -> str:
    """A sipp endpoint's default address: of the remote's family (IPv6 when the remote is IPv6),
    IPv4 for a UAS that has no remote."""
    return lab.ip6_of(node) if remote is not None and T.is_ip6(remote) else lab.ip_of(node)


def _read_counters(stat_file: Path) -> tuple[int, int]:
    """(successful, failed) from the last line of a -trace_stat CSV; (0, 0) if absent."""
    try:
        text = stat_file.read_text(errors="replace")
    except FileNotFoundError:
        return 0, 0
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    if len(rows) < 2:
        return 0, 0
    header, last = rows[0], rows[-1]
    fields = dict(zip(header, last, strict=False))
    try:
        return int(fields["SuccessfulCall(C)"]), int(fields["FailedCall(C)"])
    except (KeyError, ValueError):
        return 0, 0


class _Sipp:
    """One sipp process in a lab namespace, with its files in a private work directory.

    ``transport`` (every endpoint class takes it) is sipp's ``-t``: "u1" (UDP, the default), "t1" or
    "tn" (TCP, see the module doc); ``protocol`` is "udp" or "tcp" accordingly.
    """

    role = "sipp"

    def __init__(self, lab: Lab, node: str, workdir: str | Path | None, transport: str = "u1") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.lab, self.node = lab, node
        self.transport = transport
        self.protocol = TRANSPORTS[transport]
        """``udp`` or ``tcp``: what the SIP of this endpoint runs over."""
        self._own_workdir = workdir is None
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=f"nfsip-sipp-{node}-")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        tag = f"{self.role}-{node}-{next(_counter)}"
        self.stat_file = self.workdir / f"{tag}_stat.csv"
        self.error_file = self.workdir / f"{tag}_errors.log"
        self.screen_file = self.workdir / f"{tag}_screen.log"
        self.message_file = self.workdir / f"{tag}_messages.log"
        self.stdout_file = self.workdir / f"{tag}.stdout"
        self.stderr_file = self.workdir / f"{tag}.stderr"
        self.proc: subprocess.Popen[Any] | None = None
        self._t0 = 0.0
        self.result: SippResult | None = None

    def _common_args(self, trace_msg: bool) -> list[str]:
        args = [
            "-t",
            self.transport,
            # The Contact URI parameter of the scenarios: empty over UDP (RFC 3261's default transport,
            # and the bytes the UDP tests always had), ";transport=tcp" over TCP, without which a proxy
            # sends in-dialog requests and inbound calls to the Contact over UDP.
            "-key",
            "transport_param",
            "" if self.protocol == "udp" else f";transport={self.protocol}",
        ]
        if self.protocol == "tcp":
            # By default sipp fails every call of a connection the peer closed, and a "t1" client
            # exits: a UAS closing after its last message, or a registrar closing an idle connection,
            # would fail calls whose transactions were over. Real UAs open a new connection when they
            # next send, and so does sipp with these (the calls go on; it reconnects lazily).
            args += ["-max_reconnect", str(MAX_RECONNECTS), "-reconnect_close", "false"]
        if self.transport == "tn":
            # sipp refuses to start in "tn" mode when its socket limit (50000) exceeds the open files
            # limit it inherits (20000 here); one call is one socket, so stay just below that limit.
            args += ["-max_socket", str(resource.getrlimit(resource.RLIMIT_NOFILE)[0] - FILES_KEPT_FREE)]
        args += [
            "-nostdin",
            "-trace_err",
            "-error_file",
            str(self.error_file),
            "-trace_stat",
            "-stf",
            str(self.stat_file),
            "-trace_screen",
            "-screen_file",
            str(self.screen_file),
        ]
        if trace_msg:
            args += ["-trace_msg", "-message_file", str(self.message_file)]
        return args

    def _listening(self, ip: str, port: int) -> bool:
        """True once ``ip:port`` listens for SIP (a bound UDP socket; a TCP socket in LISTEN)."""
        out = self.lab.run(self.node, ["ss", "-Hnlu" if self.protocol == "udp" else "-Hnlt"], check=False).stdout
        return f"{T.hostport(ip, port)} " in out

    def _spawn(self, argv: list[str]) -> None:
        self.argv = argv
        with open(self.stdout_file, "wb") as out, open(self.stderr_file, "wb") as err:
            self.proc = self.lab.popen(self.node, argv, stdout=out, stderr=err, cwd=self.workdir)
        self._t0 = time.monotonic()

    def messages(self) -> list[tuple[str, str]]:
        """("sent"|"received", start line) of every SIP message, from the -trace_msg file
        (empty unless ``trace_msg``)."""
        return [(direction, text.split("\n", 1)[0]) for direction, text in _trace_messages(self.message_file)]

    def received(self, pattern: str = "") -> list[str]:
        """Start lines of the messages sipp received, optionally only those matching a regex."""
        return [line for d, line in self.messages() if d == "received" and re.search(pattern, line)]

    def received_messages(self, pattern: str = "") -> list[str]:
        """The whole text (lines joined by newlines) of each message sipp received whose start line
        matches ``pattern``, from the -trace_msg file."""
        return [
            text
            for direction, text in _trace_messages(self.message_file)
            if direction == "received" and re.search(pattern, text.split("\n", 1)[0])
        ]

    def tcp_connections(self) -> list[tuple[str, str]]:
        """(local, peer) ``ip:port`` of every established TCP connection of this sipp process (``ss -p``)."""
        if self.proc is None:
            return []
        out = self.lab.run(self.node, ["ss", "-Hntp", "state", "established"], check=False).stdout
        return [
            (fields[2], fields[3])
            for line in out.splitlines()
            if f"pid={self.proc.pid}," in line and len(fields := line.split()) >= 4
        ]

    @property
    def returncode(self) -> int | None:
        """sipp's exit code, None while running."""
        return None if self.proc is None else self.proc.poll()

    def _collect(self) -> SippResult:
        assert self.proc is not None
        rc = self.proc.returncode
        ok, failed = _read_counters(self.stat_file)
        log = ""
        for f in (self.error_file, self.screen_file):
            with contextlib.suppress(FileNotFoundError):
                log += f"=== {f.name} ===\n{f.read_text(errors='replace')}\n"
        self.result = SippResult(
            returncode=rc,
            successful_calls=ok,
            failed_calls=failed,
            stdout=self.stdout_file.read_text(errors="replace") if self.stdout_file.exists() else "",
            stderr=self.stderr_file.read_text(errors="replace") if self.stderr_file.exists() else "",
            log=log,
            duration_s=time.monotonic() - self._t0,
        )
        return self.result

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to exit by itself; on timeout stop it and raise LabError with its logs."""
        if self.proc is None:
            raise LabError(f"{self.role} on {self.node} was never started")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            res = self.stop()
            raise LabError(f"{self.role} on {self.node} did not finish in {timeout}s:\n{res.describe()}") from None
        return self._collect()

    def stop(self, grace: float = 3.0) -> SippResult:
        """End sipp: SIGUSR1 (sipp's soft quit, writes final stats), then SIGTERM, then SIGKILL."""
        if self.proc is None:
            raise LabError(f"{self.role} on {self.node} was never started")
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self.proc.wait()
        return self._collect()

    def cleanup(self) -> None:
        """Delete the work directory (logs, stats) if this object created it; keep it to debug."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


class SippUas(_Sipp):
    """The sipp UAS (``scenarios/uas.xml``) in the background, by default on the server.

    One UAS answers any number of concurrent calls (``calls`` = how many before it exits with
    ``-m``); media goes per call to each caller's SDP address, from the shared ``media_port``.
    """

    role = "uas"

    def __init__(
        self,
        lab: Lab,
        node: str = T.SERVER,
        *,
        ip: str | None = None,
        media_ip: str | None = None,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        calls: int = 1,
        pcap: str = DEFAULT_PCAP,
        workdir: str | Path | None = None,
        trace_msg: bool = False,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        super().__init__(lab, node, workdir, transport)
        self.ip = ip or lab.ip_of(node)
        self.media_ip = media_ip or self.ip
        self.sip_port, self.media_port, self.calls = sip_port, media_port, calls
        self.scenario = _scenario_file(UAS_SCENARIO, pcap, self.workdir)
        self.trace_msg = trace_msg
        self.extra_args = extra_args

    def start(self, timeout: float = 10.0) -> Self:
        """Start sipp and return once it listens on ``ip:sip_port`` (raise LabError if it died)."""
        self._spawn(
            [
                "sipp",
                "-sf",
                str(self.scenario),
                "-i",
                self.ip,
                "-mi",
                self.media_ip,
                "-p",
                str(self.sip_port),
                "-mp",
                str(self.media_port),
                "-m",
                str(self.calls),
                *self._common_args(self.trace_msg),
                *self.extra_args,
            ]
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise LabError(f"UAS on {self.node} exited at start:\n{self._collect().describe()}")
            if self._listening(self.ip, self.sip_port):
                return self
            time.sleep(0.02)
        res = self.stop()
        raise LabError(f"UAS on {self.node} not listening after {timeout}s:\n{res.describe()}")

    def __enter__(self) -> Self:
        return self.start()


class SippUac(_Sipp):
    """The sipp UAC (``scenarios/uac.xml``): one call to ``server``; use ``start()`` + ``wait()``
    to run several phones concurrently, or ``run_uac`` for one blocking call."""

    role = "uac"

    def __init__(
        self,
        lab: Lab,
        node: str = "phone1",
        *,
        server: str = T.SERVER_IP,
        server_port: int = T.SIP_PORT,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        ip: str | None = None,
        media_ip: str | None = None,
        pause_ms: int = UAC_PAUSE_MS,
        service: str = "echo",
        pcap: str = DEFAULT_PCAP,
        call_timeout_s: int = 60,
        workdir: str | Path | None = None,
        trace_msg: bool = False,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        super().__init__(lab, node, workdir, transport)
        self.ip = ip or _local_ip(lab, node, server)
        self.media_ip = media_ip or self.ip
        self.server, self.server_port = server, server_port
        self.sip_port, self.media_port = sip_port, media_port
        self.pause_ms, self.service = pause_ms, service
        self.call_timeout_s = call_timeout_s
        self.scenario = _scenario_file(UAC_SCENARIO, pcap, self.workdir)
        self.trace_msg = trace_msg
        self.extra_args = extra_args

    def start(self) -> Self:
        """Place the call (sipp runs in the background; ``wait()`` collects the result)."""
        self._spawn(
            [
                "sipp",
                T.hostport(self.server, self.server_port),
                "-sf",
                str(self.scenario),
                "-s",
                self.service,
                "-i",
                self.ip,
                "-mi",
                self.media_ip,
                "-p",
                str(self.sip_port),
                "-mp",
                str(self.media_port),
                "-m",
                "1",
                "-d",
                str(self.pause_ms),
                # sipp's own safety net: give up (as a failure) instead of waiting forever for a 200.
                "-timeout",
                f"{self.call_timeout_s}s",
                "-timeout_error",
                *self._common_args(self.trace_msg),
                *self.extra_args,
            ]
        )
        return self


def run_uac(
    lab: Lab,
    node: str = "phone1",
    server: str = T.SERVER_IP,
    media_port: int = T.MEDIA_PORT,
    sip_port: int = T.SIP_PORT,
    timeout: float = 60.0,
    **kw: Any,
) -> SippResult:
    """Place one call from ``node`` to ``server`` and wait for it (≈ 8.1 s with the default pause).

    Extra keyword arguments go to ``SippUac`` (server_port, pause_ms, pcap, workdir, trace_msg…).
    Raises LabError if sipp has not exited after ``timeout`` seconds. The temporary work directory
    is deleted after a successful call (the result holds the logs) and kept after a failure.
    """
    uac = SippUac(
        lab,
        node,
        server=server,
        media_port=media_port,
        sip_port=sip_port,
        call_timeout_s=max(1, int(timeout) - 5),
        **kw,
    )
    res = uac.start().wait(timeout)
    if res.ok:
        uac.cleanup()
    return res


# ---------------------------------------------------------------------------------------------
# Phones that register, callers and callees for the flows lab (Kamailio as registrar/proxy).
#
# Added for tests/test_lab_flows.py. Everything above is unchanged; these build on _Sipp.
# Scenario pitfalls are documented in each XML file; the sipp ones that matter here:
#
# * A phone is ONE sipp process in client mode: the main scenario REGISTERs and pauses, and every
#   request with an unknown Call-ID (the inbound INVITE) goes to the out-of-call scenario given
#   with -oocsf. Without -oocsf sipp discards such requests. When the main scenario ends, sipp
#   exits and aborts an inbound call still running with a BYE.
# * sipp refuses to load a scenario that uses a -key keyword ([expires], [ring_ms]) not given on
#   the command line: the classes below always pass the keys their scenarios use.
# * [media_port+N] in an m= line also moves the source port of that stream's playback to
#   media_port+N (sipp sets play_args.from while building the message): a re-INVITE can move the
#   phone's RTP to a new port in both directions. sipp binds -mp and -mp+2 only.
# * Two sipp processes in one namespace need distinct -p and -mp (and get control ports 8888,
#   8889): the server runs Kamailio on 5060, so a caller there uses sip_port=5070.
# ---------------------------------------------------------------------------------------------

REGISTER_SCENARIO = SCENARIO_DIR / "register.xml"
"""REGISTER, stay registered for the -d pause, un-REGISTER (a phone's main scenario)."""
REGISTER_REFRESH_SCENARIO = SCENARIO_DIR / "register_refresh.xml"
"""REGISTER, pause, refresh, pause, un-REGISTER."""

CALLEE_SCENARIOS: dict[str, Path] = {
    "answer": SCENARIO_DIR / "callee_answer.xml",
    "ring": SCENARIO_DIR / "callee_ring.xml",
    "busy": SCENARIO_DIR / "callee_busy.xml",
    "nomedia": SCENARIO_DIR / "callee_nomedia.xml",
    "hold": SCENARIO_DIR / "callee_hold.xml",
    "video": SCENARIO_DIR / "callee_video.xml",
}
"""UAS behaviours: answer (RTP), ring until CANCEL (183 early media), busy (183 then 486), nomedia
(answer, no RTP), and the mirrors of caller "hold" and "video"."""

CALLER_SCENARIOS: dict[str, Path] = {
    "call": SCENARIO_DIR / "caller.xml",
    "cancel": SCENARIO_DIR / "caller_cancel.xml",
    "rejected": SCENARIO_DIR / "caller_rejected.xml",
    "noanswer": SCENARIO_DIR / "caller_noanswer.xml",
    "nomedia": SCENARIO_DIR / "caller_nomedia.xml",
    "hold": SCENARIO_DIR / "caller_hold.xml",
    "video": SCENARIO_DIR / "caller_video.xml",
    "late_media": SCENARIO_DIR / "caller_late_media.xml",
}
"""UAC behaviours; all honour Record-Route, so they work through Kamailio and against a plain UAS.
"late_media" is "call" with the caller's RTP starting ``media_delay_ms`` after the ACK."""

HOLD_SCENARIO_S = 14.0
"""Duration of caller_hold.xml from the first ACK to the BYE (the sum of its pauses)."""
VIDEO_SCENARIO_S = 7.0
"""Duration of caller_video.xml from the first ACK to the BYE."""

_MSG_HEAD_RE = re.compile(r"^(?:UDP|TCP) message (sent|received)", re.MULTILINE)


def _trace_messages(path: Path) -> list[tuple[str, str]]:
    """(direction, message text) of every message in a sipp -trace_msg file, in order; the text is
    the message's stripped lines joined by newlines, its start line first."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out: list[tuple[str, str]] = []
    heads = list(_MSG_HEAD_RE.finditer(text))
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end() : end].split("\n", 1)[1] if "\n" in text[head.end() : end] else ""
        lines = [ln.strip() for ln in body.splitlines()]
        # The next entry's "-----... date" separator line ends this one.
        lines = [ln for ln in lines if not ln.startswith("-----")]
        out.append((head.group(1), "\n".join(lines).strip()))
    return out


class SippScenario(_Sipp):
    """One sipp process running any scenario file: client mode when ``remote`` is given, else
    server mode (UAS). The base of SippPhone, SippCaller and SippCallee.

    ``keys`` become ``-key name value`` (the scenario's generic ``[name]`` keywords); ``calls`` and
    ``rate`` map to ``-m`` and ``-r`` (calls per second); ``pause_ms`` is ``-d``.
    """

    role = "sipp"

    def __init__(
        self,
        lab: Lab,
        node: str,
        scenario: str | Path,
        *,
        remote: str | None = None,
        remote_port: int = T.SIP_PORT,
        service: str = "service",
        ip: str | None = None,
        media_ip: str | None = None,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        calls: int = 1,
        rate: float | None = None,
        pause_ms: int = 0,
        keys: dict[str, str | int] | None = None,
        ooc_scenario: str | Path | None = None,
        pcap: str = DEFAULT_PCAP,
        timeout_s: int | None = 60,
        workdir: str | Path | None = None,
        trace_msg: bool = False,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        super().__init__(lab, node, workdir, transport)
        self.ip = ip or _local_ip(lab, node, remote)
        self.media_ip = media_ip or self.ip
        self.remote, self.remote_port = remote, remote_port
        self.service = service
        self.sip_port, self.media_port = sip_port, media_port
        self.calls, self.rate, self.pause_ms = calls, rate, pause_ms
        self.keys = dict(keys or {})
        self.scenario = _scenario_file(Path(scenario), pcap, self.workdir)
        self.ooc_scenario = _scenario_file(Path(ooc_scenario), pcap, self.workdir) if ooc_scenario else None
        self.timeout_s = timeout_s
        self.trace_msg = trace_msg
        self.extra_args = extra_args

    def argv(self) -> list[str]:
        """The sipp command line."""
        argv = ["sipp"]
        if self.remote is not None:
            argv.append(T.hostport(self.remote, self.remote_port))
        argv += ["-sf", str(self.scenario)]
        if self.ooc_scenario is not None:
            argv += ["-oocsf", str(self.ooc_scenario)]
        argv += [
            "-s",
            self.service,
            "-i",
            self.ip,
            "-mi",
            self.media_ip,
            "-p",
            str(self.sip_port),
            "-mp",
            str(self.media_port),
            "-m",
            str(self.calls),
            "-d",
            str(self.pause_ms),
        ]
        if self.rate is not None:
            argv += ["-r", str(self.rate)]
        for name, value in self.keys.items():
            argv += ["-key", name, str(value)]
        if self.timeout_s is not None:
            # sipp's global safety net: quit (as a failure) instead of hanging a test run.
            argv += ["-timeout", f"{self.timeout_s}s", "-timeout_error"]
        return [*argv, *self._common_args(self.trace_msg), *self.extra_args]

    def start(self, timeout: float = 10.0) -> Self:
        """Start sipp; return once its SIP socket is bound (LabError if it died before).

        A client-mode sipp that already finished (e.g. a call rejected at once) is not an error
        here: ``wait()`` reports its result.
        """
        self._spawn(self.argv())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                if self.remote is None:
                    raise LabError(f"{self.role} on {self.node} exited at start:\n{self._collect().describe()}")
                return self
            if self._listening(self.ip, self.sip_port):
                return self
            time.sleep(0.02)
        res = self.stop()
        where = f"{self.protocol} {T.hostport(self.ip, self.sip_port)}"
        raise LabError(f"{self.role} on {self.node} not bound to {where} after {timeout}s:\n{res.describe()}")

    def kill(self) -> SippResult:
        """SIGKILL: the endpoint vanishes without un-REGISTER, CANCEL or BYE (a phone unplugged)."""
        if self.proc is None:
            raise LabError(f"{self.role} on {self.node} was never started")
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        return self._collect()

    def __enter__(self) -> Self:
        return self.start()


class SippPhone(SippScenario):
    """A phone behind the NAT: REGISTERs ``user`` with the registrar (Kamailio on the server by
    default), stays registered for ``registered_ms``, then un-REGISTERs and exits. Meanwhile it
    answers inbound calls the way ``answer`` says (a key of CALLEE_SCENARIOS: "answer", "ring",
    "busy", ...), each call after ``ring_ms`` of ringing.

    ``refresh=True`` uses register_refresh.xml: REGISTER, ``registered_ms``, re-REGISTER,
    ``registered_ms``, un-REGISTER. ``kill()`` makes the phone vanish while still registered.
    Message tracing is on by default: ``received("^INVITE")`` tells whether a call reached it.
    """

    role = "phone"

    def __init__(
        self,
        lab: Lab,
        node: str = "phone1",
        *,
        user: str = "alice",
        registrar: str = T.SERVER_IP,
        registrar_port: int = T.SIP_PORT,
        expires: int = 300,
        answer: str = "answer",
        ring_ms: int = 0,
        registered_ms: int = 30000,
        refresh: bool = False,
        ip: str | None = None,
        media_ip: str | None = None,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        pcap: str = DEFAULT_PCAP,
        workdir: str | Path | None = None,
        trace_msg: bool = True,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        if answer not in CALLEE_SCENARIOS:
            raise ValueError(f"answer must be one of {', '.join(CALLEE_SCENARIOS)}")
        if transport == "tn":
            raise ValueError('a phone over TCP uses "t1": in "tn" sipp answers inbound calls with Contact port 0')
        main = REGISTER_REFRESH_SCENARIO if refresh else REGISTER_SCENARIO
        total_s = registered_ms * (2 if refresh else 1) / 1000
        super().__init__(
            lab,
            node,
            main,
            remote=registrar,
            remote_port=registrar_port,
            service=user,
            ip=ip,
            media_ip=media_ip,
            sip_port=sip_port,
            media_port=media_port,
            pause_ms=registered_ms,
            keys={"expires": expires, "ring_ms": ring_ms},
            ooc_scenario=CALLEE_SCENARIOS[answer],
            pcap=pcap,
            timeout_s=int(total_s) + 40,
            workdir=workdir,
            trace_msg=trace_msg,
            extra_args=extra_args,
            transport=transport,
        )
        self.user, self.expires, self.answer = user, expires, answer

    def start(self, timeout: float = 10.0) -> Self:
        """Start the phone (its REGISTER leaves at once); see ``Kamailio.wait_registered``."""
        return super().start(timeout)


class SippCaller(SippScenario):
    """A UAC placing ``calls`` calls to ``sip:<target>@<proxy>`` with the CALLER_SCENARIOS
    behaviour ``kind`` ("call" with RTP both ways, "cancel", "rejected", "noanswer", "nomedia",
    "hold", "video", "late_media"). ``proxy`` is Kamailio for calls to an AOR, or a UAS host for
    direct calls. ``media_delay_ms`` is how long "late_media" waits after the ACK before its RTP.
    """

    role = "caller"

    def __init__(
        self,
        lab: Lab,
        node: str,
        target: str = "alice",
        *,
        kind: str = "call",
        proxy: str = T.SERVER_IP,
        proxy_port: int = T.SIP_PORT,
        ip: str | None = None,
        media_ip: str | None = None,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        pause_ms: int = UAC_PAUSE_MS,
        calls: int = 1,
        rate: float | None = None,
        media_delay_ms: int = 3000,
        pcap: str = DEFAULT_PCAP,
        timeout_s: int | None = 60,
        workdir: str | Path | None = None,
        trace_msg: bool = True,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        if kind not in CALLER_SCENARIOS:
            raise ValueError(f"kind must be one of {', '.join(CALLER_SCENARIOS)}")
        super().__init__(
            lab,
            node,
            CALLER_SCENARIOS[kind],
            remote=proxy,
            remote_port=proxy_port,
            service=target,
            ip=ip,
            media_ip=media_ip,
            sip_port=sip_port,
            media_port=media_port,
            calls=calls,
            rate=rate,
            pause_ms=pause_ms,
            keys={"media_delay_ms": media_delay_ms} if kind == "late_media" else None,
            pcap=pcap,
            timeout_s=timeout_s,
            workdir=workdir,
            trace_msg=trace_msg,
            extra_args=extra_args,
            transport=transport,
        )
        self.kind = kind


class SippCallee(SippScenario):
    """A UAS (server mode) answering ``calls`` calls with the CALLEE_SCENARIOS behaviour ``kind``;
    by default on the server at 198.51.100.2:5060 (so not together with Kamailio there)."""

    role = "callee"

    def __init__(
        self,
        lab: Lab,
        node: str = T.SERVER,
        *,
        kind: str = "answer",
        ring_ms: int = 0,
        ip: str | None = None,
        media_ip: str | None = None,
        sip_port: int = T.SIP_PORT,
        media_port: int = T.MEDIA_PORT,
        calls: int = 1,
        pcap: str = DEFAULT_PCAP,
        timeout_s: int | None = 90,
        workdir: str | Path | None = None,
        trace_msg: bool = False,
        extra_args: tuple[str, ...] = (),
        transport: str = "u1",
    ) -> None:
        if kind not in CALLEE_SCENARIOS:
            raise ValueError(f"kind must be one of {', '.join(CALLEE_SCENARIOS)}")
        super().__init__(
            lab,
            node,
            CALLEE_SCENARIOS[kind],
            service="callee",
            ip=ip,
            media_ip=media_ip,
            sip_port=sip_port,
            media_port=media_port,
            calls=calls,
            keys={"ring_ms": ring_ms},
            pcap=pcap,
            timeout_s=timeout_s,
            workdir=workdir,
            trace_msg=trace_msg,
            extra_args=extra_args,
            transport=transport,
        )
        self.kind = kind
