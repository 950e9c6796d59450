"""Time spent in Python per SIP message, and per pinhole transaction.

    .venv/bin/python bench/engine.py [--n 2000]          (the nft part needs root; it uses its own netns)

Per message: decode IPv4/UDP + parse SIP/SDP + decide + rewrite + encode (what the daemon does between
reading a queued datagram and its verdict, minus the netlink calls), on an outbound INVITE with a 2-stream
SDP, the 200 OK with SDP answering it, an un-rewritten BYE, and a REGISTER. Per transaction: installing
the 2 pinholes (RTP + RTCP, 2 elements each: media_snat and media_dnat) of an audio stream, and removing
them, in a scratch network namespace, both ways side by side: the same element changes (Nft.changes) as a
libnftables JSON transaction (tests/libnftables_reference.py, the path used before) and as the raw
nfnetlink batch (Nft.apply, nfsip.kernel.nftnl), interleaved so that both see the same machine. Median and
p99 over n runs, all in one run of this script (the machine is noisy: compare numbers from the same run).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import queue_roundtrip  # bench/ is on sys.path when run as a script

from nfsip.core.engine import Engine
from nfsip.core.model import Direction, Endpoint, Flow
from nfsip.core.packet import decode_ipv4_udp, encode_ipv4_udp, internet_checksum
from nfsip.core.ports import PortAllocator

PUBLIC = "198.51.100.1"
PHONE = "10.0.0.2"
SERVER = "198.51.100.2"

SDP = (
    "v=0\r\no=- 3712 3712 IN IP4 10.0.0.2\r\ns=call\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    "m=video 6002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f\r\na=sendrecv\r\n"
)
HEAD = (
    "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{n};rport\r\n"
    'Max-Forwards: 70\r\nFrom: "Alice" <sip:alice@example.org>;tag=a{n}\r\nTo: <sip:bob@example.org>{totag}\r\n'
    "Call-ID: {n}-bench@10.0.0.2\r\nCSeq: {cseq}\r\nContact: <sip:alice@10.0.0.2:5060;transport=udp>\r\n"
    "User-Agent: bench/1.0\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, PRACK\r\n"
)


# A WebRTC-gateway-style offer: audio and video with ICE candidates (host, server-reflexive, relayed), DTLS
# fingerprint, SSRCs and RTCP feedback: about 3 KB of SIP, the size that passes netfilterqueue's default
# 4016-byte copy limit once headers grow.
def _ice_media(kind: str, port: int, formats: str, attrs: str) -> str:
    candidates = "".join(
        f"a=candidate:{f} {c} UDP {p} {ip} {port + c - 1} typ {typ}{extra}\r\n"
        for f, (ip, typ, p, extra) in enumerate(
            (
                ("10.0.0.2", "host", 2130706431, ""),
                ("192.168.56.1", "host", 2130706175, ""),
                ("198.51.100.7", "srflx", 1694498815, " raddr 10.0.0.2 rport 6000"),
                ("203.0.113.50", "relay", 16777215, " raddr 198.51.100.7 rport 6000"),
            ),
            start=1,
        )
        for c in (1, 2)
    )
    return (
        f"m={kind} {port} RTP/SAVPF {formats}\r\nc=IN IP4 10.0.0.2\r\na=rtcp:{port + 1} IN IP4 10.0.0.2\r\n"
        f"{candidates}a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\na=ice-options:trickle\r\n"
        "a=fingerprint:sha-256 49:66:12:17:0D:1C:91:AE:57:4C:C6:36:DD:D5:97:D2:7D:62:C9:9A:7F:B9:A3:F4:"
        "70:03:EB:1A:39:06:7C:C6\r\na=setup:actpass\r\na=sendrecv\r\n" + attrs
    )


ICE_SDP = (
    "v=0\r\no=- 4611731400430051336 2 IN IP4 10.0.0.2\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n"
    "a=msid-semantic: WMS stream\r\n"
    + _ice_media(
        "audio",
        6000,
        "111 103 9 0 8 101",
        "a=mid:0\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
        "a=rtpmap:103 ISAC/16000\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=ssrc:1001 cname:4TOk42mSjXCkVIa6\r\n"
        "a=ssrc:1001 msid:stream audio0\r\n",
    )
    + _ice_media(
        "video",
        6002,
        "96 97 98 99",
        "a=mid:1\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 ccm fir\r\na=rtcp-fb:96 nack\r\n"
        "a=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 goog-remb\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
        "a=rtpmap:98 H264/90000\r\na=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;"
        "profile-level-id=42e01f\r\na=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n"
        "a=ssrc-group:FID 2001 2002\r\na=ssrc:2001 cname:4TOk42mSjXCkVIa6\r\na=ssrc:2002 cname:4TOk42mSjXCkVIa6\r\n",
    )
)


def invite(n: int) -> bytes:
    return (
        "INVITE sip:bob@example.org SIP/2.0\r\n"
        + HEAD.format(n=n, totag="", cseq="1 INVITE")
        + f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def invite_ice(n: int) -> bytes:
    return (
        "INVITE sip:bob@example.org SIP/2.0\r\n"
        + HEAD.format(n=n, totag="", cseq="1 INVITE")
        + f"Content-Type: application/sdp\r\nContent-Length: {len(ICE_SDP)}\r\n\r\n{ICE_SDP}"
    ).encode()


def ok_200(n: int) -> bytes:
    return (
        "SIP/2.0 200 OK\r\n"
        + HEAD.format(n=n, totag=";tag=b1", cseq="1 INVITE")
        + f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n\r\n{SDP}"
    ).encode()


def bye(n: int) -> bytes:
    return (
        "BYE sip:bob@198.51.100.2 SIP/2.0\r\n"
        + HEAD.format(n=n, totag=";tag=b1", cseq="2 BYE")
        + "Content-Length: 0\r\n\r\n"
    ).encode()


def register(n: int) -> bytes:
    return (
        "REGISTER sip:example.org SIP/2.0\r\n"
        + HEAD.format(n=n, totag="", cseq="1 REGISTER")
        + "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def ip_udp(payload: bytes, src: str, dst: str) -> bytes:
    total = 28 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return header + struct.pack("!HHHH", 5060, 5060, 8 + len(payload), 0) + payload


def stats(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return statistics.median(samples) * 1e6, samples[int(len(samples) * 0.99) - 1] * 1e6


def bench_messages(n: int) -> list[tuple[str, float, float]]:
    out = []
    flow = Flow(Direction.OUTBOUND, Endpoint(PHONE, 5060), Endpoint(PUBLIC, 5060), Endpoint(SERVER, 5060))
    for name, make in (
        ("INVITE + 2-stream SDP", invite),
        ("200 OK + SDP", ok_200),
        ("BYE", bye),
        ("REGISTER", register),
        (f"INVITE ICE ({len(invite_ice(0))} B)", invite_ice),
    ):
        engine = Engine(PUBLIC, PortAllocator(40000, 49999))
        packets = [ip_udp(make(i), PUBLIC, SERVER) for i in range(n)]
        samples = []
        for i, packet in enumerate(packets):
            start = time.perf_counter()
            dgram = decode_ipv4_udp(packet)
            decision = engine.handle(flow, dgram.payload, float(i))
            if decision.payload is not None:
                encode_ipv4_udp(packet, decision.payload)
            samples.append(time.perf_counter() - start)
            if decision.install:  # keep the state small: end the call outside the timed part
                call = engine.calls.get(f"{i}-bench@10.0.0.2", PHONE)
                if call is not None:
                    engine.calls.end(call, float(i))
        out.append((name, *stats(samples)))
    return out


# A lower bound for the INVITE row, not a parser: the least Python can do to rewrite this INVITE. One regex
# pass over the headers for the five that matter (Via, Call-ID, CSeq, Contact, Content-Length) and one over
# the SDP for c=, o= and m= lines, public ports from a counter, the edits spliced, Content-Length fixed, and
# the real decode/encode (lengths, checksums) around it. It trusts its input: no grammar checks, no error
# paths, no dialog or port state, no pinholes, no policy. What the engine does beyond this is what
# nfsip's robustness costs; the difference between the two rows is the most a rewrite of the engine's
# shape could save.
_FLOOR_HEADERS = re.compile(
    rb"^(via|v|call-id|i|cseq|contact|m|content-length|l)[ \t]*:[ \t]*([^\r\n]*)\r\n", re.I | re.M
)
_FLOOR_SDP = re.compile(rb"^(?:c=IN IP4 ([0-9.]+)|o=(?:\S+ ){5}([0-9.]+)|m=\w+ (\d+))", re.M)


def floor_rewrite(packet: bytes, public: bytes, ports: list[int]) -> bytes:
    dgram = decode_ipv4_udp(packet)
    payload = dgram.payload
    end = payload.find(b"\r\n\r\n")
    heads = {}
    for m in _FLOOR_HEADERS.finditer(payload, 0, end + 2):
        heads.setdefault(m.group(1).lower(), m)
    _dialog = (heads[b"call-id"].group(2), heads[b"cseq"].group(2))  # read, as any engine must
    body_at = end + 4
    edits = []
    for m in _FLOOR_SDP.finditer(payload, body_at):
        if m.group(3):
            ports[0] += 2
            edits.append((m.start(3), m.end(3), b"%d" % ports[0]))
        else:
            g = 1 if m.group(1) else 2
            edits.append((m.start(g), m.end(g), public))
    body_delta = sum(len(r) - (e - s) for s, e, r in edits)
    length = heads[b"content-length"]
    contact = heads[b"contact"]
    via = heads[b"via"]
    head_edits = [
        (via.end(2), via.end(2), b";received=" + public),
        (contact.start(2), contact.end(2), contact.group(2).replace(dgram.src.encode(), public)),
        (length.start(2), length.end(2), b"%d" % (int(length.group(2)) + body_delta)),
    ]
    out, last = [], 0
    for s, e, r in sorted(head_edits) + edits:
        out.append(payload[last:s])
        out.append(r)
        last = e
    out.append(payload[last:])
    return encode_ipv4_udp(packet, b"".join(out))


def bench_floor(n: int) -> tuple[float, float]:
    packets = [ip_udp(invite(i), PHONE, SERVER) for i in range(n)]
    ports = [40000]
    samples = []
    for packet in packets:
        start = time.perf_counter()
        floor_rewrite(packet, PUBLIC.encode(), ports)
        samples.append(time.perf_counter() - start)
    return stats(samples)


NFT_CHILD = "--nft-child"


def nft_child(n: int) -> None:
    """Runs inside the scratch namespace: install the table, then time pinhole transactions both ways."""
    from nfsip.config import Config
    from nfsip.core.model import Pinhole
    from nfsip.kernel.nft import Nft
    from nfsip.kernel.ruleset import options_from, render
    from tests.libnftables_reference import LibnftablesPath

    nft = Nft("nfsip")
    nft.install(render(options_from(Config(wan_interface="lo"), native_queue=False)))
    paths = {"json": LibnftablesPath(nft).apply, "raw": nft.apply}
    samples: dict[str, list[float]] = {f"{path} {op}": [] for op in ("add", "remove") for path in paths}
    for i in range(n):
        holes = [
            Pinhole(Endpoint(PUBLIC, 40000 + 2 * (i % 4000) + k), Endpoint(PHONE, 6000 + k), f"c{i}", "m0", 180)
            for k in (0, 1)
        ]
        # Alternate which path goes first, so neither always runs on a cache the other warmed.
        for path in ("json", "raw") if i % 2 else ("raw", "json"):
            apply = paths[path]
            start = time.perf_counter()
            apply(holes, ())
            samples[f"{path} add"].append(time.perf_counter() - start)
            start = time.perf_counter()
            apply((), holes)
            samples[f"{path} remove"].append(time.perf_counter() - start)
    print(json.dumps({name: stats(values) for name, values in samples.items()}))


def bench_nft(n: int) -> dict[str, tuple[float, float]] | str:
    return queue_roundtrip.in_scratch_netns([__file__, NFT_CHILD, str(n)])


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == NFT_CHILD:
        nft_child(int(sys.argv[2]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    print(f"Python per message (decode + parse + decide + rewrite + encode), n={args.n}")
    print(f"{'message':<24}{'median µs':>12}{'p99 µs':>12}")
    for name, median, p99 in bench_messages(args.n):
        print(f"{name:<24}{median:>12.1f}{p99:>12.1f}")
    median, p99 = bench_floor(args.n)
    print(f"{'INVITE, floor (below)':<24}{median:>12.1f}{p99:>12.1f}")
    print(
        "  floor: the least Python can do to rewrite the same INVITE (bench/engine.py floor_rewrite: regex\n"
        "  passes, splices, Content-Length, decode/encode; no checks, no state, no pinholes): a lower bound"
    )
    roundtrip = queue_roundtrip.measure(n=20000, rounds=3, payload=invite(0))
    print("\nNFQUEUE round trip, same run (bench/queue_roundtrip.py: loop CPU per packet, median of 3 rounds)")
    if isinstance(roundtrip, str):
        print(f"  {roundtrip}")
    else:
        for kind, us in roundtrip.items():
            print(f"{kind:<24}{us:>12.1f} µs CPU")
    nft = bench_nft(min(args.n, 1000))
    print("\nPinhole transaction, one audio stream = 2 pinholes = 4 elements: libnftables JSON vs raw nfnetlink")
    if isinstance(nft, str):
        print(f"  {nft}")
    else:
        print(f"{'transaction':<24}{'JSON median':>13}{'raw median':>12}{'JSON p99':>10}{'raw p99':>10}{'ratio':>8}")
        for op in ("add", "remove"):
            (json_median, json_p99), (raw_median, raw_p99) = nft[f"json {op}"], nft[f"raw {op}"]
            print(
                f"{op + ' 2 pinholes':<24}{json_median:>10.1f} µs{raw_median:>9.1f} µs"
                f"{json_p99:>10.1f}{raw_p99:>10.1f}{json_median / raw_median:>7.1f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
