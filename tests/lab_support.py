"""Shared guards: the namespace-lab tests, and every test that needs a tool, root or data from outside.

Without root, a tool or the SIP corpus such a test skips with the reason. In CI (NFSIP_REQUIRE_LAB=1, set
by scripts/test) a skip would hide that nothing was tested, so there it is a failure instead: every
condition a test needs goes through `require` (or `require_lab`), never through pytest.skip directly.
"""

from __future__ import annotations

import os
import shutil

import pytest

from nfsiplab.lab import can_run, cleanup_stale

REQUIRE_ENV = "NFSIP_REQUIRE_LAB"


def required() -> bool:
    """True under scripts/test (NFSIP_REQUIRE_LAB=1): whatever a test needs must be there."""
    return os.environ.get(REQUIRE_ENV) == "1"


def require(condition: object, reason: str) -> None:
    """Go on if `condition` holds; else skip with `reason`, or fail under NFSIP_REQUIRE_LAB=1."""
    if condition:
        return
    if required():
        pytest.fail(f"required ({REQUIRE_ENV}=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str) -> str:
    """The path of executable `name` (from Debian package `package`, which scripts/setup installs)."""
    path = shutil.which(name)
    require(path, f"{name} not installed (Debian package {package}; scripts/setup installs it)")
    assert path is not None
    return path


def require_lab() -> None:
    reason = can_run()
    if reason is None:
        missing = [t for t in ("sipp", "dumpcap", "conntrack", "nft") if shutil.which(t) is None]
        reason = f"missing tools: {', '.join(missing)}" if missing else None
    require(reason is None, f"lab unavailable: {reason}")
    cleanup_stale()
