"""Port edges through the real daemon (issue 13, item 4): a phone's SDP whose RTCP port would be 65536
(`m=audio 65535`, `m=audio 65534/2`) opens nothing and is counted, and another phone's call beside it keeps
its pinholes, its media and its per-call media counts.

Measured before the fix: the engine accepted such SDP, the nft transaction failed on encoding, the retry
pinhole by pinhole left the RTP pinhole installed, and every media sample failed ("int too big to
convert") while that call lived: no `nfsip_call_media_*` series for any call."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

from nfsiplab import topology as T
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import SippUac, SippUas

from .lab_support import require_lab

pytestmark = pytest.mark.lab

INVITE = (
    "INVITE sip:x@{server} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{branch}\r\n"
    "From: <sip:a@example.org>;tag=1\r\nTo: <sip:x@example.org>\r\nCall-ID: edge-{branch}\r\n"
    "CSeq: 1 INVITE\r\nContact: <sip:a@10.0.0.2:5060>\r\nContent-Type: application/sdp\r\n"
    "Content-Length: {length}\r\n\r\n{sdp}"
)
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('10.0.0.2', 5060))
for chunk in sys.stdin.read().split('\\x00\\x00'):
    s.sendto(chunk.encode(), (sys.argv[1], 5060)); time.sleep(0.1)
"""


def invite(branch: str, media: str) -> str:
    sdp = f"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n{media}"
    return INVITE.format(server=T.SERVER_IP, branch=branch, length=len(sdp), sdp=sdp)


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_lab()
    with Lab(phones=2) as lab:
        lab.masquerade()
        yield lab


def test_sdp_past_port_65535_opens_nothing_and_spoils_no_other_call(lab: Lab):
    daemon = NfsipDaemon(lab, config={"media_sample_interval": 1}).start()
    try:
        bad = [invite("b1", "m=audio 65535 RTP/AVP 0\r\n"), invite("b2", "m=audio 65534/2 RTP/AVP 0\r\n")]
        lab.run("phone1", [sys.executable, "-c", SENDER, T.SERVER_IP], input="\0\0".join(bad))
        time.sleep(0.5)
        assert daemon.metric("nfsip_policy_refusals_total", reason="media-port-range") == 2
        assert daemon.status()["pinholes"] == 0
        # Another phone's real call, with media both ways, while the bad attempts would still be live
        # (pinhole_setup_timeout): its pinholes, and its counts in every sample.
        uas = SippUas(lab).start()
        uac = SippUac(lab, "phone2").start()
        time.sleep(5)
        assert daemon.metric("nfsip_pinholes_active") == 2 and daemon.metric("nfsip_calls_active") == 1
        media = [ln for ln in daemon.metrics().splitlines() if ln.startswith("nfsip_call_media_packets_total{")]
        assert len(media) == 2 and all(float(ln.rsplit(" ", 1)[1]) > 0 for ln in media), media
        assert uac.wait(60).ok and uas.wait(20).ok
        assert daemon.metric("nfsip_nft_errors_total") == 0
        assert daemon.metric("nfsip_media_sample_errors_total") == 0
    finally:
        assert daemon.stop() == 0, daemon.log()
    log = daemon.log()
    assert "int too big" not in log and "failed" not in log.replace("INVITE failed", ""), log
    assert "makes port 65536, outside 1-65535 (media-port-range)" in log
