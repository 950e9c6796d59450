"""nfsip with a real SIP server: Kamailio as registrar and proxy, phones that register and get called.

These tests state what nfsip must do beyond "a phone calls out": keep a registered phone reachable
after its conntrack entry expired, survive a forked call, follow re-INVITEs (hold, a new media port,
a video stream added and removed), clean up after attempts that never became calls, connect two
phones that are both behind NAT (two routers, and two phones behind one router: hairpin), and stay
clean over a thousand calls.

Kamailio is deliberately NOT NAT-aware (no fix_nated_*, no media relay, nfsiplab.kamailio): what
the router does not fix stays broken, which is what the baselines show. Every test reads the wire
(captures on the endpoints, the server, the WAN switch) and the router's state (``nfsip status``,
conntrack); assertion messages carry the SIP flow, the RTP flows and the tail of the nfsip log.

Timing: most calls play g711a.pcap (7.05 s); the module runs in about 4 minutes.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import (
    Capture,
    UdpPacket,
    count_rtp,
    iter_sip,
    media_report,
    rtp_packets,
    sip_messages,
    stop_all,
)
from nfsiplab.kamailio import Kamailio, have_kamailio
from nfsiplab.lab import Lab, TwoSiteLab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCallee, SippCaller, SippPhone, SippResult
from nfsiplab.sites import RouterNfsipDaemon

from .lab_support import require, require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
"""A direction "works" when at least 95 % of the 236 played packets arrive."""
RTP_RATE = PCAP_RTP_PACKETS / 7.05
"""Packets per second of one g711a.pcap playback (about 33.5)."""
CALLER_PORT = 5070
"""SIP port of a caller on the server: Kamailio holds 5060 there."""
SHORT_UDP_TIMEOUT = 5
SHORT_UDP_STREAM_TIMEOUT = 10
PROBE = b"NFSIP-PROBE old public port"
"""Payload of probe datagrams: not RTP (first byte 'N' is RTP version 1), easy to find in a capture."""


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        lab.masquerade()
        yield lab


def _stop_daemon(daemon: NfsipDaemon) -> None:
    code = daemon.stop()
    log = daemon.log()
    assert "Traceback" not in log, log
    assert code == 0, log


@pytest.fixture
def nfsip(lab: Lab) -> Iterator[NfsipDaemon]:
    daemon = NfsipDaemon(lab).start()
    try:
        yield daemon
    finally:
        _stop_daemon(daemon)


@pytest.fixture
def kamailio(lab: Lab, tmp_path: Path) -> Iterator[Kamailio]:
    # fr_timer 5 s: a branch that never answers (a phone that is gone, a NAT that drops the INVITE)
    # turns into a 408 within a test's patience instead of Kamailio's default 30 s.
    # Config and log in pytest's tmp_path: kept for the last runs, rotated by pytest.
    k = Kamailio(lab, fr_timer_ms=5000, fr_inv_timer_ms=30000, workdir=tmp_path / "kamailio").start()
    try:
        yield k
    finally:
        k.stop()


# ------------------------------------------------------------------------------------- helpers
def short_udp_timeouts(lab: Lab, router: str = T.ROUTER) -> None:
    """UDP conntrack timeouts of 5 s (unreplied) / 10 s (stream) in ``router``, so a test can wait
    past them: the situation of a phone whose NAT binding expired between registration and call."""
    lab.sysctl(router, "net.netfilter.nf_conntrack_udp_timeout", SHORT_UDP_TIMEOUT)
    lab.sysctl(router, "net.netfilter.nf_conntrack_udp_timeout_stream", SHORT_UDP_STREAM_TIMEOUT)


def conntrack_lines(lab: Lab, router: str = T.ROUTER) -> list[str]:
    return lab.run(router, ["conntrack", "-L", "-p", "udp"], check=False).stdout.splitlines()


def conntrack_with_ports(lab: Lab, ports: set[int], router: str = T.ROUTER) -> list[str]:
    """UDP conntrack entries of ``router`` that use any of ``ports`` (either side, either tuple)."""
    return [ln for ln in conntrack_lines(lab, router) if any(f"port={p} " in ln for p in ports)]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that, or the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def wait_sip_flow_gone(lab: Lab, lan_ip: str, timeout: float = 20.0, router: str = T.ROUTER) -> list[str]:
    """Wait until ``router`` has no conntrack entry of ``lan_ip``'s SIP port; returns what is left."""

    def left() -> list[str]:
        return [ln for ln in conntrack_lines(lab, router) if f"src={lan_ip} " in ln and "port=5060 " in ln]

    deadline = time.monotonic() + timeout
    while (rest := left()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return rest


def status_holes(daemon: NfsipDaemon, lan_ip: str | None = None) -> list[dict[str, Any]]:
    """Media pinholes of the live status, optionally only those for LAN host ``lan_ip``."""
    state = daemon.status()
    return [
        {**hole, "call_id": call["call_id"]}
        for call in state.get("calls", [])
        if lan_ip is None or call["lan_host"] == lan_ip
        for hole in call["pinholes"]
    ]


def process_cpu_seconds(daemon: NfsipDaemon) -> float:
    """User + system CPU time of the daemon process (``ip netns exec`` execs it: same pid)."""
    assert daemon.proc is not None
    fields = Path(f"/proc/{daemon.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def sip_flow(packets: list[UdpPacket]) -> str:
    return "\n".join(f"  {ts:.3f} {who} {line}" for ts, who, line in iter_sip(packets))


def evidence(
    captures: dict[str, list[UdpPacket]],
    daemons: dict[str, NfsipDaemon] | None = None,
    results: dict[str, SippResult] | None = None,
    kamailio: Kamailio | None = None,
) -> str:
    """Everything needed to see why a flow failed: RTP and SIP per capture point, sipp results,
    what Kamailio routed, and the end of each nfsip log."""
    parts = [media_report(captures)]
    for name, pkts in captures.items():
        parts.append(f"SIP at {name}:\n{sip_flow(pkts)}")
    for name, res in (results or {}).items():
        parts.append(f"--- {name}: {res.describe()[:2500]}")
    if kamailio is not None:
        parts.append("--- kamailio routed:\n" + "\n".join(kamailio.routed()[-30:]))
    for name, daemon in (daemons or {}).items():
        parts.append(f"--- nfsip log in {name} (tail):\n{tail(daemon.log())}")
    return "\n".join(parts)


def send_probe(lab: Lab, node: str, sport: int, dst: str, dport: int, count: int = 5) -> None:
    """Send ``count`` PROBE datagrams from ``node``'s address, source port ``sport``, to dst:dport.

    A raw socket, because sipp already holds the source port (the RTP port whose old NAT binding
    is being tested): the kernel adds the IP header, the UDP checksum is 0 (allowed in IPv4).
    """
    code = (
        "import socket,struct,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_UDP)\n"
        f"p={PROBE!r}\n"
        f"h=struct.pack('!HHHH',{sport},{dport},8+len(p),0)\n"
        f"for _ in range({count}):\n"
        f"    s.sendto(h+p,('{dst}',0)); time.sleep(0.02)\n"
    )
    lab.run(node, [sys.executable, "-c", code])


def probes(packets: list[UdpPacket]) -> list[UdpPacket]:
    return [p for p in packets if p.payload == PROBE]


def invites(packets: list[UdpPacket]) -> list[tuple[float, Any]]:
    """(time, parsed message) of every INVITE in a capture (retransmissions included)."""
    out = []
    for p in sip_messages(packets):
        if p.payload.startswith(b"INVITE "):
            out.append((p.ts, parse_message(p.payload)))
    return out


def distinct_invites(packets: list[UdpPacket]) -> list[tuple[float, Any]]:
    """INVITEs without retransmissions (first of each CSeq)."""
    seen: set[str] = set()
    out = []
    for ts, msg in invites(packets):
        cseq = msg.header("cseq").value
        if cseq not in seen:
            seen.add(cseq)
            out.append((ts, msg))
    return out


def sdp_ports_in_trace(path: Path) -> list[list[tuple[str, int]]]:
    """For every INVITE a sipp -trace_msg file shows as received: its (media, port) list."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for block in re.split(r"^-{20,}.*$", text, flags=re.MULTILINE):
        if "message received" not in block or "\nINVITE " not in block:
            continue
        out.append([(m, int(p)) for m, p in re.findall(r"^m=(\w+) (\d+)", block, re.MULTILINE)])
    return out


def rtp_in(
    packets: list[UdpPacket],
    start: float,
    end: float,
    *,
    src: tuple[str, int] | None = None,
    dst: tuple[str, int] | None = None,
) -> int:
    """RTP packets captured in [start, end) from/to the given (ip, port)."""
    return sum(
        1
        for p in rtp_packets(packets)
        if start <= p.ts < end and (src is None or (p.src, p.sport) == src) and (dst is None or (p.dst, p.dport) == dst)
    )


# --------------------------------------------------------------------- 1: registration pinhole
def _register_wait_call(lab: Lab, kamailio: Kamailio) -> tuple[SippPhone, SippResult, dict[str, list[UdpPacket]]]:
    """phone1 registers alice, the NAT binding of its SIP flow expires, the server calls alice."""
    short_udp_timeouts(lab)
    with Capture(lab, "phone1", "eth0") as at_phone, Capture(lab, T.SERVER, "eth0") as at_server:
        phone = SippPhone(lab, "phone1", user="alice", expires=300, registered_ms=60000).start()
        kamailio.wait_registered("alice")
        left = wait_sip_flow_gone(lab, T.PHONE_IPS[0], timeout=SHORT_UDP_STREAM_TIMEOUT + 10)
        assert left == [], f"precondition: the REGISTER's conntrack entry did not expire: {left}"
        caller = SippCaller(lab, T.SERVER, "alice", sip_port=CALLER_PORT).start()
        result = caller.wait(40)
        phone.kill()
    return phone, result, {"phone1": at_phone.packets(), "server": at_server.packets()}


def test_registered_phone_reachable_after_conntrack_expiry(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """REGISTER, wait past the UDP conntrack timeouts, then an inbound call through Kamailio reaches
    the phone and has media both ways: nfsip's registration pinhole keeps the SIP port open."""
    phone, result, caps = _register_wait_call(lab, kamailio)
    report = evidence(caps, {"router": nfsip}, {"caller": result}, kamailio)
    assert phone.received("^INVITE "), "the INVITE never reached the phone\n" + report
    assert result.ok, report
    assert count_rtp(caps["phone1"], dst=T.PHONE_IPS[0]) >= MIN_RTP, report
    assert count_rtp(caps["server"], dst=T.SERVER_IP) >= MIN_RTP, report
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()


@pytest.mark.parametrize("nat_helper", [False, True], ids=["plain-registrar", "nathelper-registrar"])
def test_baseline_masquerade_only_phone_unreachable_after_conntrack_expiry(lab: Lab, nat_helper: bool, tmp_path: Path):
    """Without nfsip the same call never reaches the phone. With a plain registrar the Contact is
    private (Kamailio cannot even send: 477); with a NAT-aware registrar (received address) the
    INVITE goes to the router's public port, where the expired conntrack entry no longer leads."""
    with Kamailio(lab, fr_timer_ms=5000, nat_helper=nat_helper, workdir=tmp_path / "kamailio") as kamailio:
        phone, result, caps = _register_wait_call(lab, kamailio)
        report = evidence(caps, None, {"caller": result}, kamailio)
    assert not phone.received("^INVITE "), "baseline broken: the INVITE reached the phone\n" + report
    assert not result.ok, report
    assert count_rtp(caps["phone1"]) == 0, report


def test_register_refresh_and_unregister_follow_the_registrar(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """A REGISTER opens one registration pinhole, a refresh keeps it (same public address), an
    un-REGISTER (Expires: 0) closes it."""
    phone = SippPhone(lab, "phone1", user="alice", expires=60, registered_ms=2500, refresh=True).start()
    kamailio.wait_registered("alice")
    first = wait_for(lambda: nfsip.status()["registrations"], 2)
    time.sleep(2.5 + 0.5)  # past the refresh
    refreshed = nfsip.status()["registrations"]
    result = phone.wait(20)
    after = wait_for(lambda: nfsip.status()["registrations"] == [], 2)
    log = tail(nfsip.log())
    assert result.ok, result.describe()
    assert kamailio.contacts("alice") == []
    assert len(first) == 1 and first[0]["private"] == f"{T.PHONE_IPS[0]}:5060", (first, log)
    assert first[0]["from"] == T.SERVER_IP, first
    assert [r["public"] for r in refreshed] == [first[0]["public"]], (first, refreshed, log)
    assert after, (nfsip.status(), log)


# --------------------------------------------------------------------------------- 2: forking
def test_forked_call_one_answers_other_cancelled(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """Two phones register the same AOR; Kamailio forks the inbound call to both. phone1 answers
    after 1.5 s of ringing, phone2 rings with early media and is CANCELled by Kamailio (487).
    phone1 gets media both ways; phone2's pinholes (opened by its 183) are gone once the call is
    established, and nothing is left after the BYE."""
    p2_ip = T.PHONE_IPS[1]
    with (
        Capture(lab, "phone1", "eth0") as at_p1,
        Capture(lab, "phone2", "eth0") as at_p2,
        Capture(lab, T.SERVER, "eth0") as at_server,
    ):
        phone1 = SippPhone(lab, "phone1", user="alice", answer="answer", ring_ms=1500, registered_ms=60000).start()
        phone2 = SippPhone(lab, "phone2", user="alice", answer="ring", registered_ms=60000).start()
        kamailio.wait_registered("alice", count=2)
        caller = SippCaller(lab, T.SERVER, "alice", sip_port=CALLER_PORT).start()
        ringing_holes = wait_for(lambda: status_holes(nfsip, p2_ip), 1.5, 0.05)
        time.sleep(3)  # established (answer after 1.5 s), phone2 cancelled
        live = nfsip.status()
        result = caller.wait(40)
        final = wait_for(lambda: nfsip.status()["pinholes"] == 0, 3)
        # Only flows through phone2's pinhole ports: a packet phone2 sends after its pinholes are
        # gone (sipp plays early media until the 487 is ACKed) makes an ordinary masquerade flow,
        # which is the admin's NAT doing its job, not something nfsip left behind.
        p2_public = {h["public_port"] for h in ringing_holes or []}
        p2_conntrack = [ln for ln in (conntrack_with_ports(lab, p2_public) if p2_public else []) if f"={p2_ip} " in ln]
        phone1.kill()
        phone2.kill()
        stop_all([at_p1, at_p2, at_server], settle=0.6)
    caps = {"phone1": at_p1.packets(), "phone2": at_p2.packets(), "server": at_server.packets()}
    report = evidence(caps, {"router": nfsip}, {"caller": result}, kamailio)
    assert phone1.received("^INVITE ") and phone2.received("^INVITE "), "not forked to both\n" + report
    assert phone2.received("^CANCEL "), "Kamailio did not CANCEL phone2\n" + report
    assert any(line.startswith("SIP/2.0 487") for d, line in phone2.messages() if d == "sent"), report
    assert result.ok, report
    assert count_rtp(caps["phone1"], dst=T.PHONE_IPS[0]) >= MIN_RTP, report
    from_p1 = [p for p in rtp_packets(caps["server"]) if p.dst == T.SERVER_IP and p.src == T.ROUTER_WAN_IP]
    assert len(from_p1) >= MIN_RTP, report
    assert ringing_holes, "phone2's early-media SDP (183) opened no pinhole while ringing\n" + report
    leftover = [c for c in live["calls"] if c["lan_host"] == p2_ip]
    assert leftover == [], f"pinholes of the cancelled phone2 while phone1 talks: {leftover}\n{report}"
    assert p2_conntrack == [], f"media conntrack of cancelled phone2: {p2_conntrack}\n{report}"
    assert final, f"pinholes left after BYE: {nfsip.status()}\n{report}"


# --------------------------------------------------------------------------- 3: re-INVITEs
def _phase_windows(server_pkts: list[UdpPacket], end: float) -> list[tuple[float, float, Any]]:
    """(start, end, INVITE) per offer: from one INVITE at the server to the next (or ``end``)."""
    offers = distinct_invites(server_pkts)
    windows = []
    for i, (ts, msg) in enumerate(offers):
        stop = offers[i + 1][0] if i + 1 < len(offers) else end
        windows.append((ts, stop, msg))
    return windows


def test_hold_resume_and_new_media_port_by_reinvite(lab: Lab, nfsip: NfsipDaemon):
    """phone1 calls the server and, by re-INVITE, holds (sendonly, c=0.0.0.0, inactive), resumes,
    and finally moves its audio from LAN port 6000 to 6002 (caller_hold.xml). Every sendrecv phase
    has media both ways; hold keeps the public port; after the move media uses a new public port
    and the old one is closed (probes to it from the server's RTP port and from a fresh port do
    not reach the phone)."""
    ip = T.PHONE_IPS[0]
    callee = SippCallee(lab, kind="hold", trace_msg=True).start()
    with Capture(lab, "phone1", "eth0") as at_phone, Capture(lab, T.SERVER, "eth0") as at_server:
        caller = SippCaller(lab, "phone1", "hold", kind="hold", proxy=T.SERVER_IP).start()

        def offers() -> list[list[tuple[str, int]]]:
            return sdp_ports_in_trace(callee.message_file)

        first = wait_for(lambda: offers(), 5)
        old_port = first[0][0][1] if first else None
        moved = wait_for(lambda: len(offers()) >= 8, 20)
        time.sleep(0.5)
        live = nfsip.status()
        ct_at_probe = conntrack_with_ports(lab, {6000, old_port or 6000})
        if old_port is not None:
            send_probe(lab, T.SERVER, 6000, T.ROUTER_WAN_IP, old_port)
            send_probe(lab, T.SERVER, 7000, T.ROUTER_WAN_IP, old_port)
        result = caller.wait(40)
        callee_result = callee.wait(10)
        end = time.time()
    caps = {"phone1": at_phone.packets(), "server": at_server.packets()}
    report = evidence(caps, {"router": nfsip}, {"caller": result, "callee": callee_result})
    assert result.ok and callee_result.ok, report
    assert moved, f"the callee saw {len(offers())} offers, expected 8\n{report}"

    windows = _phase_windows(caps["server"], end)
    assert len(windows) == 8, report
    ports = [msg.sdp.media[0].port for _, _, msg in windows]
    assert all(msg.sdp.connection.address in (T.ROUTER_WAN_IP, "0.0.0.0") for _, _, msg in windows), report
    # Hold (sendonly, inactive) and resume keep the public port; the move to LAN port 6002 gets
    # another one. (The c=0.0.0.0 offer, phase 3, is checked last: see the end of the test.)
    kept = [ports[i] for i in (0, 1, 2, 4, 5, 6)]
    assert len(set(kept)) == 1, f"public port changed during hold/resume: {ports}\n{report}"
    assert ports[7] != ports[0], f"LAN port 6000 -> 6002 kept public port {ports[0]}\n{report}"
    lan_port = {0: 6000, 2: 6000, 4: 6000, 6: 6000, 7: 6002}
    problems = []
    for phase, lan in lan_port.items():
        start, stop, _ = windows[phase]
        # playback restarts on the ACK, a few ms after the INVITE; allow 80 % of the nominal rate
        expected = int((stop - start - 0.3) * RTP_RATE * 0.8)
        up = rtp_in(caps["server"], start, stop, src=(T.ROUTER_WAN_IP, ports[phase]))
        down = rtp_in(caps["phone1"], start, stop, dst=(ip, lan))
        if up < expected or down < expected:
            problems.append(f"phase {phase}: phone->server {up}, server->phone {down}, expected >= {expected}")
    assert problems == [], "\n".join(problems) + "\n" + report
    # While the call runs on the new port, the old public port is gone from the maps ...
    public_ports = {h["public_port"] for c in live["calls"] for h in c["pinholes"]}
    assert ports[0] not in public_ports, f"old public port {ports[0]} still mapped: {live}\n{report}"
    assert ports[7] in public_ports, f"new public port {ports[7]} not mapped: {live}\n{report}"
    # ... and from conntrack: nothing sent to it reaches the phone.
    leaked = [(p.src, p.sport, p.dst, p.dport) for p in probes(caps["phone1"])]
    late = [
        (p.ts - windows[7][0], p.src, p.sport, p.dst, p.dport)
        for p in rtp_packets(caps["phone1"])
        if p.ts > windows[7][0] and 6000 in (p.sport, p.dport)
    ]
    assert leaked == [], (
        f"probes to old public port {ports[0]} reached the phone: {leaked}\n"
        f"conntrack at probe time: {ct_at_probe}\nport 6000 RTP after the move: {late[:10]}\n{report}"
    )
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()
    # An RFC 2543 hold (c=0.0.0.0) keeps the stream: its m= port must still be the public one, not
    # the phone's LAN port (which would leak the private port and look like a port change).
    assert ports[3] == ports[0], (
        f"c=0.0.0.0 hold offer carries m= port {ports[3]} instead of the stream's public port {ports[0]}; "
        f"ports per offer: {ports}"
    )


def test_video_stream_added_then_removed_by_reinvite(lab: Lab, nfsip: NfsipDaemon):
    """phone1 adds a video stream (LAN port 6002) by re-INVITE, then removes it (m=video 0):
    video flows both ways while it exists; afterwards its pinholes are gone, its old public port
    delivers nothing, and audio keeps flowing."""
    ip = T.PHONE_IPS[0]
    callee = SippCallee(lab, kind="video", trace_msg=True).start()
    with Capture(lab, "phone1", "eth0") as at_phone, Capture(lab, T.SERVER, "eth0") as at_server:
        caller = SippCaller(lab, "phone1", "video", kind="video", proxy=T.SERVER_IP).start()

        def offers() -> list[list[tuple[str, int]]]:
            return sdp_ports_in_trace(callee.message_file)

        with_video = wait_for(lambda: len(offers()) >= 2, 8)
        time.sleep(1.0)
        during = nfsip.status()
        removed = wait_for(lambda: len(offers()) >= 3, 8)
        time.sleep(0.7)
        after_removal = nfsip.status()
        seen = offers()
        video_public = dict(seen[1]).get("video") if len(seen) >= 2 else None
        if video_public:
            # Only from a fresh source port. Pitfall: sipp cannot stop the phone's video playback;
            # between the removing offer and its answer the phone still sends from 6002 to the
            # server's 6002, which (the mapping being gone) makes an ordinary masquerade flow whose
            # replies - a probe from the server's 6002 - are legitimately let in.
            send_probe(lab, T.SERVER, 7002, T.ROUTER_WAN_IP, video_public)
        result = caller.wait(30)
        callee_result = callee.wait(10)
        end = time.time()
    caps = {"phone1": at_phone.packets(), "server": at_server.packets()}
    report = evidence(caps, {"router": nfsip}, {"caller": result, "callee": callee_result})
    assert result.ok and callee_result.ok, report
    assert with_video and removed, f"offers seen by the callee: {offers()}\n{report}"
    windows = _phase_windows(caps["server"], end)
    assert len(windows) == 3, report
    audio_public = windows[0][2].sdp.media[0].port
    start, stop, msg = windows[1]
    assert msg.sdp.media[0].port == audio_public, report
    assert video_public and video_public != audio_public, report
    expected = int((stop - start - 0.3) * RTP_RATE * 0.8)
    video_up = rtp_in(caps["server"], start, stop, src=(T.ROUTER_WAN_IP, video_public))
    video_down = rtp_in(caps["phone1"], start, stop, dst=(ip, 6002))
    assert video_up >= expected and video_down >= expected, (
        f"video phone->server {video_up}, server->phone {video_down}, expected >= {expected}\n{report}"
    )
    holes_during = {(h["public_port"], h["private"]) for c in during["calls"] for h in c["pinholes"]}
    assert (video_public, f"{ip}:6002") in holes_during, f"{during}\n{report}"
    holes_after = {h["private"] for c in after_removal["calls"] for h in c["pinholes"]}
    assert f"{ip}:6002" not in holes_after and f"{ip}:6003" not in holes_after, f"{after_removal}\n{report}"
    assert f"{ip}:6000" in holes_after, f"audio pinhole lost with the video: {after_removal}\n{report}"
    start, stop, _ = windows[2]
    expected = int((stop - start - 0.3) * RTP_RATE * 0.8)
    audio_up = rtp_in(caps["server"], start, stop, src=(T.ROUTER_WAN_IP, audio_public))
    audio_down = rtp_in(caps["phone1"], start, stop, dst=(ip, 6000))
    assert audio_up >= expected and audio_down >= expected, (
        f"audio after video removal: up {audio_up}, down {audio_down}, expected >= {expected}\n{report}"
    )
    leaked = [(p.src, p.sport, p.dst, p.dport) for p in probes(caps["phone1"])]
    assert leaked == [], f"probes to the removed video port reached the phone: {leaked}\n{report}"
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()


# --------------------------------------------------------------- 4: attempts that never connect
ATTEMPTS = ["out-cancel", "out-486", "in-cancel", "in-486", "out-noanswer", "in-phone-gone"]


@pytest.mark.parametrize("case", ATTEMPTS)
def test_failed_attempt_leaves_no_pinhole_and_no_media_conntrack(
    lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon, case: str
) -> None:
    """A call attempt that never becomes a call - CANCEL, 486, no response at all (Timer B,
    32 s), a registered phone that is gone - leaves no map entry and no conntrack entry of its
    media ports. "out" = phone1 calls the server directly, "in" = the server calls phone1's AOR
    through Kamailio. Ringing/busy callees send early media, so flows exist to clean up.

    The UDP conntrack timeouts stay at their defaults (30 s / 120 s) on purpose: shortened, the
    kernel would expire what nfsip forgot to delete.
    """
    ip = T.PHONE_IPS[0]
    direction, what = case.split("-", 1)
    phone: SippPhone | None = None
    callee: SippCallee | None = None
    opened: list[dict[str, Any]] = []
    expect_holes = what != "phone-gone"
    settle = 40.0 if what == "noanswer" else 3.0
    with Capture(lab, "phone1", "eth0") as at_phone, Capture(lab, T.SERVER, "eth0") as at_server:
        if direction == "out":
            kamailio.stop()  # the server's 5060 is for the UAS (or, for noanswer, for nobody)
            if what != "noanswer":
                callee = SippCallee(lab, kind={"cancel": "ring", "486": "busy"}[what]).start()
            kind = {"cancel": "cancel", "486": "rejected", "noanswer": "noanswer"}[what]
            # noanswer: Timer A retransmissions at 0.5, 1.5, 3.5, ... 31.5 s; the caller gives up at
            # 33 s (its recv timeout). Pitfall: sipp's default -max_invite_retrans is 5, and after the
            # 5th unanswered retransmission it ends the call as a failure at 31.5 s.
            extra = ("-max_invite_retrans", "7") if what == "noanswer" else ()
            caller = SippCaller(
                lab, "phone1", "service", kind=kind, proxy=T.SERVER_IP, pause_ms=1500, extra_args=extra
            ).start()
        else:
            answer = {"cancel": "ring", "486": "busy", "phone-gone": "answer"}[what]
            phone = SippPhone(lab, "phone1", user="alice", answer=answer, registered_ms=60000).start()
            kamailio.wait_registered("alice")
            if what == "phone-gone":
                phone.kill()
            kind = {"cancel": "cancel", "486": "rejected", "phone-gone": "call"}[what]
            caller = SippCaller(lab, T.SERVER, "alice", kind=kind, sip_port=CALLER_PORT, pause_ms=1500).start()
        if expect_holes:
            opened = wait_for(lambda: status_holes(nfsip, ip), 3, 0.05)
        result = caller.wait(60)
        public_ports = {h["public_port"] for h in opened}
        t0 = time.monotonic()
        cleaned = wait_for(lambda: nfsip.status()["pinholes"] == 0, settle, 0.5)
        cleanup_s = time.monotonic() - t0
        # Flows through the pinhole ports only (see the fork test: late packets of the phone make
        # ordinary masquerade flows, which are not nfsip's).
        leftover_ct = conntrack_with_ports(lab, public_ports) if public_ports else []
        if callee is not None:
            callee.wait(10)
        if phone is not None and phone.returncode is None:
            phone.kill()
    caps = {"phone1": at_phone.packets(), "server": at_server.packets()}
    report = evidence(caps, {"router": nfsip}, {"caller": result}, None if direction == "out" else kamailio)
    if what == "phone-gone":
        assert not result.ok, "a call to a vanished phone cannot succeed\n" + report
    else:
        assert result.ok, report
    if expect_holes:
        assert opened, f"precondition: the attempt opened no pinhole\n{report}"
    assert cleaned, f"pinholes left {settle:.0f}s after the attempt: {nfsip.status()}\n{report}"
    assert leftover_ct == [], f"media conntrack left: {leftover_ct}\n{report}"
    if what == "noanswer":
        # Timer B is 32 s after the INVITE; the caller gave up at 33 s. Removal well before
        # Timer B would cut a call whose answer is merely slow.
        assert cleanup_s < 10, f"pinholes removed {cleanup_s:.1f}s after the caller gave up\n{report}"


# ------------------------------------------------------------------- 5: both ends behind NAT
def test_two_nat_sites_call_through_kamailio_media_direct(tmp_path: Path):
    """phone1 (behind router, 198.51.100.1) calls bob, registered from phoneb1 (behind routerb,
    198.51.100.4), through Kamailio. Media flows directly between the two routers' public
    addresses, both ways; the server sees SIP only."""
    with TwoSiteLab(phones=1, phones_b=1) as lab:
        lab.masquerade()
        daemon_a = RouterNfsipDaemon(lab, T.ROUTER).start()
        daemon_b = RouterNfsipDaemon(lab, T.ROUTERB).start()
        kamailio = Kamailio(lab, fr_timer_ms=5000, workdir=tmp_path / "kamailio").start()
        try:
            with (
                Capture(lab, "phone1", "eth0") as at_a,
                Capture(lab, "phoneb1", "eth0") as at_b,
                Capture(lab, T.SERVER, "eth0") as at_server,
                Capture(lab, T.WAN_SWITCH, T.ROUTERB) as at_wan_b,
            ):
                bob = SippPhone(lab, "phoneb1", user="bob", registered_ms=60000).start()
                kamailio.wait_registered("bob")
                caller = SippCaller(lab, "phone1", "bob").start()
                result = caller.wait(40)
                bob.kill()
                stop_all([at_a, at_b, at_server, at_wan_b])
            caps = {
                "phone1": at_a.packets(),
                "phoneb1": at_b.packets(),
                "server": at_server.packets(),
                "wan port of routerb": at_wan_b.packets(),
            }
            report = evidence(caps, {"router": daemon_a, "routerb": daemon_b}, {"caller": result}, kamailio)
            assert result.ok, report
            assert count_rtp(caps["phone1"], dst=T.PHONE_IPS[0]) >= MIN_RTP, report
            assert count_rtp(caps["phoneb1"], dst=T.SITEB_PHONE_IPS[0]) >= MIN_RTP, report
            assert count_rtp(caps["server"]) == 0, report
            wan = caps["wan port of routerb"]
            assert count_rtp(wan, src=T.ROUTER_WAN_IP, dst=T.ROUTERB_WAN_IP) >= MIN_RTP, report
            assert count_rtp(wan, src=T.ROUTERB_WAN_IP, dst=T.ROUTER_WAN_IP) >= MIN_RTP, report
            assert wait_for(lambda: daemon_a.status()["pinholes"] == 0, 3), daemon_a.status()
            assert wait_for(lambda: daemon_b.status()["pinholes"] == 0, 3), daemon_b.status()
        finally:
            kamailio.stop()
            _stop_daemon(daemon_b)
            _stop_daemon(daemon_a)


def test_hairpin_call_between_two_phones_behind_one_router(lab: Lab, kamailio: Kamailio, nfsip: NfsipDaemon):
    """phone1 and phone2, both behind the router, registered with Kamailio; phone1 calls phone2's
    AOR. Both SDPs carry the router's public address, so media goes phone -> router public port ->
    hairpin -> other phone, both ways, each side seeing the other's public address as source."""
    with (
        Capture(lab, "phone1", "eth0") as at_p1,
        Capture(lab, "phone2", "eth0") as at_p2,
        Capture(lab, T.SERVER, "eth0") as at_server,
    ):
        SippPhone(lab, "phone1", user="alice", answer="answer", registered_ms=60000).start()
        bob = SippPhone(lab, "phone2", user="bob", answer="answer", registered_ms=60000).start()
        kamailio.wait_registered("alice")
        kamailio.wait_registered("bob")
        # sipp limitation: the registered phone1 sipp holds 5060 (and media 6000/6002), and one sipp
        # cannot both register and place a call with its own Call-ID, so phone1 calls from 5062.
        caller = SippCaller(lab, "phone1", "bob", sip_port=5062, media_port=6010).start()
        result = caller.wait(40)
        bob.kill()
        stop_all([at_p1, at_p2, at_server])
    caps = {"phone1": at_p1.packets(), "phone2": at_p2.packets(), "server": at_server.packets()}
    report = evidence(caps, {"router": nfsip}, {"caller": result}, kamailio)
    assert result.ok, report
    to_p1 = [p for p in rtp_packets(caps["phone1"]) if p.dst == T.PHONE_IPS[0]]
    to_p2 = [p for p in rtp_packets(caps["phone2"]) if p.dst == T.PHONE_IPS[1]]
    assert len(to_p1) >= MIN_RTP and len(to_p2) >= MIN_RTP, report
    assert {p.src for p in to_p1} == {T.ROUTER_WAN_IP}, report
    assert {p.src for p in to_p2} == {T.ROUTER_WAN_IP}, report
    assert count_rtp(caps["server"]) == 0, report
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()


# -------------------------------------------------------------------------------- 6: many calls
@pytest.fixture
def busy_host_nfsip(lab: Lab) -> Iterator[NfsipDaemon]:
    """A daemon whose per-host pinhole rate admits 50 calls/s from one host (a PBX behind the router,
    not a phone: the default of 20 new pinholes/s per host would refuse most of them, by design)."""
    daemon = NfsipDaemon(lab, config={"pinhole_rate_per_host": 400, "pinhole_burst_per_host": 800}).start()
    try:
        yield daemon
    finally:
        _stop_daemon(daemon)


def test_thousand_sequential_calls_leave_the_maps_empty(lab: Lab, busy_host_nfsip: NfsipDaemon):
    """1000 short calls (no RTP) from phone1 to a UAS on the server at 50 calls/s: all succeed and
    the maps are empty at the end."""
    nfsip = busy_host_nfsip
    n = 1000
    cpu0 = process_cpu_seconds(nfsip)
    callee = SippCallee(lab, kind="nomedia", calls=n, timeout_s=70).start()
    # 20 s of calls; the 60 s global timeout only bounds a run that goes wrong (a BYE that gets no
    # answer keeps its call alive for 32 s of retransmissions).
    caller = SippCaller(
        lab,
        "phone1",
        "load",
        kind="nomedia",
        proxy=T.SERVER_IP,
        calls=n,
        rate=50,
        pause_ms=0,
        timeout_s=60,
        trace_msg=False,
    ).start()
    result = caller.wait(75)
    callee_result = callee.wait(20)
    cpu = process_cpu_seconds(nfsip) - cpu0
    log = f"nfsip used {cpu:.1f} s CPU in {result.duration_s:.1f} s ({1000 * cpu / n:.1f} ms per call)\n" + tail(
        nfsip.log()
    )
    assert result.successful_calls == n and result.failed_calls == 0, result.describe() + "\n" + log
    assert callee_result.successful_calls == n, callee_result.describe()
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 5), (nfsip.status()["pinholes"], log)
    assert nfsip.metric("nfsip_pinholes_active") == 0
    # Each call offered RTP + RTCP from its own LAN port: 2 pinholes per call went through the maps.
    assert nfsip.metric("nfsip_pinholes_opened_total") >= 2 * n, log
    assert nfsip.alive()
