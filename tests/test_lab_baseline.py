"""Baseline of the namespace lab: it builds and tears down cleanly, routes like a NAT router, and
reproduces the problem nfsip exists for (plain masquerade loses server→phone RTP) as well as the
kernel SIP ALG baseline (media both ways).

Why these tests matter for nfsip: the later integration tests claim "with nfsip the media flows";
that claim is only meaningful if, in the same lab, it demonstrably does NOT flow without nfsip.
Each call takes about 8.1 s (the 7.05 s pcap plus margin), so the module runs in about 30 s.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp, media_report, sip_messages, stop_all
from nfsiplab.lab import Lab, cleanup_stale, list_namespaces
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas, run_uac

from .lab_support import require_lab

pytestmark = pytest.mark.lab

MIN_RTP = int(PCAP_RTP_PACKETS * 0.95)
"""A direction "works" when at least 95 % of the 236 played packets arrive (measured: all 236)."""


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    require_lab()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(phones=2) as lab:
        yield lab


def _our_namespaces(lab: Lab) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(lab.prefix + "-")]


def _sdp_connection(payload: bytes) -> str | None:
    for line in payload.split(b"\r\n"):
        if line.startswith(b"c=IN IP4 "):
            return line[9:].decode()
    return None


def test_up_down_leaves_no_namespaces() -> None:
    lab = Lab(phones=2)
    lab.up()
    try:
        assert sorted(_our_namespaces(lab)) == sorted(lab.netns(n) for n in lab.nodes)
        assert len(lab.nodes) == 6  # 2 phones, 2 switches, router, server
        # A background process in a namespace must not keep it alive past down().
        sleeper = lab.popen(T.SERVER, ["sleep", "300"])
    finally:
        lab.down()
    assert _our_namespaces(lab) == []
    assert sleeper.poll() is not None
    lab.down()  # idempotent
    assert _our_namespaces(lab) == []

    # The context manager removes everything even when the body raises.
    with pytest.raises(RuntimeError), Lab(phones=1) as lab2:
        assert len(_our_namespaces(lab2)) == 5
        raise RuntimeError("boom")
    assert _our_namespaces(lab2) == []


def test_cleanup_stale_removes_only_dead_labs() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    crashed = Lab(phones=1, prefix=f"nfl{dead.pid}x1")  # as if left behind by a crashed run
    crashed.up()
    alive = Lab(phones=1)
    alive.up()
    try:
        removed = set(cleanup_stale())
        # (another dead run's leftovers may be removed too; a live lab never)
        assert {crashed.netns(n) for n in crashed.nodes} <= removed
        assert not {alive.netns(n) for n in alive.nodes} & removed
        assert _our_namespaces(crashed) == []
        assert len(_our_namespaces(alive)) == 5
    finally:
        crashed.down()
        alive.down()


def test_routing_sanity(lab: Lab) -> None:
    # Without NAT the server has no route back to 10.0.0.0/24: the echo reply is never sent.
    assert not lab.ping("phone1", T.SERVER_IP)
    assert lab.ping("phone1", T.ROUTER_WAN_IP)
    lab.masquerade()
    lab.masquerade()  # idempotent: still exactly one rule
    rules = lab.run(T.ROUTER, ["nft", "list", "table", "ip", "lab_admin"]).stdout
    assert rules.count("masquerade") == 1
    assert lab.ping("phone1", T.SERVER_IP)
    assert lab.ping("phone2", T.SERVER_IP)
    # The server cannot reach a private address directly (no default route, no LAN route).
    assert not lab.ping(T.SERVER, T.phone_ip(1))
    assert lab.read_sysctl(T.LAN_SWITCH, "net.bridge.bridge-nf-call-iptables") == "0"
    assert lab.read_sysctl(T.ROUTER, "net.ipv4.ip_forward") == "1"


def _one_call(lab: Lab) -> tuple[list, list, str]:
    """One call phone1 → server, captured at both ends; returns (server pkts, phone pkts, report)."""
    server_cap = Capture(lab, T.SERVER, T.HOST_IF).start()
    phone_cap = Capture(lab, "phone1", T.HOST_IF).start()
    try:
        with SippUas(lab, calls=1) as uas:
            uac = run_uac(lab, "phone1")
            uas_res = uas.wait(20)
    finally:
        stop_all([server_cap, phone_cap])
    server_pkts, phone_pkts = server_cap.packets(), phone_cap.packets()
    report = media_report({"server eth0": server_pkts, "phone1 eth0": phone_pkts})
    assert uac.ok, uac.describe() + "\n" + report
    assert uas_res.ok, uas_res.describe() + "\n" + report
    for cap in (server_cap, phone_cap):
        cap.cleanup()
    uas.cleanup()
    return server_pkts, phone_pkts, report


def test_masquerade_only_loses_server_to_phone_media(lab: Lab) -> None:
    """The problem, demonstrated: signalling works, media only flows phone → server."""
    lab.masquerade()
    server_pkts, phone_pkts, report = _one_call(lab)

    invites = [p for p in sip_messages(server_pkts) if p.first_line.startswith("INVITE ")]
    assert invites, report
    # Why: masquerade translated the IP header but not the SDP inside the INVITE.
    assert invites[0].src == T.ROUTER_WAN_IP
    assert _sdp_connection(invites[0].payload) == T.phone_ip(1)

    up = count_rtp(server_pkts, src=T.ROUTER_WAN_IP, dst=T.SERVER_IP)
    assert up >= MIN_RTP, report
    # The server plays towards 10.0.0.2, which it cannot route: nothing leaves its interface...
    assert count_rtp(server_pkts, src=T.SERVER_IP) == 0, report
    # ...and nothing reaches the phone.
    assert count_rtp(phone_pkts, dst=T.phone_ip(1)) == 0, report


def test_kernel_sip_alg_media_both_ways(lab: Lab) -> None:
    """Baseline: the kernel SIP helper rewrites the SDP, so media flows both ways."""
    lab.masquerade()
    lab.kernel_sip_alg()
    server_pkts, phone_pkts, report = _one_call(lab)

    invite = next(p for p in sip_messages(server_pkts) if p.first_line.startswith("INVITE "))
    assert _sdp_connection(invite.payload) == T.ROUTER_WAN_IP, report
    assert count_rtp(server_pkts, src=T.ROUTER_WAN_IP, dst=T.SERVER_IP) >= MIN_RTP, report
    assert count_rtp(phone_pkts, src=T.SERVER_IP, dst=T.phone_ip(1)) >= MIN_RTP, report
    # TX checksum offload is off on the veths, so every captured UDP checksum must be final,
    # including the phone's own packets and those the router NATed.
    bad = [p for p in server_pkts + phone_pkts if p.checksum_ok is False]
    assert not bad, bad[:3]


def test_two_concurrent_calls_one_uas(lab: Lab) -> None:
    """One UAS serves two concurrent calls and sends each call's RTP to that caller's SDP.

    Kernel ALG with distinct phone RTP ports. Pitfall (measured): with both phones on RTP port
    6000, nf_nat_sip keeps the second INVITE from passing until the first call has ended (its
    retransmission arrived 15.5 s later), and the second call's server→phone RTP then follows the
    stale conntrack entry of the first call to the wrong phone. nfsip must do better; this test
    avoids that case so that it checks the lab, not the ALG.
    """
    lab.masquerade()
    lab.kernel_sip_alg()
    caps = {n: Capture(lab, n, T.HOST_IF).start() for n in ("phone1", "phone2", T.SERVER)}
    try:
        with SippUas(lab, calls=2) as uas:
            uacs = {
                "phone1": SippUac(lab, "phone1", media_port=6000).start(),
                "phone2": SippUac(lab, "phone2", media_port=7000).start(),
            }
            results = {n: u.wait(60) for n, u in uacs.items()}
            uas_res = uas.wait(20)
    finally:
        stop_all(caps.values())
    pkts = {n: c.packets() for n, c in caps.items()}
    report = media_report(pkts)
    for n, res in results.items():
        assert res.ok, f"{n}: {res.describe()}\n{report}"
    assert uas_res.ok and uas_res.successful_calls == 2, uas_res.describe()
    # Calls overlapped: both took about one call's time, not two.
    assert max(r.duration_s for r in results.values()) < 2 * 8.0, report
    for phone in ("phone1", "phone2"):
        ip = lab.ip_of(phone)
        assert count_rtp(pkts[phone], src=ip, dst=T.SERVER_IP) >= MIN_RTP, report
        assert count_rtp(pkts[phone], src=T.SERVER_IP, dst=ip) >= MIN_RTP, report
    assert count_rtp(pkts[T.SERVER], dst=T.SERVER_IP) >= 2 * MIN_RTP, report
    for item in [*caps.values(), uas, *uacs.values()]:
        item.cleanup()
