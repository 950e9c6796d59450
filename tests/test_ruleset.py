"""The nft table: the shipped file is what nfsip installs, the kernel accepts it, and the compat queue
path works on this kernel (no CONFIG_NFT_QUEUE)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nfsip.config import Config
from nfsip.kernel import ruleset
from nfsip.kernel.ruleset import options_from, render

from .lab_support import require_lab

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_ruleset_is_the_rendered_default():
    assert (ROOT / "nft" / "nfsip.nft").read_text() == render(options_from(Config(wan_interface="wan0"), True))


def test_ruleset_never_flushes_and_only_replaces_its_own_table():
    text = render(options_from(Config(wan_interface="wan0"), True))
    assert "flush ruleset" not in text
    tables = [line for line in text.splitlines() if "table" in line and not line.startswith("#")]
    # Its own table, and the IPv4-only table of earlier versions, removed.
    assert tables == [
        "add table ip nfsip",
        "delete table ip nfsip",
        "add table inet nfsip",
        "delete table inet nfsip",
        "table inet nfsip {",
    ]


# -- per-packet cost: the filter chains every forwarded packet traverses ---------------------------------

_CHAIN = re.compile(r"^\tchain (\w+) \{\n(.*?)^\t\}", re.S | re.M)
_HOOK = re.compile(r"type (\w+) hook (\w+) priority ([^;]+);")
_PRIORITY = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0, "security": 50, "srcnat": 100}


def chains(text: str) -> dict[str, tuple[tuple[str, str, int] | None, list[str]]]:
    """name -> ((type, hook, numeric priority) or None for a regular chain, its rules without comments)."""
    result = {}
    for name, body in _CHAIN.findall(text):
        lines = [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        hook = None
        if lines and (m := _HOOK.match(lines[0])):
            base, _, offset = m.group(3).partition(" ")
            prio = _PRIORITY[base] + (int(offset.replace(" ", "")) if offset else 0)
            hook = (m.group(1), m.group(2), prio)
            lines = lines[1:]
        result[name] = (hook, lines)
    return result


def filter_chains(text: str) -> dict[str, tuple[tuple[str, str, int], list[str]]]:
    return {n: (h, rules) for n, (h, rules) in chains(text).items() if h is not None and h[0] == "filter"}


RENDERED = render(options_from(Config(wan_interface="wan0"), True))


def test_few_filter_base_chains_and_none_on_the_forward_hook():
    """Each filter base chain costs every forwarded packet a chain invocation (bench/ruleset_cost.py): the
    SIP divert needs one per hook position the daemon relies on (prerouting after DNAT, postrouting before
    and after SNAT), and nothing else has one: per-call media counts come from conntrack accounting."""
    hooks = {name: hook for name, (hook, _rules) in filter_chains(RENDERED).items()}
    assert hooks == {
        ruleset.BEFORE_SNAT_CHAIN: ("filter", "postrouting", -150),
        ruleset.SIP_TO_WAN_CHAIN: ("filter", "postrouting", 110),
        ruleset.SIP_FROM_WAN_CHAIN: ("filter", "prerouting", -90),
    }


def test_every_filter_chain_tests_the_protocol_once_then_the_sip_port_first():
    """What a media packet meets: one protocol test per chain, then in each divert rule the port bitmap
    lookup (fails for media) before interface names, conntrack status and the FIB lookup."""
    for name, (_hook, rules) in filter_chains(RENDERED).items():
        assert rules[0] == "meta l4proto != udp return", name
        for rule in rules[1:]:
            # "udp dport" would add a hidden "meta l4proto udp" to the rule: after the first rule "th" suffices
            assert not re.search(r"\budp [sd]port\b", rule), (name, rule)
            assert re.match(r"th [sd]port 5060 ", rule), (name, rule)
            assert rule.endswith((f"jump {ruleset.RATE_OUT_CHAIN}", f"jump {ruleset.RATE_IN_CHAIN}")), (name, rule)
    fib = [r for _h, rules in filter_chains(RENDERED).values() for r in rules if "fib" in r]
    assert fib and all(r.index(" 5060 ") < r.index("iifname") < r.index("fib") for r in fib), fib


def test_sip_divert_covers_both_ports_in_every_position():
    """Nothing lost in the reordering: each divert chain still queues SIP by source and by destination port,
    with the conditions it had (WAN side; before SNAT only a flow's unconfirmed first packet; inbound not for
    the router itself)."""
    rules = {name: r for name, (_h, r) in filter_chains(RENDERED).items()}
    divert = {name: [r for r in rs if " jump sip_rate_" in r] for name, rs in rules.items()}
    want = {
        ruleset.BEFORE_SNAT_CHAIN: ('ct status ! confirmed oifname "wan0"', f"jump {ruleset.RATE_OUT_CHAIN}"),
        ruleset.SIP_TO_WAN_CHAIN: ('oifname "wan0"', f"jump {ruleset.RATE_OUT_CHAIN}"),
        ruleset.SIP_FROM_WAN_CHAIN: ('iifname "wan0"', "fib daddr type != local", f"jump {ruleset.RATE_IN_CHAIN}"),
    }
    for name, conditions in want.items():
        for port in ("sport", "dport"):
            found = [r for r in divert[name] if r.startswith(f"th {port} 5060 ")]
            # Inbound from a SIP port: one rule per family (the media pinhole test names each family's map).
            assert len(found) == (2 if (name, port) == (ruleset.SIP_FROM_WAN_CHAIN, "sport") else 1), found
            assert all(c in rule for c in conditions for rule in found), (name, found)
    assert sum(len(rs) for rs in divert.values()) == 7


def test_sip_ports_are_literals_in_the_divert_rules_and_kept_in_their_set():
    """One port is compared inline (no set lookup per packet); several are an anonymous set. The named set
    keeps the configured ports either way."""
    text = render(options_from(Config(wan_interface="wan0", sip_ports=(5060, 5080)), True))
    divert = [r for _h, rules in filter_chains(text).values() for r in rules if " jump sip_rate_" in r]
    assert len(divert) == 7 and all(re.match(r"th [sd]port \{ 5060, 5080 \} ", r) for r in divert), divert
    assert "elements = { 5060, 5080 }" in text
    assert "elements = { 5060 }" in RENDERED
    assert "@sip_ports" not in RENDERED


def test_no_per_packet_counters_in_the_table():
    """Per-call media counts come from conntrack accounting (nfsip.kernel.conntrack.media_counters): no set
    or map has counters, and no filter rule looks anything up for a packet that is not SIP (bench/ruleset_cost.py:
    the two counter lookups the table had cost about 3 % of forwarding). The one lookup, that keeps media
    pinholes away from the queue, comes after the SIP port and the FIB tests."""
    sets_and_maps = re.findall(r"^\t(?:set|map) \w+ \{.*?^\t\}", RENDERED, re.M | re.S)
    # sip_ports, 8 maps, 2 rate sets and the TLS hosts set, each map and set in both families
    assert len(sets_and_maps) == 23 and not [m for m in sets_and_maps if "counter" in m], sets_and_maps
    assert "media_to_lan" not in RENDERED and "media_from_lan" not in RENDERED
    rules = [r for _h, rs in filter_chains(RENDERED).values() for r in rs]
    lookups = [r for r in rules if "@" in r]  # the per-host rate sets are updated only in the rate chains
    assert lookups == [
        'th sport 5060 iifname "wan0" fib daddr type != local ip daddr . th dport != @media_snat jump sip_rate_in',
        'th sport 5060 iifname "wan0" fib daddr type != local ip6 daddr . th dport != @media_snat6 jump sip_rate_in',
    ]


def test_the_table_turns_conntrack_accounting_on_without_a_per_packet_rule():
    """The per-call media counts need conntrack accounting; a rule that reads `ct packets` turns it on when
    loaded (nft_ct_get_init). It sits in a regular chain that no rule jumps to, so no packet runs it."""
    found = chains(RENDERED)
    hook, rules = found[ruleset.ACCOUNTING_CHAIN]
    assert hook is None and rules == ["ct packets 0 return"]
    assert not re.search(rf"(jump|goto) {ruleset.ACCOUNTING_CHAIN}\b", RENDERED)


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
    acct = ("sysctl", "-n", "net.netfilter.nf_conntrack_acct")
    assert in_ns(netns, *acct).stdout.strip() == "0"  # Linux's default in a new namespace
    before = in_ns(netns, sys.executable, "-m", "nfsip", "check", "--wan-interface", "wan0").stdout
    assert "[ok  ] accounting: conntrack accounting off; loading nfsip's table turns it on" in before, before
    code = (
        "from nfsip.config import Config\n"
        "from nfsip.daemon import Daemon\n"
        "d = Daemon.from_config(Config(wan_interface='wan0'))\n"
        "d.install(); d.install()\n"
        "print('native' if d.table.native_queue else 'compat')\n"
    )
    proc = in_ns(netns, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    listing = in_ns(netns, "nft", "-j", "list", "ruleset").stdout
    tables = {i["table"]["name"] for i in json.loads(listing)["nftables"] if "table" in i}
    assert tables == {"filter", "nat", "nfsip"}
    queue_chain = in_ns(netns, "nft", "list", "chain", "inet", "nfsip", "sip_queue").stdout
    assert "queue num 5060 bypass" in queue_chain  # nft shows the xt target the same way
    assert queue_chain.count("queue num") == 1
    check = in_ns(netns, sys.executable, "-m", "nfsip", "check", "--wan-interface", "wan0")
    assert "[ok  ] queue" in check.stdout, check.stdout
    # Loading the table turned conntrack accounting on, for the per-call media counts.
    assert in_ns(netns, *acct).stdout.strip() == "1"
    assert "[ok  ] accounting: conntrack accounting on" in check.stdout, check.stdout
    assert ("nft_compat" in check.stdout) == (proc.stdout.strip() == "compat")
    flush = in_ns(netns, sys.executable, "-m", "nfsip", "flush")
    assert flush.returncode == 0, flush.stderr
    listing = in_ns(netns, "nft", "-j", "list", "ruleset").stdout
    assert {i["table"]["name"] for i in json.loads(listing)["nftables"] if "table" in i} == {"filter", "nat"}


def test_each_lan_host_has_its_own_sip_rate_before_the_queue():
    """Every divert path reaches sip_queue only through a rate chain: a host over sip_rate_per_host has its
    excess accepted unchanged (and counted) before the queue, keyed by the LAN host in each direction."""
    text = render(options_from(Config(wan_interface="wan0", sip_rate_per_host=40, sip_burst_per_host=90), True))
    all_chains = chains(text)
    limit = "limit rate over 40/second burst 90 packets"
    assert all_chains[ruleset.RATE_OUT_CHAIN] == (
        None,
        [
            f"ct direction original update @{ruleset.RATE_OUT_SET} {{ ct original ip saddr {limit} }} counter accept",
            f"ct direction reply update @{ruleset.RATE_OUT_SET} {{ ct reply ip saddr {limit} }} counter accept",
            f"ct direction original update @{ruleset.RATE_OUT_SET}6 {{ ct original ip6 saddr {limit} }} counter accept",
            f"ct direction reply update @{ruleset.RATE_OUT_SET}6 {{ ct reply ip6 saddr {limit} }} counter accept",
            f"jump {ruleset.QUEUE_CHAIN}",
        ],
    )
    assert all_chains[ruleset.RATE_IN_CHAIN] == (
        None,
        [
            f"update @{ruleset.RATE_IN_SET} {{ ip daddr {limit} }} counter accept",
            f"update @{ruleset.RATE_IN_SET}6 {{ ip6 daddr {limit} }} counter accept",
            f"jump {ruleset.QUEUE_CHAIN}",
        ],
    )
    jumps_to_queue = [
        n for n, (_h, rules) in all_chains.items() for r in rules if r.endswith(f"jump {ruleset.QUEUE_CHAIN}")
    ]
    assert sorted(jumps_to_queue) == sorted([ruleset.RATE_OUT_CHAIN, ruleset.RATE_IN_CHAIN])
