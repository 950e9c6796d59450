"""The main demo: real sipp calls cross a masquerading router running nfsip, with media both ways.

Prints, per phone, the SDP the server received, the RTP packets each side received, where the phone's
media left the router, the pinholes nfsip held during the call, and that none (map entries and conntrack
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
    out = lab.run(T.ROUTER, ["conntrack", "-L", "-p", "udp"], check=False).stdout
    return [ln for ln in out.splitlines() if any(f"sport={p} " in ln or f"dport={p} " in ln for p in ports)]


def run_demo(phones: int = 2, distinct_media_ports: bool = False) -> int:
    ok = True
    with Lab(phones=phones) as lab:
        lab.masquerade()
        with NfsipDaemon(lab) as daemon:
            caps = {n: Capture(lab, n, T.HOST_IF).start() for n in [*lab.phones, T.SERVER]}
            uas = SippUas(lab, calls=len(lab.phones)).start()
            media_ports = [T.MEDIA_PORT + (1000 * i if distinct_media_ports else 0) for i in range(phones)]
            uacs = [SippUac(lab, p, media_port=m).start() for p, m in zip(lab.phones, media_ports, strict=True)]
            time.sleep(3)
            during = daemon.status()
            results = [u.wait(90) for u in uacs]
            uas.wait(30)
            stop_all(caps.values())
            after = daemon.status()
            packets = {name: cap.packets() for name, cap in caps.items()}
            at_server = packets[T.SERVER]
            invites = {
                parse_message(p.payload).call_id: parse_message(p.payload)
                for p in sip_messages(at_server)
                if p.payload.startswith(b"INVITE ")
            }
            print(f"nfsip demo: {phones} phone(s) behind a masquerading router, sipp UAS on {T.SERVER_IP}")
            print(f"  every phone uses SIP port {T.SIP_PORT}; RTP ports {', '.join(map(str, media_ports))}")
            print(f"  each side plays {PCAP_RTP_PACKETS} RTP packets (G.711, 7 s)\n")
            public_ports: set[int] = set()
            for phone, result, media_port in zip(lab.phones, results, media_ports, strict=True):
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
            print("pinholes while the calls were up (nfsip status):")
            for call in during["calls"]:
                holes = ", ".join(f"{h['public_port']}->{h['private']}" for h in call["pinholes"])
                print(f"  {call['call_id']}: {holes}")
            leftovers = _media_conntrack(lab, public_ports | {p + 1 for p in public_ports} | set(media_ports))
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
