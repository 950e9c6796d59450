"""One Daemon, two compositions: alone it owns the table (installs, checks, restores and removes it) and
reports to systemd; as a worker (nfsip.workers) it gets a Shard of the LAN hosts and the supervisor's link,
adopts only its hosts' pinholes and leaves the table to the supervisor. On the fakes of tests/fakes.py;
the worker's link over a real pipe."""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Iterator

import pytest

from nfsip.config import Config
from nfsip.core.model import Endpoint, Pinhole
from nfsip.daemon import Daemon
from nfsip.kernel.reader import INSTALLED, NO_QUEUE_RULE, NO_TABLE, TABLE
from nfsip.workers import Shard, WorkerLink, worker_config

from .fakes import FakeLink, FakePacket, FakeQueue, FakeReader, FakeTable, fake_daemon
from .test_daemon_batch import PUBLIC, datagram, sdp, sip

# No TCP relay: these daemons run in the test process, in the host namespace (the relay is the lab's to test).
CONFIG = Config(wan_interface="lo", public_address=PUBLIC, metrics_listen="", workers=2, tcp_relay_port=0)


def call_pinholes(call_id: str, lan_ip: str, public_port: int) -> list[Pinhole]:
    """A call's RTP and RTCP pinholes as read back from the kernel (wall-clock start, remaining lifetime)."""
    since = time.time() - 30
    return [
        Pinhole(Endpoint(PUBLIC, public_port + i), Endpoint(lan_ip, 6000 + i), call_id, f"m0.{kind}", 100, since=since)
        for i, kind in enumerate(("rtp", "rtcp"))
    ]


# Pinholes a previous run left: a call of 10.0.0.2 (worker 0 of 2) and one of 10.0.0.3 (worker 1).
LEFT = call_pinholes("even", "10.0.0.2", 40000) + call_pinholes("odd", "10.0.0.3", 40100)


def worker(index: int, table: FakeTable, **adapters: object) -> Daemon:
    return fake_daemon(worker_config(CONFIG, index), table=table, shard=Shard(index, CONFIG.workers), **adapters)


def test_alone_the_daemon_replaces_the_table_and_carries_the_pinholes_over():
    table = FakeTable(LEFT)
    daemon = fake_daemon(CONFIG, table=table)
    daemon.install()
    assert table.journal == ["install", "transaction"]  # the new table, then everything put back in it
    assert {h.call_id for h in table.pinholes()} == {"even", "odd"}
    assert {call.call_id for call in daemon.engine.calls.calls.values()} == {"even", "odd"}


@pytest.mark.parametrize("index, mine", [(0, "even"), (1, "odd")])
def test_a_worker_adopts_only_its_hosts_pinholes_and_leaves_the_table_alone(index: int, mine: str):
    table = FakeTable(LEFT)
    daemon = worker(index, table)
    daemon.install()
    assert table.journal == []  # the supervisor installed the table and carried the pinholes over
    assert [call.call_id for call in daemon.engine.calls.calls.values()] == [mine]
    assert daemon.config.queue_num == CONFIG.queue_num + index


def test_only_the_daemon_alone_checks_the_table_and_puts_it_back():
    reader = FakeReader()
    alone = fake_daemon(CONFIG, table=FakeTable(LEFT), reader=reader)
    alone.install()
    alone.tick()
    assert TABLE in [what for what, _ in reader.asked]
    reader.waiting = [(TABLE, NO_TABLE)]  # the reader's thread found the table gone
    time.sleep(0.11)  # housekeeping runs at most every TICK_SECONDS
    alone.tick()
    assert alone.table.journal[-2:] == [f"restore {NO_TABLE}", "transaction"]
    assert {h.call_id for h in alone.table.pinholes()} == {"even", "odd"}
    reader.waiting = [(TABLE, INSTALLED)]
    time.sleep(0.11)
    alone.tick()
    assert alone.table.journal[-1] == "transaction"  # nothing to restore
    a_worker = worker(0, FakeTable(LEFT))
    a_worker.install()
    a_worker.tick()
    assert TABLE not in [what for what, _ in a_worker.reader.asked]


def test_a_restore_request_puts_the_workers_pinholes_back():
    table = FakeTable(LEFT)
    link = FakeLink()
    daemon = worker(0, table, link=link)
    daemon.install()
    table.restore(NO_TABLE)  # the supervisor put the table back empty
    link.send("restore")
    daemon.on_requests()
    assert {h.call_id for h in table.pinholes()} == {"even"}


class Running:
    """The daemon's run() in a thread, with the queue it opened."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.queues: list[FakeQueue] = []
        daemon.open_queue = self._open
        self.thread = threading.Thread(target=daemon.run)

    def _open(self, callback) -> FakeQueue:
        self.queues.append(FakeQueue(callback))
        return self.queues[-1]

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()
        self.thread.join(5)
        assert not self.thread.is_alive()


def received(supervisor, message: tuple, timeout: float = 5.0) -> None:
    """Wait until the supervisor's end of the pipe got `message` (others may come first)."""
    deadline = time.monotonic() + timeout
    while supervisor.poll(max(0.0, deadline - time.monotonic())):
        if supervisor.recv() == message:
            return
    raise AssertionError(f"no {message} from the worker")


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def pipe() -> Iterator[tuple]:
    ours, theirs = multiprocessing.Pipe()
    yield ours, theirs
    ours.close()


def test_a_worker_runs_on_its_queue_and_talks_to_the_supervisor_over_its_link(pipe):
    supervisor, end = pipe
    table = FakeTable(LEFT)
    daemon = worker(0, table, link=WorkerLink(end, 0))
    verdicts: list[FakePacket] = []
    with Running(daemon) as running:
        assert supervisor.poll(5)
        kind, index, _pid = supervisor.recv()
        assert (kind, index) == ("ready", 0)
        received(supervisor, ("beat", 0))
        running.queues[0].put(FakePacket(datagram(sip("INVITE", "c1", sdp(6010))), verdicts))
        wait_for(lambda: len(verdicts) == 1)
        assert verdicts[0].new is not None  # rewritten, its pinholes in the table
        assert {h.call_id for h in table.pinholes()} == {"even", "odd", "c1"}
        table.restore(NO_TABLE)
        supervisor.send(("restore",))
        wait_for(lambda: {h.call_id for h in table.pinholes()} == {"even", "c1"})
        # The call's BYE: its media series go from the supervisor's snapshot with the next heartbeat.
        running.queues[0].put(FakePacket(datagram(sip("BYE", "c1")), verdicts))
        wait_for(lambda: len(verdicts) == 2)
        received(supervisor, ("gone", 0, [("c1", "10.0.0.2")]))
    assert "remove" not in table.journal and "install" not in table.journal  # the supervisor's to do
    assert running.queues[0].closed


def test_a_worker_whose_supervisor_is_gone_stops(pipe):
    supervisor, end = pipe
    daemon = worker(0, FakeTable(), link=WorkerLink(end, 0))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    assert supervisor.poll(5) and supervisor.recv()[0] == "ready"
    supervisor.close()
    thread.join(5)
    assert not thread.is_alive()


def test_alone_the_daemon_installs_at_start_and_removes_the_table_at_stop():
    table = FakeTable(LEFT)
    link = FakeLink()
    daemon = fake_daemon(CONFIG, table=table, link=link)
    with Running(daemon):
        wait_for(lambda: ("ready", f"public address {PUBLIC}") in link.told)
        assert table.journal == ["install", "transaction"]
    assert table.journal[-1] == "remove" and link.told[-1] == ("stopping", None)


def test_the_table_states_the_daemon_acts_on():
    """ensure_installed leaves an intact table alone and restores the rest (the table itself decides what
    to put back for each state)."""
    table = FakeTable(LEFT)
    daemon = fake_daemon(CONFIG, table=table)
    daemon.install()
    daemon.ensure_installed(INSTALLED)
    assert table.journal == ["install", "transaction"]
    daemon.ensure_installed(NO_QUEUE_RULE)
    assert table.journal[2:] == [f"restore {NO_QUEUE_RULE}", "transaction"]
