"""Several workers, without a kernel: the `workers` key, the shard function, port slices, per-worker
configuration and the fanout rules the supervisor adds to the table."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from nfsip.config import Config, ConfigError, from_mapping
from nfsip.core.ports import PortAllocator
from nfsip.kernel import fanout
from nfsip.kernel.fanout import shard
from nfsip.workers import port_slices, worker_config


# -- configuration ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_workers_accepts_powers_of_two(count: int):
    assert from_mapping({"workers": count}).workers == count


def test_workers_defaults_to_one():
    assert Config().workers == 1


@pytest.mark.parametrize(
    "value, problem",
    [(3, "power of two"), (0, "between 1 and 8"), (16, "between 1 and 8"), ("2", "integer"), (True, "integer")],
)
def test_bad_workers_values_name_the_key(value: object, problem: str):
    with pytest.raises(ConfigError) as exc:
        from_mapping({"workers": value})
    assert exc.value.key == "workers"
    assert problem in str(exc.value)


def test_workers_need_room_in_the_media_range_and_the_queue_numbers():
    with pytest.raises(ConfigError) as exc:
        from_mapping({"workers": 8, "media_port_min": 40000, "media_port_max": 40020})
    assert exc.value.key == "workers"
    from_mapping({"workers": 4, "media_port_min": 40000, "media_port_max": 40015})  # 4 ports each: fine
    with pytest.raises(ConfigError) as exc:
        from_mapping({"workers": 4, "queue_num": 65534})
    assert exc.value.key == "queue_num"
    with pytest.raises(ConfigError) as exc:
        from_mapping({"workers": 4, "max_calls": 3, "max_calls_per_host": 1})
    assert exc.value.key == "max_calls"


# -- shard -----------------------------------------------------------------------------------------------
def test_shard_is_the_low_bits_of_the_lan_address():
    assert [shard(f"10.0.0.{i}", 2) for i in range(2, 6)] == [0, 1, 0, 1]
    assert [shard(f"192.168.1.{i}", 4) for i in (4, 5, 6, 7)] == [0, 1, 2, 3]
    assert shard("10.0.0.7", 1) == 0
    # The same choice as the kernel's `ip saddr & mask` lookup, for every address of a /24.
    for workers in (2, 4, 8):
        mask = workers - 1
        for i in range(256):
            ip = f"172.16.3.{i}"
            assert shard(ip, workers) == int(ipaddress.IPv4Address(ip)) & mask
            ip6 = f"2001:db8:1::{i:x}"
            assert shard(ip6, workers) == int(ipaddress.IPv6Address(ip6)) & mask


def test_shards_spread_a_lan_evenly():
    counts = [0] * 4
    for i in range(1, 253):
        counts[shard(f"10.0.0.{i}", 4)] += 1
    assert max(counts) - min(counts) <= 1


# -- port slices -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "low, high, workers", [(40000, 49999, 2), (40000, 49999, 8), (10001, 65000, 4), (40000, 40015, 4), (1025, 1040, 2)]
)
def test_port_slices_are_contiguous_even_aligned_and_disjoint(low: int, high: int, workers: int):
    slices = port_slices(low, high, workers)
    assert len(slices) == workers
    assert slices[0][0] == low + (low & 1) and slices[-1][1] == high
    for (_a_low, a_high), (b_low, _b_high) in itertools.pairwise(slices):
        assert a_high + 1 == b_low
    for s_low, s_high in slices:
        assert s_low % 2 == 0 and s_high - s_low + 1 >= 4
    sizes = [s_high - s_low + 1 for s_low, s_high in slices[:-1]]
    assert all(size % 2 == 0 for size in sizes)  # an RTP/RTCP pair never straddles two slices


def test_allocators_of_the_slices_never_hand_out_the_same_port():
    """Each worker allocates from its own slice until it is exhausted: no port twice across workers."""
    given: list[int] = []
    for low, high in port_slices(40000, 40099, 4):
        allocator = PortAllocator(low, high)
        while True:
            try:
                first = allocator.allocate(2, 0.0, preferred=40000)  # the phone's own port, where it fits
            except RuntimeError:
                break
            given += [first, first + 1]
    assert len(given) == len(set(given)) == 100


def test_worker_config_splits_ports_queues_and_global_caps():
    config = from_mapping({"workers": 4, "max_calls": 5000, "max_pinholes": 20000, "max_registrations": 10})
    configs = [worker_config(config, i) for i in range(4)]
    assert [c.queue_num for c in configs] == [5060, 5061, 5062, 5063]
    assert [(c.media_port_min, c.media_port_max) for c in configs] == port_slices(40000, 49999, 4)
    assert {(c.max_calls, c.max_pinholes, c.max_registrations) for c in configs} == {(1250, 5000, 2)}
    # Per-host limits stay as they are: a host lives in exactly one worker.
    assert {(c.max_calls_per_host, c.max_pinholes_per_host, c.pinhole_rate_per_host) for c in configs} == {(16, 64, 20)}
    assert {c.metrics_listen for c in configs} == {""}  # one endpoint, the supervisor's
    assert {c.workers for c in configs} == {4}


# -- fanout rules ----------------------------------------------------------------------------------------
def test_fanout_dispatch_rules_for_two_workers():
    text = fanout.vmap_rules("nfsip", 2, "wan0")
    assert text == (
        "add rule inet nfsip sip_queue ct status dnat ct reply ip saddr & 0.0.0.1 vmap "
        "{ 0.0.0.0 : jump sip_queue_0, 0.0.0.1 : jump sip_queue_1 }\n"
        "add rule inet nfsip sip_queue ct original ip saddr & 0.0.0.1 vmap "
        "{ 0.0.0.0 : jump sip_queue_0, 0.0.0.1 : jump sip_queue_1 }\n"
        'add rule inet nfsip sip_queue iifname "wan0" ip6 daddr & ::1 vmap '
        "{ :: : jump sip_queue_0, ::1 : jump sip_queue_1 }\n"
        "add rule inet nfsip sip_queue ct direction reply ct reply ip6 saddr & ::1 vmap "
        "{ :: : jump sip_queue_0, ::1 : jump sip_queue_1 }\n"
        "add rule inet nfsip sip_queue ct original ip6 saddr & ::1 vmap "
        "{ :: : jump sip_queue_0, ::1 : jump sip_queue_1 }\n"
    )


def test_fanout_for_eight_workers_covers_every_shard_once():
    text = fanout.vmap_rules("t", 8, "wan0")
    for line in text.splitlines():
        v4 = " ip saddr " in line
        assert ("& 0.0.0.7 vmap" if v4 else "& ::7 vmap") in line
        targets = line.split("{ ", 1)[1].rstrip(" }").split(", ")
        first = "0.0.0.0" if v4 else "::"
        assert targets == [f"{f'0.0.0.{i}' if v4 else f'::{i}' if i else first} : jump sip_queue_{i}" for i in range(8)]
    assert fanout.shard("2001:db8:1::13", 8) == 3 and fanout.shard("10.0.0.13", 8) == 5


def test_fanout_queue_rules_and_parking():
    native = fanout.render("nfsip", 2, 5060, True, native_queue=True, wan_interface="wan0")
    assert "add rule inet nfsip sip_queue_0 queue num 5060 bypass\n" in native
    assert "add rule inet nfsip sip_queue_1 queue num 5061 bypass\n" in native
    # The worker chains exist (and are queue rules) before the dispatch rules that jump to them.
    assert native.index("queue num 5061") < native.index("vmap")
    compat = fanout.render("nfsip", 2, 7000, False, native_queue=False, wan_interface="wan0")
    # The xt target cannot be written as nft text: only named in comments, added over netlink by the daemon.
    assert not [line for line in compat.splitlines() if "queue num" in line and not line.startswith("#")]
    assert "listed as: queue num 7001\n" in compat
    assert fanout.parked("nfsip", 1, bypass=True) == "flush chain inet nfsip sip_queue_1\n"
    assert fanout.parked("nfsip", 1, bypass=False).endswith("add rule inet nfsip sip_queue_1 drop\n")
