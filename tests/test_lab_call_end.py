"""What the docs tell admins about a daemon's stop and start, checked in the lab: a clean stop leaves the
media of a call in progress running (docs/security.md), and `nfsip run` without the privilege says so and
exits 3 (docs/cli.md)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsip.cli import EXIT_MISSING
from nfsip.lab import topology as T
from nfsip.lab.capture import Capture, count_rtp
from nfsip.lab.lab import Lab
from nfsip.lab.nfsipd import NfsipDaemon
from nfsip.lab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas

from .lab_support import require_lab

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=1) as lab:
        lab.masquerade()
        yield lab


def test_clean_stop_keeps_the_media_of_a_call_in_progress(lab: Lab):
    """SIGTERM mid-call: the table (every pinhole) goes, the media flows' conntrack entries stay, and the
    media goes on reaching both ends over them."""
    daemon = NfsipDaemon(lab, config={"metrics_listen": ""}).start()
    uas = SippUas(lab).start()
    with Capture(lab, T.SERVER, "eth0") as at_server, Capture(lab, "phone1", "eth0") as at_phone:
        uac = SippUac(lab, "phone1").start()
        time.sleep(3)
        before = daemon.status()
        stopped_at = time.time()
        assert daemon.stop() == 0, daemon.log()
        table = lab.run(T.ROUTER, ["nft", "list", "table", "ip", "nfsip"], check=False)
        entries = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
        uac.wait(60)
        uas.wait(20)
    log = daemon.log()
    assert "Traceback" not in log, log
    assert "table ip nfsip removed; stopped" in log, log
    ports = {h["public_port"] for c in before["calls"] for h in c["pinholes"]}
    assert ports, before
    assert table.returncode != 0, table.stdout  # the table and its map elements are gone
    media = [ln for ln in entries.splitlines() if any(f"sport={p} " in ln or f"dport={p} " in ln for p in ports)]
    assert media, entries  # the media flows' entries are not
    after_phone = [p for p in at_phone.packets() if p.ts > stopped_at + 0.5]
    after_server = [p for p in at_server.packets() if p.ts > stopped_at + 0.5]
    print(f"after the stop: {count_rtp(after_phone, dst=T.PHONE_IPS[0])} RTP to the phone, "
          f"{count_rtp(after_server, dst=T.SERVER_IP)} to the server")  # fmt: skip
    # About 4 s of the 7 s stream were left at the stop: 30 ms packets, over 100 each way.
    assert count_rtp(after_phone, dst=T.PHONE_IPS[0]) >= 100
    assert count_rtp(after_server, dst=T.SERVER_IP) >= 100
    assert count_rtp(at_phone.packets(), dst=T.PHONE_IPS[0]) >= PCAP_RTP_PACKETS * 0.95


def test_unprivileged_run_exits_3_with_the_message_cli_md_quotes():
    """docs/cli.md: without CAP_NET_ADMIN `nfsip run` prints one line and exits 3 (not a traceback)."""
    quoted = re.findall(r"`(nfsip: Failed to bind[^`]*)`", (ROOT / "docs" / "cli.md").read_text())
    assert len(quoted) == 1, quoted
    script = (
        "ip link set lo up && exec setpriv --reuid=nobody --regid=nogroup --clear-groups --inh-caps=-all "
        '"$0" -m nfsip run --wan-interface lo'
    )
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", script, sys.executable], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == EXIT_MISSING == 3, proc.stderr
    assert quoted[0] in proc.stderr.splitlines(), proc.stderr
    assert "Traceback" not in proc.stderr
