"""The daemon's held verdicts: the pinhole changes of one drain of the queue go to the kernel as one
transaction, before any verdict, in message order; a failed transaction falls back message by message and a
datagram whose pinholes could not be installed passes unchanged. Real SIP messages, a real engine; the
queue's packets, the table and conntrack are the in-memory fakes of tests/fakes.py, which record what the
daemon does."""

from __future__ import annotations

import socket
import struct

import pytest

from nfsip.config import Config
from nfsip.core.model import Endpoint
from nfsip.core.packet import internet_checksum
from nfsip.daemon import BATCH_MAX, Daemon
from nfsip.kernel.conntrack import MediaCounts

from .fakes import FakeConntrack, FakePacket, FakeTable, fake_daemon

PUBLIC, PHONE, SERVER = "198.51.100.1", "10.0.0.2", "198.51.100.2"


def sip(method: str, call: str, body: str = "") -> bytes:
    cseq = "1 INVITE" if method == "INVITE" else f"2 {method}"
    totag = "" if method == "INVITE" else ";tag=b1"
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:bob@{SERVER} SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bK{call}{method}\r\n"
        f"From: <sip:alice@example.org>;tag=a1\r\nTo: <sip:bob@example.org>{totag}\r\nCall-ID: {call}\r\n"
        f"CSeq: {cseq}\r\nContact: <sip:alice@{PHONE}:5060>\r\n{ctype}Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def sdp(port: int) -> str:
    return f"v=0\r\no=- 1 1 IN IP4 {PHONE}\r\ns=-\r\nc=IN IP4 {PHONE}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\n"


def datagram(payload: bytes) -> bytes:
    """The datagram as queued after source NAT: public address -> server."""
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0x4000, 64, 17, 0, socket.inet_aton(PUBLIC),
        socket.inet_aton(SERVER),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload


@pytest.fixture
def daemon() -> Daemon:
    """A daemon on fakes whose table and verdicts write to one journal (daemon.journal), the verdicts
    also to daemon.verdicts; every ended call's media counts are read as none."""
    journal: list[str] = []
    d = fake_daemon(
        Config(
            wan_interface="lo",
            public_address=PUBLIC,
            max_calls_per_host=100,
            max_pinholes_per_host=1000,
            pinhole_burst_per_host=1000,
        ),
        table=FakeTable(journal=journal),
        conntrack=FakeConntrack(Endpoint(PHONE, 5060), counts={}),
    )
    d.journal = journal
    d.verdicts = []
    return d


def queue(d: Daemon, *payloads: bytes) -> list[FakePacket]:
    packets = [FakePacket(datagram(p), d.verdicts, d.journal) for p in payloads]
    for pkt in packets:
        d.on_packet(pkt)
    return packets


def test_one_transaction_for_a_drain_before_any_verdict_then_verdicts_in_order(daemon):
    packets = queue(
        daemon,
        sip("INVITE", "c1", sdp(6000)),
        sip("OPTIONS", "c9"),
        sip("INVITE", "c2", sdp(6002)),
        sip("INVITE", "c3", sdp(6004)),
    )
    assert daemon.verdicts == []  # held until the drain ends
    daemon.flush()
    assert daemon.verdicts == packets
    assert daemon.journal == ["transaction"] + ["verdict"] * 4  # the one transaction before every verdict
    (batch,) = daemon.table.transactions
    assert [{h.call_id for h in install} for install, _remove, _recreate in batch] == [{"c1"}, {"c2"}, {"c3"}]
    for pkt in (packets[0], packets[2], packets[3]):
        assert f"c=IN IP4 {PUBLIC}".encode() in pkt.sent_sip and pkt.new is not None
    # The OPTIONS needed no pinhole: its Via and Contact are rewritten all the same.
    assert f"Contact: <sip:alice@{PUBLIC}:5060>".encode() in packets[1].sent_sip
    samples = {s.name: s.value for m in daemon.metrics.registry.collect() for s in m.samples}
    assert samples["nfsip_nft_transaction_seconds_count"] == 1


def test_changes_of_one_call_keep_their_order_in_the_transaction(daemon):
    queue(daemon, sip("INVITE", "c1", sdp(6000)), sip("BYE", "c1"))
    daemon.flush()
    (batch,) = daemon.table.transactions
    (install, remove1, _), (install2, remove2, _) = batch
    assert {h.call_id for h in install} == {"c1"} and not remove1
    assert not install2 and {h.call_id for h in remove2} == {"c1"}  # the removal after the install


def test_failed_transaction_falls_back_per_message_and_passes_only_the_failed_one_unchanged(daemon):
    daemon.table.refuse = {"c2"}
    packets = queue(daemon, sip("INVITE", "c1", sdp(6000)), sip("INVITE", "c2", sdp(6002)))
    daemon.flush()
    assert daemon.verdicts == packets
    assert f"c=IN IP4 {PUBLIC}".encode() in packets[0].sent_sip
    assert packets[1].new is None  # its SDP would name a port without a pinhole: unchanged
    assert {h.call_id for h in daemon.table.pinholes()} == {"c1"}
    samples = {(s.name, tuple(s.labels.items())): s.value for m in daemon.metrics.registry.collect() for s in m.samples}
    assert samples[("nfsip_verdicts_total", (("outcome", "nft-error"),))] == 1
    assert samples[("nfsip_verdicts_total", (("outcome", "rewritten"),))] == 1
    assert samples[("nfsip_nft_errors_total", ())] == 1


def test_a_message_whose_pinholes_were_refused_leaves_no_call_behind(daemon, caplog):
    """Its datagram passes unchanged and none of its pinholes is in the kernel: the engine forgets the call
    (it kept it before, counted as live, with pinholes it did not have, until its timeout)."""
    daemon.table.refuse = {"c2"}
    queue(daemon, sip("INVITE", "c1", sdp(6000)), sip("INVITE", "c2", sdp(6002)))
    with caplog.at_level("INFO", logger="nfsip"):
        daemon.flush()
    assert daemon.engine.calls.get("c1", PHONE) is not None
    assert daemon.engine.calls.get("c2", PHONE) is None
    assert daemon.engine.calls.pinholes_total == 2 and len(daemon.engine.calls) == 1
    samples = {s.name: s.value for m in daemon.metrics.registry.collect() for s in m.samples}
    assert samples["nfsip_calls_active"] == 1 and samples["nfsip_pinholes_active"] == 2
    assert "call c2 ended: pinholes refused by nft" in caplog.text
    # Its public ports went back to the allocator: the next call on that LAN port installs and is rewritten.
    daemon.table.refuse = set()
    (again,) = queue(daemon, sip("INVITE", "c3", sdp(6002)))
    daemon.flush()
    assert again.new is not None and daemon.engine.calls.get("c3", PHONE) is not None


def test_a_bad_endpoint_in_a_media_sample_is_counted_and_the_calls_still_are(daemon):
    """read_media_counters leaves out what cannot be a conntrack key (a port 65536 before the engine
    refused such SDP) and says so; the daemon counts it, and samples every other call as usual."""
    queue(daemon, sip("INVITE", "c1", sdp(6000)))
    daemon.flush()
    counts = MediaCounts({Endpoint(PHONE, 6000): (3, 300, 5, 500)}, refused=(Endpoint(PHONE, 65536),))
    daemon.sample_media(1.0, counts)
    samples = {s.name: s.value for m in daemon.metrics.registry.collect() for s in m.samples}
    assert samples["nfsip_media_sample_errors_total"] == 1
    stats = daemon.media.get("c1", PHONE)
    assert (stats.to_lan_packets, stats.from_lan_packets) == (3, 5)


def test_an_unexpected_error_still_gives_every_datagram_its_verdict(daemon):
    def broken(parts) -> None:
        raise RuntimeError("bug")

    daemon.table.apply_batch = broken
    packets = queue(daemon, sip("INVITE", "c1", sdp(6000)), sip("OPTIONS", "c9"))
    daemon.flush()
    assert daemon.verdicts == packets
    assert packets[0].new is None  # the INVITE's pinholes may be missing: its SDP passes unchanged
    assert packets[1].new is not None  # the OPTIONS depended on nothing in the kernel


def test_a_long_drain_is_cut_into_transactions_of_at_most_batch_max(daemon):
    queue(daemon, *(sip("INVITE", f"c{i}", sdp(6000 + 2 * i)) for i in range(BATCH_MAX + 3)))
    assert len(daemon.verdicts) == BATCH_MAX  # the first BATCH_MAX got theirs without waiting for the rest
    daemon.flush()
    assert len(daemon.verdicts) == BATCH_MAX + 3
    assert [len(b) for b in daemon.table.transactions] == [BATCH_MAX, 3]
