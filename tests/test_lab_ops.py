"""Running nfsip like a router daemon: Prometheus metrics move with a call, the shipped table is included
from an admin's nftables.conf beside a policy-drop firewall, and survives the admin reloading it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.config import DEFAULTS
from nfsip.firewall import admin_rule
from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas, run_uac

from .lab_support import require_lab

pytestmark = pytest.mark.lab
MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
ROOT = Path(__file__).resolve().parents[1]

# A typical /etc/nftables.conf of a small router: flush, a drop-policy filter, its own NAT, and nfsip's
# table included. nfsip's rule (`nfsip admin-rule`: the pinhole bit in the conntrack mark) is the one line
# nfsip needs in a drop-policy forward chain, for IPv4 and IPv6 pinholes alike (docs/nftables.md, "Forward
# policy drop", shows this file). `ct status dnat accept` would let in only the IPv4 ones.
ADMIN_CONF = f"""
flush ruleset
table inet filter {{
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname "lo" accept
        iifname "lan0" accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        {admin_rule(DEFAULTS.pinhole_mark)}
        iifname "lan0" oifname "wan0" accept
    }}
}}
table ip nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }}
}}
include "{ROOT / "nft" / "nfsip.nft"}"
"""


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=1) as lab:
        yield lab


def test_metrics_follow_a_call_and_pass_promtool(lab: Lab):
    lab.masquerade()
    daemon = NfsipDaemon(lab, config={"media_sample_interval": 1}).start()
    try:
        uas = SippUas(lab).start()
        uac = SippUac(lab, "phone1").start()
        time.sleep(5)
        during = daemon.metrics()
        assert daemon.metric("nfsip_pinholes_active") == 2
        assert daemon.metric("nfsip_calls_active") == 1
        to_phone = [
            ln for ln in during.splitlines() if ln.startswith("nfsip_call_media_packets_total{") and "to_lan" in ln
        ]
        from_phone = [
            ln for ln in during.splitlines() if ln.startswith("nfsip_call_media_packets_total{") and "from_lan" in ln
        ]
        assert to_phone and float(to_phone[0].rsplit(" ", 1)[1]) > 0, during
        assert from_phone and float(from_phone[0].rsplit(" ", 1)[1]) > 0, during
        assert uac.wait(60).ok and uas.wait(20).ok
        after = daemon.metrics()
        assert daemon.metric("nfsip_pinholes_active") == 0
        assert daemon.metric("nfsip_pinholes_opened_total") == 2
        assert daemon.metric("nfsip_pinholes_closed_total") == 2
        assert daemon.metric("nfsip_sip_messages_total", direction="out", kind="INVITE") == 1
        assert daemon.metric("nfsip_sip_messages_total", direction="in", kind="2xx") >= 2
        assert daemon.metric("nfsip_verdict_seconds_count") >= 7
        # Every datagram the kernel diverted reached the daemon (none failed open).
        diverted = daemon.metric("nfsip_sip_diverted_packets_total")
        assert diverted >= 7 and daemon.metric("nfsip_queue_enqueued_packets_total") == diverted
        assert "nfsip_call_media_packets_total{" not in after  # the ended call's series are gone
        if shutil.which("promtool") is None:
            pytest.fail("promtool missing (Debian package prometheus; scripts/setup installs it)")
        for scrape in (during, after):
            check = subprocess.run(["promtool", "check", "metrics"], input=scrape, text=True, capture_output=True)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        assert daemon.stop() == 0, daemon.log()
    assert "ended: 200 to BYE" in daemon.log() or "ended: BYE" in daemon.log()
    ended = [ln for ln in daemon.log().splitlines() if " ended: " in ln]
    assert len(ended) == 1 and "media to phone" in ended[0], ended


# 1.5 x the queue's length (nfsip.kernel.queue.Queue: max_len 4096)
_FLOOD = 6000
_FLOOD_SENDER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5062))
for i in range({_FLOOD}):
    s.sendto(b"OPTIONS sip:x@{T.SERVER_IP} SIP/2.0\\r\\n\\r\\n", ("{T.SERVER_IP}", 5060))
"""


def test_overload_fails_open_and_the_datagrams_that_passed_unseen_are_counted(lab: Lab):
    """A stalled daemon: the queue fills, the kernel lets the rest through unchanged (fail-open, SIP keeps
    flowing), and the metrics say how many passed nfsip by: diverted minus the verdicts given
    (docs/metrics.md). The per-host SIP rate is set out of reach: this is about the queue itself."""
    lab.masquerade()
    daemon = NfsipDaemon(lab, config={"sip_rate_per_host": 1_000_000, "sip_burst_per_host": 1_000_000}).start()
    try:
        assert daemon.proc is not None
        before, seen_before = daemon.metric("nfsip_sip_diverted_packets_total"), sum(daemon.verdicts().values())
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            lab.run("phone1", [sys.executable, "-c", _FLOOD_SENDER])
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        seen, deadline = -1.0, time.monotonic() + 30
        while seen != (seen := sum(daemon.verdicts().values())) and time.monotonic() < deadline:
            time.sleep(1)  # until the daemon has read everything the queue held
        diverted = daemon.metric("nfsip_sip_diverted_packets_total") - before
        read = seen - seen_before
        assert diverted >= _FLOOD
        # The queue took what fit (4096), the rest failed open. Until the flow's first datagram has its
        # verdict, its conntrack entry stays unconfirmed and every datagram of it is queued before SNAT too,
        # so what fit is read twice.
        assert 0 < read <= 2 * 4096
        assert diverted - read >= _FLOOD - 4096
        assert daemon.metric("nfsip_queue_dropped_packets_total", reason="queue-full") == 0  # nothing lost
    finally:
        assert daemon.stop() == 0, daemon.log()


def test_shipped_table_included_beside_a_drop_policy_firewall(lab: Lab, tmp_path: Path):
    conf = tmp_path / "nftables.conf"
    conf.write_text(ADMIN_CONF)
    # Accepted by `nft -c` in the router namespace before anything is loaded there ...
    check = lab.run(T.ROUTER, ["nft", "-c", "-f", str(conf)], check=False)
    assert check.returncode == 0, check.stderr
    lab.run(T.ROUTER, ["nft", "-f", str(conf)])
    daemon = NfsipDaemon(lab).start()
    try:
        # ... and a call works through it, with media both ways.
        with (
            SippUas(lab) as uas,
            Capture(lab, "phone1", "eth0") as at_phone,
            Capture(lab, T.SERVER, "eth0") as at_server,
        ):
            assert run_uac(lab, "phone1").ok
            assert uas.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP
        assert count_rtp(at_server.packets(), dst=T.SERVER_IP) >= MIN_RTP
        # The admin reloads the firewall mid-call (flush ruleset + include): the table comes back empty and
        # without the queue rule; the daemon restores both, with the live call's pinholes.
        uas = SippUas(lab).start()
        with Capture(lab, "phone1", "eth0") as at_phone:
            uac = SippUac(lab, "phone1", pause_ms=12000).start()
            time.sleep(2)
            assert daemon.status()["pinholes"] == 2
            lab.run(T.ROUTER, ["nft", "-f", str(conf)])
            assert daemon.status()["pinholes"] == 0
            deadline = time.monotonic() + 8
            while daemon.status()["pinholes"] != 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert daemon.status()["pinholes"] == 2, daemon.log()
            assert "removed by another ruleset load; restoring" in daemon.log()
            assert uac.wait(60).ok and uas.wait(20).ok
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP
        assert daemon.status()["pinholes"] == 0  # the BYE was seen: the queue rule is back
    finally:
        assert daemon.stop() == 0, daemon.log()
    tables = lab.run(T.ROUTER, ["nft", "list", "tables"]).stdout
    assert "table inet nfsip" not in tables and "table inet filter" in tables


def test_status_table_shows_ages_and_packet_counts(lab: Lab):
    lab.masquerade()
    daemon = NfsipDaemon(lab).start()
    try:
        uas = SippUas(lab).start()
        uac = SippUac(lab, "phone1").start()
        time.sleep(5)
        table = daemon.cli("status").stdout
        state = daemon.status()
        assert uac.wait(60).ok and uas.wait(20).ok
    finally:
        assert daemon.stop() == 0, daemon.log()
    (call,) = state["calls"]
    assert call["established"] and 3 <= call["age_seconds"] <= 8, call
    rtp = next(h for h in call["pinholes"] if h["label"] == "m0.rtp")
    assert rtp["packets_to_lan"] > 50 and rtp["packets_from_lan"] > 50, rtp
    assert f"call {call['call_id']}" in table and "established" in table
    assert str(rtp["packets_to_lan"])[:1] in table and "TO PHONE" in table, table
