"""The `call ... ended` line carries the media counts read when the call ended, by the sweep that purges its
media flows and before it deletes them; and `log_level = "debug"` gives one line per queued datagram, at no
cost at info. Real SIP and a real engine; conntrack, the table and the queue's packets are the fakes of
tests/fakes.py."""

from __future__ import annotations

import logging

import pytest

from nfsip import loglines
from nfsip.config import Config
from nfsip.core.model import Endpoint, Pinhole
from nfsip.daemon import Daemon
from nfsip.kernel.conntrack import Conntrack
from nfsip.kernel.ctnetlink import Entry, SourceCounts, Tuple, source_key

from .fakes import FakeConntrack, FakePacket, fake_daemon
from .test_daemon_batch import PHONE, PUBLIC, SERVER, datagram, sdp, sip

# -- the sweep reads before it deletes --------------------------------------------------------------------


class FakeCt:
    """ctnetlink as the sweep uses it, recording the order of its requests."""

    def __init__(self, counts: list[SourceCounts], entries: list[Entry], fail_dump: bool = False) -> None:
        self.calls: list[str] = []
        self._counts = counts
        self._entries = entries
        self._fail = fail_dump

    def dump_counted(self, sources=None) -> list[SourceCounts]:
        self.calls.append("dump_counted")
        if self._fail:
            raise OSError(105, "No buffer space available")
        return [c for c in self._counts if sources is None or c.orig_source in sources or c.reply_source in sources]

    def dump(self, **filters) -> list[Entry]:
        self.calls.append("dump")
        return list(self._entries)

    def delete(self, orig: Tuple) -> bool:
        self.calls.append("delete")
        return True

    def close(self) -> None:
        pass


LAN_RTP, LAN_RTCP = Endpoint(PHONE, 6000), Endpoint(PHONE, 6001)
HOLE = Pinhole(Endpoint(PUBLIC, 40000), LAN_RTP, "c1", "m0.rtp")
FLOW = Entry(Tuple(PHONE, 6000, SERVER, 7000), Tuple(SERVER, 7000, PUBLIC, 40000))
# The phone's flow (it sent 236, got 230) and another phone's, which is not asked about.
COUNTS = [
    SourceCounts(source_key(PHONE, 6000), source_key(SERVER, 7000), 236, 40592, 230, 39560),
    SourceCounts(source_key("10.0.0.3", 6000), source_key(SERVER, 7002), 9, 900, 9, 900),
]


def conntrack_with(ct: FakeCt) -> Conntrack:
    return Conntrack(open_socket=lambda: ct)


def test_the_final_counts_are_read_before_the_flows_are_deleted():
    ct = FakeCt(COUNTS, [FLOW])
    track = conntrack_with(ct)
    reports = []
    track.read_before_purge({LAN_RTP, LAN_RTCP}, reports.append)
    track.schedule(removed=[HOLE])
    assert track.pending
    assert track.sweep() >= 1
    assert reports == [{LAN_RTP: (230, 39560, 236, 40592)}]  # RTCP never flowed: absent, not 0
    assert ct.calls.index("dump_counted") < ct.calls.index("delete"), ct.calls
    assert not track.pending


def test_one_read_serves_every_call_ended_since_the_last_sweep():
    ct = FakeCt(COUNTS, [])
    track = conntrack_with(ct)
    first, second = [], []
    track.read_before_purge({LAN_RTP}, first.append)
    track.read_before_purge({Endpoint("10.0.0.3", 6000)}, second.append)
    assert track.pending  # a read alone is reason enough to sweep
    track.sweep()
    assert ct.calls == ["dump_counted"]
    assert first == [{LAN_RTP: (230, 39560, 236, 40592)}]
    assert second == [{Endpoint("10.0.0.3", 6000): (9, 900, 9, 900)}]


def test_a_failed_read_is_reported_and_the_purge_goes_on():
    ct = FakeCt(COUNTS, [FLOW], fail_dump=True)
    track = conntrack_with(ct)
    reports = []
    track.read_before_purge({LAN_RTP}, reports.append)
    track.schedule(removed=[HOLE])
    assert track.sweep() == 1
    assert len(reports) == 1 and isinstance(reports[0], OSError)


def test_the_sweeper_thread_reads_before_it_purges():
    ct = FakeCt(COUNTS, [FLOW])
    track = conntrack_with(ct)
    reports = []
    track.read_before_purge({LAN_RTP}, reports.append)
    track.schedule(removed=[HOLE])
    deleted = []
    track.sweep_in_background(deleted.append)
    track.finish()  # waits for the sweeper
    assert reports == [{LAN_RTP: (230, 39560, 236, 40592)}] and deleted == [1]
    assert ct.calls[0] == "dump_counted"


# -- the daemon ---------------------------------------------------------------------------------------------


@pytest.fixture
def daemon() -> Daemon:
    d = fake_daemon(Config(wan_interface="lo", public_address=PUBLIC), conntrack=FakeConntrack(Endpoint(PHONE, 5060)))
    d.verdicts = []
    return d


def queued(d: Daemon, payload: bytes) -> FakePacket:
    return FakePacket(datagram(payload), d.verdicts)


def call(d: Daemon, call_id: str = "c1") -> None:
    for payload in (sip("INVITE", call_id, sdp(6000)), sip("BYE", call_id)):
        d.on_packet(queued(d, payload))
    d.flush()


def ended_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " ended: " in r.getMessage()]


def test_the_ended_line_waits_for_the_counts_read_at_the_purge(daemon, caplog):
    caplog.set_level(logging.INFO, logger="nfsip")
    call(daemon)
    assert ended_lines(caplog) == []  # not from the last sample: from the read before the purge
    ((lan, report),) = daemon.conntrack.reads
    assert lan == {LAN_RTP, LAN_RTCP} and {h.lan for h in daemon.conntrack.removed} == lan
    report({LAN_RTP: (230, 39560, 236, 40592), LAN_RTCP: (2, 160, 3, 240)})
    (line,) = ended_lines(caplog)
    assert line.startswith("call c1 ended: BYE (out); ")
    assert line.endswith("; ports 40000->6000,40001->6001; media to phone 232 pkts, from phone 239 pkts"), line


def test_when_the_read_fails_the_line_says_the_counts_are_the_last_samples(daemon, caplog):
    caplog.set_level(logging.INFO, logger="nfsip")
    daemon.on_packet(queued(daemon, sip("INVITE", "c1", sdp(6000))))
    daemon.flush()
    daemon.sample_media(daemon.clock(), {LAN_RTP: (100, 17200, 90, 15480)})
    daemon.on_packet(queued(daemon, sip("BYE", "c1")))
    daemon.flush()
    ((_, report),) = daemon.conntrack.reads
    report(OSError(105, "No buffer space available"))
    (line,) = ended_lines(caplog)
    assert line.endswith(
        "media to phone 100 pkts, from phone 90 pkts at the last sample (reading the final counts failed: "
        "[Errno 105] No buffer space available)"
    ), line


def test_nothing_is_read_when_info_is_off(daemon, caplog):
    caplog.set_level(logging.WARNING, logger="nfsip")
    call(daemon)
    assert daemon.conntrack.reads == [] and ended_lines(caplog) == []


def test_debug_gives_one_line_per_queued_datagram(daemon, caplog):
    caplog.set_level(logging.DEBUG, logger="nfsip")
    call(daemon)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hook ")]
    assert lines == ["hook 4 out: INVITE, Call-ID c1: rewritten", "hook 4 out: BYE, Call-ID c1: rewritten"]


def test_debug_line_says_why_a_datagram_passed_unchanged(daemon, caplog):
    caplog.set_level(logging.DEBUG, logger="nfsip")
    daemon.on_packet(queued(daemon, b"GET / HTTP/1.1\r\n\r\n"))
    daemon.on_packet(queued(daemon, sip("INVITE", "c2", sdp(80))))
    daemon.flush()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hook ")]
    assert lines[0] == "hook 4 out: -, Call-ID -: parse-error (no-start-line)", lines
    assert lines[1].startswith("hook 4 out: INVITE, Call-ID c2: ") and "media-port" in lines[1], lines


def test_at_info_the_debug_line_costs_nothing(daemon, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="nfsip")

    def never(*args):
        raise AssertionError("the per-datagram line was built at info level")

    monkeypatch.setattr(loglines, "log_datagram", never)
    monkeypatch.setattr(loglines, "parse_message", never)
    call(daemon)
    assert len(daemon.verdicts) == 2
