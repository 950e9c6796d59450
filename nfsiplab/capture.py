"""Packet captures inside lab namespaces (dumpcap) and a small UDP/SIP/RTP reader (dpkt).

Why capture at all: nfsip's claims are about packets on the wire ("RTP from the server reaches the
phone"), so the tests count what an interface really saw rather than trusting sipp's view.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import dpkt

from nfsiplab.lab import Lab, LabError

SIP_PORT = 5060

# Pitfall (measured): dumpcap reads the kernel ring (TPACKET_V3) in blocks that are handed over
# on a ~250 ms timeout, and on SIGINT it exits WITHOUT draining the current block: packets of the
# last 200 ms before the signal were lost (0 of 4 captured with 0.2 s, all with 0.3 s). Wait
# longer than that before stopping.
STOP_SETTLE_S = 0.6
# Starting is safe: the "File: ..." line is printed after the capture handle is active (a ping
# sent right after it was captured). A tiny settle covers a loaded machine.
START_SETTLE_S = 0.05

_SIP_START_RE = re.compile(rb"^(?:[A-Z]+ \S+ SIP/2\.0\r?\n|SIP/2\.0 \d{3} )")

_DLT_EN10MB = 1
_DLT_RAW = (12, 14, 101)
_DLT_LINUX_SLL = 113
_DLT_LINUX_SLL2 = 276
_ETH_IPV4 = b"\x08\x00"
_ETH_IPV6 = b"\x86\xdd"
_IPV6_FRAGMENT = 44
_IPV6_EXTENSIONS = (0, 43, 60)
"""Hop-by-hop, routing and destination options: skipped on the way to the UDP header."""


class Capture:
    """``dumpcap -q -P -i IFACE -w FILE`` in a lab namespace, as a context manager.

    ``__enter__``/``start()`` returns once dumpcap reports its output file (it is capturing by
    then); ``stop()`` waits ``STOP_SETTLE_S`` so in-flight packets are written, then sends SIGINT
    and waits. ``packets()`` reads the file back as ``UdpPacket``\\ s.
    """

    def __init__(
        self,
        lab: Lab,
        node: str,
        iface: str,
        path: str | Path | None = None,
        *,
        capture_filter: str | None = None,
    ) -> None:
        self.lab, self.node, self.iface = lab, node, iface
        self._tmpdir: str | None = None
        if path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="nfsip-cap-")
            path = Path(self._tmpdir) / f"{node}-{iface}.pcap"
        self.path = Path(path)
        self.capture_filter = capture_filter
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr = ""
        """dumpcap's stderr: start lines, then the final "Packets captured: N" statistics."""
        self.returncode: int | None = None

    def start(self, timeout: float = 10.0) -> Self:
        """Start dumpcap and return when it is really capturing."""
        if shutil.which("dumpcap") is None:
            raise LabError("dumpcap not installed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # -P: classic pcap (dpkt reads it directly; the default pcapng works too, see read_udp).
        # -q: no packet counter on stderr, only the start lines and the final statistics.
        argv = ["dumpcap", "-q", "-P", "-i", self.iface, "-w", str(self.path)]
        if self.capture_filter:
            argv += ["-f", self.capture_filter]
        self.proc = self.lab.popen(self.node, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # dumpcap prints "Capturing on 'eth0'" then "File: <path>" once the file is open.
        head = _read_until(self.proc, b"\nFile:", b"\n", timeout)
        self.stderr = head.decode(errors="replace")
        if b"\nFile:" not in head and not head.startswith(b"File:"):
            self._abort()
            raise LabError(f"dumpcap on {self.node}/{self.iface} did not start: {self.stderr.strip()}")
        time.sleep(START_SETTLE_S)
        return self

    def _abort(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()

    def stop(self, settle: float = STOP_SETTLE_S) -> Path:
        """Let the last packets reach the file, stop dumpcap (SIGINT) and return the pcap path."""
        if self.proc is None:
            return self.path
        if self.proc.poll() is None:
            time.sleep(settle)
            self.proc.send_signal(signal.SIGINT)
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
        else:
            _, err = self.proc.communicate()
        self.stderr += (err or b"").decode(errors="replace")
        self.returncode = self.proc.returncode
        self.proc = None
        if self.returncode not in (0, -signal.SIGINT):
            raise LabError(f"dumpcap on {self.node}/{self.iface} exited {self.returncode}: {self.stderr}")
        return self.path

    def packets(self) -> list[UdpPacket]:
        """The UDP packets of the (stopped) capture."""
        return read_udp(self.path)

    def cleanup(self) -> None:
        """Remove the temporary directory, if the capture made one."""
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            self._abort()


def stop_all(captures: Iterable[Capture], settle: float = STOP_SETTLE_S) -> None:
    """Stop several captures with one settle delay instead of one each (saves 0.6 s per capture)."""
    captures = list(captures)
    time.sleep(settle)
    for cap in captures:
        cap.stop(settle=0)


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, end: bytes, timeout: float) -> bytes:
    """Read ``proc``'s stderr until ``marker`` and the ``end`` after it were seen, EOF or timeout.

    Raw os.read on the fd, not readline(): a buffered reader may swallow the second line into
    its buffer, after which select() on the fd would wait for data that already arrived.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        i = data.find(marker)
        if i >= 0 and data.find(end, i + len(marker)) >= 0:
            return data
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return data
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


@dataclass(frozen=True, slots=True)
class UdpPacket:
    """One UDP datagram as captured (IP fragments already reassembled)."""

    ts: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes
    checksum_ok: bool | None = None
    """UDP checksum verified against the pseudo header; None when the sender left it 0."""

    @property
    def is_sip(self) -> bool:
        return bool(_SIP_START_RE.match(self.payload))

    @property
    def first_line(self) -> str:
        """The first text line of the payload (the SIP start line for SIP)."""
        return self.payload.split(b"\r\n", 1)[0].decode("latin-1")


def _udp_checksum_ok(src: bytes, dst: bytes, udp_bytes: bytes) -> bool | None:
    """The UDP checksum against the pseudo header of either family: IPv6's (32-bit length, next
    header 17 in the last of four bytes) adds up to the same 16-bit words as IPv4's."""
    (csum,) = struct.unpack_from("!H", udp_bytes, 6)
    if csum == 0:
        return None if len(src) == 4 else False  # a zero checksum is not allowed in IPv6
    data = src + dst + struct.pack("!BBH", 0, 17, len(udp_bytes)) + udp_bytes
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _open_reader(f: IO[bytes]) -> Any:
    magic = f.read(4)
    f.seek(0)
    if magic == b"\x0a\x0d\x0d\x0a":  # pcapng section header block (dumpcap's default format)
        return dpkt.pcapng.Reader(f)
    return dpkt.pcap.Reader(f)


def _ip_of_frame(datalink: int, buf: bytes) -> bytes | None:
    """The IPv4 or IPv6 packet inside a captured frame, or None (neither / unknown link type).

    Parsed by hand rather than with dpkt's protocol classes: those decode and may re-serialise
    headers (recomputing a zero checksum), and the lab wants the bytes exactly as captured.
    """
    if datalink == _DLT_EN10MB:
        off, ethertype = 14, buf[12:14]
        while ethertype in (b"\x81\x00", b"\x88\xa8"):  # VLAN tags
            ethertype, off = buf[off + 2 : off + 4], off + 4
    elif datalink == _DLT_LINUX_SLL:  # "-i any"
        off, ethertype = 16, buf[14:16]
    elif datalink == _DLT_LINUX_SLL2:
        off, ethertype = 20, buf[0:2]
    elif datalink in _DLT_RAW:
        off, ethertype = 0, _ETH_IPV6 if buf[:1] and buf[0] >> 4 == 6 else _ETH_IPV4
    else:
        return None
    l3 = buf[off:]
    if ethertype == _ETH_IPV4 and len(l3) >= 20 and l3[0] >> 4 == 4:
        return l3
    if ethertype == _ETH_IPV6 and len(l3) >= 40 and l3[0] >> 4 == 6:
        return l3
    return None


_Datagram = tuple[bytes, bytes, int, bool, int, bytes]
"""(source, destination, fragment id, more fragments, fragment offset, UDP bytes or fragment)."""


def _ipv4_udp(l3: bytes) -> _Datagram | None:
    if l3[9] != 17:  # not UDP
        return None
    ihl = (l3[0] & 0x0F) * 4
    (total_len, ip_id, frag) = struct.unpack_from("!HHH", l3, 2)
    raw = l3[ihl:total_len] if ihl <= total_len <= len(l3) else l3[ihl:]
    return l3[12:16], l3[16:20], ip_id, bool(frag & 0x2000), (frag & 0x1FFF) * 8, raw


def _ipv6_udp(l3: bytes) -> _Datagram | None:
    """UDP of an IPv6 packet, past extension headers; a fragment header gives id, offset, M flag."""
    (payload_len,) = struct.unpack_from("!H", l3, 4)
    end = min(40 + payload_len, len(l3))
    next_header, off = l3[6], 40
    ident, more, offset = 0, False, 0
    while off + 8 <= end:
        if next_header == _IPV6_FRAGMENT:
            (offset_flags, ident) = struct.unpack_from("!HI", l3, off + 2)
            next_header, off = l3[off], off + 8
            more, offset = bool(offset_flags & 1), offset_flags & 0xFFF8
        elif next_header in _IPV6_EXTENSIONS:
            next_header, off = l3[off], off + (l3[off + 1] + 1) * 8
        else:
            break
    if next_header != 17:
        return None
    return l3[8:24], l3[24:40], ident, more, offset, l3[off:end]


def _address(packed: bytes) -> str:
    """IPv4 dotted, IPv6 compressed lowercase (as addresses are written everywhere in nfsip)."""
    return socket.inet_ntoa(packed) if len(packed) == 4 else ipaddress.IPv6Address(packed).compressed


def read_udp(path: str | Path) -> list[UdpPacket]:
    """All UDP datagrams (IPv4 and IPv6) of a pcap or pcapng file, in capture order.

    Fragmented datagrams are reassembled (a 1700-byte SIP message over a 1500 MTU arrives as two
    fragments on the wire) and reported at the time of their last fragment.
    """
    out: list[UdpPacket] = []
    frags: dict[tuple[bytes, bytes, int], dict[int, bytes]] = {}
    frag_total: dict[tuple[bytes, bytes, int], int] = {}
    with open(path, "rb") as f:
        reader = _open_reader(f)
        datalink = reader.datalink()
        for ts, buf in reader:
            l3 = _ip_of_frame(datalink, bytes(buf))
            if l3 is None:
                continue
            datagram = _ipv4_udp(l3) if l3[0] >> 4 == 4 else _ipv6_udp(l3)
            if datagram is None:
                continue
            src, dst, ip_id, more, offset, raw = datagram
            if more or offset:
                key = (src, dst, ip_id)
                frags.setdefault(key, {})[offset] = raw
                if not more:
                    frag_total[key] = offset + len(raw)
                if key not in frag_total:
                    continue
                parts = frags[key]
                data, pos = b"", 0
                while pos in parts:
                    data += parts[pos]
                    pos += len(parts[pos])
                if pos != frag_total[key]:
                    continue
                del frags[key], frag_total[key]
                raw = data
            if len(raw) < 8:
                continue
            sport, dport, ulen = struct.unpack_from("!HHH", raw)
            udp_bytes = raw[:ulen] if 8 <= ulen <= len(raw) else raw
            out.append(
                UdpPacket(
                    ts=float(ts),
                    src=_address(src),
                    sport=sport,
                    dst=_address(dst),
                    dport=dport,
                    payload=bytes(udp_bytes[8:]),
                    checksum_ok=_udp_checksum_ok(src, dst, udp_bytes),
                )
            )
    return out


def sip_messages(packets: Iterable[UdpPacket]) -> list[UdpPacket]:
    """Packets whose payload starts with a SIP request or status line."""
    return [p for p in packets if p.is_sip]


def is_rtp(p: UdpPacket) -> bool:
    """Heuristic RTP test: version 2, not SIP, not port 5060, not RTCP (PT 200..204)."""
    if p.sport == SIP_PORT or p.dport == SIP_PORT or len(p.payload) < 12:
        return False
    if p.payload[0] >> 6 != 2 or p.is_sip:
        return False
    return not 200 <= p.payload[1] <= 204


def rtp_packets(packets: Iterable[UdpPacket]) -> list[UdpPacket]:
    """The RTP packets among ``packets`` (see ``is_rtp``)."""
    return [p for p in packets if is_rtp(p)]


def rtp_flows(packets: Iterable[UdpPacket]) -> Counter[tuple[str, int, str, int]]:
    """RTP packet count per (src, sport, dst, dport)."""
    return Counter((p.src, p.sport, p.dst, p.dport) for p in rtp_packets(packets))


def count_rtp(packets: Iterable[UdpPacket], *, src: str | None = None, dst: str | None = None) -> int:
    """Number of RTP packets from ``src`` and/or to ``dst`` (addresses; None = any)."""
    return sum(1 for p in rtp_packets(packets) if (src is None or p.src == src) and (dst is None or p.dst == dst))


def format_flows(title: str, packets: Iterable[UdpPacket]) -> str:
    """Human-readable RTP flow table of one capture point (for reports and assertion messages)."""
    flows = rtp_flows(packets)
    lines = [f"{title}: {sum(flows.values())} RTP packets"]
    lines += [f"  {s}:{sp} -> {d}:{dp}  {n}" for (s, sp, d, dp), n in sorted(flows.items())]
    return "\n".join(lines)


def iter_sip(packets: Iterable[UdpPacket]) -> Iterator[tuple[float, str, str]]:
    """(ts, "src:sport -> dst:dport", start line) for every SIP message: a compact call flow."""
    for p in sip_messages(packets):
        yield p.ts, f"{p.src}:{p.sport} -> {p.dst}:{p.dport}", p.first_line


def media_report(captures: dict[str, Iterable[UdpPacket]]) -> str:
    """RTP flows seen at each capture point, e.g. ``{"phone1 eth0": pkts, "server eth0": pkts}``.

    Read a flow at its receiving end: "198.51.100.2:6000 -> 10.0.0.2:6000 236" at phone1 means
    236 server→phone packets arrived; a flow missing at the receiver is media lost on the way.
    """
    return "\n".join(format_flows(name, pkts) for name, pkts in captures.items())


def print_report(captures: dict[str, Iterable[UdpPacket]]) -> None:
    """Print ``media_report`` (for the demo and for ``pytest -s``)."""
    print(media_report(captures))
