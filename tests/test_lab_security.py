"""nfsip cannot be turned into a door: NAT slipstreaming replays open nothing, and floods of junk do not
take the daemon down or grow it.

NAT slipstreaming (Samy Kamkar, 2020): a web page makes a LAN browser send an HTTP POST to the attacker's
server on port 5060; the body, split across packet boundaries, holds a REGISTER whose Contact names the
victim's address and a port of the attacker's choice; the kernel SIP ALG parsed it and opened that port.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas, run_uac

from .lab_support import require_lab

pytestmark = pytest.mark.lab
ATTACKER = T.WAN_HOST2_IP
SCAN_PORT = 40404  # the source port of the attacker's scan, counted at the phones

REGISTER = (
    "REGISTER sip:attacker.example SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{branch}\r\n"
    "From: <sip:victim@attacker.example>;tag=1\r\nTo: <sip:victim@attacker.example>\r\n"
    "Call-ID: slip-{branch}\r\nCSeq: 1 REGISTER\r\nContact: <sip:victim@{contact}>\r\nExpires: 3600\r\n"
    "Content-Length: 0\r\n\r\n"
)
INVITE = (
    "INVITE sip:x@attacker.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{branch}\r\n"
    "From: <sip:victim@attacker.example>;tag=1\r\nTo: <sip:x@attacker.example>\r\nCall-ID: slip-{branch}\r\n"
    "CSeq: 1 INVITE\r\nContact: <sip:victim@10.0.0.2:5060>\r\nContent-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)


def invite(branch: str, address: str, port: int) -> str:
    sdp = f"v=0\r\no=- 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
    return INVITE.format(branch=branch, length=len(sdp), sdp=sdp)


# The attacker's "SIP server": answers every REGISTER/INVITE with a 200 OK that grants whatever Contact
# was asked for, as a colluding registrar would (so the 2xx-triggered paths are exercised too).
RESPONDER = r"""
import re, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 5060))
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((sys.argv[1], 5060)); t.listen(8); t.setblocking(False)
import select
while True:
    r, _, _ = select.select([s, t], [], [], 30)
    if not r:
        break
    if t in r:
        c, _ = t.accept(); c.settimeout(2)
        try:
            c.recv(65536); c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        c.close()
        continue
    data, peer = s.recvfrom(65536)
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    names = (b"via", b"from", b"to", b"call-id", b"cseq", b"contact")
    keep = [l for l in lines[1:] if l.split(b":")[0].lower() in names]
    s.sendto(b"SIP/2.0 200 OK\r\n" + b"\r\n".join(keep) + b";expires=3600\r\nContent-Length: 0\r\n\r\n", peer)
"""

SENDER_UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('10.0.0.2', 5060))
for chunk in sys.stdin.read().split('\\x00\\x00'):
    if chunk:
        s.sendto(chunk.encode(), (sys.argv[1], 5060)); time.sleep(0.1)
"""

SENDER_TCP = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5060), timeout=3)
body = sys.stdin.read().encode()
# The browser's POST: the SIP text rides inside, at a packet boundary the page chose (TCP_NODELAY + two sends).
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
c.sendall(b"POST /x HTTP/1.1\\r\\nHost: attacker\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body))
c.sendall(body)
try:
    c.recv(1000)
except OSError:
    pass
"""

SCANNER = """
import socket, sys, time
target, scan_port = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(('', scan_port))
for port in range(1, 65536):
    u.sendto(b'\\x80\\x00scan', (target, port))
pending = []
for port in range(1, 65536):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.setblocking(False)
    try:
        t.bind(('', scan_port))
    except OSError:
        t.close(); continue
    t.connect_ex((target, port))
    pending.append(t)
    if len(pending) >= 256:
        time.sleep(0.01)
        for s in pending: s.close()
        pending = []
for s in pending: s.close()
print('scanned')
"""

PROBE = """
table inet probe {
    chain input {
        type filter hook prerouting priority raw; policy accept;
        ip saddr 198.51.100.3 th sport 40404 counter
    }
}
"""


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        lab.masquerade()
        lab.add_wan_host()
        yield lab


def probe_count(lab: Lab, node: str) -> int:
    out = json.loads(lab.run(node, ["nft", "-j", "list", "table", "inet", "probe"]).stdout)
    return sum(i["rule"]["expr"][-1]["counter"]["packets"] for i in out["nftables"] if "rule" in i)


def test_slipstreaming_replays_open_nothing(lab: Lab):
    daemon = NfsipDaemon(lab, config={"sip_servers": [f"{T.SERVER_IP}/32"]}).start()
    try:
        responder = lab.popen("wanhost2", [sys.executable, "-c", RESPONDER, ATTACKER])
        time.sleep(0.3)
        udp = [
            # an HTTP POST whose body carries a REGISTER: not a SIP start line, parsed as nothing
            "POST /x HTTP/1.1\r\nHost: a\r\n\r\n" + REGISTER.format(branch="u1", contact="10.0.0.2:22"),
            # well-formed, but to a server outside the allowlist
            REGISTER.format(branch="u2", contact="10.0.0.2:1234"),
            invite("u3", "10.0.0.2", 3389),
        ]
        lab.run("phone1", [sys.executable, "-c", SENDER_UDP, ATTACKER], input="\0\0".join(udp))
        tcp = REGISTER.format(branch="t1", contact="10.0.0.2:22")
        lab.run("phone1", [sys.executable, "-c", SENDER_TCP, ATTACKER], input=tcp, check=False)
        # To the allowed server too: a Contact naming another LAN host, SDPs naming another LAN host and a
        # privileged port, a Contact with a privileged port; the allowed server does not answer them here.
        allowed = [
            REGISTER.format(branch="a1", contact="10.0.0.3:22"),
            invite("a2", "10.0.0.3", 3389),
            invite("a3", "10.0.0.2", 22),
            invite("a4", "10.0.0.2", 5060),
        ]
        lab.run("phone1", [sys.executable, "-c", SENDER_UDP, T.SERVER_IP], input="\0\0".join(allowed))
        time.sleep(0.5)
        state = daemon.status()
        assert state["pinholes"] == 0 and state["registrations"] == [], state
        assert daemon.metric("nfsip_policy_refusals_total", reason="server-not-allowed") >= 2
        assert daemon.metric("nfsip_policy_refusals_total", reason="foreign-contact") >= 1
        assert daemon.metric("nfsip_policy_refusals_total", reason="foreign-address") >= 1
        assert daemon.metric("nfsip_policy_refusals_total", reason="media-port") >= 2
        assert re.search(r"policy: .*nothing opened", daemon.log())
        # The attacker scans every UDP and TCP port of the router: nothing reaches the LAN.
        for phone in ("phone1", "phone2"):
            lab.nft(phone, PROBE)
        scan = lab.run("wanhost2", [sys.executable, "-c", SCANNER, T.ROUTER_WAN_IP, str(SCAN_PORT)], timeout=120)
        assert "scanned" in scan.stdout
        time.sleep(0.5)
        assert probe_count(lab, "phone1") == 0 and probe_count(lab, "phone2") == 0
        responder.terminate()
    finally:
        assert daemon.stop() == 0, daemon.log()


def rss_kib(lab: Lab, pid: int) -> int:
    status = lab.run(T.ROUTER, ["cat", f"/proc/{pid}/status"]).stdout
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))


FLOOD = """
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
dest = (sys.argv[3], int(sys.argv[4]))
for i in range(10000):
    junk = os.urandom(40 + i % 400)
    if i % 3 == 0:
        junk = b"INVITE sip:x SIP/2.0\\r\\nVia: broken\\r\\nContent-Length: -5\\r\\n\\r\\n" + junk
    elif i % 3 == 1:
        junk = b"SIP/2.0 200 OK\\r\\nCall-ID: " + junk.hex().encode() + b"\\r\\n\\r\\n"
    s.sendto(junk, dest)
print('sent')
"""


def test_flood_of_malformed_datagrams(lab: Lab):
    # The per-host SIP rate out of reach: the junk is meant to reach the parser here.
    daemon = NfsipDaemon(lab, config={"sip_rate_per_host": 1_000_000, "sip_burst_per_host": 1_000_000}).start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        rss_before = rss_kib(lab, pid)
        with Capture(lab, T.SERVER, "eth0", capture_filter="udp dst port 5060") as at_server:
            # From the LAN to the server, then from the server back along that flow's conntrack entry.
            lab.run("phone1", [sys.executable, "-c", FLOOD, T.PHONE_IPS[0], "5070", T.SERVER_IP, "5060"], timeout=120)
            lab.run(T.SERVER, [sys.executable, "-c", FLOOD, T.SERVER_IP, "5060", T.ROUTER_WAN_IP, "5070"], timeout=120)
            # ... and straight at the router's own SIP port (not queued: not for a LAN host).
            lab.run("wanhost2", [sys.executable, "-c", FLOOD, ATTACKER, "5060", T.ROUTER_WAN_IP, "5060"], timeout=120)
            time.sleep(1)
        delivered = sum(1 for p in at_server.packets() if p.dport == 5060 and p.src == T.ROUTER_WAN_IP)
        assert delivered == 10000  # nothing lost: every datagram was passed on
        assert daemon.alive()
        # What the daemon saw it rejected and counted; what a full queue could not take, the kernel passed
        # on by itself (fail-open), so the count may be lower than 20000 but never zero.
        handled = daemon.metric("nfsip_verdicts_total", outcome="parse-error")
        assert handled >= 2000, daemon.metrics()
        rss_after = rss_kib(lab, pid)
        assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after)
        # A normal call right after has media both ways.
        with SippUas(lab) as uas, Capture(lab, "phone1", "eth0") as at_phone:
            assert run_uac(lab, "phone1").ok
            assert uas.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= int(PCAP_RTP_PACKETS * 0.95)
    finally:
        assert daemon.stop() == 0, daemon.log()


INJECT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('', 40404))
for i in range(20):
    s.sendto(b'\\x80\\x08' + bytes(170), (sys.argv[1], int(sys.argv[2]))); time.sleep(0.01)
"""


@pytest.mark.parametrize("media_from, reaches_phone", [("sdp", False), ("any", True)])
def test_media_from_sdp_keeps_third_parties_out(lab: Lab, media_from: str, reaches_phone: bool):
    """Strict mode: only the far end's SDP address gets in. Latching (the default, for far ends behind NAT)
    lets anyone who knows the port send to it while the call lives: the documented trade-off."""
    daemon = NfsipDaemon(lab, config={"media_from": media_from}).start()
    try:
        lab.nft("phone1", PROBE)
        uas = SippUas(lab).start()
        with Capture(lab, "phone1", "eth0") as at_phone:
            uac = SippUac(lab, "phone1", pause_ms=9000).start()
            time.sleep(3)
            holes = daemon.status()["calls"][0]["pinholes"]
            rtp = next(h for h in holes if h["label"] == "m0.rtp")
            assert rtp["media_from"] == (T.SERVER_IP if media_from == "sdp" else "anywhere"), holes
            lab.run("wanhost2", [sys.executable, "-c", INJECT, T.ROUTER_WAN_IP, str(rtp["public_port"])])
            assert uac.wait(60).ok and uas.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0], src=T.SERVER_IP) >= int(PCAP_RTP_PACKETS * 0.95)
        assert (probe_count(lab, "phone1") > 0) == reaches_phone
    finally:
        assert daemon.stop() == 0, daemon.log()


FORGE = """
import socket, sys, time
call_id, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('', 5060))
head = ("Via: SIP/2.0/UDP 198.51.100.3:5060;branch=z9hG4bKforged\\r\\n"
        "From: <sip:service@198.51.100.2>;tag=1\\r\\nTo: <sip:sipp@10.0.0.2>;tag=2\\r\\n"
        f"Call-ID: {call_id}\\r\\n")
tail = "CSeq: 9 BYE\\r\\nContent-Length: 0\\r\\n\\r\\n"
for i in range(3):
    s.sendto((f"BYE sip:sipp@{target}:5060 SIP/2.0\\r\\n" + head + tail).encode(), (target, port))
    s.sendto(("SIP/2.0 200 OK\\r\\n" + head + tail).encode(), (target, port))
    time.sleep(0.05)
"""


def test_a_bye_forged_through_a_media_pinhole_ends_nothing(lab: Lab):
    """An outside host that is not the call's signalling peer sends a BYE (and a 200 to BYE) with the live
    call's Call-ID from its port 5060 to the call's public media ports: the media pinhole DNATs it to the
    phone, but nfsip's table never queues what a media pinhole forwards, so the call and its media live
    on; and the phone's next call has media both ways."""
    daemon = NfsipDaemon(lab).start()  # the defaults: no sip_servers allowlist, media_from = "any"
    try:
        uas = SippUas(lab).start()
        with Capture(lab, "phone1", "eth0") as at_phone:
            uac = SippUac(lab, "phone1", pause_ms=9000).start()
            time.sleep(2.5)
            (call,) = daemon.status()["calls"]
            for hole in call["pinholes"]:
                lab.run(
                    "wanhost2",
                    [sys.executable, "-c", FORGE, call["call_id"], T.ROUTER_WAN_IP, str(hole["public_port"])],
                )
            time.sleep(0.5)
            assert [c["call_id"] for c in daemon.status()["calls"]] == [call["call_id"]], daemon.log()
            assert uac.wait(60).ok and uas.wait(20).ok
        received = count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0], src=T.SERVER_IP)
        print(f"forged BYE: {received} of {PCAP_RTP_PACKETS} RTP packets reached the phone")
        assert received >= int(PCAP_RTP_PACKETS * 0.95)
        assert f"call {call['call_id']} ended: BYE (out)" in daemon.log()  # the phone's own BYE ended it
        # The queue never saw the forged messages (the engine would refuse them too: tests/test_engine.py).
        assert daemon.metric("nfsip_policy_refusals_total", reason="not-dialog-peer") == 0
        # The phone's next call, on the same ports: media both ways.
        with SippUas(lab) as uas2, Capture(lab, "phone1", "eth0") as at_phone:
            assert run_uac(lab, "phone1").ok
            assert uas2.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0], src=T.SERVER_IP) >= int(PCAP_RTP_PACKETS * 0.95)
        assert daemon.status()["calls"] == []
    finally:
        assert daemon.stop() == 0, daemon.log()


# -- one flooding host (issue 13.2, 13.3) -----------------------------------------------------------------

OPTIONS_FLOOD = """
import socket, sys, time
ip, port, server, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
msg = (f"OPTIONS sip:x@{server} SIP/2.0\\r\\nVia: SIP/2.0/UDP {ip}:{port};branch=z9hG4bKflood\\r\\n"
       f"From: <sip:f@{ip}>;tag=1\\r\\nTo: <sip:x@{server}>\\r\\nCall-ID: flood-{port}\\r\\nCSeq: 1 OPTIONS\\r\\n"
       "Max-Forwards: 70\\r\\nContent-Length: 0\\r\\n\\r\\n").encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
sent, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(500):
        s.sendto(msg, (server, 5060))
    sent += 500
print(sent)
"""
FLOOD_PORTS = (5071, 5072, 5073)
# At the server: every OPTIONS counted, and those whose Via still names the phone (nfsip never saw them:
# it rewrites the Via of every request it reads), then dropped. "OPTIONS sip:x@198.51.100.2 SIP/2.0\r\n
# Via: SIP/2.0/UDP " is 53 bytes, so the Via's host starts at bit (8 + 53) * 8 of the UDP header.
FLOOD_SINK = """
table inet sink {
    chain pre {
        type filter hook prerouting priority raw; policy accept;
        udp dport 5060 @th,64,56 0x4f5054494f4e53 counter
        udp dport 5060 @th,488,64 0x31302e302e302e32 counter
        udp dport 5060 @th,64,56 0x4f5054494f4e53 drop
    }
}
"""


def sink_counts(lab: Lab) -> tuple[int, int]:
    """(OPTIONS that reached the server, of which unrewritten)."""
    out = json.loads(lab.run(T.SERVER, ["nft", "-j", "list", "table", "inet", "sink"]).stdout)
    rules = [i["rule"]["expr"] for i in out["nftables"] if "rule" in i]
    counts = [expr[-1]["counter"]["packets"] for expr in rules if "counter" in expr[-1]]
    return counts[0], counts[1]


def flood(lab: Lab, seconds: float) -> list:
    return [
        lab.popen(
            "phone1",
            [sys.executable, "-c", OPTIONS_FLOOD, T.PHONE_IPS[0], str(port), T.SERVER_IP, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for port in FLOOD_PORTS
    ]


def bypassed(daemon: NfsipDaemon) -> float:
    """What the kernel diverted to the queue but the daemon never read (docs/metrics.md)."""
    return daemon.metric("nfsip_sip_diverted_packets_total") - sum(daemon.verdicts().values())


def test_a_flooding_host_loses_only_its_own_service(lab: Lab):
    """One LAN host floods valid OPTIONS from three processes; another phone calls meanwhile. The per-host
    rate before the queue passes the flood's excess on unchanged (counted), so the queue never overflows:
    the other phone's INVITE is rewritten and its call has media both ways, and nothing bypassed nfsip."""
    daemon = NfsipDaemon(lab).start()
    try:
        lab.nft(T.SERVER, FLOOD_SINK)
        with SippUas(lab) as uas, Capture(lab, "phone2", "eth0") as at_phone:
            senders = flood(lab, 4.0)
            time.sleep(0.5)
            call = run_uac(lab, "phone2")
            sent = sum(int(p.communicate(timeout=60)[0]) for p in senders)
            assert call.ok and uas.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[1], src=T.SERVER_IP) >= int(PCAP_RTP_PACKETS * 0.95)
        arrived, unrewritten = sink_counts(lab)
        over_rate = daemon.metric("nfsip_sip_over_rate_packets_total")
        print(f"flood: {sent} OPTIONS sent, {arrived} arrived, {over_rate:.0f} over rate, {unrewritten} unrewritten")
        assert over_rate >= sent * 0.5, (sent, over_rate)
        assert bypassed(daemon) == 0
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_the_bypass_count_is_what_passed_nfsip_by(lab: Lab):
    """Without the per-host rate (set out of reach), the same flood overflows the queue and most of it
    fails open. What docs/metrics.md tells admins to alert on (diverted minus the verdicts given) equals the
    OPTIONS that reached the server unrewritten, up to the first datagram of each flow (queued twice: before
    and after SNAT). The kernel's enqueued counter, which the docs used to name, counts them all as enqueued."""
    daemon = NfsipDaemon(lab, config={"sip_rate_per_host": 1_000_000, "sip_burst_per_host": 1_000_000}).start()
    try:
        lab.nft(T.SERVER, FLOOD_SINK)
        senders = flood(lab, 2.5)
        sent = sum(int(p.communicate(timeout=60)[0]) for p in senders)
        time.sleep(1)
        arrived, unrewritten = sink_counts(lab)
        count = bypassed(daemon)
        enqueued = daemon.metric("nfsip_queue_enqueued_packets_total")
        diverted = daemon.metric("nfsip_sip_diverted_packets_total")
        print(
            f"flood: {sent} sent, {arrived} arrived, {unrewritten} unrewritten, bypass metric {count:.0f}, "
            f"diverted {diverted:.0f}, enqueued {enqueued:.0f}"
        )
        assert arrived == sent and unrewritten > 0
        # The daemon passes a few on unchanged itself (no-conntrack: a flow's sender not found yet), and
        # those it read before SNAT ("not-translated") come back after it.
        passed_unchanged = sum(
            v for outcome, v in daemon.verdicts().items() if outcome not in ("rewritten", "not-translated")
        )
        assert abs(count + passed_unchanged - unrewritten) <= len(FLOOD_PORTS), (count, passed_unchanged, unrewritten)
        assert daemon.metric("nfsip_sip_over_rate_packets_total") == 0
        assert diverted - enqueued < unrewritten / 10  # the old measure saw (almost) none of it
    finally:
        assert daemon.stop() == 0, daemon.log()
