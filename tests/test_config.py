"""Configuration: defaults, TOML overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nfsip.config import Config, ConfigError, load
from nfsip.core.engine import Engine, Timeouts
from nfsip.core.mediastats import MediaStats
from nfsip.core.policy import Limits, Policy, policy_from
from nfsip.core.ports import PortAllocator
from nfsip.core.registrations import RegistrationTable
from nfsip.kernel.ruleset import options_from


def write(tmp_path, text: str):
    path = tmp_path / "nfsip.toml"
    path.write_text(text)
    return path


def test_defaults_need_nothing_but_the_wan_interface():
    config = load(None, wan_interface="eth1")
    assert config == Config(wan_interface="eth1")
    assert (config.media_port_min, config.media_port_max, config.sip_ports) == (40000, 49999, (5060,))


def test_what_is_built_without_a_config_takes_its_defaults():
    """One source for every default: the engine's lifetimes and flags, the policy and its caps, the
    registration table and the media statistics take Config's defaults when given no value."""
    defaults = Config()
    engine = Engine("198.51.100.1", PortAllocator(defaults.media_port_min, defaults.media_port_max))
    built = Engine.from_config("198.51.100.1", defaults)
    assert Timeouts() == engine.timeouts == built.timeouts
    assert Policy() == engine.policy == built.policy and Limits() == built.policy.limits
    assert engine.media_from_sdp == built.media_from_sdp is False
    registrations = RegistrationTable()
    for table in (engine.registrations, built.registrations):
        assert (table.grace, table.from_registrar_only) == (registrations.grace, registrations.from_registrar_only)
    assert (registrations.grace, registrations.from_registrar_only) == (defaults.registration_grace, True)
    assert MediaStats().one_way_seconds == defaults.one_way_seconds


def test_the_engine_takes_every_setting_of_its_config():
    config = Config(
        media_port_min=50000,
        media_port_max=50099,
        pinhole_setup_timeout=60,
        pinhole_call_timeout=600,
        call_max_duration=900,
        registration_grace=5,
        registration_from="any",
        media_from="sdp",
        sip_ports=(5060, 5080),
        max_calls=7,
        pinhole_rate_per_host=3,
    )
    engine = Engine.from_config("198.51.100.1", config)
    assert (engine.calls.ports.low, engine.calls.ports.high) == (50000, 50099)
    assert engine.timeouts == Timeouts(setup=60, call=600, max_call=900, registration_grace=5)
    assert (engine.registrations.grace, engine.registrations.from_registrar_only) == (5, False)
    assert engine.media_from_sdp is True
    assert engine.policy == policy_from(config)
    assert (engine.policy.sip_ports, engine.policy.limits.calls_total) == ((5060, 5080), 7)
    assert engine.policy.limits.pinhole_rate_per_host == 3
    opts = options_from(Config(queue_bypass=False, sip_rate_per_host=9, sip_burst_per_host=18), native_queue=True)
    assert (opts.bypass, opts.sip_rate_per_host, opts.sip_burst_per_host) == (False, 9, 18)


def test_file_overrides_and_command_line_wins(tmp_path):
    path = write(tmp_path, 'wan_interface = "ppp0"\nmedia_port_min = 50000\nmedia_port_max = 50100\n')
    config = load(path, wan_interface="eth9")
    assert (config.wan_interface, config.media_port_min, config.media_port_max) == ("eth9", 50000, 50100)


@pytest.mark.parametrize(
    "text, key",
    [
        ('wan_interfce = "eth0"\n', "wan_interfce"),
        ('queue_num = "7"\n', "queue_num"),
        ("queue_num = 70000\n", "queue_num"),
        ("media_port_min = 45000\nmedia_port_max = 44000\n", "media_port_min"),
        ("sip_ports = [5060, 45000]\n", "sip_ports"),
        ("sip_ports = []\n", "sip_ports"),
        ('public_address = "not-an-ip"\n', "public_address"),
        ('metrics_listen = "9477"\n', "metrics_listen"),
        ('log_level = "loud"\n', "log_level"),
        ("pinhole_setup_timeout = 9000\n", "pinhole_setup_timeout"),
        ("pinhole_call_timeout = true\n", "pinhole_call_timeout"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as exc:
        load(write(tmp_path, text))
    assert exc.value.key == key
    assert key in str(exc.value)


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "wan_interface = \n"))


def test_cli_reports_the_key_and_exits_2(tmp_path):
    path = write(tmp_path, "media_port_max = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "nfsip", "check", "--config-only", "--config", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "media_port_max" in proc.stderr


def test_cli_config_only_check_passes_on_defaults(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nfsip", "check", "--config-only", "--config", str(write(tmp_path, ""))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[ok  ] config" in proc.stdout
