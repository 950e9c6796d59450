"""Command line: nfsip run | check | status | ruleset | admin-rule | flush.

Exit codes: 0 success; 1 runtime failure (kernel refused something, daemon died); 2 bad usage or
configuration; 3 a required kernel feature or privilege is missing (`nfsip check` says which and how to fix).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
from collections.abc import Sequence

from . import config as configmod
from .config import Config, ConfigError
from .firewall import STYLES

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_MISSING = 3


def _add_config_args(p: argparse.ArgumentParser, wan_required: bool = False) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see docs/configuration.md)")
    p.add_argument(
        "--wan-interface",
        metavar="IF",
        required=wan_required,
        help="the interface facing the SIP server (overrides wan_interface from the file)",
    )


def _load(args: argparse.Namespace) -> Config:
    return configmod.load(args.config, wan_interface=args.wan_interface)


def cmd_run(args: argparse.Namespace) -> int:
    from . import logsetup
    from .daemon import Daemon
    from .kernel.nft import NftError

    config = _load(args)
    if not config.wan_interface:
        raise ConfigError("wan_interface", "required: pass --wan-interface IF or set it in the config file")
    log_format = (
        "%(levelname)s %(name)s: %(message)s"
        if os.environ.get("JOURNAL_STREAM")
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logsetup.configure(config.log_level, log_format)
    try:
        if config.workers > 1:
            from .supervisor import Supervisor, WorkerError

            try:
                Supervisor(config, log_format).run()
            except WorkerError as exc:
                print(f"nfsip: {exc}", file=sys.stderr)
                return exc.exit_code
        else:
            daemon = Daemon.from_config(config)
            signal.signal(signal.SIGTERM, daemon.stop)
            signal.signal(signal.SIGINT, daemon.stop)
            daemon.run()
    except NftError as exc:
        if "Operation not permitted" in str(exc):
            print(f"nfsip: {exc}: nfsip needs CAP_NET_ADMIN (run as root)", file=sys.stderr)
            return EXIT_MISSING
        print(f"nfsip: nftables refused the change: {exc}\n  run `nfsip check` for what is missing", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # netfilterqueue reports a refused bind as a plain OSError ("Failed to bind family 2. Are you root?").
        if exc.errno in (errno.EPERM, errno.EACCES) or "root" in str(exc):
            print(f"nfsip: {exc}: nfsip needs CAP_NET_ADMIN (run as root)", file=sys.stderr)
            return EXIT_MISSING
        raise
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    config = _load(args)
    results = run_checks(config, kernel=not args.config_only)
    worst = EXIT_OK
    for item in results:
        mark = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}[item.level]
        print(f"[{mark}] {item.name}: {item.message}")
        if item.fix and item.level != "ok":
            print(f"       fix: {item.fix}")
        if item.level == "fail":
            worst = max(worst, item.exit_code)
    return worst


def cmd_status(args: argparse.Namespace) -> int:
    from .status import collect, format_table

    config = _load(args)
    state = collect(config.table_name)
    if args.json:
        print(json.dumps(state, indent=2))
    else:
        print(format_table(state))
    return EXIT_OK if state["installed"] else EXIT_FAILURE


def cmd_ruleset(args: argparse.Namespace) -> int:
    from .kernel import ruleset

    config = _load(args)
    if not config.wan_interface:
        raise ConfigError("wan_interface", "required: pass --wan-interface IF or set it in the config file")
    if args.queue == "auto":
        from .kernel.nft import Nft

        native = Nft(config.table_name).has_native_queue()
    else:
        native = args.queue == "native"
    opts = ruleset.options_from(config, native)
    sys.stdout.write(ruleset.render(opts))
    if config.workers > 1:
        from .kernel import fanout

        text = fanout.render(
            config.table_name, config.workers, config.queue_num, config.queue_bypass, native, config.wan_interface
        )
        sys.stdout.write(f"# and, added by the daemon at start (workers = {config.workers}):\n")
        sys.stdout.write("".join(f"{line}\n" if line.startswith("#") else f"# {line}\n" for line in text.splitlines()))
    elif native:
        sys.stdout.write("# and, added by the daemon at start:\n# " + ruleset.queue_rule(opts))
    return EXIT_OK


def cmd_admin_rule(args: argparse.Namespace) -> int:
    from .firewall import admin_rule_file

    config = configmod.load(args.config)
    sys.stdout.write(admin_rule_file(config.pinhole_mark, args.style))
    return EXIT_OK


def cmd_flush(args: argparse.Namespace) -> int:
    from .core.model import Pinhole
    from .kernel.conntrack import Conntrack
    from .kernel.nft import Nft

    config = _load(args)
    nft = Nft(config.table_name)
    if not nft.table_exists():
        print(f"no table inet {config.table_name}: nothing to flush")
        return EXIT_OK
    holes = [Pinhole(e.key, e.value, "", "") for e in nft.elements()]
    nft.remove_table()
    purged = Conntrack().purge_media(holes)
    print(f"removed table inet {config.table_name} ({len(holes)} pinholes, {purged} conntrack entries)")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nfsip",
        description="SIP-through-NAT helper: rewrites SIP/SDP on NFQUEUE and opens nftables media pinholes.",
        epilog="Exit codes: 0 ok, 1 runtime failure, 2 usage/configuration error, 3 missing kernel feature "
        "or privilege.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the daemon in the foreground (installs its table, removes it on exit)")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check", help="check kernel features, permissions and the configuration")
    _add_config_args(p)
    p.add_argument("--config-only", action="store_true", help="validate the configuration, touch no kernel state")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("status", help="live calls and pinholes, read from the kernel's maps")
    _add_config_args(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("ruleset", help="print the nft table nfsip installs for this configuration")
    _add_config_args(p)
    p.add_argument(
        "--queue",
        choices=("auto", "native", "compat"),
        default="auto",
        help="queue statement flavour: native nft queue, or xt NFQUEUE added by the daemon (default: ask kernel)",
    )
    p.set_defaults(func=cmd_ruleset)
    p = sub.add_parser(
        "admin-rule",
        help="print the one rule your forward chain needs to let nfsip's pinholes through, and where it goes",
    )
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (its pinhole_mark)")
    p.add_argument(
        "--style",
        choices=STYLES,
        default="debian",
        help="debian: for a forward chain in /etc/nftables.conf (default); fw4: a file for OpenWrt's firewall4",
    )
    p.set_defaults(func=cmd_admin_rule)
    p = sub.add_parser("flush", help="remove everything nfsip installed (table, map entries, media conntrack)")
    _add_config_args(p)
    p.set_defaults(func=cmd_flush)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .kernel.nft import NftError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"nfsip: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NftError as exc:  # from status or flush (run has its own): a message, not a traceback
        if exc.errno in (errno.EPERM, errno.EACCES):
            print(f"nfsip: {exc}: nfsip needs CAP_NET_ADMIN (run as root)", file=sys.stderr)
            return EXIT_MISSING
        print(f"nfsip: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
