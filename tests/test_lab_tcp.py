"""SIP over TCP through nfsip's relay (nfsip.kernel.tcprelay), through the real kernel path: a phone's TCP
connection to the server is redirected to the relay, which opens the router's own connection and rewrites
whole messages as for UDP. Here with real sockets on both ends (the byte stream is what is tested: segments,
keepalives, bad input, closing) and with sipp over TCP (calls with media both ways)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon

from .lab_support import require_lab

pytestmark = pytest.mark.lab

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
for chunk in json.load(open(sys.argv[2])):
    c.sendall(bytes.fromhex(chunk)); time.sleep(float(sys.argv[3]))
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
    lab.run("phone1", [sys.executable, "-c", CLIENT, T.SERVER_IP, str(sent), str(pause)])
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
