"""Access to ../shared/corpus (third-party SIP data kept outside the project) for the tests.

Tests that need it call `corpus_dir()` which skips cleanly when the folder is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def corpus_dir(sub: str = "") -> Path:
    path = CORPUS / sub if sub else CORPUS
    if not path.is_dir():
        pytest.skip(f"SIP corpus not found at {path} (it lives in ../shared/corpus beside the project)")
    return path


def vendor_messages() -> list[Path]:
    if not (CORPUS / "vendors").is_dir():
        return []
    return sorted((CORPUS / "vendors").glob("*.sip"))


def _ip_payloads(link_type: int, frame: bytes) -> Iterator[bytes]:
    """Yield the IPv4 packet inside one captured frame, for the link types found in the corpus."""
    import dpkt

    data: bytes | None = None
    if link_type == 1:  # Ethernet, possibly PPPoE session or VLAN
        eth = dpkt.ethernet.Ethernet(frame)
        ip = eth.data
        if isinstance(ip, dpkt.pppoe.PPPoE):
            ppp = ip.data
            ip = ppp.data if isinstance(ppp, dpkt.ppp.PPP) else None
        if isinstance(ip, dpkt.ip.IP):
            data = bytes(ip)
    elif link_type == 113:  # Linux SLL
        sll = dpkt.sll.SLL(frame)
        if isinstance(sll.data, dpkt.ip.IP):
            data = bytes(sll.data)
    elif link_type == 0:  # BSD NULL/loopback: 4-byte family in host order
        if frame[4:5] and frame[4] >> 4 == 4:
            data = frame[4:]
    elif link_type in (101, 228, 12):  # raw IP
        if frame[:1] and frame[0] >> 4 == 4:
            data = frame
    if data is not None:
        yield data


def pcap_udp_sip(path: Path) -> Iterator[tuple[bytes, bytes]]:
    """(ip packet, udp payload) for each unfragmented IPv4 UDP datagram that starts like a SIP message."""
    import dpkt

    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except ValueError:
            fh.seek(0)
            reader = dpkt.pcapng.Reader(fh)
        link_type = reader.datalink()
        for _ts, frame in reader:
            for packet in _ip_payloads(link_type, frame):
                try:
                    ip = dpkt.ip.IP(packet)
                except dpkt.UnpackError:
                    continue
                if ip.p != 17 or ip.mf or ip.offset or not isinstance(ip.data, dpkt.udp.UDP):
                    continue
                payload = bytes(ip.data.data)
                head = payload[:16]
                if head.startswith(b"SIP/2.0 ") or b" sip:" in payload[:200].split(b"\r\n", 1)[0]:
                    yield packet, payload
