"""The main demo: real sipp calls cross a dual-stack router running nfsip, with media both ways.

The router masquerades IPv4, routes IPv6 without NAT, and firewalls both as a router admin does (forward
policy drop, replies and LAN to WAN accepted, plus the one rule `nfsip admin-rule` prints). The IPv4 phones,
one IPv6 phone and one phone whose SIP runs over TCP (through nfsip's relay) call the server at once.
Prints, per phone, the SDP the server received, the RTP packets each side received, where the phone's
media left the router, the pinholes nfsip held during the calls, and that none (map entries and conntrack
entries) remained after the BYE. Exit status 0 only if all of that holds.
"""

from __future__ import annotations

import time

from nfsip.core.sip.message import parse_message
from nfsiplab import topology as T
from nfsiplab.capture import Capture, count_rtp, rtp_packets, sip_messages, stop_all
from nfsiplab.lab import Lab
from nfsiplab.nfsipd import NfsipDaemon
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippUac, SippUas

MIN_SHARE = 0.95


def _media_conntrack(lab: Lab, ports: set[int]) -> list[str]:
    out = ""
    for family in ("ipv4", "ipv6"):
        out += lab.run(T.ROUTER, ["conntrack", "-L", "-f", family, "-p", "udp"], check=False).stdout
    return [ln for ln in out.splitlines() if any(f"sport={p} " in ln or f"dport={p} " in ln for p in ports)]


def run_demo(phones: int = 2, distinct_media_ports: bool = False) -> int:
    ok = True
    with Lab(phones=phones + 2) as lab:
        lab.masquerade()
        lab.admin_firewall(nfsip_rule=True)
        phones4, phone6, phone_tcp = lab.phones[:phones], lab.phones[phones], lab.phones[phones + 1]
        ip6, ip_tcp = lab.ip6_of(phone6), lab.ip_of(phone_tcp)
        with NfsipDaemon(lab) as daemon:
            caps = {n: Capture(lab, n, T.HOST_IF).start() for n in [*lab.phones, T.SERVER]}
            uas = SippUas(lab, calls=len(phones4)).start()
            uas6 = SippUas(lab, ip=T.SERVER_IP6).start()
            media_ports = [T.MEDIA_PORT + (1000 * i if distinct_media_ports else 0) for i in range(phones)]
            uacs = [SippUac(lab, p, media_port=m).start() for p, m in zip(phones4, media_ports, strict=True)]
            uac6 = SippUac(lab, phone6, server=T.SERVER_IP6).start()
            uas_tcp = SippUas(lab, transport="t1", media_port=T.MEDIA_PORT + 1000).start()  # beside the UDP UAS
            uac_tcp = SippUac(lab, phone_tcp, transport="t1").start()
            time.sleep(3)
            during = daemon.status()
            results = [u.wait(90) for u in uacs]
            result6 = uac6.wait(90)
            result_tcp = uac_tcp.wait(90)
            uas.wait(30)
            uas6.wait(30)
            uas_tcp.wait(30)
            stop_all(caps.values())
            after = daemon.status()
            packets = {name: cap.packets() for name, cap in caps.items()}
            at_server = packets[T.SERVER]
            invites = {
                parse_message(p.payload).call_id: parse_message(p.payload)
                for p in sip_messages(at_server)
                if p.payload.startswith(b"INVITE ")
            }
            print(
                f"nfsip demo: {phones} IPv4 phone(s) behind a masquerading router, one IPv6 phone behind its"
                f" firewall (policy drop + nfsip's rule) and one phone with SIP over TCP; sipp UAS on"
                f" {T.SERVER_IP} (UDP and TCP) and [{T.SERVER_IP6}]"
            )
            print(f"  every phone uses SIP port {T.SIP_PORT}; RTP ports {', '.join(map(str, media_ports))}")
            print(f"  each side plays {PCAP_RTP_PACKETS} RTP packets (G.711, 7 s)\n")
            public_ports: set[int] = set()
            for phone, result, media_port in zip(phones4, results, media_ports, strict=True):
                ip = lab.ip_of(phone)
                invite = next((m for m in invites.values() if m.call_id.endswith(f"@{ip}")), None)
                sdp_addr = invite.sdp.connection.address if invite and invite.sdp and invite.sdp.connection else "?"
                sdp_port = invite.sdp.media[0].port if invite and invite.sdp else 0
                public_ports.add(sdp_port)
                to_phone = count_rtp(packets[phone], dst=ip)
                from_phone = [p for p in rtp_packets(at_server) if p.src == T.ROUTER_WAN_IP and p.sport == sdp_port]
                sources = sorted({f"{p.src}:{p.sport}" for p in from_phone})
                good = (
                    result.ok
                    and sdp_addr == T.ROUTER_WAN_IP
                    and to_phone >= MIN_SHARE * PCAP_RTP_PACKETS
                    and len(from_phone) >= MIN_SHARE * PCAP_RTP_PACKETS
                )
                ok &= good
                print(f"{phone} ({ip}, RTP {media_port}): call {'ok' if result.ok else 'FAILED'}")
                print(f"  SDP at the server:       c={sdp_addr} m=audio {sdp_port}  (private address gone)")
                print(f"  server -> phone RTP:     {to_phone}/{PCAP_RTP_PACKETS} received by the phone")
                print(f"  phone -> server RTP:     {len(from_phone)}/{PCAP_RTP_PACKETS} received, from {sources}")
                print(f"  {'PASS' if good else 'FAIL'}\n")
            invite6 = next((m for m in invites.values() if m.call_id.endswith(f"@{ip6}")), None)
            sdp6 = invite6.sdp if invite6 is not None else None
            sdp6_addr = sdp6.connection.address if sdp6 is not None and sdp6.connection else "?"
            sdp6_port = sdp6.media[0].port if sdp6 is not None else 0
            to_phone6 = count_rtp(packets[phone6], dst=ip6)
            from_phone6 = [p for p in rtp_packets(at_server) if p.src == ip6 and p.sport == sdp6_port]
            good6 = (
                result6.ok
                and (sdp6_addr, sdp6_port) == (ip6, T.MEDIA_PORT)
                and to_phone6 >= MIN_SHARE * PCAP_RTP_PACKETS
                and len(from_phone6) >= MIN_SHARE * PCAP_RTP_PACKETS
            )
            ok &= good6
            print(f"{phone6} ({ip6}, IPv6, RTP {T.MEDIA_PORT}): call {'ok' if result6.ok else 'FAILED'}")
            print(f"  SDP at the server:       c={sdp6_addr} m=audio {sdp6_port}  (IPv6 routed: nothing rewritten)")
            print(
                f"  server -> phone RTP:     {to_phone6}/{PCAP_RTP_PACKETS} received by the phone, through its pinhole"
            )
            print(f"  phone -> server RTP:     {len(from_phone6)}/{PCAP_RTP_PACKETS} received")
            print(f"  {'PASS' if good6 else 'FAIL'}\n")
            # TCP: the SDP travelled in the TCP stream (not in the UDP capture); the media shows where it came from.
            to_phone_tcp = count_rtp(packets[phone_tcp], dst=ip_tcp)
            from_tcp = [p for p in rtp_packets(at_server) if p.src == T.ROUTER_WAN_IP and p.sport not in public_ports]
            tcp_ports = sorted({p.sport for p in from_tcp})
            good_tcp = (
                result_tcp.ok
                and to_phone_tcp >= MIN_SHARE * PCAP_RTP_PACKETS
                and len(from_tcp) >= MIN_SHARE * PCAP_RTP_PACKETS
            )
            ok &= good_tcp
            print(
                f"{phone_tcp} ({ip_tcp}, SIP over TCP, RTP {T.MEDIA_PORT}): call {'ok' if result_tcp.ok else 'FAILED'}"
            )
            print("  SIP:                     relayed by nfsip (its TCP relay rewrote each message)")
            print(f"  server -> phone RTP:     {to_phone_tcp}/{PCAP_RTP_PACKETS} received by the phone")
            print(f"  phone -> server RTP:     {len(from_tcp)}/{PCAP_RTP_PACKETS} received, from ports {tcp_ports}")
            print(f"  {'PASS' if good_tcp else 'FAIL'}\n")
            public_ports |= set(tcp_ports)
            print("pinholes while the calls were up (nfsip status):")
            for call in during["calls"]:
                holes = ", ".join(f"{h['public_port']}->{h['private']}" for h in call["pinholes"])
                print(f"  {call['call_id']}: {holes}")
            media = public_ports | {p + 1 for p in public_ports} | set(media_ports) | {T.MEDIA_PORT}
            leftovers = _media_conntrack(lab, media)
            clean = after["pinholes"] == 0 and not leftovers
            ok &= clean and bool(during["calls"])
            print(
                f"after BYE: {after['pinholes']} map entries, {len(leftovers)} media conntrack entries"
                f"  {'PASS' if clean else 'FAIL'}"
            )
            for cap in caps.values():
                cap.cleanup()
    print(f"\nresult: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1
