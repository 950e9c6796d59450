"""The media streams of an SDP: which LAN ports an m= line receives on, and the edits that give it its
public ports. Pure.
"""

from __future__ import annotations

import ipaddress

from .calls import StreamBinding
from .sip.edit import Edit
from .sip.sdp import SdpMedia

MAX_PORT = 65535  # the highest UDP port
# Media protocols carried over UDP that need a pinhole: RTP/AVP and its secure/feedback variants, UDPTL
# (T.38 fax), UDP/BFCP, UDP/TLS/RTP/SAVPF (WebRTC). TCP-based streams (TCP/MSRP, TCP/BFCP) are left alone.
UDP_PROTO_PREFIXES = ("rtp/", "udp", "udptl", "dccp")


def is_udp_media(media: SdpMedia) -> bool:
    return media.proto.lower().startswith(UDP_PROTO_PREFIXES)


def is_private(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    # 0.0.0.0 is the RFC 3264 §8.4 hold address, not a host.
    return ip.is_private and not ip.is_unspecified


def port_edits(media: SdpMedia, binding: StreamBinding, edits: list[Edit]) -> None:
    """The m= port (and a=rtcp port) of a stream, as the public ports of its binding."""
    lan_ports, public_ports = binding.lan_ports, binding.public_ports
    # The binding's ports are sorted: an a=rtcp port below the RTP port (a=rtcp:5999 with m=audio 6004) comes
    # first, and the m= line must still get the RTP port's own public port.
    rtp_public = public_ports[0] if lan_ports[0] == media.port else public_ports[lan_ports.index(media.port)]
    edits.append(Edit(media.port_span, str(rtp_public).encode()))
    rtcp = media.rtcp
    if rtcp is not None and not media.rtcp_mux and rtcp.port in lan_ports:
        rtcp_public = public_ports[lan_ports.index(rtcp.port)]
        edits.append(Edit(rtcp.port_span, str(rtcp_public).encode()))


def stream_ports(index: int, media: SdpMedia) -> tuple[tuple[int, ...], tuple[str, ...]] | None:
    """LAN ports a stream receives on, with labels: RTP ports, then RTCP (RFC 3550: port+1; RFC 3605
    a=rtcp names it explicitly; RFC 5761 rtcp-mux puts it on the RTP port). `m=video 49170/2` means two RTP
    ports 49170 and 49172, with RTCP on 49171 and 49173 (RFC 8866 §5.14).

    None when a port the stream derives falls outside 1-65535 (`m=audio 65535` makes RTCP 65536): such a
    stream opens nothing (out_of_range_port says which). A UDP port has 16 bits; the nft and conntrack
    encoders refuse anything else, and a bad key once failed the whole transaction and every media sample."""
    # Checked before the loop: the count comes from the network (`m=audio 1024/30000` once cost 6.5 s here).
    if out_of_range_port(media) is not None:
        return None
    count = max(media.port_count, 1)
    ports: list[int] = []
    labels: list[str] = []
    seen: set[int] = set()  # the membership test of the loop: a list made it quadratic in the count
    for i in range(count):
        rtp = media.port + 2 * i
        ports.append(rtp)
        seen.add(rtp)
        labels.append(f"m{index}.rtp" if count == 1 else f"m{index}.rtp{i}")
        if media.rtcp_mux:
            continue
        if i == 0 and media.rtcp is not None:
            rtcp = media.rtcp.port
        else:
            rtcp = rtp + 1
        if rtcp not in seen:
            ports.append(rtcp)
            seen.add(rtcp)
            labels.append(f"m{index}.rtcp" if count == 1 else f"m{index}.rtcp{i}")
    order = sorted(range(len(ports)), key=ports.__getitem__)
    return tuple(ports[i] for i in order), tuple(labels[i] for i in order)


def out_of_range_port(media: SdpMedia) -> int | None:
    """A port of `media`'s RTP/RTCP ports (as stream_ports derives them) outside 1-65535, or None: an
    a=rtcp port of 0, else the highest port. Arithmetic only, whatever the count: the highest port is the
    last RTP port's RTCP port (the last RTP port with rtcp-mux, or with a=rtcp and a single RTP port)."""
    rtp = media.port
    if not 0 < rtp <= MAX_PORT:
        return rtp
    count = max(media.port_count, 1)
    highest = rtp + 2 * (count - 1)
    if not media.rtcp_mux:
        explicit = media.rtcp.port if media.rtcp is not None else None
        if explicit is not None and not 0 < explicit <= MAX_PORT:
            return explicit
        if explicit is None or count > 1:  # a=rtcp replaces the first RTP port's port+1 only
            highest += 1
    return highest if highest > MAX_PORT else None
