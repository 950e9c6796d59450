"""`nfsip run`'s logging: log_level applies to nfsip's own loggers; other libraries log warnings only.

Each case runs in a fresh interpreter, as `nfsip run` does: what matters is the order in which the
configuration and the libraries' imports happen (pyroute2 resets its logger's level when imported)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import logging, sys
from nfsip import logsetup
logsetup.configure(sys.argv[1], "%(levelname)s %(name)s: %(message)s")
import pyroute2  # what the daemon imports after the configuration (nfsip.kernel.netinfo)
from pyroute2 import IPRoute  # noqa: F401
for name in ("nfsip", "nfsip.kernel.conntrack", "pyroute2", "pyroute2.netlink.core", "asyncio"):
    print(name, logging.getLogger(name).getEffectiveLevel())
logging.getLogger("pyroute2.netlink.core").debug("pyroute2 netlink dump")
logging.getLogger("nfsip").debug("hook 4 out: OPTIONS, Call-ID x: unchanged")
"""


def levels(level: str) -> tuple[dict[str, int], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, level], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    found = dict(line.split() for line in proc.stdout.splitlines())
    return {name: int(value) for name, value in found.items()}, proc.stderr


def test_debug_is_nfsip_only_pyroute2_stays_at_warning():
    found, stderr = levels("debug")
    assert found["nfsip"] == found["nfsip.kernel.conntrack"] == 10  # DEBUG
    assert found["pyroute2"] >= 30 and found["pyroute2.netlink.core"] >= 30 and found["asyncio"] >= 30, found
    assert "pyroute2 netlink dump" not in stderr
    assert "DEBUG nfsip: hook 4 out" in stderr


def test_info_and_error_levels():
    found, stderr = levels("info")
    assert found["nfsip"] == 20 and found["pyroute2.netlink.core"] >= 30, found
    assert stderr == ""
    found, _ = levels("error")
    assert found["nfsip"] == 40 and found["pyroute2.netlink.core"] == 40, found
