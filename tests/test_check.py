"""`nfsip check` on the compat queue path: can `nft list` print the queue rule? (issue 13, item 6)

`nft list` prints the xt NFQUEUE target through the xtables extension libxt_NFQUEUE.so (Debian package
iptables; libxtables looks for it in XTABLES_LIBDIR, else in its built-in directory). Without it the rule
prints as an empty line: the divert works, but `nft list ruleset > /etc/nftables.conf` saves nfsip's queue
chain without it. The kernel tests point XTABLES_LIBDIR at an empty folder, in a subprocess, since
libnftables reads it once when it is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nfsip.check import _compat_listing_check

from .lab_support import require, require_tool

# `nft list chain inet nfsip_probe sip_queue` with the compat rule, as measured with and without the library.
LISTED = "table inet nfsip_probe {\n\tchain sip_queue {\n\t\tqueue num 0 bypass\n\t}\n}\n"
UNPRINTED = "table inet nfsip_probe {\n\tchain sip_queue {\n\t\t\n\t}\n}\n"
COMPAT_RESULTS = (
    "import json\n"
    "from nfsip.check import _compat_queue_check\n"
    "print(json.dumps([[r.name, r.level, r.message, r.fix] for r in _compat_queue_check()]))\n"
)


def test_a_printed_compat_rule_is_ok():
    result = _compat_listing_check(LISTED)
    assert (result.name, result.level) == ("queue-listing", "ok")
    assert "queue num 0 bypass" in result.message


def test_an_unprinted_compat_rule_warns_that_a_saved_ruleset_loses_it():
    result = _compat_listing_check(UNPRINTED)
    assert (result.name, result.level) == ("queue-listing", "warn")
    assert "libxt_NFQUEUE.so" in result.message and "nft list ruleset > /etc/nftables.conf" in result.message
    assert "install Debian's iptables package" in result.fix


def _in_own_netns(argv: list[str], xtables_libdir: Path | None) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a network namespace of its own (the probe table is created there, not on the host)."""
    require(os.geteuid() == 0, "needs root (nft_compat probe in a network namespace of its own)")
    unshare = require_tool("unshare", "util-linux")
    env = dict(os.environ)
    env.pop("XTABLES_LIBDIR", None)
    if xtables_libdir is not None:
        env["XTABLES_LIBDIR"] = str(xtables_libdir)
    return subprocess.run([unshare, "--net", *argv], capture_output=True, text=True, env=env, timeout=60)


def _compat_results(xtables_libdir: Path | None) -> dict[str, list[str]]:
    proc = _in_own_netns([sys.executable, "-c", COMPAT_RESULTS], xtables_libdir)
    assert proc.returncode == 0, proc.stderr
    return {name: rest for name, *rest in json.loads(proc.stdout)}


def _nfqueue_library_dir() -> Path | None:
    found = sorted(Path("/usr/lib").glob("*/xtables/libxt_NFQUEUE.so")) + sorted(
        Path("/usr/lib").glob("xtables/libxt_NFQUEUE.so")
    )
    return found[0].parent if found else None


def test_compat_probe_warns_without_the_xtables_extension(tmp_path: Path):
    results = _compat_results(tmp_path)  # an empty folder: no libxt_NFQUEUE.so
    assert results["queue"][0] == "ok", results  # the divert itself works
    level, message, fix = results["queue-listing"]
    assert level == "warn" and "printed as an empty line" in message and "libxt_NFQUEUE.so" in message, message
    assert "install Debian's iptables package" in fix


def test_compat_probe_is_ok_with_the_xtables_extension():
    libdir = _nfqueue_library_dir()
    require(libdir, "libxt_NFQUEUE.so not installed (Debian package iptables; scripts/setup installs it)")
    for where in (None, libdir):  # libxtables' built-in directory, then named
        results = _compat_results(where)
        assert results["queue"][0] == "ok", results
        assert results["queue-listing"][:2] == ["ok", "`nft list` shows the compat queue rule as `queue num 0 bypass`"]


def test_nfsip_check_prints_the_warning_on_the_compat_path(tmp_path: Path):
    """The whole command: on a kernel without nft `queue` (this lab's) the warning is one of its lines; with
    the native queue there is no compat rule to print, and no such line."""
    proc = _in_own_netns([sys.executable, "-m", "nfsip", "check", "--wan-interface", "lo"], tmp_path)
    out = proc.stdout
    assert "[ok  ] nftables:" in out, out + proc.stderr
    if "[ok  ] queue: no native nft `queue`" in out:
        assert "[WARN] queue-listing: `nft list` cannot print the xt NFQUEUE rule" in out, out
        assert "fix: install Debian's iptables package" in out, out
    else:
        assert "[ok  ] queue: native nft `queue`" in out and "queue-listing" not in out, out
    assert proc.returncode == 0, out + proc.stderr  # warnings do not change the exit code
