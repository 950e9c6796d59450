"""Several workers (workers = 2) in the namespace lab: each phone's SIP goes to the worker of its shard.

phone1 (10.0.0.2) is shard 0 (queue 5060), phone2 (10.0.0.3) shard 1 (queue 5061). The kernel's own
per-queue counters (/proc/net/netfilter/nfnetlink_queue, id_sequence = packets queued so far) say which
worker saw a phone's messages: every datagram of a dialog - the first one queued before NAT, the ones
after NAT, the server's answers - must land on the one queue of the phone's shard, and a call started
from the WAN through a registration pinhole (DNATed: `ct status dnat`, the LAN host is the reply source)
on the same one. Real sipp calls with media both ways, pinholes gone after the BYE, a killed worker
restarted and its next call working.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nfsip.core.sip.message import parse_message
from nfsip.kernel.fanout import shard
from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp, media_report, sip_messages
from nfsiplab.kamailio import Kamailio, have_kamailio
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippCaller, SippPhone, SippUac, SippUas

from .lab_support import require, require_lab, require_tool
from .test_lab_ops import ADMIN_CONF

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
QUEUE = 5060
SLICES = {0: (40000, 44999), 1: (45000, 49999)}  # the default media range split in two
CALLER_PORT = 5070  # Kamailio holds 5060 on the server


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
    daemon = NfsipDaemon(lab, workers=2).start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        log = daemon.log()
        assert "Traceback" not in log, log
        assert code == 0, log
        # A clean stop removes the table and leaves no worker behind.
        assert "table inet nfsip removed; stopped" in log, log
        assert lab.run(T.ROUTER, ["nft", "list", "table", "inet", "nfsip"], check=False).returncode != 0


def queued(lab: Lab) -> dict[int, int]:
    """Packets queued so far, per queue number (the kernel's counters)."""
    out = lab.run(T.ROUTER, ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    return {int(f[0]): int(f[7]) for f in (line.split() for line in out.splitlines()) if len(f) >= 8}


def delta(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {q: after.get(q, 0) - before.get(q, 0) for q in (QUEUE, QUEUE + 1)}


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def call_from(lab: Lab, node: str) -> tuple[int, dict[str, Any]]:
    """One sipp call from `node` to the server's UAS; (public media port in the server's INVITE, evidence)."""
    uas = SippUas(lab).start()
    with Capture(lab, T.SERVER, "eth0") as at_server, Capture(lab, node, "eth0") as at_phone:
        result = SippUac(lab, node).start().wait(60)
        assert uas.wait(20).ok
    server_pkts, phone_pkts = at_server.packets(), at_phone.packets()
    report = media_report({"server": server_pkts, node: phone_pkts})
    assert result.ok, result.log + report
    phone_ip = lab.ip_of(node)
    assert count_rtp(server_pkts, dst=T.SERVER_IP) >= MIN_RTP, report
    assert count_rtp(phone_pkts, dst=phone_ip) >= MIN_RTP, report
    invite = next(parse_message(p.payload) for p in sip_messages(server_pkts) if p.payload.startswith(b"INVITE "))
    assert invite.sdp.connection.address == T.ROUTER_WAN_IP
    return invite.sdp.media[0].port, {"report": report}


def test_each_phone_is_handled_by_its_own_worker_and_a_killed_worker_is_restarted(lab: Lab, nfsip: NfsipDaemon):
    phones = {"phone1": T.PHONE_IPS[0], "phone2": T.PHONE_IPS[1]}
    assert {node: shard(ip, 2) for node, ip in phones.items()} == {"phone1": 0, "phone2": 1}
    pids = nfsip.worker_pids()
    assert set(pids) == {0, 1}, nfsip.log()
    assert all(n.startswith("READY=1") for n in nfsip.read_notifications()[:1])

    for node, ip in phones.items():
        worker = shard(ip, 2)
        before = queued(lab)
        public_port, _ = call_from(lab, node)
        moved = delta(before, queued(lab))
        # INVITE (twice: before and after NAT), 100/180/200, ACK, BYE, 200: all on the phone's queue only.
        assert moved[QUEUE + worker] >= 7, moved
        assert moved[QUEUE + 1 - worker] == 0, moved
        low, high = SLICES[worker]
        assert low <= public_port <= high, (node, public_port)
        assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()

    # Both workers counted into the one endpoint: two calls' pinholes opened, none left.
    assert nfsip.metric("nfsip_pinholes_opened_total") >= 4
    assert nfsip.metric("nfsip_pinholes_active") == 0
    assert nfsip.metric("nfsip_verdicts_total", outcome="rewritten") >= 10
    log = nfsip.log()
    for worker, ip in ((0, phones["phone1"]), (1, phones["phone2"])):
        own = [line for line in log.splitlines() if f"worker {worker}: " in line]
        assert any(ip in line for line in own), log  # the call setup line names the phone
        assert not any(phones["phone2" if worker == 0 else "phone1"] in line for line in own), log

    # Kill worker 1 in the middle of a call of phone2: the supervisor restarts it, the new worker adopts the
    # call's pinholes from the kernel, and the BYE at the end of the call removes them.
    opened = nfsip.metric("nfsip_pinholes_opened_total")
    uas = SippUas(lab).start()
    with Capture(lab, "phone2", "eth0") as at_phone:
        uac = SippUac(lab, "phone2", pause_ms=10000).start()
        assert wait_for(lambda: nfsip.status()["pinholes"] == 2, 5), nfsip.status()
        os.kill(pids[1], signal.SIGKILL)
        restarted = wait_for(lambda: (p := nfsip.worker_pids()).get(1) not in (None, pids[1]) and p, 10)
        assert restarted and restarted[0] == pids[0], nfsip.log()
        assert wait_for(lambda: nfsip.log().count("worker 1 ready") == 2, 10), nfsip.log()
        assert "worker 1: took over 2 pinholes of 1 calls" in nfsip.log(), nfsip.log()
        assert uac.wait(60).ok and uas.wait(20).ok
    assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[1]) >= MIN_RTP
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()  # the new worker saw the BYE
    assert nfsip.alive()
    # The next call goes to the new worker as well.
    before = queued(lab)
    public_port, _ = call_from(lab, "phone2")
    moved = delta(before, queued(lab))
    assert moved[QUEUE + 1] >= 7 and moved[QUEUE] == 0, moved
    assert SLICES[1][0] <= public_port <= SLICES[1][1]
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()
    # Counters of the dead worker are kept: totals do not go back.
    assert nfsip.metric("nfsip_pinholes_opened_total") >= opened + 4
    assert "exited with -9; restarting it" in nfsip.log()


def test_watchdog_pings_only_while_every_worker_beats(lab: Lab):
    """WATCHDOG=1 comes from the supervisor (the main pid, NotifyAccess=main) while all workers are alive and
    beating; a hung worker (SIGSTOP) stops the pings, so systemd would restart the service."""
    daemon = NfsipDaemon(lab, workers=2, watchdog_usec=2_000_000).start()
    try:
        pids = daemon.worker_pids()

        def pings(seconds: float) -> int:
            seen = len(daemon.read_notifications())
            time.sleep(seconds)
            return sum(1 for n in daemon.read_notifications()[seen:] if n == "WATCHDOG=1")

        assert pings(3) >= 2
        os.kill(pids[0], signal.SIGSTOP)
        try:
            time.sleep(3.5)  # STALE_SECONDS: the last beat ages out
            assert pings(3) == 0
        finally:
            os.kill(pids[0], signal.SIGCONT)
        assert wait_for(lambda: pings(1.5) >= 1, 5)
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_one_metrics_endpoint_with_per_call_media_passes_promtool(lab: Lab, nfsip: NfsipDaemon, tmp_path: Path):
    """The supervisor's scrape: the workers' counters summed, the per-call media series of the worker that
    holds the call while it is live (gone once it ended), and valid exposition format."""
    require_tool("promtool", "prometheus")
    uas = SippUas(lab).start()
    uac = SippUac(lab, "phone2").start()
    series = f'lan_host="{T.PHONE_IPS[1]}"'

    def media_scrape() -> str:
        text = nfsip.metrics()
        return text if "nfsip_call_media_packets_total{" in text and series in text else ""

    live = wait_for(media_scrape, 9)
    assert uac.wait(60).ok and uas.wait(20).ok
    assert live, nfsip.metrics()
    assert wait_for(lambda: "nfsip_call_media_packets_total{" not in nfsip.metrics(), 3), nfsip.metrics()
    assert nfsip.metric("nfsip_sip_messages_total", direction="out", kind="INVITE") >= 1
    scrape = tmp_path / "metrics.txt"
    scrape.write_text(live)
    with scrape.open() as stdin:
        proc = subprocess.run(["promtool", "check", "metrics"], stdin=stdin, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr + live


def test_call_from_the_wan_through_a_registration_reaches_the_phones_worker(
    lab: Lab, nfsip: NfsipDaemon, tmp_path: Path
):
    """phone2 (shard 1) registers; once its SIP flow's conntrack entry expired, Kamailio's INVITE enters
    through the registration pinhole (DNAT): the server's address is shard 0, so only the `ct status dnat
    ct reply ip saddr` rule sends it to worker 1."""
    require(have_kamailio(), "kamailio not installed (Debian package kamailio; scripts/setup installs it)")
    assert shard(T.SERVER_IP, 2) == 0 and shard(T.PHONE_IPS[1], 2) == 1
    for key, value in (("nf_conntrack_udp_timeout", 5), ("nf_conntrack_udp_timeout_stream", 10)):
        lab.sysctl(T.ROUTER, f"net.netfilter.{key}", value)
    with (
        Kamailio(lab, fr_timer_ms=5000, fr_inv_timer_ms=30000, workdir=tmp_path / "kamailio") as kamailio,
        Capture(lab, "phone2", "eth0") as at_phone,
        Capture(lab, T.SERVER, "eth0") as at_server,
    ):
        phone = SippPhone(lab, "phone2", user="alice", expires=300, registered_ms=60000).start()
        kamailio.wait_registered("alice")

        def sip_flow_gone() -> bool:
            out = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
            return not any(T.PHONE_IPS[1] in line and "=5060 " in line for line in out.splitlines())

        assert wait_for(sip_flow_gone, 25, 0.5), "precondition: the REGISTER's conntrack entry did not expire"
        before = queued(lab)
        result = SippCaller(lab, T.SERVER, "alice", sip_port=CALLER_PORT).start().wait(40)
        moved = delta(before, queued(lab))
        phone.kill()
    report = media_report({"phone2": at_phone.packets(), "server": at_server.packets()})
    assert phone.received("^INVITE "), report
    assert result.ok, report
    assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[1]) >= MIN_RTP, report
    assert moved[QUEUE + 1] >= 5 and moved[QUEUE] == 0, moved
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()


def test_table_reloaded_by_the_admin_comes_back_with_the_fanout_and_both_workers_pinholes(
    lab: Lab, nfsip: NfsipDaemon, tmp_path: Path
):
    """`nft -f /etc/nftables.conf` (flush ruleset + include of nft/nfsip.nft) mid-call: the supervisor puts
    the fanout back and each worker re-adds its live call's pinholes; both BYEs are then seen."""
    conf = tmp_path / "nftables.conf"
    conf.write_text(ADMIN_CONF)
    uas = SippUas(lab, calls=2).start()
    uacs = [SippUac(lab, node, pause_ms=12000).start() for node in ("phone1", "phone2")]
    assert wait_for(lambda: nfsip.status()["pinholes"] == 4, 5), nfsip.status()
    lab.run(T.ROUTER, ["nft", "-f", str(conf)])
    assert nfsip.status()["pinholes"] == 0
    assert wait_for(lambda: nfsip.status()["pinholes"] == 4, 8), nfsip.log()
    assert "queue fanout was removed by another ruleset load; restoring" in nfsip.log()
    assert nfsip.log().count("restored 2 pinholes after the table was reinstalled") == 2, nfsip.log()
    chains = lab.run(T.ROUTER, ["nft", "list", "table", "inet", "nfsip"]).stdout
    assert "queue num 5060" in chains and "queue num 5061" in chains and chains.count(" vmap ") == 5, chains
    assert all(u.wait(60).ok for u in uacs) and uas.wait(20).ok
    assert wait_for(lambda: nfsip.status()["pinholes"] == 0, 3), nfsip.status()  # both BYEs went through
