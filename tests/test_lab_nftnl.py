"""The raw nfnetlink element path (Nft.apply) against the kernel, beside the libnftables JSON path it
replaces (tests/libnftables_reference.py): both write the same pinholes into two copies of nfsip's table in
a scratch network namespace, and everything nft lists back must be the same. Needs root (skips
otherwise)."""

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
from nfsip.core.model import Decision, Direction, Endpoint, Flow, Pinhole
from nfsip.daemon import Daemon
from nfsip.kernel import ctnetlink, divert
from nfsip.kernel.conntrack import accounting_enabled, read_media_counters
from nfsip.kernel.ctnetlink import IPCTNL_MSG_CT_GET, CtNetlink, dump_filter, source_key
from nfsip.kernel.netlink import NLM_F_DUMP, NLM_F_REQUEST
from nfsip.kernel.nft import CONSERVATIVE, Nft, NftError
from nfsip.kernel.ruleset import (
    DNAT_MAP,
    DNAT_STRICT_MAP,
    IPV6_SUFFIX,
    SIP_DNAT_ANY_MAP,
    SIP_DNAT_MAP,
    SIP_SNAT_MAP,
    SNAT_MAP,
    options_from,
    render,
)
from nfsip.kernel.table import NftTable

from .fakes import fake_daemon
from .lab_support import require_lab
from .libnftables_reference import LibnftablesPath

pytestmark = pytest.mark.lab

MAPS4 = (DNAT_MAP, DNAT_STRICT_MAP, SNAT_MAP, SIP_DNAT_MAP, SIP_DNAT_ANY_MAP, SIP_SNAT_MAP)
MAPS = MAPS4 + tuple(name + IPV6_SUFFIX for name in MAPS4)  # and their IPv6 twins
PUBLIC = "198.51.100.1"
PHONE6 = "2001:db8:1::10"
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


class Reference(Nft):
    """Nft on the reference table, whose element changes go through libnftables JSON."""

    def __init__(self, table: str) -> None:
        super().__init__(table)
        self.apply_json = LibnftablesPath(self).apply


@pytest.fixture
def tables() -> Iterator[tuple[Nft, Reference]]:
    """(raw, ref): Nft on table `nfsip` and on a second copy `nfsipref` (changed through libnftables JSON
    with `ref.apply_json`), in a fresh namespace."""
    require_lab()
    ns = f"nfsip-nftnl-{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    nfts: list[Nft] = []
    try:
        with inside(ns):
            raw, ref = Nft("nfsip"), Reference("nfsipref")
            nfts += [raw, ref]
            for nft in nfts:
                config = Config(wan_interface="lo", table_name=nft.table)
                nft.install(render(options_from(config, native_queue=False)))
            yield raw, ref
    finally:
        for nft in nfts:
            nft.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def hole(port: int, lan_port: int, call: str = "call-1@10.0.0.2", **kw) -> Pinhole:
    kw.setdefault("since", 1_700_000_000)
    return Pinhole(
        Endpoint(PUBLIC, port), Endpoint("10.0.0.2", lan_port), call, f"m{port}", kw.pop("timeout", 180), **kw
    )


def hole6(port: int, **kw) -> Pinhole:
    """An IPv6 media pinhole without NAT: the public endpoint is the phone's own (identity map entries)."""
    phone = Endpoint(PHONE6, port)
    return Pinhole(phone, phone, "call-6@example.org", f"m{port}", 180, since=1_700_000_003, **kw)


MIXED = [
    hole(40000, 6000),  # latching media
    hole(40001, 6001, established=True),
    hole(40002, 6002, remote_ip="203.0.113.9"),  # media_from = "sdp"
    hole(40004, 6004, kind="media-out"),  # strict, far end not known yet
    Pinhole(Endpoint(PUBLIC, 5060), Endpoint("10.0.0.3", 5060), "reg:sip:a@example.org", "sip", 3630,
            kind="sip", remote_ip="198.51.100.2", since=1_700_000_001),
    Pinhole(Endpoint(PUBLIC, 5062), Endpoint("10.0.0.4", 5060), "reg:sip:b@example.org", "sip", 7200,
            kind="sip", since=1_700_000_002),
    # IPv6 without NAT: latching media, strict media with an IPv6 far end, registrations
    hole6(6000),
    hole6(6002, remote_ip="2001:db8:ff::9"),
    Pinhole(Endpoint("2001:db8:1::11", 5060), Endpoint("2001:db8:1::11", 5060), "reg:sip:c@example.org", "sip",
            3630, kind="sip", remote_ip="2001:db8:ff::2", since=1_700_000_004),
    Pinhole(Endpoint("2001:db8:1::12", 5062), Endpoint("2001:db8:1::12", 5062), "reg:sip:d@example.org", "sip",
            7200, kind="sip", since=1_700_000_005),
]  # fmt: skip


def listing(nft: Nft) -> dict[str, list[tuple]]:
    """Every element of every map as nft lists it: key, value, configured timeout, comment, and whether it
    has a counter (`expires` left out: it runs down between the two listings)."""
    out = {}
    for name in MAPS:
        rc, text, err = nft._nft.cmd(f"list map inet {nft.table} {name}")
        assert rc == 0, err
        rows = []
        for item in json.loads(text)["nftables"]:
            for key, value in (item.get("map") or {}).get("elem", []):
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
    ipv4 = {DNAT_MAP: 2, DNAT_STRICT_MAP: 1, SNAT_MAP: 4, SIP_DNAT_MAP: 1, SIP_DNAT_ANY_MAP: 1, SIP_SNAT_MAP: 2}
    ipv6 = {DNAT_MAP: 1, DNAT_STRICT_MAP: 1, SNAT_MAP: 2, SIP_DNAT_MAP: 1, SIP_DNAT_ANY_MAP: 1, SIP_SNAT_MAP: 2}
    assert {name: len(rows) for name, rows in got.items()} == ipv4 | {n + IPV6_SUFFIX: k for n, k in ipv6.items()}
    assert not any(row[4] for rows in got.values() for row in rows)  # no counters: conntrack accounting counts
    assert ("m40000 a 1700000000 call-1@10.0.0.2") in {row[3] for row in got[SNAT_MAP]}
    assert {row[2] for row in got[SIP_SNAT_MAP]} == {row[2] for row in got[SIP_SNAT_MAP + IPV6_SUFFIX]} == {3630, 7200}
    # IPv6 without NAT: each element maps the phone's address and port to themselves
    identity = json.dumps({"concat": [PHONE6, 6002]})
    assert (identity, identity) in {row[:2] for row in got[SNAT_MAP + IPV6_SUFFIX]}
    strict = json.dumps({"concat": ["2001:db8:ff::9", PHONE6, 6002]})
    assert [row[:2] for row in got[DNAT_STRICT_MAP + IPV6_SUFFIX]] == [(strict, identity)]
    same_pinholes(raw.media_pinholes(), ref.media_pinholes())
    same_pinholes(raw.registration_pinholes(), ref.registration_pinholes())
    same_pinholes(raw.registration_pinholes(), [h for h in MIXED if h.kind == "sip"])
    assert sorted(h.call_id for h in raw.media_pinholes()) == ["call-1@10.0.0.2"] * 4 + ["call-6@example.org"] * 2
    same_pinholes([h for h in raw.media_pinholes() if ":" in h.lan.ip], MIXED[6:8])  # read back as installed
    assert {h.timeout for h in raw.media_pinholes()} <= {179, 180}


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
    assert raw.media_pinholes() == [] and raw.registration_pinholes() == []


def test_changed_mapping_is_removal_plus_install_in_one_batch(tables):
    raw, ref = tables
    old, new = hole(40000, 6000), hole(40010, 6000)  # same LAN port, new public port
    for apply in (raw.apply, ref.apply_json):
        apply([old], ())
        apply([new], [old])
    assert listing(raw) == listing(ref)
    assert [h.public.port for h in raw.media_pinholes()] == [40010]


def test_recreate_renews_the_comments(tables):
    raw, ref = tables
    attempt = hole(40000, 6000)
    established = replace(attempt, established=True)
    for apply in (raw.apply, ref.apply_json):
        apply([attempt], ())
        apply((), (), [established])
    got = listing(raw)
    assert got == listing(ref)
    assert [row[3] for row in got[SNAT_MAP]] == ["m40000 e 1700000000 call-1@10.0.0.2"]
    assert [row[3] for row in got[DNAT_MAP]] == ["m40000 e 1700000000 call-1@10.0.0.2"]
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


def _daemon_on(nft: Nft) -> Daemon:
    """A daemon whose element changes go to `nft` (the fixture's table `nfsip`), its other adapters fakes."""
    config = Config(wan_interface="lo", public_address=PUBLIC, table_name=nft.table)
    return fake_daemon(config, table=NftTable(config, nft))


@pytest.mark.parametrize("conservative", [False, True], ids=["destroy", "linux<6.3"])
def test_a_refused_message_leaves_none_of_its_pinholes(tables, conservative):
    """Issue 13: `m=audio 65535` made an RTCP pinhole to LAN port 65536; its transaction failed and the
    retry pinhole by pinhole installed the RTP one. A message's pinholes are all installed or none: one the
    encoder refuses, and two the kernel refuses together (one LAN port mapped to two public ports)."""
    raw, _ref = tables
    if conservative:
        raw._features = CONSERVATIVE
    daemon = _daemon_on(raw)
    other = hole(40100, 6100, call="other")  # another call's pinhole: untouched throughout
    raw.apply([other], ())
    before = listing(raw)
    for pair in ([hole(40000, 65535), hole(40001, 65536)], [hole(40030, 6030), hole(40032, 6030, call="c2")]):
        decision = Decision(None, "rewritten", install=tuple(pair), opened=tuple(pair))
        assert daemon._apply([decision]) == {id(decision)}
        assert listing(raw) == before, pair


def test_a_refused_call_is_forgotten_by_the_engine(tables):
    """The kernel refused a call's pinholes (here: no table): its INVITE passes unchanged, and the engine
    keeps no call, no live pinhole count and no public port for it."""
    raw, _ref = tables
    daemon = _daemon_on(raw)
    flow = Flow(Direction.OUTBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 5060), Endpoint("198.51.100.2", 5060))
    sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"
    invite = (
        "INVITE sip:bob@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK1\r\n"
        "From: <sip:a@example.org>;tag=1\r\nTo: <sip:b@example.org>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:a@10.0.0.2:5060>\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()
    decision = daemon.engine.handle(flow, invite, daemon.clock())
    assert len(decision.opened) == 2 and len(daemon.engine.calls) == 1
    raw.remove_table()
    assert daemon._apply([decision]) == {id(decision)}
    assert len(daemon.engine.calls) == 0 and daemon.engine.calls.pinholes_total == 0
    assert not any(daemon.engine.calls.ports.in_use(h.public.port) for h in decision.opened)


@pytest.mark.parametrize("conservative", [False, True], ids=["destroy", "linux<6.3"])
def test_a_stale_value_is_replaced_in_one_transaction(tables, conservative):
    """The daemon's retry of a refused message: each key cleared of a stale value (another public port for
    the same LAN port, left by an earlier run), then every pinhole of the message added, together."""
    raw, _ref = tables
    if conservative:
        raw._features = CONSERVATIVE
    raw.apply([hole(40000, 6000, call="stale")], ())
    mine = [hole(40030, 6030), hole(40020, 6000)]
    with pytest.raises(NftError):
        raw.apply(mine, ())
    raw.apply_replacing(mine)
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
    rc, out, err = raw._nft.cmd("list tables")
    assert rc == 0, err
    tables = [(t["table"]["family"], t["table"]["name"]) for t in json.loads(out)["nftables"] if "table" in t]
    assert tables == [("inet", "nfsip"), ("inet", "nfsipref")]


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
    for install, remove, recreate in steps:
        raw.apply(install, remove, recreate)
        ref.apply_json(install, remove, recreate)
        assert listing(raw) == listing(ref)
        if recreate:
            assert [row[2:4] for row in listing(raw)[SNAT_MAP] if "6000]" in row[0]] == [
                (7200, "m40000 e 1700000000 call-1@10.0.0.2")
            ]
    assert all(rows == [] for rows in listing(raw).values())


def test_media_counts_are_the_conntrack_accounting_of_the_flows(tables):
    """read_media_counters after real packets, with accounting turned on as the daemon does at start: a flow
    the first endpoint started counts for it as sent (original direction) and received (reply), and for the
    second endpoint, its reply source, the other way round. Exact counts: nothing else counts per packet.
    Loading nfsip's table turned accounting on (its conntrack_accounting chain)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # this test process is in the scratch netns
    assert accounting_enabled()
    phone, far = Endpoint("127.0.0.1", 6000), Endpoint("127.0.0.1", 6001)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((phone.ip, phone.port))
        b.bind((far.ip, far.port))
        for _ in range(5):
            a.sendto(b"rtp" * 50, (far.ip, far.port))
        for _ in range(3):
            b.sendto(b"rtcp" * 10, (phone.ip, phone.port))
    time.sleep(0.1)
    size_out, size_back = 28 + 150, 28 + 40  # IP + UDP + payload
    got = read_media_counters({phone, far, Endpoint("127.0.0.1", 6002)})
    assert got == {
        phone: (3, 3 * size_back, 5, 5 * size_out),  # (to it: packets, bytes; from it: packets, bytes)
        far: (5, 5 * size_out, 3, 3 * size_back),
    }
    assert read_media_counters({phone}) == {phone: got[phone]}
    # An endpoint that cannot be a conntrack key (issue 13: a LAN port 65536) is left out, and said so;
    # it once failed the whole sample ("int too big to convert"), every call's counts.
    bad = Endpoint("127.0.0.1", 65536)
    partial = read_media_counters({phone, bad})
    assert partial == {phone: got[phone]} and partial.refused == (bad,)
    assert read_media_counters({bad}) == {}
    assert read_media_counters(set()) == {}
    # The kernel lays UDP entries out as ctnetlink.entry_sources expects: the fast read applies, not the fallback.
    ct = CtNetlink()
    try:
        dump = ct.ask(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, dump_filter(None, None, None, None), _read_sources)
    finally:
        ct.close()
    assert "not the usual layout" not in dump, dump
    assert (source_key(phone.ip, phone.port), source_key(far.ip, far.port)) in dump, dump


def _read_sources(data: bytes, start: int, _end: int) -> tuple[bytes, bytes] | str:
    return ctnetlink.entry_sources(data, start) or "not the usual layout"


def _json_queue_chain(nft: Nft) -> tuple[bool, int | None]:
    """What libnftables lists for sip_queue (the reads before nftnl's): (holds a queue rule, its counter)."""
    rc, out, err = nft._nft.cmd(f"list chain inet {nft.table} sip_queue")
    assert rc == 0, err
    exprs = [e for item in json.loads(out)["nftables"] for e in (item.get("rule") or {}).get("expr", [])]
    queue = any("queue" in e or (e.get("xt") or {}).get("name") == "NFQUEUE" for e in exprs)
    counters = [int(e["counter"]["packets"]) for e in exprs if isinstance(e.get("counter"), dict)]
    return queue, counters[0] if counters else None


def test_raw_reads_of_the_table_are_what_libnftables_lists(tables):
    """Nft.table_exists / has_queue_rule / diverted_packets ask the kernel for the one table or chain
    (nfsip.kernel.nftnl) instead of libnftables' listing of everything: same answers, also after SIP
    went through the queue chain (lo is the WAN interface here; no daemon: the queue rule's bypass lets
    it through)."""
    raw, ref = tables
    assert raw.table_exists() and ref.table_exists() and not Nft("nfsip_absent").table_exists()
    assert (raw.has_queue_rule(), raw.diverted_packets()) == _json_queue_chain(raw) == (False, 0)
    divert.add_compat_queue_rule(raw.table, 5060, bypass=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in (5060, 5061, 5062):  # three flows, each queued before and after (no) SNAT
            s.sendto(b"OPTIONS sip:x SIP/2.0\r\n\r\n", ("127.0.0.1", port))
    diverted = raw.diverted_packets()
    assert (raw.has_queue_rule(), diverted) == _json_queue_chain(raw)
    assert diverted is not None and diverted >= 2, diverted
    raw.remove_table()
    assert not raw.table_exists() and not raw.has_queue_rule() and raw.diverted_packets() is None
