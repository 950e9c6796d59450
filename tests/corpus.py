"""Access to ../shared/corpus (third-party SIP data kept outside the project) for the tests.

NFSIP_CORPUS names another folder (the tests of the guards point it at one that does not exist). Tests
that need the corpus go through `need` or `corpus_dir`, which skip when it is absent, or fail under
NFSIP_REQUIRE_LAB=1 (scripts/test): there a missing corpus must not pass as "nothing to test".
A test parametrised over corpus items takes `cases(items, folder)` and calls `case(item)` first: with no
items pytest would collapse the test into one skip ("got empty parameter set") that nobody sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .lab_support import require

CORPUS = Path(os.environ.get("NFSIP_CORPUS") or Path(__file__).resolve().parents[1].parent / "shared" / "corpus")
T = TypeVar("T")


def need(path: Path) -> Path:
    """`path` (a corpus file or folder), or a skip (a failure under NFSIP_REQUIRE_LAB=1) when it is absent."""
    require(path.exists(), f"SIP corpus data not found: {path} (it lives in ../shared/corpus beside the project)")
    return path


def corpus_dir(sub: str = "") -> Path:
    path = need(CORPUS / sub if sub else CORPUS)
    require(path.is_dir(), f"SIP corpus folder is not a folder: {path}")
    return path


@dataclass(frozen=True)
class NoCases:
    """The one parameter of a corpus test whose folder gave no items."""

    folder: Path


def cases(items: Sequence[Any], folder: Path) -> list[Any]:
    """Parameters for one test per corpus item: `items`, or when there are none a single case that
    `case` turns into a skip (a failure under NFSIP_REQUIRE_LAB=1)."""
    return list(items) or [pytest.param(NoCases(folder), id=f"{folder.name}-no-cases")]


def case(item: T) -> T:
    if isinstance(item, NoCases):
        need(item.folder)
        require(False, f"no test cases found in the SIP corpus folder {item.folder}")
    return item


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
