"""`nfsip check`: is this machine able to run nfsip, and which queue path will it use?

Each check says what it found and, when something is wrong, the command or setting that fixes it.
Kernel checks only ask (dry-run transactions, reads); nothing is left installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .config import Config, ConfigError, check_consistency


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
    if os.geteuid() != 0:
        results.append(CheckResult("privileges", "fail", "not running as root", "run as root or grant CAP_NET_ADMIN"))
        return results
    results.append(CheckResult("privileges", "ok", "root"))

    try:
        from .kernel.nft import Nft, NftError

        nft = Nft(config.table_name)
        nft.run_text(
            "add table ip nfsip_probe\n"
            "add map ip nfsip_probe m { type ipv4_addr . inet_service : ipv4_addr . inet_service; flags timeout; }\n"
            "add chain ip nfsip_probe p { type nat hook prerouting priority dstnat - 10; }\n"
            "add rule ip nfsip_probe p dnat ip to ip daddr . udp dport map @m\n",
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
        results.append(_compat_queue_check())

    try:
        from .kernel.conntrack import Conntrack

        Conntrack().close()
        results.append(CheckResult("conntrack", "ok", "ctnetlink reachable (lookup and purge of media flows)"))
    except Exception as exc:
        results.append(
            CheckResult("conntrack", "fail", f"ctnetlink unavailable: {exc}", "modprobe nf_conntrack_netlink")
        )

    if config.wan_interface:
        from .kernel.netinfo import InterfaceError, primary_ipv4

        try:
            address = config.public_address or primary_ipv4(config.wan_interface)
            results.append(CheckResult("wan", "ok", f"{config.wan_interface}: public address {address}"))
        except InterfaceError as exc:
            results.append(CheckResult("wan", "fail", str(exc), "pass --wan-interface with an existing interface"))
    else:
        results.append(
            CheckResult("wan", "warn", "no WAN interface given", "pass --wan-interface IF (or wan_interface=)")
        )

    modules = Path("/proc/modules").read_text() if Path("/proc/modules").exists() else ""
    if any(line.startswith(("nf_conntrack_sip ", "nf_nat_sip ")) for line in modules.splitlines()):
        results.append(
            CheckResult(
                "kernel-sip-alg",
                "warn",
                "the kernel SIP ALG (nf_conntrack_sip) is loaded: it must not handle the flows nfsip handles",
                "remove `ct helper` assignments for SIP and `modprobe -r nf_nat_sip nf_conntrack_sip`",
            )
        )
    else:
        results.append(CheckResult("kernel-sip-alg", "ok", "kernel SIP ALG not loaded"))

    ip_forward = Path("/proc/sys/net/ipv4/ip_forward")
    if ip_forward.exists() and ip_forward.read_text().strip() != "1":
        results.append(CheckResult("forwarding", "warn", "IPv4 forwarding is off", "sysctl -w net.ipv4.ip_forward=1"))
    return results


def _compat_queue_check() -> CheckResult:
    """No nft_queue: verify that the xt NFQUEUE target works through nft_compat, in a throwaway table."""
    from .kernel import divert
    from .kernel.nft import Nft, NftError
    from .kernel.ruleset import QUEUE_CHAIN

    probe = Nft("nfsip_probe")
    try:
        probe.run_text(f"add table ip nfsip_probe\nadd chain ip nfsip_probe {QUEUE_CHAIN}\n")
        divert.add_compat_queue_rule("nfsip_probe", 0)
        return CheckResult(
            "queue",
            "ok",
            "no native nft `queue` (CONFIG_NFT_QUEUE off): using the xt NFQUEUE target through nft_compat",
        )
    except Exception as exc:
        return CheckResult(
            "queue",
            "fail",
            f"neither nft `queue` nor xt NFQUEUE through nft_compat works: {exc}",
            "load nft_queue (modprobe nft_queue) or nft_compat + xt_NFQUEUE (modprobe nft_compat xt_NFQUEUE)",
        )
    finally:
        try:
            probe.remove_table()
        except NftError:
            pass


def run_checks(config: Config, kernel: bool = True) -> list[CheckResult]:
    results = _config_checks(config)
    if kernel:
        results.extend(_kernel_checks(config))
    return results
