"""Network-namespace test lab for nfsip: phones behind a NAT router, a SIP server on the WAN.

Public API (see the submodules for details)::

    from nfsiplab import Lab, Capture, SippUas, SippUac, run_uac, read_udp, rtp_packets
    with Lab(phones=2) as lab:
        lab.masquerade()
        with Capture(lab, "server", "eth0") as cap, SippUas(lab) as uas:
            res = run_uac(lab, "phone1")
            uas.wait(10)
        print_report({"server eth0": cap.packets()})

Everything needs root, iproute2 and nftables; calls need sipp, captures dumpcap.
Run ``python -m nfsiplab`` for a demonstration call.
"""

from nfsiplab.capture import (
    Capture,
    UdpPacket,
    count_rtp,
    format_flows,
    media_report,
    print_report,
    read_udp,
    rtp_flows,
    rtp_packets,
    sip_messages,
    stop_all,
)
from nfsiplab.lab import CommandError, Lab, LabError, can_run, cleanup_stale, list_namespaces
from nfsiplab.sipp import PCAP_RTP_PACKETS, SippResult, SippUac, SippUas, have_sipp, run_uac

__all__ = [
    "PCAP_RTP_PACKETS",
    "Capture",
    "CommandError",
    "Lab",
    "LabError",
    "SippResult",
    "SippUac",
    "SippUas",
    "UdpPacket",
    "can_run",
    "cleanup_stale",
    "count_rtp",
    "format_flows",
    "have_sipp",
    "list_namespaces",
    "media_report",
    "print_report",
    "read_udp",
    "rtp_flows",
    "rtp_packets",
    "run_uac",
    "sip_messages",
    "stop_all",
]
