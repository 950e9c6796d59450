"""nfsip configuration: defaults, the TOML file, and validation that names the key at fault.

Everything has a default; `nfsip run --wan-interface IF` needs nothing else. A TOML file may override any
key. Unknown keys and bad values are errors (ConfigError names the key), never silently ignored: a typo in a
router's config must not quietly fall back to a default.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration problem; `key` names the offending key (empty for file-level problems)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Config:
    wan_interface: str = ""
    # Empty: the primary IPv4 address of wan_interface, learned through netlink.
    public_address: str = ""
    table_name: str = "nfsip"
    queue_num: int = 5060
    sip_ports: tuple[int, ...] = (5060,)
    media_port_min: int = 40000
    media_port_max: int = 49999
    # Pinholes of a call attempt (offer sent, no 2xx yet) and of an established call. Both are refreshed by
    # signalling and removed on BYE/failure; the kernel expires whatever nobody removes.
    pinhole_setup_timeout: int = 180
    pinhole_call_timeout: int = 7200
    # Hard cap on a call's pinholes, however often the dialog is refreshed.
    call_max_duration: int = 86400
    # Who may send to a registered phone's SIP port once its conntrack entry expired: "registrar" (the
    # server that accepted the registration) or "any".
    registration_from: str = "registrar"
    # Seconds a registration pinhole outlives the expiry the registrar granted (refresh in flight).
    registration_grace: int = 30
    # Optional allowlist of SIP servers (addresses or prefixes); empty: any server. Messages to or from
    # other servers then pass unchanged and open nothing.
    sip_servers: tuple[str, ...] = ()
    # Limits (nfsip.core.policy): beyond them a message passes unchanged and nfsip_policy_refusals_total counts.
    max_pinholes_per_host: int = 64
    max_calls_per_host: int = 16
    max_registrations_per_host: int = 8
    max_pinholes: int = 20000
    max_calls: int = 5000
    max_registrations: int = 5000
    pinhole_rate_per_host: int = 20
    pinhole_burst_per_host: int = 80
    # SIP datagrams per second to or from one LAN host that go to the queue (a token bucket in the kernel,
    # before the queue: nfsip.kernel.ruleset); beyond it a host's SIP passes unchanged, so that one flooding
    # host cannot push every other phone's SIP past a full queue.
    sip_rate_per_host: int = 250
    sip_burst_per_host: int = 500
    # SIP over TCP goes through the daemon's relay, listening on this port of the router (nfsip.kernel.
    # tcprelay): the table redirects a LAN host's TCP connections to a SIP port beyond the WAN there. 0: TCP
    # SIP is left alone (it crosses the router unhelped, as before nfsip).
    tcp_relay_port: int = 15060
    # SIP over TLS (sips:) cannot be read; its connections are counted (nfsip_sip_tls_flows_total, and the
    # LAN hosts in nfsip status) so that an admin sees why such a phone is not helped.
    sip_tls_ports: tuple[int, ...] = (5061,)
    # Media counters are sampled this often (seconds) for per-call metrics and one-way-audio detection; an
    # established call whose media is silent in one direction for one_way_seconds is flagged and logged.
    media_sample_interval: int = 5
    one_way_seconds: int = 10
    # Who may send media to a pinhole: "any" (latching: the far end may be behind NAT, or an SBC may send
    # from another address than its SDP names) or "sdp" (only the address in the far end's SDP).
    media_from: str = "any"
    # With no daemon bound to the queue: true lets SIP through unchanged (fail-open), false drops it
    # (fail-closed: no SIP crosses the router unless nfsip handles it).
    queue_bypass: bool = True
    # Prometheus endpoint; "" disables it. Loopback by default: metrics reveal call activity.
    metrics_listen: str = "127.0.0.1:9477"
    log_level: str = "info"
    # Worker processes, one queue each (queue_num .. queue_num + workers - 1), SIP sharded by LAN host so
    # that all state of one phone lives in one worker (nfsip.workers). 1: the single-process daemon.
    workers: int = 1
    # The bit nfsip sets in the conntrack mark of every flow a pinhole lets in (media, and SIP to a
    # registered phone), IPv4 and IPv6 alike: an admin's forward chain with policy drop accepts every packet
    # of nfsip's pinholes with one rule, `ct mark & MARK == MARK accept` (`nfsip admin-rule` prints it for
    # this value; docs/nftables.md). One bit, so that other users of the conntrack mark keep theirs.
    pinhole_mark: int = 0x00100000


# Every setting's default, for the code that takes a setting's value (nfsip.core.policy.Limits,
# nfsip.core.engine.Timeouts, ...): each default is written once, above.
DEFAULTS = Config()

_LOG_LEVELS = ("debug", "info", "warning", "error")
# Powers of two: the kernel picks a worker by masking the LAN host's address (nfsip.kernel.fanout).
WORKER_COUNTS = (1, 2, 4, 8)


def _expect_int(key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be between {lo} and {hi}, got {value}")
    return value


def _expect_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {type(value).__name__} {value!r}")
    return value


def _validate_value(key: str, value: Any) -> Any:
    if key in (
        "wan_interface",
        "table_name",
        "metrics_listen",
        "public_address",
        "log_level",
        "registration_from",
        "media_from",
    ):
        text = _expect_str(key, value)
        if key == "wan_interface" and text and (len(text) > 15 or "/" in text or " " in text):
            raise ConfigError(key, f"not a valid interface name: {text!r}")
        if key == "table_name" and not text.replace("_", "").isalnum():
            raise ConfigError(key, f"must be letters, digits and '_': {text!r}")
        if key == "public_address" and text:
            try:
                ipaddress.IPv4Address(text)
            except ValueError:
                raise ConfigError(key, f"not an IPv4 address: {text!r}") from None
        if key == "metrics_listen" and text:
            host, sep, port = text.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError(key, f"must be HOST:PORT or empty, got {text!r}")
        if key == "registration_from" and text not in ("registrar", "any"):
            raise ConfigError(key, f'must be "registrar" or "any", got {text!r}')
        if key == "media_from" and text not in ("any", "sdp"):
            raise ConfigError(key, f'must be "any" or "sdp", got {text!r}')
        if key == "log_level" and text not in _LOG_LEVELS:
            raise ConfigError(key, f"must be one of {', '.join(_LOG_LEVELS)}, got {text!r}")
        return text
    if key == "queue_num":
        return _expect_int(key, value, 0, 65535)
    if key == "workers":
        count = _expect_int(key, value, 1, WORKER_COUNTS[-1])
        if count not in WORKER_COUNTS:
            raise ConfigError(key, f"must be a power of two: one of {', '.join(map(str, WORKER_COUNTS))}, got {count}")
        return count
    if key in ("media_port_min", "media_port_max"):
        return _expect_int(key, value, 1024, 65535)
    if key in ("pinhole_setup_timeout", "pinhole_call_timeout", "call_max_duration"):
        return _expect_int(key, value, 5, 7 * 24 * 3600)
    if key in ("media_sample_interval", "one_way_seconds"):
        return _expect_int(key, value, 1, 3600)
    if key == "registration_grace":
        return _expect_int(key, value, 0, 3600)
    if key == "sip_servers":
        if not isinstance(value, list):
            raise ConfigError(key, 'must be a list of addresses or prefixes, e.g. ["203.0.113.0/24", "2001:db8::/32"]')
        nets = []
        for i, item in enumerate(value):
            try:
                nets.append(str(ipaddress.ip_network(_expect_str(f"{key}[{i}]", item), strict=False)))
            except ValueError:
                raise ConfigError(f"{key}[{i}]", f"not an IPv4 or IPv6 address or prefix: {item!r}") from None
        return tuple(nets)
    if key.startswith("max_") or key in (
        "pinhole_rate_per_host",
        "pinhole_burst_per_host",
        "sip_rate_per_host",
        "sip_burst_per_host",
    ):
        return _expect_int(key, value, 1, 1_000_000)
    if key == "queue_bypass":
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if key == "pinhole_mark":
        mark = _expect_int(key, value, 1, 0xFFFFFFFF)
        if mark & (mark - 1):
            raise ConfigError(key, f"must be a single bit (a power of two), got {mark:#x}")
        return mark
    if key == "sip_ports":
        if not isinstance(value, list) or not value:
            raise ConfigError(key, "must be a non-empty list of port numbers")
        return tuple(_expect_int(f"{key}[{i}]", v, 1, 65535) for i, v in enumerate(value))
    if key == "sip_tls_ports":
        if not isinstance(value, list):
            raise ConfigError(key, "must be a list of port numbers (empty: none counted)")
        return tuple(_expect_int(f"{key}[{i}]", v, 1, 65535) for i, v in enumerate(value))
    if key == "tcp_relay_port":
        return _expect_int(key, value, 0, 65535)
    raise ConfigError(key, "unknown key")


_KEYS = tuple(f.name for f in fields(Config))


def from_mapping(data: dict[str, Any], base: Config | None = None) -> Config:
    """Validate a parsed TOML table and merge it over `base` (defaults when None)."""
    changes: dict[str, Any] = {}
    for key, value in data.items():
        if key not in _KEYS:
            raise ConfigError(key, f"unknown key (known keys: {', '.join(_KEYS)})")
        changes[key] = _validate_value(key, value)
    config = replace(base or Config(), **changes)
    check_consistency(config)
    return config


def check_consistency(config: Config) -> None:
    if config.media_port_min >= config.media_port_max:
        raise ConfigError("media_port_min", "must be lower than media_port_max")
    if config.media_port_max - config.media_port_min < 3:
        raise ConfigError("media_port_max", "the media port range must hold at least two RTP/RTCP pairs")
    overlap = [p for p in config.sip_ports if config.media_port_min <= p <= config.media_port_max]
    if overlap:
        raise ConfigError("sip_ports", f"{overlap} lie inside the media port range")
    if config.tcp_relay_port and config.media_port_min <= config.tcp_relay_port <= config.media_port_max:
        raise ConfigError("tcp_relay_port", "lies inside the media port range")
    if config.tcp_relay_port in config.sip_ports:
        raise ConfigError("tcp_relay_port", "is one of sip_ports: the relay would catch its own connections")
    if config.pinhole_setup_timeout > config.pinhole_call_timeout:
        raise ConfigError("pinhole_setup_timeout", "must not exceed pinhole_call_timeout")
    if config.pinhole_call_timeout > config.call_max_duration:
        raise ConfigError("pinhole_call_timeout", "must not exceed call_max_duration")
    if config.max_pinholes_per_host > config.max_pinholes:
        raise ConfigError("max_pinholes_per_host", "must not exceed max_pinholes")
    if config.workers > 1:
        if config.queue_num + config.workers - 1 > 65535:
            raise ConfigError("queue_num", f"plus workers - 1 must not exceed 65535 (workers = {config.workers})")
        # Each worker gets its own even-aligned slice of the media range (nfsip.workers.port_slices).
        first_even = config.media_port_min + (config.media_port_min & 1)
        per_worker = ((config.media_port_max - first_even + 1) // config.workers) & ~1
        # Global caps are split evenly between the workers (each enforces its share, with no shared count).
        for key in ("max_calls", "max_pinholes", "max_registrations"):
            if getattr(config, key) < config.workers:
                raise ConfigError(key, f"must be at least workers ({config.workers}): each worker gets a share")
        if per_worker < 4:
            raise ConfigError(
                "workers",
                f"the media port range {config.media_port_min}-{config.media_port_max} cannot give each of "
                f"{config.workers} workers two RTP/RTCP pairs",
            )


def load(path: str | Path | None, *, wan_interface: str | None = None) -> Config:
    """Read the TOML file at `path` (None: defaults only); a command-line WAN interface wins over the file."""
    config = Config()
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", f"{path}: not valid TOML: {exc}") from None
        config = from_mapping(data, config)
    if wan_interface:
        config = from_mapping({"wan_interface": wan_interface}, config)
    return config
