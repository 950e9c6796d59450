"""`nfsip check`: is this machine able to run nfsip, and which queue path will it use?

Each check says what it found and, when something is wrong, the command or setting that fixes it.
Kernel checks only ask (dry-run transactions, reads); nothing is left installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, check_consistency
from .firewall import INSTALL_PATHS, ChainFinding, Rule, admin_rule, forward_chains, rule_texts


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    level: str  # ok | warn | fail
    message: str
    fix: str = ""
    exit_code: int = 3


def _config_checks(config: Config) -> list[CheckResult]:
    try:
        check_consistency(config)
    except ConfigError as exc:
        return [CheckResult("config", "fail", str(exc), "correct the key named above", exit_code=2)]
    return [CheckResult("config", "ok", f"valid; media ports {config.media_port_min}-{config.media_port_max}")]


def _kernel_checks(config: Config) -> list[CheckResult]:
    results: list[CheckResult] = []
    if not _has_cap_net_admin():
        results.append(CheckResult("privileges", "fail", "no CAP_NET_ADMIN", "run as root or grant CAP_NET_ADMIN"))
        return results
    results.append(CheckResult("privileges", "ok", "CAP_NET_ADMIN"))

    try:
        from .kernel.nft import Nft, NftError

        nft = Nft(config.table_name)
        nft.run_text(
            "add table inet nfsip_probe\n"
            "add map inet nfsip_probe m { type ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }\n"
            "add chain inet nfsip_probe p { type nat hook prerouting priority dstnat - 10; }\n"
            "add rule inet nfsip_probe p dnat ip to ip daddr . udp dport map @m\n",
            dry_run=True,
        )
        results.append(CheckResult("nftables", "ok", "libnftables works; NAT maps with timeouts accepted"))
    except (NftError, OSError) as exc:
        results.append(
            CheckResult(
                "nftables",
                "fail",
                f"nftables cannot build nfsip's NAT maps: {exc}",
                "install nftables and libnftables1; load nf_tables, nft_nat, nft_ct (modprobe nft_nat)",
            )
        )
        return results

    if nft.has_native_queue():
        results.append(CheckResult("queue", "ok", "native nft `queue` statement (nft_queue)"))
    else:
        results.extend(_compat_queue_check())

    features = nft.element_features()
    # Both are speed only: without them nfsip sends more messages per transaction (nfsip.kernel.nft).
    results.append(CheckResult("elements", "ok", features.describe()))

    try:
        from .kernel.conntrack import Conntrack

        Conntrack().close()
        results.append(CheckResult("conntrack", "ok", "ctnetlink reachable (lookup and purge of media flows)"))
    except Exception as exc:
        results.append(
            CheckResult("conntrack", "fail", f"ctnetlink unavailable: {exc}", "modprobe nf_conntrack_netlink")
        )
    results.append(_accounting_check())

    if config.wan_interface:
        from .kernel.netinfo import InterfaceError, primary_ipv4

        try:
            address = config.public_address or primary_ipv4(config.wan_interface)
            results.append(CheckResult("wan", "ok", f"{config.wan_interface}: public address {address}"))
        except InterfaceError as exc:
            results.append(
                CheckResult(
                    "wan",
                    "warn",
                    str(exc),
                    "nfsip waits for the address (PPPoE/DHCP) and passes SIP unchanged until then; check the "
                    "interface name if it never comes",
                )
            )
    else:
        results.append(
            CheckResult("wan", "warn", "no WAN interface given", "pass --wan-interface IF (or wan_interface=)")
        )

    results.append(_kernel_alg_check(nft))
    results.extend(_forward_chain_checks(config))

    ip_forward = Path("/proc/sys/net/ipv4/ip_forward")
    if ip_forward.exists() and ip_forward.read_text().strip() != "1":
        results.append(CheckResult("forwarding", "warn", "IPv4 forwarding is off", "sysctl -w net.ipv4.ip_forward=1"))
    return results


def _accounting_check() -> CheckResult:
    """Conntrack accounting gives the per-call media counts; nfsip's table turns it on when it is loaded
    (nfsip.kernel.ruleset.ACCOUNTING_CHAIN), so there is nothing to fix: this says which it is now."""
    from .kernel.conntrack import accounting_enabled

    state = accounting_enabled()
    if state:
        return CheckResult("accounting", "ok", "conntrack accounting on (per-call media counts)")
    now = "off" if state is False else "not readable (is nf_conntrack loaded?)"
    return CheckResult(
        "accounting",
        "ok",
        f"conntrack accounting {now}; loading nfsip's table turns it on (per-call media counts)",
    )


def _kernel_alg_check(nft: object) -> CheckResult:
    """Is the kernel SIP ALG handling traffic? Since Linux 4.7 a helper acts only where it is assigned:
    by a `ct helper` object of type "sip" in an nft ruleset (or iptables' CT --helper), or everywhere when
    the old automatic assignment (net.netfilter.nf_conntrack_helper = 1) is switched back on."""
    import json

    fix = "remove the `ct helper` assignment for SIP (or `modprobe -r nf_nat_sip nf_conntrack_sip`)"
    auto = Path("/proc/sys/net/netfilter/nf_conntrack_helper")
    present = Path("/sys/module/nf_conntrack_sip").exists()
    if present and auto.exists() and auto.read_text().strip() == "1":
        return CheckResult(
            "kernel-sip-alg",
            "warn",
            "net.netfilter.nf_conntrack_helper = 1: the kernel SIP ALG handles every udp/5060 flow, nfsip's too",
            "sysctl -w net.netfilter.nf_conntrack_helper=0",
        )
    rc, out, _err = nft._nft.cmd("list ruleset")  # type: ignore[attr-defined]
    tables = set()
    if rc == 0:
        for item in json.loads(out or "{}").get("nftables", []):
            helper = item.get("ct helper")
            if helper and helper.get("type") == "sip":
                tables.add(f"{helper.get('family')} {helper.get('table')}")
    if tables:
        return CheckResult(
            "kernel-sip-alg",
            "warn",
            f"the kernel SIP ALG is assigned in table {', '.join(sorted(tables))}: never let it handle the "
            "flows nfsip handles",
            fix,
        )
    state = "available but assigned to no traffic" if present else "not loaded"
    return CheckResult("kernel-sip-alg", "ok", f"kernel SIP ALG {state}")


def _forward_chain_checks(config: Config) -> list[CheckResult]:
    """Does the admin's firewall let nfsip's pinholes through? Every base chain on the forward hook must
    accept their packets until the phone replies (conntrack state new, nfsip's bit in the conntrack mark);
    read from the ruleset (nfsip.firewall), nfsip's own table left out."""
    import json

    from .kernel.nft import _nftables

    nft = _nftables()
    nft.set_stateless_output(True)  # no counter values
    nft.set_terse_output(True)  # no set elements (nfsip's maps may hold thousands)
    nft.set_handle_output(True)
    rc, listing, err = nft.cmd("list ruleset")
    if rc == 0:
        nft.set_json_output(True)
        rc, out, err = nft.cmd("list ruleset")
    if rc != 0:
        return [CheckResult("forward-chain", "warn", f"could not read the ruleset: {err.strip()}")]
    findings = forward_chains(
        json.loads(out or "{}"), config.pinhole_mark, config.wan_interface, config.table_name, rule_texts(listing)
    )
    return forward_chain_results(findings, config.pinhole_mark)


def forward_chain_results(findings: list[ChainFinding], mark: int) -> list[CheckResult]:
    """One line per forward chain that drops or may drop a pinhole's packets (ok when it accepts them
    first), or one line saying that none does."""
    concerned = [f for f in findings if f.concerns_pinholes]
    if not findings:
        return [CheckResult("forward-chain", "ok", "no forward chain: forwarded traffic is not filtered")]
    if not concerned:
        names = ", ".join(f"{f.family} {f.table} {f.chain}" for f in findings)
        return [CheckResult("forward-chain", "ok", f"no forward chain stops nfsip's pinholes ({names})")]
    return [_forward_chain_result(f, mark) for f in concerned]


_FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


def _forward_chain_result(finding: ChainFinding, mark: int) -> CheckResult:
    """What one chain does with the pinholes' packets, per address family, and the fix if needed."""
    # Phrases with a placeholder for the families, so that both share one phrase when they fare alike.
    phrases: dict[str, list[int]] = {}
    for version, walk in finding.walks.items():
        outcome = finding.outcome(version)
        if outcome == "accepted":
            phrase = "accepts nfsip's FAMILIES pinholes by " + _where(walk.by, walk.via, finding.chain)
            if walk.may_stop:
                phrase += f" (unless an earlier rule drops some: {_rules(walk.may_stop, finding.chain)})"
        elif outcome == "dropped":
            if walk.verdict is None:
                phrase = "drops nfsip's FAMILIES pinholes by its policy: no rule accepts them before"
            else:
                phrase = "drops nfsip's FAMILIES pinholes by " + _where(walk.by, walk.via, finding.chain)
            if walk.may_pass:
                phrase += f" (unless one of these accepts them: {_rules(walk.may_pass, finding.chain)})"
        elif outcome == "undecided":
            unread = walk.may_stop + ([walk.by] if walk.verdict == "unknown" and walk.by else [])
            phrase = (
                "could not decide whether it lets nfsip's FAMILIES pinholes through: these rules may stop them, "
                f"on tests this check cannot evaluate: {_rules(unread, finding.chain)}"
            )
        else:
            phrase = "lets nfsip's FAMILIES pinholes through"
        phrases.setdefault(phrase, []).append(version)
    parts = [p.replace("FAMILIES", " and ".join(_FAMILY_NAMES[v] for v in vs), 1) for p, vs in phrases.items()]
    message = f"table {finding.family} {finding.table}, chain {finding.chain} (policy {finding.policy}): " + "; ".join(
        parts
    )
    if all(finding.outcome(v) in ("accepted", "passes") for v in finding.walks):
        return CheckResult("forward-chain", "ok", message)
    rule = admin_rule(mark)
    if (finding.family, finding.table) == ("inet", "fw4"):
        fix = (
            f"nfsip admin-rule --style fw4 > {INSTALL_PATHS['fw4']} && fw4 reload "
            f"(puts `{rule}` at the top of fw4's forward chain)"
        )
    else:
        fix = (
            f"add `{rule}` to chain {finding.chain} of table {finding.family} {finding.table}, before the rules "
            f"that drop: at once with nft 'insert rule {finding.family} {finding.table} {finding.chain} {rule}', "
            "and in your ruleset file (`nfsip admin-rule` prints it and where it goes)"
        )
    return CheckResult("forward-chain", "warn", message, fix)


def _where(rule: Rule | None, via: tuple[Rule, ...], base_chain: str) -> str:
    if rule is None:
        return "a rule"
    text = f"`{rule.text}`" + (f" in chain {rule.chain}" if rule.chain != base_chain else "")
    if via:
        text += ", reached by " + " then ".join(f"`{r.text}`" for r in via)
    return text


def _rules(rules: list[Rule], base_chain: str, shown: int = 3) -> str:
    texts = [f"`{r.text}`" + (f" in chain {r.chain}" if r.chain != base_chain else "") for r in rules[:shown]]
    more = f" and {len(rules) - shown} more" if len(rules) > shown else ""
    return ", ".join(texts) + more


def _has_cap_net_admin() -> bool:
    """CAP_NET_ADMIN (bit 12) in the effective set: root, or a service granted just that capability."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _compat_queue_check() -> list[CheckResult]:
    """No nft_queue: verify that the xt NFQUEUE target works through nft_compat, in a throwaway table, and
    that `nft list` can print the rule (_compat_listing_check)."""
    from .kernel import divert
    from .kernel.nft import Nft, NftError, _nftables
    from .kernel.ruleset import QUEUE_CHAIN

    probe = Nft("nfsip_probe")
    try:
        probe.run_text(f"add table inet nfsip_probe\nadd chain inet nfsip_probe {QUEUE_CHAIN}\n")
        divert.add_compat_queue_rule("nfsip_probe", 0)
        # Text output, as `nft list` prints it (the JSON output names the xt target without its library).
        rc, listing, err = _nftables().cmd(f"list chain inet nfsip_probe {QUEUE_CHAIN}")
        return [
            CheckResult(
                "queue",
                "ok",
                "no native nft `queue` (CONFIG_NFT_QUEUE off): using the xt NFQUEUE target through nft_compat",
            ),
            _compat_listing_check(listing or "")
            if rc == 0
            else CheckResult("queue-listing", "warn", f"`nft list` of the probe chain failed: {err.strip()}"),
        ]
    except Exception as exc:
        return [
            CheckResult(
                "queue",
                "fail",
                f"neither nft `queue` nor xt NFQUEUE through nft_compat works: {exc}",
                "load nft_queue (modprobe nft_queue) or nft_compat + xt_NFQUEUE (modprobe nft_compat xt_NFQUEUE)",
            )
        ]
    finally:
        try:
            probe.remove_table()
        except NftError:
            pass


def _compat_listing_check(listing: str) -> CheckResult:
    """Can `nft list` print the compat queue rule? `listing` is `nft list chain` of a chain that holds
    only that rule. libnftables prints an xt target through its xtables extension library (libxtables
    looks for libxt_NFQUEUE.so in XTABLES_LIBDIR, else in its built-in directory; Debian's `iptables`
    package ships it). Without it the rule prints as an empty line: the divert still works, but `nft list
    ruleset` shows nfsip's queue chain empty, and a ruleset saved from that listing loads without error and
    without the divert rule."""
    shown = [
        line.strip()
        for line in listing.splitlines()
        if line.strip() and not line.strip().startswith(("table ", "chain ", "}", "#"))
    ]
    queue = [line for line in shown if line.startswith("queue ")]
    if queue:
        return CheckResult("queue-listing", "ok", f"`nft list` shows the compat queue rule as `{queue[0]}`")
    if shown:
        cause = f"printed as {shown[0]!r}"
    else:
        where = os.environ.get("XTABLES_LIBDIR")
        cause = "printed as an empty line: the xtables extension libxt_NFQUEUE.so is missing" + (
            f" from XTABLES_LIBDIR={where}" if where else ""
        )
    return CheckResult(
        "queue-listing",
        "warn",
        f"`nft list` cannot print the xt NFQUEUE rule ({cause}): `nft list ruleset` shows nfsip's queue chain "
        "empty, and a ruleset saved from it (`nft list ruleset > /etc/nftables.conf`) has no divert rule",
        "install Debian's iptables package (it ships libxt_NFQUEUE.so); nfsip's own divert works either way",
    )


def run_checks(config: Config, kernel: bool = True) -> list[CheckResult]:
    results = _config_checks(config)
    if kernel:
        results.extend(_kernel_checks(config))
    return results
