"""SIP over TCP through nfsip's relay (nfsip.kernel.tcprelay), through the real kernel path: a phone's TCP
connection to the server is redirected to the relay, which opens the router's own connection and rewrites
whole messages as for UDP. Here with real sockets on both ends (the byte stream is what is tested: segments,
keepalives, bad input, closing) and with sipp over TCP (calls with media both ways)."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import Capture, UdpPacket, count_rtp
from nfsiplab.kamailio import Kamailio, have_kamailio
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCallee, SippCaller, SippPhone, SippResult, SippUac, SippUas
from nfsiplab.tls import TlsPhone, TlsRegistrar

from .lab_support import require, require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
PHONE = T.phone_ip(1)


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        lab.masquerade()
        yield lab


@pytest.fixture
def nfsip(lab: Lab) -> Iterator[NfsipDaemon]:
    with NfsipDaemon(lab, log_level="debug") as daemon:
        yield daemon


def wait_for(predicate, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def invite(n: int, body_port: int = 6000) -> bytes:
    sdp = (
        f"v=0\r\no=- 1 1 IN IP4 {PHONE}\r\ns=-\r\nc=IN IP4 {PHONE}\r\nt=0 0\r\n"
        f"m=audio {body_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    ).encode()
    head = (
        f"INVITE sip:bob@{T.SERVER_IP} SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {PHONE}:5060;branch=z9hG4bK-tcp{n}\r\n"
        f"From: <sip:alice@{PHONE}>;tag=t{n}\r\nTo: <sip:bob@{T.SERVER_IP}>\r\n"
        f"Call-ID: tcp-{n}@{PHONE}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{PHONE}:5060;transport=tcp>\r\n"
        f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n"
    )
    return head.encode() + sdp


# The server end: accepts one connection on 5060, records every byte it receives (hex, one JSON line per
# recv) until the peer closes or `seconds` pass, then says how it ended.
SERVER = """
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5060)); s.listen(1); s.settimeout(float(sys.argv[2]))
try:
    c, peer = s.accept()
except socket.timeout:
    print(json.dumps({"accepted": None})); sys.exit(0)
print(json.dumps({"accepted": peer[0]}), flush=True)
c.settimeout(float(sys.argv[2])); data = b""
try:
    while True:
        chunk = c.recv(65536)
        if not chunk:
            print(json.dumps({"end": "closed", "data": data.hex()})); break
        data += chunk
except socket.timeout:
    print(json.dumps({"end": "timeout", "data": data.hex()}))
"""

# The phone end: connects to the server's 5060, sends each hex chunk of the JSON list in file argv[2] with a
# pause between them, then waits a moment and closes.
CLIENT = """
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], 5060), timeout=5)
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i, chunk in enumerate(json.load(open(sys.argv[2]))):
    if i:
        time.sleep(float(sys.argv[3]))
    c.sendall(bytes.fromhex(chunk))
time.sleep(0.5)
c.close()
"""


def relay(
    lab: Lab, tmp_path: Path, chunks: list[bytes], pause: float = 0.0, wait: float = 4.0
) -> tuple[str | None, str, bytes]:
    """Send `chunks` from phone1 over one TCP connection to the server, through the router; returns (the
    address the server saw the connection from, how it ended, the bytes it received)."""
    server = lab.popen(T.SERVER, [sys.executable, "-c", SERVER, T.SERVER_IP, str(wait)], stdout=-1, text=True)
    time.sleep(0.3)
    sent = tmp_path / f"chunks-{time.monotonic_ns()}.json"
    sent.write_text(json.dumps([c.hex() for c in chunks]))
    lab.run("phone1", [sys.executable, "-c", CLIENT, T.SERVER_IP, str(sent), str(pause)], timeout=wait + 30)
    out, _ = server.communicate(timeout=wait + 10)
    lines = [json.loads(line) for line in out.splitlines()]
    accepted = lines[0]["accepted"]
    end = lines[-1] if len(lines) > 1 else {"end": "none", "data": ""}
    return accepted, end["end"], bytes.fromhex(end["data"])


def messages(data: bytes) -> list[bytes]:
    """The messages of a received stream (each of these tests sends whole messages with Content-Length)."""
    out = []
    while data.strip(b"\r\n"):
        data = data.lstrip(b"\r\n")
        head, _, rest = data.partition(b"\r\n\r\n")
        found = re.search(rb"^Content-Length: *(\d+)", head, re.M | re.I)
        length = int(found.group(1)) if found else 0
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out


def test_several_messages_in_one_segment_and_one_across_many(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """Two INVITEs in one segment, then one dripped a few bytes at a time, then an RFC 5626 keepalive: the
    server gets all three from the router's address, each rewritten (the phone's address gone), in order,
    and the keepalive's bytes as they were."""
    first, second, third = invite(1), invite(2, 6002), invite(3, 6004)
    drip = [third[i : i + 7] for i in range(0, len(third), 7)]
    seen_from, end, data = relay(lab, tmp_path, [first + second, *drip, b"\r\n\r\n"], pause=0.01)
    assert seen_from == T.ROUTER_WAN_IP and end == "closed", nfsip.log()[-3000:]
    got = messages(data)
    assert [parse_message(m).call_id for m in got] == [f"tcp-{n}@{PHONE}" for n in (1, 2, 3)], data
    for m in got:
        msg = parse_message(m)
        assert msg.sdp is not None and msg.sdp.connection is not None
        assert msg.sdp.connection.address == T.ROUTER_WAN_IP and PHONE.encode() not in msg.body()
        assert msg.contacts[0].uri.hostport is not None and msg.contacts[0].uri.hostport.host == T.ROUTER_WAN_IP
        assert msg.content_length == len(msg.body())
    # Nothing but the three messages and, after them, the keepalive's four bytes.
    assert len(data) == sum(len(m) for m in got) + 4 and data.endswith(got[-1] + b"\r\n\r\n")
    assert nfsip.metric("nfsip_sip_messages_total", transport="tcp", kind="INVITE") == 3
    assert nfsip.status()["pinholes"] == 6  # RTP and RTCP of three calls, until they time out


@pytest.mark.parametrize(
    ("chunks", "reason"),
    [
        ([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40], "garbage"),  # a TLS ClientHello
        ([b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"], "garbage"),
        ([b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Pad: " + b"a" * 70000], "header-too-large"),
        ([b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 1000000\r\n\r\n"], "message-too-large"),
    ],
    ids=["tls", "http", "unterminated-headers", "huge-content-length"],
)
def test_bad_input_closes_that_connection_only(
    lab: Lab, nfsip: NfsipDaemon, tmp_path: Path, chunks: list[bytes], reason: str
):
    """What cannot be framed as SIP closes its connection (counted by reason); nothing of it reaches the
    server as SIP, and the daemon goes on: the next connection is relayed as before."""
    _seen, end, data = relay(lab, tmp_path, chunks)
    assert (end, data) == ("closed", b""), (end, data[:80])
    assert nfsip.metric("nfsip_tcp_relay_errors_total", reason=reason) == 1, nfsip.metrics()
    seen_from, end, data = relay(lab, tmp_path, [invite(9)])
    assert seen_from == T.ROUTER_WAN_IP and [parse_message(m).call_id for m in messages(data)] == [f"tcp-9@{PHONE}"]


def test_a_body_shorter_than_its_content_length_is_never_sent_on(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """A Content-Length larger than what follows, then the phone closes: the incomplete message is not
    forwarded (it cannot be rewritten); the relay closes the server's connection too."""
    whole = invite(5)
    _seen, end, data = relay(lab, tmp_path, [whole[:-10]])
    assert end == "closed" and data == b""


def test_tcp_call_media_both_ways(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """A call over TCP (sipp -t t1 at both ends): the server gets the router's address in the SDP and media
    flows both ways through the pinholes; after the BYE nothing is left and the relay holds no connection."""
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, T.SERVER, T.HOST_IF) as at_server:
        uas = SippUas(lab, transport="t1").start()
        uac = SippUac(lab, "phone1", transport="t1").start()
        result = uac.wait(60)
        uas.wait(20)
    assert result.ok, result.describe()
    assert count_rtp(at_phone.packets(), dst=PHONE) >= MIN_RTP, nfsip.log()[-3000:]
    assert count_rtp(at_server.packets(), src=T.ROUTER_WAN_IP) >= MIN_RTP
    assert nfsip.status()["pinholes"] == 0
    time.sleep(1)
    assert nfsip.metric("nfsip_tcp_connections") == 0


def test_tcp_calls_over_a_connection_per_call_and_two_phones_on_the_same_ports(lab: Lab, nfsip: NfsipDaemon):
    """sipp -t tn (a new connection per call) from both phones at once, each with SIP port 5060 and RTP port
    6000: every call gets the router's address and its own public ports, media both ways."""
    with Capture(lab, "phone1", T.HOST_IF) as at1, Capture(lab, "phone2", T.HOST_IF) as at2:
        uas = SippUas(lab, transport="tn", calls=2).start()
        uacs = [SippUac(lab, phone, transport="tn").start() for phone in ("phone1", "phone2")]
        results = [u.wait(60) for u in uacs]
        uas.wait(20)
    assert all(r.ok for r in results), [r.describe() for r in results]
    assert count_rtp(at1.packets(), dst=T.phone_ip(1)) >= MIN_RTP, nfsip.log()[-3000:]
    assert count_rtp(at2.packets(), dst=T.phone_ip(2)) >= MIN_RTP, nfsip.log()[-3000:]
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0)


def test_thousand_tcp_calls_over_one_connection_leave_nothing(lab: Lab):
    """1000 short calls (no RTP) over one persistent connection (sipp -t t1) at 50 calls/s: all succeed;
    no pinhole, no relayed connection and no relay error is left."""
    n = 1000
    config = {"pinhole_rate_per_host": 400, "pinhole_burst_per_host": 800}
    with NfsipDaemon(lab, config=config) as nfsip:
        callee = SippCallee(lab, kind="nomedia", calls=n, timeout_s=70, transport="t1").start()
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
            transport="t1",
        ).start()
        result = caller.wait(75)
        callee_result = callee.wait(20)
        assert result.successful_calls == n and result.failed_calls == 0, result.describe()
        assert callee_result.successful_calls == n, callee_result.describe()
        assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 5), nfsip.status()["pinholes"]
        assert wait_for(lambda: nfsip.metric("nfsip_tcp_connections") == 0, 5)
        assert nfsip.metric("nfsip_tcp_relay_errors_total") == 0, nfsip.metrics()
        assert nfsip.metric("nfsip_sip_messages_total", transport="tcp", kind="INVITE") == n
        assert nfsip.metric("nfsip_sip_messages_total", transport="udp") == 0


# ------------------------------------------------------------------ registrations over TCP (Kamailio)
@pytest.fixture
def far_end(lab: Lab) -> str:
    lab.add_wan_host("wanhost2")
    return "wanhost2"


def kamailio(lab: Lab, tmp_path: Path, **kw: object) -> Kamailio:
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")
    return Kamailio(lab, tcp=True, workdir=tmp_path / "kamailio", **kw).start()  # type: ignore[arg-type]


def call_phone(lab: Lab, far_end: str, user: str = "alice") -> tuple[SippResult, list[UdpPacket]]:
    """The far end calls `user` through Kamailio (over UDP); returns the result and what phone1 received."""
    with Capture(lab, "phone1", T.HOST_IF) as at_phone:
        result = SippCaller(lab, far_end, user, proxy=T.SERVER_IP).start().wait(40)
    return result, at_phone.packets()


def test_registered_tcp_phone_is_called_over_its_own_connection(
    lab: Lab, nfsip: NfsipDaemon, tmp_path: Path, far_end: str
):
    """alice registers over TCP: Kamailio knows her at the router's end of her connection, and its INVITE
    reaches her over that same connection (connection reuse); the call has media both ways."""
    k = kamailio(lab, tmp_path)
    try:
        alice = SippPhone(lab, "phone1", user="alice", transport="t1", registered_ms=40000).start()
        (contact,) = k.wait_registered("alice")
        assert contact.startswith(f"sip:alice@{T.ROUTER_WAN_IP}:") and "transport=tcp" in contact, contact
        result, at_phone = call_phone(lab, far_end)
        alice.kill()
    finally:
        k.stop()
    assert result.ok, result.describe() + nfsip.log()[-3000:]
    assert count_rtp(at_phone, dst=PHONE) >= MIN_RTP and count_rtp(at_phone, src=PHONE) >= MIN_RTP
    status = nfsip.status()
    assert [r["transport"] for r in status["registrations"]] == ["tcp"], status


def test_registrar_new_connection_reaches_the_phone_through_its_pinhole(
    lab: Lab, nfsip: NfsipDaemon, tmp_path: Path, far_end: str
):
    """Kamailio closes an idle connection after 3 s (tcp_connection_lifetime): the relay closes the phone's
    side too. The next INVITE makes Kamailio open a new connection to alice's registered endpoint, the
    router's: the registration's pinhole (map sip_tcp) takes it to the relay, which connects to alice's
    Contact, and the call has media both ways."""
    k = kamailio(lab, tmp_path, tcp_connection_lifetime_s=3)
    try:
        alice = SippPhone(lab, "phone1", user="alice", transport="t1", registered_ms=60000).start()
        k.wait_registered("alice")
        assert wait_for(lambda: nfsip.metric("nfsip_tcp_connections") == 0, 15), "Kamailio kept the connection"
        table = lab.run(T.ROUTER, ["nft", "list", "map", "inet", "nfsip", "sip_tcp"]).stdout
        assert T.SERVER_IP in table and PHONE in table, table
        result, at_phone = call_phone(lab, far_end)
        alice.kill()
    finally:
        k.stop()
    assert result.ok, result.describe() + nfsip.log()[-3000:]
    assert count_rtp(at_phone, dst=PHONE) >= MIN_RTP and count_rtp(at_phone, src=PHONE) >= MIN_RTP


def test_a_crash_closes_tcp_phones_connections_and_leaves_udp_calls_alone(lab: Lab, tmp_path: Path, far_end: str):
    """A daemon crash ends the relayed connections (the relay is the daemon): a TCP phone's connection is
    closed, and the phone registering again over a new one is helped by the next daemon. A UDP call up
    through the crash keeps its media both ways (its NAT bindings live in conntrack, its pinholes in the
    table, which the next daemon takes over)."""
    k = kamailio(lab, tmp_path)
    daemon = NfsipDaemon(lab).start()
    try:
        with Capture(lab, "phone2", T.HOST_IF) as at_udp:
            # The UDP call's UAS on the far end (Kamailio has the server's port 5060).
            uas = SippUas(lab, far_end).start()
            udp_call = SippUac(lab, "phone2", server=lab.ip_of(far_end), pause_ms=8000).start()
            alice = SippPhone(lab, "phone1", user="alice", transport="t1", registered_ms=60000).start()
            k.wait_registered("alice")
            assert wait_for(lambda: daemon.metric("nfsip_tcp_connections") == 1, 5)
            time.sleep(1)
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGKILL)  # a crash: the table stays, the relay's sockets go
            daemon.proc.wait(5)
            daemon = NfsipDaemon(lab).start()
            assert udp_call.wait(40).ok and uas.wait(20).ok
        assert count_rtp(at_udp.packets(), dst=T.phone_ip(2)) >= MIN_RTP
        alice.kill()
        # The old connection is gone with the old daemon; a new registration goes through the new one.
        alice = SippPhone(lab, "phone1", user="alice", transport="t1", registered_ms=40000).start()
        assert wait_for(lambda: daemon.metric("nfsip_tcp_connections") == 1, 10), daemon.log()
        result, at_phone = call_phone(lab, far_end)
        alice.kill()
        assert result.ok, result.describe() + daemon.log()[-3000:]
        assert count_rtp(at_phone, dst=PHONE) >= MIN_RTP
    finally:
        k.stop()
        daemon.stop()


def test_tls_sip_is_left_alone_and_counted(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """A phone's REGISTER over TLS to the server's 5061: nfsip cannot read it, so it passes untouched (the
    handshake and the message go through), and the connection is counted and its host listed."""
    server = TlsRegistrar(lab, workdir=tmp_path).start()
    try:
        result = TlsPhone(lab, "phone1", server).start().wait()
    finally:
        server.stop()
    assert result.reply is not None and result.reply.startswith("SIP/2.0 200"), result
    assert nfsip.metric("nfsip_sip_tls_flows_total") == 1, nfsip.metrics()
    assert nfsip.status()["tls_hosts"] == [PHONE]
    assert nfsip.metric("nfsip_sip_messages_total", transport="tcp") == 0


def test_an_idle_connection_is_kept(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """A connection quiet between two messages for longer than an unfinished message may take (30 s) stays
    up: only a message under way is timed; phones and registrars keep theirs for hours."""
    seen_from, end, data = relay(lab, tmp_path, [invite(1), invite(2)], pause=35.0, wait=45.0)
    assert seen_from == T.ROUTER_WAN_IP and end == "closed", nfsip.log()[-2000:]
    assert [parse_message(m).call_id for m in messages(data)] == [f"tcp-{n}@{PHONE}" for n in (1, 2)]
    assert nfsip.metric("nfsip_tcp_relay_errors_total") == 0


def test_ipv6_tcp_call_media_both_ways(lab: Lab, nfsip: NfsipDaemon):
    """A phone calling over IPv6 and TCP: the relay's IPv6 side (its connection to the server leaves from
    the router's IPv6 address, which the SDP then names), media both ways."""
    phone6 = lab.ip6_of("phone1")
    with Capture(lab, "phone1", T.HOST_IF) as at_phone, Capture(lab, T.SERVER, T.HOST_IF) as at_server:
        uas = SippUas(lab, ip=T.SERVER_IP6, transport="t1").start()
        uac = SippUac(lab, "phone1", server=T.SERVER_IP6, transport="t1").start()
        result = uac.wait(60)
        uas.wait(20)
    assert result.ok, result.describe() + nfsip.log()[-3000:]
    assert count_rtp(at_phone.packets(), dst=phone6) >= MIN_RTP, nfsip.log()[-3000:]
    assert count_rtp(at_server.packets(), src=T.ROUTER_WAN_IP6) >= MIN_RTP
    assert "tcp out: INVITE" in nfsip.log()


def test_a_message_left_unfinished_is_given_up_after_30_s(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """Half a message, then nothing while the connection stays open (a slowloris): after 30 s the relay
    closes both sides and counts it; nothing of the half message was sent on."""
    whole = invite(6)
    seen_from, end, data = relay(lab, tmp_path, [whole[:200], b""], pause=40.0, wait=45.0)
    assert seen_from == T.ROUTER_WAN_IP and (end, data) == ("closed", b""), (end, data[:80])
    assert nfsip.metric("nfsip_tcp_relay_errors_total", reason="incomplete-message") == 1, nfsip.metrics()


def options(n: int) -> bytes:
    return (
        f"OPTIONS sip:{T.SERVER_IP} SIP/2.0\r\nVia: SIP/2.0/TCP {PHONE}:5060;branch=z9hG4bK-o{n}\r\n"
        f"From: <sip:alice@{PHONE}>;tag=o{n}\r\nTo: <sip:{T.SERVER_IP}>\r\nCall-ID: opt-{n}@{PHONE}\r\n"
        "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def test_a_host_over_its_sip_rate_is_slowed_not_dropped(lab: Lab, tmp_path: Path):
    """sip_rate_per_host applies to TCP too: 100 OPTIONS sent at once on one connection by a host allowed 20
    per second (burst 20) all arrive, in order, while the relay pauses reading that connection."""
    with NfsipDaemon(lab, config={"sip_rate_per_host": 20, "sip_burst_per_host": 20}) as nfsip:
        _seen, end, data = relay(lab, tmp_path, [b"".join(options(n) for n in range(100))], wait=15.0)
        got = [parse_message(m).call_id for m in messages(data)]
        assert got == [f"opt-{n}@{PHONE}" for n in range(100)], (end, len(got))
        assert nfsip.metric("nfsip_tcp_relay_paused_total") >= 1, nfsip.metrics()
        assert nfsip.metric("nfsip_tcp_relay_errors_total") == 0
