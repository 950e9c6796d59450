"""nfsip end to end in the namespace lab: real sipp calls cross the router with nfsip running.

Each call plays 236 RTP packets each way (about 8 s). What is checked is what a VoIP engineer would check
with tshark on both sides: the SDP the server got, where the media came from, what arrived, and what
is left in the router's maps and conntrack table after the BYE.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import Capture, UdpPacket, count_rtp, media_report, rtp_packets, sip_messages
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas, run_uac

from .lab_support import require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


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
    daemon = NfsipDaemon(lab).start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        log = daemon.log()
        assert "Traceback" not in log, log
        assert code == 0, log


def server_invite(packets: list[UdpPacket]):
    for p in sip_messages(packets):
        if p.payload.startswith(b"INVITE "):
            return parse_message(p.payload)
    raise AssertionError("the server received no INVITE")


def media_conntrack(lab: Lab, ports: set[int]) -> list[str]:
    out = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    return [line for line in out.splitlines() if any(f"sport={p} " in line or f"dport={p} " in line for p in ports)]


def test_call_with_nfsip_has_media_both_ways_and_leaves_nothing_behind(lab: Lab, nfsip: NfsipDaemon):
    uas = SippUas(lab).start()
    with Capture(lab, T.SERVER, "eth0") as at_server, Capture(lab, "phone1", "eth0") as at_phone:
        uac = SippUac(lab, "phone1").start()
        # While the call is up, status shows it with its pinholes.
        time.sleep(3)
        live = nfsip.status()
        result = uac.wait(60)
        assert result.ok, result.log
        assert uas.wait(20).ok
    server_pkts, phone_pkts = at_server.packets(), at_phone.packets()
    report = media_report({"server": server_pkts, "phone1": phone_pkts})

    # The server's SDP carries only the public address, and a public port.
    invite = server_invite(server_pkts)
    sdp_text = invite.body().decode()
    assert "10.0.0." not in sdp_text, sdp_text
    assert invite.sdp.connection.address == T.ROUTER_WAN_IP
    assert invite.contacts[0].uri.hostport.host == T.ROUTER_WAN_IP
    public_port = invite.sdp.media[0].port

    # Media both ways, at least 95 %.
    assert count_rtp(server_pkts, dst=T.SERVER_IP) >= MIN_RTP, report
    assert count_rtp(phone_pkts, dst=T.PHONE_IPS[0]) >= MIN_RTP, report
    # The phone's RTP leaves the router from the public port written in the SDP.
    sources = {(p.src, p.sport) for p in rtp_packets(server_pkts) if p.dst == T.SERVER_IP}
    assert sources == {(T.ROUTER_WAN_IP, public_port)}, report

    calls = live["calls"]
    assert len(calls) == 1 and calls[0]["lan_host"] == T.PHONE_IPS[0], live
    holes = {(h["public_port"], h["private"]) for h in calls[0]["pinholes"]}
    assert (public_port, f"{T.PHONE_IPS[0]}:6000") in holes, live
    assert all(0 < h["seconds_left"] <= 7200 for h in calls[0]["pinholes"]), live

    # After the BYE: no map entry, no conntrack entry of the media flows ...
    assert nfsip.status()["pinholes"] == 0
    leftovers = media_conntrack(lab, {public_port, public_port + 1, 6000, 6001})
    assert leftovers == [], leftovers
    assert nfsip.metric("nfsip_pinholes_active") == 0
    assert nfsip.metric("nfsip_pinholes_opened_total") >= 2
    # ... and what the server sends to the former public port is not delivered.
    with Capture(lab, "phone1", "eth0") as late:
        sender = (
            "import socket,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('{T.SERVER_IP}',6000))\n"
            f"for port in ({public_port},{public_port + 1}):\n"
            "    for i in range(5):\n"
            f"        s.sendto(b'\\x80\\x08'+bytes(170),('{T.ROUTER_WAN_IP}',port)); time.sleep(0.02)\n"
        )
        lab.run(T.SERVER, [sys.executable, "-c", sender])
    assert [p for p in late.packets() if p.dst == T.PHONE_IPS[0] and p.sport != 5060] == []


def test_two_phones_same_ports_concurrent_calls(lab: Lab, nfsip: NfsipDaemon):
    uas = SippUas(lab, calls=2).start()
    with (
        Capture(lab, T.SERVER, "eth0") as at_server,
        Capture(lab, "phone1", "eth0") as at_p1,
        Capture(lab, "phone2", "eth0") as at_p2,
    ):
        calls = [SippUac(lab, node).start() for node in ("phone1", "phone2")]
        results = [c.wait(60) for c in calls]
        assert all(r.ok for r in results), [r.log for r in results]
        assert uas.wait(20).ok
    server_pkts = at_server.packets()
    report = media_report({"server": server_pkts, "phone1": at_p1.packets(), "phone2": at_p2.packets()})
    assert count_rtp(at_p1.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP, report
    assert count_rtp(at_p2.packets(), dst=T.PHONE_IPS[1]) >= MIN_RTP, report
    # Two distinct public media ports reached the server, each carrying one phone's full stream.
    per_source: dict[int, int] = {}
    for p in rtp_packets(server_pkts):
        if p.dst == T.SERVER_IP:
            per_source[p.sport] = per_source.get(p.sport, 0) + 1
    assert len(per_source) == 2 and all(n >= MIN_RTP for n in per_source.values()), report
    invites = [parse_message(p.payload) for p in sip_messages(server_pkts) if p.payload.startswith(b"INVITE")]
    assert {m.sdp.media[0].port for m in invites} == set(per_source), report
    assert nfsip.status()["pinholes"] == 0


def test_unparseable_message_passes_unchanged_and_is_counted(lab: Lab, nfsip: NfsipDaemon):
    invalid = (CORPUS / "rfc4475" / "badvers.dat").read_bytes() if CORPUS.is_dir() else b"SIP/7.0 junk\r\n\r\n"
    junk = [invalid, b"\x00\x01garbage that is not SIP\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]
    before = sum(nfsip.metric("nfsip_verdicts_total", outcome="parse-error") for _ in range(1))
    with Capture(lab, T.SERVER, "eth0", capture_filter="udp port 5060") as at_server:
        sender = (
            "import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('{T.PHONE_IPS[0]}',5070))\n"
            f"for data in {junk!r}:\n"
            f"    s.sendto(data,('{T.SERVER_IP}',5060)); time.sleep(0.05)\n"
        )
        lab.run("phone1", [sys.executable, "-c", sender])
    received = [p.payload for p in at_server.packets() if p.dport == 5060]
    assert received == junk  # byte for byte, nothing lost
    assert nfsip.metric("nfsip_verdicts_total", outcome="parse-error") - before == len(junk)
    assert nfsip.alive()
    # The daemon still works: a normal call right after has media both ways.
    uas = SippUas(lab).start()
    with Capture(lab, "phone1", "eth0") as at_phone:
        assert run_uac(lab, "phone1").ok
    assert uas.wait(20).ok
    assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP


def big_invite(size: int, call_id: str) -> bytes:
    """An INVITE from phone1 padded with ICE candidates and a long header to about `size` bytes."""
    candidates = "".join(
        f"a=candidate:{i} 1 UDP {2130706431 - i} 10.0.0.2 {6000 + 2 * i} typ host\r\n" for i in range(40)
    )
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
        f"m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n{candidates}"
    )
    head = (
        "INVITE sip:echo@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKbig\r\n"
        f"From: <sip:phone@example.org>;tag=1\r\nTo: <sip:echo@example.org>\r\nCall-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\nContact: <sip:phone@10.0.0.2:5060>\r\nContent-Type: application/sdp\r\n"
    )
    pad = max(0, size - len(head) - len(sdp) - 40)
    head += f"X-Padding: {'p' * pad}\r\n"
    return f"{head}Content-Length: {len(sdp)}\r\n\r\n{sdp}".encode()


@pytest.mark.parametrize("size", [5000, 30000])
def test_messages_beyond_the_queue_copy_limit_are_rewritten(lab: Lab, nfsip: NfsipDaemon, size: int):
    """netfilterqueue alone copies 4016 bytes; nfsip lifts the copy range (nfsip.kernel.queue). A 30 KB
    datagram is fragmented on the LAN and reassembled by conntrack before the queue."""
    message = big_invite(size, f"big-{size}")
    assert len(message) >= size - 100
    with Capture(lab, T.SERVER, "eth0", capture_filter="udp port 5060 or ip[6:2] & 0x1fff != 0") as at_server:
        sender = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('{T.PHONE_IPS[0]}',5060))\n"
            f"s.sendto(sys.stdin.buffer.read(),('{T.SERVER_IP}',5060))\n"
        )
        lab.run("phone1", [sys.executable, "-c", sender], input=message.decode())
    got = [p.payload for p in at_server.packets() if p.payload.startswith(b"INVITE")]
    assert len(got) == 1, [len(p.payload) for p in at_server.packets()]
    msg = parse_message(got[0])
    assert msg.content_length == len(msg.body())
    assert msg.sdp.connection.address == T.ROUTER_WAN_IP
    assert msg.vias[0].sent_by.host == T.ROUTER_WAN_IP
    assert b"X-Padding: " + b"p" * 100 in got[0]
    live = nfsip.status()
    assert any(c["call_id"] == f"big-{size}" for c in live["calls"]), live
