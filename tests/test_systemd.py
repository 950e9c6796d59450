"""The shipped systemd unit: valid, and scored by `systemd-analyze security` (exposure printed)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from nfsip import config

from .lab_support import require_tool

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "nfsip.service"


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    require_tool("systemd-analyze", "systemd")
    # verify checks that ExecStart's binary exists: point it at the nfsip this test suite runs.
    nfsip = Path(sys.executable).with_name("nfsip")
    text = UNIT.read_text().replace("/usr/local/bin/nfsip", str(nfsip))
    path = tmp_path / "nfsip.service"
    path.write_text(text)
    return path


def test_unit_verifies(unit: Path):
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_unit_exposure_is_at_most_2(unit: Path):
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for nfsip.service: ([0-9.]+) (\w+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    print(f"\nsystemd-analyze security exposure: {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 2.0


def test_unit_is_type_notify_with_watchdog_and_only_cap_net_admin():
    text = UNIT.read_text()
    assert "Type=notify" in text and re.search(r"^WatchdogSec=\d+", text, re.M)
    assert re.search(r"^CapabilityBoundingSet=CAP_NET_ADMIN$", text, re.M)
    assert "ExecStart=/usr/local/bin/nfsip run --config /etc/nfsip/nfsip.toml" in text


def test_example_config_is_valid():
    loaded = config.load(ROOT / "systemd" / "nfsip.toml")
    assert loaded.wan_interface == "eth0"
