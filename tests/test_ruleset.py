"""The nft table: the shipped file is what nfsip installs, the kernel accepts it, and the compat queue
path works on this kernel (no CONFIG_NFT_QUEUE)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nfsip.config import Config
from nfsip.kernel.ruleset import options_from, render

from .lab_support import require_lab

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_ruleset_is_the_rendered_default():
    assert (ROOT / "nft" / "nfsip.nft").read_text() == render(options_from(Config(wan_interface="wan0"), True))


def test_ruleset_never_flushes_and_only_replaces_its_own_table():
    text = render(options_from(Config(wan_interface="wan0"), True))
    assert "flush ruleset" not in text
    tables = [line for line in text.splitlines() if "table" in line and not line.startswith("#")]
    assert all("ip nfsip" in line for line in tables), tables


@pytest.fixture
def netns():
    require_lab()
    name = f"nfsip-rs-{id(object())}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


def test_daemon_install_beside_an_admin_ruleset(netns):
    """nfsip installs its table (with the queue rule by whichever path this kernel has) next to an admin's
    drop-policy filter and NAT, replaces it on reinstall, and removes only its own table."""
    admin = """
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
    }
}
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat;
        oifname "wan0" masquerade
    }
}
"""
    subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=admin, text=True, check=True)
    in_ns(
        netns, "ip", "link", "add", "wan0", "type", "veth", "peer", "name", "wanpeer", check=True
    )  # no dummy module here
    in_ns(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "wan0", check=True)
    code = (
        "from nfsip.config import Config\n"
        "from nfsip.daemon import Daemon\n"
        "d = Daemon(Config(wan_interface='wan0'))\n"
        "d.install(); d.install()\n"
        "print('native' if d.native_queue else 'compat')\n"
    )
    proc = in_ns(netns, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    listing = in_ns(netns, "nft", "-j", "list", "ruleset").stdout
    tables = {i["table"]["name"] for i in json.loads(listing)["nftables"] if "table" in i}
    assert tables == {"filter", "nat", "nfsip"}
    queue_chain = in_ns(netns, "nft", "list", "chain", "ip", "nfsip", "sip_queue").stdout
    assert "queue num 5060 bypass" in queue_chain  # nft shows the xt target the same way
    assert queue_chain.count("queue num") == 1
    check = in_ns(netns, sys.executable, "-m", "nfsip", "check", "--wan-interface", "wan0")
    assert "[ok  ] queue" in check.stdout, check.stdout
    assert ("nft_compat" in check.stdout) == (proc.stdout.strip() == "compat")
    flush = in_ns(netns, sys.executable, "-m", "nfsip", "flush")
    assert flush.returncode == 0, flush.stderr
    listing = in_ns(netns, "nft", "-j", "list", "ruleset").stdout
    assert {i["table"]["name"] for i in json.loads(listing)["nftables"] if "table" in i} == {"filter", "nat"}
