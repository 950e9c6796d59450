"""nfsip's own faults do not cost calls: kill -9 mid-call, restart, and the BYE still cleans up; with no
daemon at all, SIP still flows (queue bypass)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp, sip_messages
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas, run_uac

from .lab_support import require_lab

pytestmark = pytest.mark.lab
MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=1) as lab:
        lab.masquerade()
        yield lab


def _restart_mid_call(
    lab: Lab, while_down: Callable[[NfsipDaemon], None], restarted: Callable[[NfsipDaemon], None]
) -> None:
    """A call with RTP both ways; the daemon killed (-9) mid-call, then `while_down(first daemon)`; a second
    daemon started, which must take the call over; `restarted(second daemon)`. The BYE must then tear
    everything down, and media must have flowed both ways throughout."""
    first = NfsipDaemon(lab).start()
    uas = SippUas(lab).start()
    with Capture(lab, "phone1", "eth0") as at_phone, Capture(lab, T.SERVER, "eth0") as at_server:
        uac = SippUac(lab, "phone1", pause_ms=9000).start()
        time.sleep(2.5)
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(5)
        while_down(first)
        second = NfsipDaemon(lab).start()
        try:
            assert "took over 2 pinholes of 1 calls" in second.log(), second.log()
            restarted(second)
            assert uac.wait(60).ok
            assert uas.wait(20).ok
            assert second.status()["pinholes"] == 0
            assert second.metric("nfsip_calls_active") == 0
        finally:
            assert second.stop() == 0, second.log()
    assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP
    assert count_rtp(at_server.packets(), dst=T.SERVER_IP) >= MIN_RTP


def test_kill_9_mid_call_media_keeps_flowing_and_bye_after_restart_cleans_up(lab: Lab):
    def while_down(first: NfsipDaemon) -> None:
        # The daemon is gone; the kernel still holds the call's pinholes, and status reads them from there.
        between = first.status()
        assert len(between["calls"]) == 1 and between["pinholes"] == 2, between

    _restart_mid_call(lab, while_down, lambda _second: None)
    conntrack = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    assert "sport=6000 " not in conntrack and "dport=6001 " not in conntrack, conntrack


def test_without_the_daemon_sip_flows_unchanged(lab: Lab):
    """The table stays (as after a crash) but nobody is bound to the queue: `bypass` lets SIP through."""
    daemon = NfsipDaemon(lab).start()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(5)
    assert "table inet nfsip" in lab.run(T.ROUTER, ["nft", "list", "tables"]).stdout
    with SippUas(lab) as uas, Capture(lab, T.SERVER, "eth0") as at_server:
        result = run_uac(lab, "phone1")
        assert result.ok, result.log
        assert uas.wait(20).ok
    invite = next(p for p in sip_messages(at_server.packets()) if p.payload.startswith(b"INVITE"))
    assert b"c=IN IP4 10.0.0.2" in invite.payload  # passed unchanged: nobody rewrote it


def test_watchdog_pings_and_ready_reach_systemd(lab: Lab):
    daemon = NfsipDaemon(lab, watchdog_usec=400_000).start()
    try:
        time.sleep(1.5)
        notes = daemon.read_notifications()
        assert notes[0].startswith("READY=1") and f"STATUS=public address {T.ROUTER_WAN_IP}" in notes[0]
        assert notes.count("WATCHDOG=1") >= 4, notes  # every 0.2 s: half the interval
    finally:
        assert daemon.stop() == 0
    assert daemon.read_notifications()[-1] == "STOPPING=1"


def test_wan_address_change_moves_rewrites_and_drops_old_pinholes(lab: Lab):
    new_ip = "198.51.100.9"
    daemon = NfsipDaemon(lab).start()
    try:
        uas = SippUas(lab).start()
        uac = SippUac(lab, "phone1", pause_ms=20000).start()
        time.sleep(2)
        assert daemon.status()["pinholes"] == 2
        # As a DHCP client does on a new lease: the old address goes, then the new one comes.
        lab.run(T.ROUTER, ["ip", "addr", "del", f"{T.ROUTER_WAN_IP}/24", "dev", "wan0"])
        lab.run(T.ROUTER, ["ip", "addr", "add", f"{new_ip}/24", "dev", "wan0"])
        deadline = time.monotonic() + 5
        while daemon.status()["pinholes"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert daemon.status()["pinholes"] == 0, daemon.log()
        assert f"WAN address changed from {T.ROUTER_WAN_IP} to {new_ip}" in daemon.log()
        uac.stop(grace=0.5)
        uas.stop(grace=0.5)
        lab.flush_conntrack()
        # The next call is rewritten with the new address and has media both ways.
        with (
            SippUas(lab) as uas2,
            Capture(lab, T.SERVER, "eth0") as at_server,
            Capture(lab, "phone1", "eth0") as at_phone,
        ):
            assert run_uac(lab, "phone1").ok
            assert uas2.wait(20).ok
        invite = next(p for p in sip_messages(at_server.packets()) if p.payload.startswith(b"INVITE"))
        assert f"c=IN IP4 {new_ip}".encode() in invite.payload
        assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= MIN_RTP
    finally:
        assert daemon.stop() == 0, daemon.log()


# The table the previous release (d39362f) shipped, verbatim: per-pinhole counter sets (media_to_lan, and a
# counter on every media_snat element), 3 elements per media pinhole, no conntrack_accounting chain.
PREVIOUS_TABLE = Path(__file__).parent / "previous_tables" / "nfsip-d39362f.nft"


def _as_previous_release(lab: Lab) -> int:
    """Turn the kernel state a killed daemon left into what the previous release would have left for the
    same call: its table, with the same map elements (timeouts, comments), and a media_to_lan element per
    media pinhole. Returns how many media pinholes there are."""
    data = json.loads(lab.run(T.ROUTER, ["nft", "-j", "list", "table", "inet", "nfsip"]).stdout)["nftables"]
    lines, media = [], 0
    for item in data:
        found = item.get("map")
        if not found or not found.get("elem"):
            continue
        for key, value in found["elem"]:
            elem = key["elem"]
            k = " . ".join(str(v) for v in elem["val"]["concat"])
            v = " . ".join(str(x) for x in value["concat"])
            extra = f'timeout {elem["timeout"]}s comment "{elem["comment"]}"'
            lines.append(f"add element ip nfsip {found['name']} {{ {k} {extra} : {v} }}")
            if found["name"] == "media_snat":
                lines.append(f"add element ip nfsip media_to_lan {{ {k} {extra} }}")
                media += 1
    # That release's table was `table ip nfsip`, and it had no other.
    lab.nft(T.ROUTER, "delete table inet nfsip\n" + PREVIOUS_TABLE.read_text() + "\n".join(lines) + "\n")
    return media


def test_upgrade_mid_call_from_the_table_with_counter_sets(lab: Lab):
    """Upgrading the daemon with a call up, from the release whose table counted media per packet: its
    table (counter sets, 3 elements per pinhole) is what the new daemon finds. It takes the call over,
    replaces the table with its own (no counter sets, conntrack accounting on), media keeps flowing both
    ways, and the BYE still tears everything down."""

    def while_down(_first: NfsipDaemon) -> None:
        assert _as_previous_release(lab) == 2
        old = lab.run(T.ROUTER, ["nft", "list", "set", "ip", "nfsip", "media_to_lan"]).stdout
        assert old.count("comment") == 2, old

    def restarted(second: NfsipDaemon) -> None:
        table = lab.run(T.ROUTER, ["nft", "list", "table", "inet", "nfsip"]).stdout
        tables = lab.run(T.ROUTER, ["nft", "list", "tables"]).stdout
        assert "table ip nfsip" not in tables, tables  # the new table replaced the old one
        assert "media_to_lan" not in table and "chain conntrack_accounting" in table, table
        assert second.status()["pinholes"] == 2

    _restart_mid_call(lab, while_down, restarted)
