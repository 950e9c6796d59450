"""Coexistence with the admin's firewall (issue 15): the one rule a forward chain with policy drop needs
(`nfsip admin-rule`, shipped in nft/), and the `forward-chain` line of `nfsip check`, which reads the
admin's ruleset and says whether each forward chain lets nfsip's pinholes through.

The rulesets are real: tests/firewall_rulesets/NAME.nft, loaded by nft in a network namespace of its own,
listed as `nft -j -s -t list ruleset` (NAME.json) and `nft -a -s -t list ruleset` (NAME.txt). Regenerate
the listings as root with `python -m tests.test_firewall`; test_each_ruleset_loads_and_lists_as_stored
checks them against a fresh load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nfsip.check import forward_chain_results
from nfsip.cli import main
from nfsip.config import DEFAULTS
from nfsip.firewall import INSTALL_PATHS, STYLES, ChainFinding, admin_rule, admin_rule_file, forward_chains, rule_texts

from .lab_support import require, require_lab, require_tool

ROOT = Path(__file__).resolve().parents[1]
RULESETS = Path(__file__).parent / "firewall_rulesets"
NFT_DIR = ROOT / "nft"
SHIPPED = {"debian": NFT_DIR / "admin-forward.nft", "fw4": NFT_DIR / "fw4/chain-pre/forward/nfsip.nft"}
MARK = DEFAULTS.pinhole_mark
RULE = admin_rule(MARK)


def source(name: str) -> str:
    """A ruleset as nft loads it: its includes of nfsip's shipped files point into this checkout."""
    return (RULESETS / f"{name}.nft").read_text().replace("NFSIP_NFT/", f"{NFT_DIR}/")


def list_in_own_netns(text: str) -> tuple[str, str]:
    """Load `text` with nft in a network namespace of its own; its JSON and text listings."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp, "ruleset.nft")
        conf.write_text(text)
        script = 'nft -f "$1" && nft -j -s -t list ruleset > "$2" && nft -a -s -t list ruleset > "$3"'
        out = [Path(tmp, "ruleset.json"), Path(tmp, "ruleset.txt")]
        proc = subprocess.run(
            ["unshare", "--net", "sh", "-c", script, "sh", str(conf), *map(str, out)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return out[0].read_text(), out[1].read_text()


def stored(name: str) -> tuple[dict, str]:
    return json.loads((RULESETS / f"{name}.json").read_text()), (RULESETS / f"{name}.txt").read_text()


def findings(name: str, wan: str = "wan0", mark: int = MARK) -> dict[str, ChainFinding]:
    ruleset, listing = stored(name)
    return {
        f"{f.family} {f.table} {f.chain}": f
        for f in forward_chains(ruleset, mark, wan, DEFAULTS.table_name, rule_texts(listing))
    }


def without_metainfo(listing: str) -> list[dict]:
    return [item for item in json.loads(listing)["nftables"] if "metainfo" not in item]


NAMES = sorted(p.stem for p in RULESETS.glob("*.nft"))


# -- the rule and the shipped files ---------------------------------------------------------------------


def test_the_rule_tests_the_configured_bit_of_the_conntrack_mark():
    assert RULE == 'ct mark & 0x00100000 == 0x00100000 accept comment "nfsip pinholes"'
    assert admin_rule(1 << 31) == 'ct mark & 0x80000000 == 0x80000000 accept comment "nfsip pinholes"'
    assert admin_rule(1) == 'ct mark & 0x00000001 == 0x00000001 accept comment "nfsip pinholes"'


@pytest.mark.parametrize("style", STYLES)
def test_shipped_files_are_what_admin_rule_prints_for_the_defaults(style: str, capsys: pytest.CaptureFixture[str]):
    assert main(["admin-rule", "--style", style]) == 0
    printed = capsys.readouterr().out
    assert printed == SHIPPED[style].read_text() == admin_rule_file(MARK, style)
    assert printed.splitlines()[-1] == RULE  # the one rule, after comments saying where it goes
    assert INSTALL_PATHS[style] in printed


def test_admin_rule_prints_the_configured_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    config = tmp_path / "nfsip.toml"
    config.write_text("pinhole_mark = 0x4000\n")
    assert main(["admin-rule", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == admin_rule(0x4000)
    with pytest.raises(SystemExit) as exc:
        main(["admin-rule", "--style", "other"])
    assert exc.value.code == 2


def test_printed_rule_for_another_mark_loads_in_a_debian_forward_chain(tmp_path: Path):
    """`nft -c` (check only): the file `nfsip admin-rule` prints for a non-default mark, included where its
    comment says, in Debian's forward chain."""
    require(os.geteuid() == 0, "needs root (nft -c in a network namespace of its own)")
    require_tool("nft", "nftables")
    require_tool("unshare", "util-linux")
    config = tmp_path / "nfsip.toml"
    config.write_text("pinhole_mark = 0x80000000\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nfsip", "admin-rule", "--config", str(config)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "admin-forward.nft").write_text(proc.stdout)
    conf = source("debian_rule").replace(f"{NFT_DIR}/admin-forward.nft", str(tmp_path / "admin-forward.nft"))
    (tmp_path / "nftables.conf").write_text(conf)
    check = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(tmp_path / "nftables.conf")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr


def test_the_whole_firewall_of_the_docs_is_the_lab_tests_with_the_rule():
    """docs/nftables.md, "Forward policy drop": the lab's ADMIN_CONF (tests/test_lab_ops.py), include path
    aside, whose forward chain holds the rule."""
    from .test_lab_ops import ADMIN_CONF

    docs = (ROOT / "docs" / "nftables.md").read_text()
    example = docs[docs.index("```\nflush ruleset\n") + 4 :]
    example = example[: example.index("```")]
    assert example == ADMIN_CONF.lstrip().replace(str(NFT_DIR / "nfsip.nft"), "/usr/share/nfsip/nfsip.nft")
    assert f"        ct state established,related accept\n        {RULE}\n" in example


@pytest.mark.parametrize("name", NAMES)
def test_each_ruleset_loads_and_lists_as_stored(name: str):
    """Each ruleset loads (those with nfsip's rule include the shipped files, in a Debian-style forward
    chain, in a chain it jumps to, in an ip6 table and where fw4 includes chain-pre/forward), and lists as
    the stored JSON and text the other tests read."""
    require(os.geteuid() == 0, "needs root (nft in a network namespace of its own)")
    require_tool("nft", "nftables")
    require_tool("unshare", "util-linux")
    listing, text = list_in_own_netns(source(name))
    ruleset, stored_text = stored(name)
    assert without_metainfo(listing) == [item for item in ruleset["nftables"] if "metainfo" not in item]
    assert text == stored_text
    if "NFSIP_NFT/" in (RULESETS / f"{name}.nft").read_text():
        assert f"\t\t{RULE} # handle " in text


# -- reading the admin's forward chains -------------------------------------------------------------------


def outcomes(finding: ChainFinding) -> dict[int, str]:
    return {v: finding.outcome(v) for v in finding.walks}


def test_debian_default_ruleset_filters_nothing():
    found = findings("debian_default")
    assert outcomes(found["inet filter forward"]) == {4: "passes", 6: "passes"}
    assert not found["inet filter forward"].concerns_pinholes
    (result,) = forward_chain_results(list(found.values()), MARK)
    assert (result.level, result.message) == ("ok", "no forward chain stops nfsip's pinholes (inet filter forward)")


def test_forward_policy_drop_without_the_rule_drops_both_families():
    chain = findings("debian_drop")["inet filter forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    assert chain.walks[4].verdict is None and chain.walks[4].may_pass == []  # the policy, nothing before it
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert result.message == (
        "table inet filter, chain forward (policy drop): drops nfsip's IPv4 and IPv6 pinholes by its policy: "
        "no rule accepts them before"
    )
    assert f"add `{RULE}` to chain forward of table inet filter" in result.fix
    assert f"nft 'insert rule inet filter forward {RULE}'" in result.fix


def test_the_rule_before_the_policy_lets_both_families_through():
    chain = findings("debian_rule")["inet filter forward"]
    assert outcomes(chain) == {4: "accepted", 6: "accepted"}
    assert chain.walks[6].by.text == RULE
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "ok"
    assert result.message == (
        f"table inet filter, chain forward (policy drop): accepts nfsip's IPv4 and IPv6 pinholes by `{RULE}`"
    )


def test_the_rule_after_a_drop_is_too_late():
    chain = findings("debian_rule_after_drop")["inet filter forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    assert chain.walks[4].by.text == "counter drop"
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn" and "drops nfsip's IPv4 and IPv6 pinholes by `counter drop`" in result.message


def test_a_rule_for_another_bit_does_not_count():
    chain = findings("debian_rule", mark=0x00200000)["inet filter forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    (result,) = forward_chain_results([chain], 0x00200000)
    assert f"(unless one of these accepts them: `{RULE}`)" in result.message  # it may: other bits are unknown
    assert admin_rule(0x00200000) in result.fix


def test_accepting_dnat_lets_ipv4_pinholes_in_but_not_ipv6_ones():
    """`ct status dnat accept` (port forwards need it; the docs recommended it before IPv6). An IPv4
    pinhole is DNAT; an IPv6 one is an identity DNAT, which sets no status, unless the admin NATs IPv6,
    which the ruleset of the filter does not say."""
    chain = findings("debian_dnat")["inet filter forward"]
    assert outcomes(chain) == {4: "accepted", 6: "dropped"}
    assert chain.walks[4].by.text == "ct status dnat accept"
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert result.message == (
        "table inet filter, chain forward (policy drop): accepts nfsip's IPv4 pinholes by `ct status dnat accept`; "
        "drops nfsip's IPv6 pinholes by its policy: no rule accepts them before "
        "(unless one of these accepts them: `ct status dnat accept`)"
    )


def test_a_rule_on_the_packet_mark_does_not_count():
    """nfsip sets no packet mark: a rule testing its bit there may match only what another program marked."""
    chain = findings("debian_packet_mark")["inet filter forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert result.message.endswith(
        "drops nfsip's IPv4 and IPv6 pinholes by its policy: no rule accepts them before "
        "(unless one of these accepts them: `meta mark & 0x00100000 == 0x00100000 accept`)"
    )
    assert f"nft 'insert rule inet filter forward {RULE}'" in result.fix


def test_a_rule_that_may_clear_the_bit_leaves_the_rule_after_it_undecided():
    """`ct mark set ct mark | 0x1` (and a mask that keeps nfsip's bit) leave the bit set; `ct mark set meta
    mark` may clear it, so nfsip's rule after it may not match."""
    found = findings("ct_mark_set")
    keeps = found["inet keeps_bit forward"]
    assert outcomes(keeps) == {4: "accepted", 6: "accepted"}
    assert keeps.walks[4].by.text == RULE
    clears = found["inet clears_bit forward"]
    assert outcomes(clears) == {4: "dropped", 6: "dropped"}
    assert [r.text for r in clears.walks[6].may_pass] == [RULE]
    ok, warn = forward_chain_results([keeps, clears], MARK)
    assert ok.level == "ok" and warn.level == "warn"
    assert warn.message.endswith(f"(unless one of these accepts them: `{RULE}`)")


def test_a_jump_to_a_chain_that_drops_is_followed():
    chain = findings("jump_drop")["inet filter forward"]
    assert chain.policy == "accept"
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    walk = chain.walks[4]
    assert (walk.by.chain, walk.by.text) == ("from_wan", "counter drop")
    assert [r.text for r in walk.via] == ['iifname "wan0" jump from_wan']
    (result,) = forward_chain_results([chain], MARK)
    assert (
        "drops nfsip's IPv4 and IPv6 pinholes by `counter drop` in chain from_wan, reached by "
        '`iifname "wan0" jump from_wan`' in result.message
    )


def test_without_the_wan_interface_a_conditional_jump_is_undecided():
    chain = findings("jump_drop", wan="")["inet filter forward"]
    assert outcomes(chain) == {4: "undecided", 6: "undecided"}
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert "could not decide whether it lets nfsip's IPv4 and IPv6 pinholes through" in result.message
    assert "`counter drop` in chain from_wan" in result.message


def test_the_rule_in_the_chain_jumped_to_counts():
    chain = findings("jump_rule")["inet filter forward"]
    assert outcomes(chain) == {4: "accepted", 6: "accepted"}
    assert chain.walks[4].by.chain == "from_wan"
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "ok"


def test_ip6_only_table_concerns_only_ipv6():
    found = findings("ip6_only")
    assert list(found) == ["ip6 filter forward"]  # the ip nat table has no forward chain
    assert outcomes(found["ip6 filter forward"]) == {6: "dropped"}
    (result,) = forward_chain_results(list(found.values()), MARK)
    assert result.message.startswith("table ip6 filter, chain forward (policy drop): drops nfsip's IPv6 pinholes")
    assert f"nft 'insert rule ip6 filter forward {RULE}'" in result.fix
    assert outcomes(findings("ip6_rule")["ip6 filter forward"]) == {6: "accepted"}


def test_a_named_set_the_check_cannot_read_leaves_it_undecided():
    found = findings("blocklist")
    chain = found["inet filter forward"]
    assert outcomes(chain) == {4: "passes", 6: "undecided"}  # `ip6 saddr @blocked6 drop`: never IPv4
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert result.message == (
        "table inet filter, chain forward (policy accept): lets nfsip's IPv4 pinholes through; could not decide "
        "whether it lets nfsip's IPv6 pinholes through: these rules may stop them, on tests this check cannot "
        "evaluate: `ip6 saddr @blocked6 drop`"
    )


def test_fw4_rejects_pinholes_at_the_end_of_its_forward_chain():
    found = findings("fw4", wan="pppoe-wan")
    assert not found["inet fw4 mangle_forward"].concerns_pinholes
    chain = found["inet fw4 forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    walk = chain.walks[6]
    assert (walk.by.chain, walk.by.text) == (
        "handle_reject",
        'reject comment "!fw4: Reject any other traffic"',
    )
    assert [r.text for r in walk.via] == ["jump handle_reject"]
    # From the WAN, only the ISAKMP rule (a port this cannot know) may let a pinhole into the LAN.
    assert [r.text for r in walk.may_pass] == [
        'oifname "br-lan" counter accept comment "!fw4: accept lan IPv4/IPv6 traffic"'
    ]
    (result,) = forward_chain_results([chain], MARK)
    assert result.level == "warn"
    assert result.fix.startswith(f"nfsip admin-rule --style fw4 > {INSTALL_PATHS['fw4']} && fw4 reload")


def test_fw4_without_the_wan_interface_still_rejects():
    chain = findings("fw4", wan="")["inet fw4 forward"]
    assert outcomes(chain) == {4: "dropped", 6: "dropped"}
    assert len(chain.walks[4].may_pass) > 1  # more paths it cannot rule out, the same end


def test_fw4_with_the_shipped_include_accepts_them():
    found = findings("fw4_include", wan="pppoe-wan")
    chain = found["inet fw4 forward"]
    assert outcomes(chain) == {4: "accepted", 6: "accepted"}
    assert chain.walks[4].by.text == RULE
    results = forward_chain_results(list(found.values()), MARK)
    assert [r.level for r in results] == ["ok"]


def test_no_forward_chain_at_all():
    (result,) = forward_chain_results([], MARK)
    assert (result.level, result.message) == ("ok", "no forward chain: forwarded traffic is not filtered")


def test_nfsips_own_table_is_not_read():
    ruleset, listing = stored("debian_drop")
    assert forward_chains(ruleset, MARK, "wan0", "filter", rule_texts(listing)) == []


# -- the whole command, in a namespace with the admin's ruleset loaded --------------------------------------


def in_ns(ns: str, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, **kw)


@pytest.fixture
def router_ns():
    """A namespace with interfaces wan0 and lan0 (veth: no dummy module here)."""
    require_lab()
    name = f"nfsip-fw-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for link in ("wan0", "lan0"):
            in_ns(name, "ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}p", check=True)
            in_ns(name, "ip", "link", "set", link, "up", check=True)
        in_ns(name, "ip", "addr", "add", "192.0.2.1/24", "dev", "wan0", check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.parametrize(
    ("name", "where"),
    [("debian_drop", "table inet filter, chain forward"), ("ip6_only", "table ip6 filter, chain forward")],
)
def test_nfsip_check_warns_and_its_fix_makes_it_pass(router_ns: str, name: str, where: str):
    """`nfsip check` beside a forward policy drop names the chain and prints the rule; running the printed
    `nft 'insert rule ...'` makes the line ok."""
    load = subprocess.run(["ip", "netns", "exec", router_ns, "nft", "-f", "-"], input=source(name), text=True)
    assert load.returncode == 0
    check = [sys.executable, "-m", "nfsip", "check", "--wan-interface", "wan0"]
    before = in_ns(router_ns, *check)
    lines = before.stdout.splitlines()
    warn = [i for i, line in enumerate(lines) if line.startswith("[WARN] forward-chain: ")]
    assert len(warn) == 1, before.stdout + before.stderr
    assert lines[warn[0]].startswith(f"[WARN] forward-chain: {where} (policy drop): drops nfsip's"), before.stdout
    fix = lines[warn[0] + 1]
    assert fix.startswith("       fix: add `" + RULE), fix
    command = fix[fix.index("nft 'insert rule") : fix.index("'", fix.index("nft '") + 5) + 1]
    inserted = in_ns(router_ns, "sh", "-c", command)
    assert inserted.returncode == 0, command + inserted.stderr
    after = in_ns(router_ns, *check)
    assert f"[ok  ] forward-chain: {where} (policy drop): accepts nfsip's" in after.stdout, after.stdout
    assert f"by `{RULE}`" in after.stdout
    assert "[WARN] forward-chain" not in after.stdout
    assert before.returncode == after.returncode == 0, before.stdout + after.stdout  # a warning is no failure


def regenerate() -> None:
    """Write NAME.json and NAME.txt for every NAME.nft (root: nft in a namespace of its own)."""
    for name in NAMES:
        listing, text = list_in_own_netns(source(name))
        (RULESETS / f"{name}.json").write_text(json.dumps(json.loads(listing), indent=1) + "\n")
        (RULESETS / f"{name}.txt").write_text(text)
        print(f"{name}: {len(without_metainfo(listing))} objects")


if __name__ == "__main__":
    regenerate()
