"""The raw nfnetlink element path (Nft.apply) against the kernel, beside the libnftables JSON path it
replaces (Nft.apply_json): both write the same pinholes into two copies of nfsip's table in a scratch
network namespace, and everything nft lists back must be the same. Needs root (skips otherwise)."""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from nfsip.config import Config
from nfsip.kernel.nft import CONSERVATIVE, Nft, NftError
from nfsip.kernel.ruleset import (
    COUNT_TO_LAN,
    DNAT_MAP,
    DNAT_STRICT_MAP,
    SIP_DNAT_ANY_MAP,
    SIP_DNAT_MAP,
    SIP_SNAT_MAP,
    SNAT_MAP,
    options_from,
    render,
)
from nfsip.model import Endpoint, Pinhole

from .lab_support import require_lab

pytestmark = pytest.mark.lab

MAPS = (DNAT_MAP, DNAT_STRICT_MAP, SNAT_MAP, SIP_DNAT_MAP, SIP_DNAT_ANY_MAP, SIP_SNAT_MAP)
SETS = (COUNT_TO_LAN,)
PUBLIC = "198.51.100.1"
_names = itertools.count()


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run this (single-threaded) test process in namespace `ns`; sockets opened meanwhile stay there."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


@pytest.fixture
def tables() -> Iterator[tuple[Nft, Nft]]:
    """(raw, ref): Nft on table `nfsip` and on a second copy `nfsipref`, in a fresh namespace."""
    require_lab()
    ns = f"nfsip-nftnl-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    nfts: list[Nft] = []
    try:
        with inside(ns):
            for table in ("nfsip", "nfsipref"):
                nft = Nft(table)
                nft.install(render(options_from(Config(wan_interface="lo", table_name=table), native_queue=False)))
                nfts.append(nft)
            yield nfts[0], nfts[1]
    finally:
        for nft in nfts:
            nft._nfnl.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def hole(port: int, lan_port: int, call: str = "call-1@10.0.0.2", **kw) -> Pinhole:
    kw.setdefault("since", 1_700_000_000)
    return Pinhole(
        Endpoint(PUBLIC, port), Endpoint("10.0.0.2", lan_port), call, f"m{port}", kw.pop("timeout", 180), **kw
    )


MIXED = [
    hole(40000, 6000),  # latching media
    hole(40001, 6001, established=True),
    hole(40002, 6002, remote_ip="203.0.113.9"),  # media_from = "sdp"
    hole(40004, 6004, kind="media-out"),  # strict, far end not known yet
    Pinhole(Endpoint(PUBLIC, 5060), Endpoint("10.0.0.3", 5060), "reg:sip:a@example.org", "sip", 3630,
            kind="sip", remote_ip="198.51.100.2", since=1_700_000_001),
    Pinhole(Endpoint(PUBLIC, 5062), Endpoint("10.0.0.4", 5060), "reg:sip:b@example.org", "sip", 7200,
            kind="sip", since=1_700_000_002),
]  # fmt: skip


def listing(nft: Nft) -> dict[str, list[tuple]]:
    """Every element of every map and set as nft lists it: key, value, configured timeout, comment, and
    whether it has a counter (`expires` left out: it runs down between the two listings)."""
    out = {}
    for kind, names in (("map", MAPS), ("set", SETS)):
        for name in names:
            rc, text, err = nft._nft.cmd(f"list {kind} ip {nft.table} {name}")
            assert rc == 0, err
            rows = []
            for item in json.loads(text)["nftables"]:
                for entry in (item.get(kind) or {}).get("elem", []):
                    key, value = (entry, None) if kind == "set" else entry
                    elem = key["elem"]
                    rows.append(
                        (
                            json.dumps(elem["val"]),
                            json.dumps(value),
                            elem.get("timeout"),
                            elem.get("comment"),
                            "counter" in elem,
                        )
                    )
            out[name] = sorted(rows)
    return out


def same_pinholes(a: list[Pinhole], b: list[Pinhole]) -> None:
    """Equal but for the remaining lifetime, which may cross a second boundary between the reads."""
    a, b = sorted(a, key=str), sorted(b, key=str)
    assert [replace(h, timeout=0) for h in a] == [replace(h, timeout=0) for h in b]
    assert all(abs(x.timeout - y.timeout) <= 1 for x, y in zip(a, b, strict=True))


def test_raw_batch_leaves_what_the_json_transaction_leaves(tables):
    raw, ref = tables
    raw.apply(MIXED, ())
    ref.apply_json(MIXED, ())
    got = listing(raw)
    assert got == listing(ref)
    assert len(got[SNAT_MAP]) == 4 and len(got[SIP_DNAT_MAP]) == 1 and len(got[SIP_DNAT_ANY_MAP]) == 1
    # The kernel gave every counter element a counter, and every media_snat element (the phone's packets).
    assert all(row[4] for name in (*SETS, SNAT_MAP) for row in got[name])
    assert ("m40000 a 1700000000 call-1@10.0.0.2") in {row[3] for row in got[SNAT_MAP]}
    assert {row[2] for row in got[SIP_SNAT_MAP]} == {3630, 7200}
    same_pinholes(raw.media_pinholes(), ref.media_pinholes())
    same_pinholes(raw.registration_pinholes(), ref.registration_pinholes())
    assert sorted(h.call_id for h in raw.media_pinholes()) == ["call-1@10.0.0.2"] * 4
    assert {h.timeout for h in raw.media_pinholes()} <= {179, 180}
    assert raw.media_counters() == ref.media_counters()
    assert set(raw.media_counters()) == {Endpoint("10.0.0.2", p) for p in (6000, 6001, 6002, 6004)}


def test_refresh_updates_the_timeout_and_keeps_the_comment(tables):
    raw, ref = tables
    for apply in (raw.apply, ref.apply_json):
        apply([hole(40000, 6000, timeout=5)], ())
        apply([hole(40000, 6000, timeout=300, call="other")], ())  # a refresh cannot change the comment
    got = listing(raw)
    assert got == listing(ref)
    assert [row[2:4] for row in got[SNAT_MAP]] == [(300, "m40000 a 1700000000 call-1@10.0.0.2")]


def test_remove_present_and_absent_elements(tables):
    raw, ref = tables
    raw.apply((), MIXED)  # nothing there yet: the add+delete pair makes each delete safe
    raw.apply(MIXED, ())
    raw.apply((), MIXED[:2])
    ref.apply_json(MIXED[2:], ())
    assert listing(raw) == listing(ref)
    raw.apply((), MIXED)  # two of them are gone already
    assert all(rows == [] for rows in listing(raw).values())
    assert raw.media_pinholes() == [] and raw.registration_pinholes() == [] and raw.media_counters() == {}


def test_changed_mapping_is_removal_plus_install_in_one_batch(tables):
    raw, ref = tables
    old, new = hole(40000, 6000), hole(40010, 6000)  # same LAN port, new public port
    for apply in (raw.apply, ref.apply_json):
        apply([old], ())
        apply([new], [old])
    assert listing(raw) == listing(ref)
    assert [h.public.port for h in raw.media_pinholes()] == [40010]


def test_recreate_renews_map_comments_and_keeps_counter_elements(tables):
    raw, ref = tables
    attempt = hole(40000, 6000)
    established = replace(attempt, established=True)
    for apply in (raw.apply, ref.apply_json):
        apply([attempt], ())
        apply((), (), [established])
    got = listing(raw)
    assert got == listing(ref)
    assert [row[3] for row in got[SNAT_MAP]] == ["m40000 e 1700000000 call-1@10.0.0.2"]
    # Not deleted, so still the element (and counter) of the first add, with its first comment.
    assert [row[3] for row in got[COUNT_TO_LAN]] == ["m40000 a 1700000000 call-1@10.0.0.2"]
    assert [h.established for h in raw.media_pinholes()] == [True]


def test_failed_batch_raises_and_changes_nothing(tables):
    raw, ref = tables
    first = hole(40000, 6000)
    raw.apply([first], ())
    before = listing(raw)
    clash = hole(40020, 6000, call="call-2")  # LAN 10.0.0.2:6000 is already mapped to another public port
    with pytest.raises(NftError) as info:
        raw.apply([hole(40030, 6030), clash], [hole(40040, 6040)])
    assert info.value.errno == errno.EEXIST
    assert info.value.msg_type == "NEWSETELEM"
    assert "media_snat { 10.0.0.2 . 6000 : 198.51.100.1 . 40020 }" in str(info.value)
    assert listing(raw) == before  # neither the valid pinhole nor the add+delete of the absent one stuck
    ref.apply_json([first], ())
    with pytest.raises(NftError):  # the JSON path refuses the same batch (same exception type)
        ref.apply_json([hole(40030, 6030), clash], [hole(40040, 6040)])
    assert listing(ref) == before  # and leaves the same
    # The daemon's fallback, pinhole by pinhole: the clash is taken for a stale value and replaced.
    assert raw.apply_each([hole(40030, 6030), clash], ()) == []
    assert {(h.public.port, h.lan.port) for h in raw.media_pinholes()} == {(40030, 6030), (40020, 6000)}


def test_missing_table_is_enoent(tables):
    raw, _ref = tables
    raw.remove_table()
    with pytest.raises(NftError) as info:
        raw.apply([hole(40000, 6000)], ())
    assert info.value.errno == errno.ENOENT


def test_large_batches_both_ways(tables):
    """Restoring thousands of pinholes at once (daemon start, ensure_installed): one batch bigger than the
    default socket buffers; and the same batch failing, with one error answer per message."""
    raw, _ref = tables
    holes = [hole(20000 + i, 30000 + i, call=f"c{i}") for i in range(3000)]  # 12,000 messages, ~1.3 MB
    raw.apply(holes, ())
    assert len(raw.media_pinholes()) == 3000
    raw.remove_table()
    with pytest.raises(NftError) as info:
        raw.apply(holes, ())
    assert info.value.errno == errno.ENOENT


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def test_probe_says_what_this_kernel_does_and_leaves_nothing(tables):
    raw, _ref = tables
    features = raw.element_features()
    assert features.destroy == _kernel_at_least(6, 3)  # NFT_MSG_DESTROYSETELEM
    assert features.timeout_update == _kernel_at_least(6, 12)  # a re-add sets the new timeout
    rc, out, err = raw._nft.cmd("list tables ip")
    assert rc == 0, err
    assert [t["table"]["name"] for t in json.loads(out)["nftables"] if "table" in t] == ["nfsip", "nfsipref"]


def test_path_for_old_kernels_leaves_the_same_tables(tables):
    """What runs on Linux < 6.3 (no destroy, re-adds keep the old timeout), against this kernel: removals as
    add + delete, every install deleted and added again. Step by step the same tables as the JSON path
    (which uses what this kernel can do), and refreshes that really change the timeout."""
    raw, ref = tables
    raw._features = CONSERVATIVE
    attempt = hole(40000, 6000, timeout=5)
    steps = [
        (MIXED, (), ()),
        ([replace(attempt, timeout=300)], (), ()),  # refresh: a new timeout, same comment
        ((), (), [replace(attempt, timeout=7200, established=True)]),  # the 200 OK
        ((), MIXED[2:], ()),
        ((), MIXED, ()),  # most of them gone already
    ]
    raw.apply([attempt], ())
    ref.apply_json([attempt], ())
    recreated = False
    for install, remove, recreate in steps:
        raw.apply(install, remove, recreate)
        ref.apply_json(install, remove, recreate)
        got, want = listing(raw), listing(ref)
        recreated = recreated or bool(recreate)
        if recreated:  # the counter elements were re-created with the new comment; there they were kept
            for name in SETS:
                got[name] = [
                    (*row[:3], want_row[3], row[4]) for row, want_row in zip(got[name], want[name], strict=True)
                ]
        assert got == want
        if recreate:
            assert [row[2:4] for row in listing(raw)[SNAT_MAP] if "6000]" in row[0]] == [
                (7200, "m40000 e 1700000000 call-1@10.0.0.2")
            ]
            # Re-created too, so that its timeout follows the call's (its count starts again).
            assert [row[2] for row in listing(raw)[COUNT_TO_LAN] if "6000]" in row[0]] == [7200]
    assert all(rows == [] for rows in listing(raw).values())


def test_counters_read_from_a_raw_dump_are_those_nft_lists(tables):
    """Nft.media_counters parses GETSETELEM dumps itself; after real packets it gives what libnftables lists
    (media_counters_json): towards the phone from media_to_lan, from it from the media_snat element."""
    raw, _ref = tables
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # this test process is in the scratch netns
    sender, receiver = (
        Pinhole(Endpoint(PUBLIC, 40000 + i), Endpoint("127.0.0.1", 6000 + i), "call-1", f"m0.{i}", 180) for i in (0, 1)
    )
    raw.apply([sender, receiver], ())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 6001))
        tx.bind(("127.0.0.1", 6000))
        for _ in range(5):
            tx.sendto(b"rtp" * 50, ("127.0.0.1", 6001))
    time.sleep(0.1)
    got = raw.media_counters()
    assert got == raw.media_counters_json()
    to_receiver, from_sender = got[receiver.lan][0], got[sender.lan][2]
    assert to_receiver >= 5 and from_sender >= 5, got
    assert got[receiver.lan][1] >= 5 * (150 + 28)  # bytes: IP + UDP + payload
