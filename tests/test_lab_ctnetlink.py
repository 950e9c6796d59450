"""ctnetlink and Conntrack against the kernel, IPv6 beside IPv4: real UDP flows through a router namespace
(IPv6 routed without NAT, one IPv6 flow masqueraded, IPv4 masqueraded), then nfsip's GET, filtered dumps,
counted dumps, the LAN host lookup, the purge and DELETE on the router's conntrack table. Needs root."""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from nfsip.core.model import Endpoint, Pinhole
from nfsip.kernel import ctnetlink
from nfsip.kernel.conntrack import Conntrack, MediaCounts, read_media_counters
from nfsip.kernel.ctnetlink import IPCTNL_MSG_CT_GET, CtNetlink, Entry, Tuple, dump_filter
from nfsip.kernel.netlink import NLM_F_DUMP, NLM_F_REQUEST

from .lab_support import require_lab

pytestmark = pytest.mark.lab

PHONE6, ROUTER6, FAR6 = "2001:db8:1::2", "2001:db8:2::1", "2001:db8:2::2"
PHONE4, ROUTER4, FAR4 = "10.0.0.2", "198.51.100.1", "198.51.100.2"
_names = itertools.count()

ROUTER_RULES = """
table inet ct6test {
  chain forward { type filter hook forward priority filter; policy accept; ct state new counter; }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan0" ip saddr 10.0.0.0/24 masquerade
    oifname "wan0" ip6 saddr 2001:db8:1::/64 udp sport 5070 masquerade
  }
}
"""

# Run in a namespace: answer `back` datagrams of 20 bytes to whoever sent the first `out` ones.
RESPONDER = """
import socket, sys
ip, port, out, back = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
s.settimeout(5)
print("ready", flush=True)
for _ in range(out):
    _, peer = s.recvfrom(2048)
for _ in range(back):
    s.sendto(b"b" * 20, peer)
"""
# Run in a namespace: send `out` datagrams of 100 bytes, then wait for the `back` answers.
INITIATOR = """
import socket, sys
ip, port, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
out, back = int(sys.argv[5]), int(sys.argv[6])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((ip, port))
s.settimeout(5)
for _ in range(out):
    s.sendto(b"a" * 100, (dst, dport))
for _ in range(back):
    s.recvfrom(2048)
"""


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


class Net:
    """phone -- lan0 -- router -- wan0 -- far end, each a namespace; IPv4 and IPv6 on both links."""

    def __init__(self) -> None:
        n = f"nfsip-ct6-{os.getpid()}-{next(_names)}"
        self.phone, self.router, self.far = f"{n}-phone", f"{n}-router", f"{n}-far"

    def run(self, ns: str, *argv: str) -> None:
        subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True)

    def up(self) -> None:
        for ns in (self.phone, self.router, self.far):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            self.run(ns, "ip", "link", "set", "lo", "up")
        for ifname, a, b in (("lan0", self.phone, self.router), ("wan0", self.router, self.far)):
            veth = ["ip", "link", "add", ifname, "netns", a, "type", "veth", "peer", "name", ifname, "netns", b]
            subprocess.run(veth, check=True)
        for ns, ifname, v4, v6 in (
            (self.phone, "lan0", f"{PHONE4}/24", f"{PHONE6}/64"),
            (self.router, "lan0", "10.0.0.1/24", "2001:db8:1::1/64"),
            (self.router, "wan0", f"{ROUTER4}/24", f"{ROUTER6}/64"),
            (self.far, "wan0", f"{FAR4}/24", f"{FAR6}/64"),
        ):
            self.run(ns, "ip", "link", "set", ifname, "up")
            self.run(ns, "ip", "addr", "add", v4, "dev", ifname)
            self.run(ns, "ip", "-6", "addr", "add", v6, "dev", ifname, "nodad")
        self.run(self.phone, "ip", "route", "add", "default", "via", "10.0.0.1")
        self.run(self.phone, "ip", "-6", "route", "add", "default", "via", "2001:db8:1::1")
        self.run(self.far, "ip", "-6", "route", "add", "2001:db8:1::/64", "via", ROUTER6)  # no NAT: routed
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.netfilter.nf_conntrack_acct=1"):
            self.run(self.router, "sysctl", "-qw", key)
        subprocess.run(
            ["ip", "netns", "exec", self.router, "nft", "-f", "-"], input=ROUTER_RULES, text=True, check=True
        )

    def down(self) -> None:
        for ns in (self.phone, self.router, self.far):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def exchange(self, first: str, src: Endpoint, second: str, dst: Endpoint, out: int, back: int) -> None:
        """`out` datagrams of 100 bytes from src (in namespace `first`) to dst (in `second`), `back` of 20 bytes
        answered to where they came from; both ends have their sockets (no ICMP errors)."""
        counts = [str(out), str(back)]
        answer = [sys.executable, "-c", RESPONDER, dst.ip, str(dst.port), *counts]
        responder = subprocess.Popen(["ip", "netns", "exec", second, *answer], stdout=subprocess.PIPE, text=True)
        try:
            assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
            self.run(first, sys.executable, "-c", INITIATOR, src.ip, str(src.port), dst.ip, str(dst.port), *counts)
            assert responder.wait(timeout=10) == 0
        finally:
            if responder.poll() is None:
                responder.kill()
                responder.wait()


# The flows: (from, to, datagrams out, datagrams back), and the conntrack entries they leave in the router.
PHONE_STARTED6 = Entry(Tuple(PHONE6, 6000, FAR6, 7000), Tuple(FAR6, 7000, PHONE6, 6000))  # no NAT
FAR_STARTED6 = Entry(Tuple(FAR6, 7002, PHONE6, 6002), Tuple(PHONE6, 6002, FAR6, 7002))  # no NAT, through a pinhole
MASQUERADED6 = Entry(Tuple(PHONE6, 5070, FAR6, 5060), Tuple(FAR6, 5060, ROUTER6, 5070))  # an admin's NAT66
MASQUERADED4 = Entry(Tuple(PHONE4, 6000, FAR4, 7000), Tuple(FAR4, 7000, ROUTER4, 6000))
ALL = {PHONE_STARTED6, FAR_STARTED6, MASQUERADED6, MASQUERADED4}


@pytest.fixture
def net() -> Iterator[Net]:
    require_lab()
    net = Net()
    try:
        net.up()
        net.exchange(net.phone, Endpoint(PHONE6, 6000), net.far, Endpoint(FAR6, 7000), 5, 3)
        net.exchange(net.far, Endpoint(FAR6, 7002), net.phone, Endpoint(PHONE6, 6002), 4, 2)
        net.exchange(net.phone, Endpoint(PHONE6, 5070), net.far, Endpoint(FAR6, 5060), 1, 1)
        net.exchange(net.phone, Endpoint(PHONE4, 6000), net.far, Endpoint(FAR4, 7000), 5, 3)
        time.sleep(0.05)
        yield net
    finally:
        net.down()


def media_hole(ip: str, port: int, public: Endpoint | None = None) -> Pinhole:
    """A media pinhole of the phone's port; without NAT (IPv6) its public endpoint is the phone's own."""
    lan = Endpoint(ip, port)
    return Pinhole(public or lan, lan, "call-1", f"m{port}", 180)


def test_get_and_dumps_give_both_families_in_canonical_text(net):
    with inside(net.router):
        ct = CtNetlink()
        try:
            assert set(ct.dump()) == ALL  # no address given: the UDP entries of both families
            assert set(ct.dump(src=PHONE6)) == {PHONE_STARTED6, MASQUERADED6}
            assert set(ct.dump(src="2001:DB8:1:0:0:0:0:2", sport=6000)) == {PHONE_STARTED6}  # any spelling
            assert ct.dump(dst=PHONE6) == [FAR_STARTED6]
            assert ct.dump(dst=ROUTER6) == []  # a filter on the original tuple only
            assert ct.dump(src=PHONE4) == [MASQUERADED4]
            # GET finds an entry by either of its tuples.
            assert ct.get(PHONE6, 6000, FAR6, 7000) == PHONE_STARTED6
            assert ct.get(FAR6, 5060, ROUTER6, 5070) == MASQUERADED6
            assert ct.get(FAR4, 7000, ROUTER4, 6000) == MASQUERADED4
            assert ct.get(FAR6, 7000, PHONE6, 6009) is None
        finally:
            ct.close()


def test_lan_endpoint_of_ipv6_flows_with_and_without_nat(net):
    """Conntrack.lan_endpoint as the daemon asks (remote, public): without NAT the public endpoint is the
    phone's own and comes back; behind NAT66 the phone behind it, as for IPv4."""
    with inside(net.router):
        track = Conntrack()
        try:
            assert track.lan_endpoint(Endpoint(FAR6, 7000), Endpoint(PHONE6, 6000)) == Endpoint(PHONE6, 6000)
            assert track.lan_endpoint(Endpoint(FAR6, 7002), Endpoint(PHONE6, 6002)) == Endpoint(PHONE6, 6002)
            assert track.lan_endpoint(Endpoint(FAR6, 5060), Endpoint(ROUTER6, 5070)) == Endpoint(PHONE6, 5070)
            assert track.lan_endpoint(Endpoint(FAR4, 7000), Endpoint(ROUTER4, 6000)) == Endpoint(PHONE4, 6000)
            assert track.lan_endpoint(Endpoint(FAR6, 7000), Endpoint(PHONE6, 6010)) is None
        finally:
            track.close()


def test_counted_dumps_read_ipv6_media_at_fixed_offsets(net):
    """read_media_counters of IPv6 and IPv4 LAN endpoints in one sample: exact counts of each direction
    (IPv6 header 40 bytes, IPv4 20, UDP 8), and the kernel lays the IPv6 entries out as the fast read
    expects (no fallback to the full parse)."""
    out6, back6, out4, back4 = 48 + 100, 48 + 20, 28 + 100, 28 + 20
    lan = {Endpoint(PHONE6, 6000), Endpoint(PHONE6, 6002), Endpoint(PHONE4, 6000), Endpoint(PHONE6, 6004)}
    with inside(net.router):
        got = read_media_counters(lan)
        assert got == {
            Endpoint(PHONE6, 6000): (3, 3 * back6, 5, 5 * out6),  # to it: packets, bytes; from it: packets, bytes
            Endpoint(PHONE6, 6002): (4, 4 * out6, 2, 2 * back6),  # the far end started it
            Endpoint(PHONE4, 6000): (3, 3 * back4, 5, 5 * out4),
        }
        assert read_media_counters({Endpoint(PHONE6, 6000)}) == {Endpoint(PHONE6, 6000): got[Endpoint(PHONE6, 6000)]}
        ct = CtNetlink()
        try:
            layouts = [
                ctnetlink.entry_sources(data, start) or "not the usual layout"
                for fam in ctnetlink.FAMILIES
                for data, start in ct.ask(
                    IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, dump_filter(None, None, None, None),
                    lambda data, start, _end: (data, start), fam,
                )
            ]  # fmt: skip
            counted = ct.dump_counted()  # every UDP entry, of both families
        finally:
            ct.close()
    assert len(layouts) == len(ALL) and "not the usual layout" not in layouts, layouts
    key = ctnetlink.source_key
    assert {(c.orig_source, c.reply_source) for c in counted} == {
        (key(e.orig.src, e.orig.sport), key(e.reply.src, e.reply.sport)) for e in ALL
    }


def test_purge_of_ipv6_pinholes_and_delete(net):
    """New identity pinholes (IPv6 without NAT) keep the flows that went through them; removed ones lose
    every flow on the phone's ip:port, whichever end started it, after their final counts were read.
    An IPv4 pinhole in the same sweep goes as before; DELETE of what is left, then of what is gone."""
    holes6 = [media_hole(PHONE6, 6000), media_hole(PHONE6, 6002)]
    hole4 = media_hole(PHONE4, 6000, public=Endpoint(ROUTER4, 6000))
    reports: list[MediaCounts | OSError] = []
    with inside(net.router):
        track = Conntrack()
        ct = CtNetlink()
        try:
            track.schedule(fresh=[*holes6, hole4])
            assert track.sweep() == 0 and set(ct.dump()) == ALL
            track.read_before_purge({Endpoint(PHONE6, 6002)}, reports.append)
            track.schedule(removed=[*holes6, hole4])
            assert track.sweep() == 3
            assert ct.dump() == [MASQUERADED6]
            assert ct.delete(MASQUERADED6.orig) is True
            assert ct.delete(MASQUERADED6.orig) is False
            assert ct.dump() == []
        finally:
            ct.close()
            track.close()
    assert reports == [{Endpoint(PHONE6, 6002): (4, 4 * 148, 2, 2 * 68)}]
