"""Shared guard for the namespace-lab tests.

Without root or the lab tools the lab tests skip with the reason. In CI (NFSIP_REQUIRE_LAB=1, set by
.ci/run) a skip would hide that nothing was tested, so there it is a failure instead.
"""

from __future__ import annotations

import os
import shutil

import pytest

from nfsip.lab.lab import can_run, cleanup_stale


def require_lab() -> None:
    reason = can_run()
    if reason is None:
        missing = [t for t in ("sipp", "dumpcap", "conntrack", "nft") if shutil.which(t) is None]
        reason = f"missing tools: {', '.join(missing)}" if missing else None
    if reason is not None:
        if os.environ.get("NFSIP_REQUIRE_LAB") == "1":
            pytest.fail(f"lab required (NFSIP_REQUIRE_LAB=1) but unavailable: {reason}")
        pytest.skip(reason)
    cleanup_stale()
