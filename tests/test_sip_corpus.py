"""Real-world corpus: vendor messages and SIP carried in 32 public captures.

The corpus is third-party data kept outside the repository (see
/work/shared/corpus/SOURCES.md); tests skip when it is absent, and fail under
NFSIP_REQUIRE_LAB=1 (tests/corpus.py).

For every message with SDP a NAT-style rewrite is applied (private IPv4 in the
top Via sent-by, Contact hosts, SDP o=/c= -> 203.0.113.7; every m= port +1000)
and the result is re-parsed: the structure must be unchanged, the new values
present, Content-Length right, and reverting the edits must give back the
original bytes exactly.
"""

from __future__ import annotations

import csv
import ipaddress
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nfsip.core.sip import Edit, SipMessage, SipParseError, apply_edits, parse_message

from .corpus import CORPUS, case, cases, need
from .sip_support import parse_valid

VENDORS = CORPUS / "vendors"
PCAPS = CORPUS / "pcap"

PUBLIC = b"203.0.113.7"
_PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


def is_private_v4(host: str) -> bool:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.version == 4 and any(addr in n for n in _PRIVATE_NETS)


# ---------------------------------------------------------------- rewriting


@dataclass
class Rewrite:
    """Edits applied to one message plus what must be found after re-parsing."""

    edits: list[Edit] = field(default_factory=list)
    # (kind, index) -> (old bytes, new bytes)
    changes: dict[tuple[str, int], tuple[bytes, bytes]] = field(default_factory=dict)


def nat_rewrite(msg: SipMessage) -> Rewrite:
    rw = Rewrite()
    raw = msg.raw

    def add(key: tuple[str, int], span, new: bytes) -> None:  # type: ignore[no-untyped-def]
        rw.edits.append(Edit(span, new))
        rw.changes[key] = (raw[span.start : span.end], new)

    via = msg.vias[0]
    if is_private_v4(via.sent_by.host):
        add(("via", 0), via.sent_by.host_span, PUBLIC)
    for i, c in enumerate(msg.contacts):
        if c.uri.hostport is not None and is_private_v4(c.uri.hostport.host):
            add(("contact", i), c.uri.hostport.host_span, PUBLIC)
    sdp = msg.sdp
    assert sdp is not None
    if sdp.origin is not None and is_private_v4(sdp.origin.address):
        add(("origin", 0), sdp.origin.address_span, PUBLIC)
    if sdp.connection is not None and is_private_v4(sdp.connection.address):
        add(("conn", 0), sdp.connection.address_span, PUBLIC)
    for i, m in enumerate(sdp.media):
        if m.connection is not None and is_private_v4(m.connection.address):
            add(("mconn", i), m.connection.address_span, PUBLIC)
        if m.port + 1000 <= 65535:
            add(("port", i), m.port_span, str(m.port + 1000).encode())
    return rw


def current_value(msg: SipMessage, key: tuple[str, int]):  # type: ignore[no-untyped-def]
    kind, i = key
    sdp = msg.sdp
    if kind == "via":
        return msg.vias[0].sent_by.host_span
    if kind == "contact":
        return msg.contacts[i].uri.hostport.host_span  # type: ignore[union-attr]
    assert sdp is not None
    if kind == "origin":
        return sdp.origin.address_span  # type: ignore[union-attr]
    if kind == "conn":
        return sdp.connection.address_span  # type: ignore[union-attr]
    if kind == "mconn":
        return sdp.media[i].connection.address_span  # type: ignore[union-attr]
    assert kind == "port"
    return sdp.media[i].port_span


def structure(msg: SipMessage) -> tuple:  # type: ignore[type-arg]
    sdp = msg.sdp
    return (
        msg.method,
        msg.status,
        msg.call_id,
        msg.cseq,
        msg.cseq_method,
        len(msg.vias),
        [v.branch for v in msg.vias],
        len(msg.contacts),
        msg.content_type,
        None if sdp is None else [(m.kind, m.proto, m.formats, m.port_count, m.direction) for m in sdp.media],
    )


def check_rewrite(msg: SipMessage, *, stream: bool = False) -> None:
    rw = nat_rewrite(msg)
    new = apply_edits(msg, rw.edits)
    msg2 = parse_message(new, stream=stream)
    assert msg2.trailing == b""
    assert structure(msg2) == structure(msg)
    if msg.content_length is not None:
        assert msg2.content_length == len(msg2.body())
    for key, (_old, want) in rw.changes.items():
        span = current_value(msg2, key)
        assert new[span.start : span.end] == want, key
    # Reverting (edits on the *new* message's spans) must restore every byte,
    # Content-Length digits included.
    revert = [Edit(current_value(msg2, key), old) for key, (old, _new) in rw.changes.items()]
    assert apply_edits(msg2, revert) == msg.raw


# ------------------------------------------------------------------ vendors


def _vendor_files() -> list[str]:
    if not (VENDORS / "index.tsv").exists():
        return []
    with open(VENDORS / "index.tsv", newline="") as f:
        return [row["file"] for row in csv.DictReader(f, delimiter="\t")]


def test_vendor_index_complete() -> None:
    need(VENDORS / "index.tsv")
    files = _vendor_files()
    assert len(files) == 57
    assert sorted(files) == sorted(p.name for p in VENDORS.glob("*.sip"))


@pytest.mark.parametrize("name", cases(_vendor_files(), VENDORS))
def test_vendor_message(name: str) -> None:
    need(VENDORS / case(name))
    data = (VENDORS / name).read_bytes()
    msg = parse_valid(data)
    kind = name.split("__")[1]
    if kind[0].isdigit():
        assert msg.status == int(kind[:3])
    else:
        assert msg.method == kind.split("-")[0]
    assert msg.trailing == b""
    assert msg.vias and msg.call_id
    assert msg.from_.uri is not None and msg.to.uri is not None
    if msg.content_length is not None:
        assert msg.content_length == len(msg.body())
    assert ("sdp" in kind) == (msg.sdp is not None)
    assert apply_edits(msg, []) == data
    if msg.sdp is not None:
        check_rewrite(msg)


def test_vendor_nat_sample_values() -> None:
    """Spot values in the best NAT sample (Nero SIPPS behind NAT, ws-aaa)."""
    need(VENDORS)
    msg = parse_message((VENDORS / "nero-sipps-2.0__INVITE-sdp__ws-aaa-f223.sip").read_bytes())
    assert msg.vias[0].sent_by.host == "192.168.1.2"
    assert msg.contacts[0].uri.hostport is not None
    assert msg.contacts[0].uri.hostport.host == "192.168.1.2"
    assert msg.sdp is not None
    assert msg.sdp.connection is not None and msg.sdp.connection.address == "192.168.1.2"
    assert [m.kind for m in msg.sdp.media] == ["audio"]
    cirpack = parse_message((VENDORS / "cirpack-4.38e__183-sdp__ws-aaa-f620.sip").read_bytes())
    via = cirpack.vias[0]
    assert via.received == "80.230.219.70"
    assert via.rport is not None and via.rport.value is not None


def test_snom_utf8_display_name() -> None:
    need(VENDORS)
    msg = parse_message(
        (VENDORS / "snom360__INVITE-sdp-utf8-displayname__jsip-RussianDisplayNameTest.sip").read_bytes()
    )
    name = msg.from_.display_name or msg.to.display_name
    assert name is not None and any(ord(ch) > 0x400 for ch in name)  # Cyrillic decoded as UTF-8


# -------------------------------------------------------------------- pcaps

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 0, 1, 101, 113
_SIP_START = re.compile(rb"(?:[A-Z]+ \S+ SIP/2\.0|SIP/2\.0 \d{3})(?: [^\r\n]*)?\r?\n")


def looks_like_sip(payload: bytes) -> bool:
    return _SIP_START.match(payload.lstrip(b"\r\n")) is not None


@dataclass
class CaptureStats:
    udp: list[bytes] = field(default_factory=list)
    tcp_streams: dict[tuple, list[tuple[int, bytes]]] = field(default_factory=lambda: defaultdict(list))  # type: ignore[type-arg]
    skipped: Counter[str] = field(default_factory=Counter)


def _iter_frames(path: Path) -> Iterator[tuple[int, bytes]]:
    import dpkt

    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        reader = dpkt.pcapng.Reader(f) if magic == b"\x0a\x0d\x0d\x0a" else dpkt.pcap.Reader(f)
        link = reader.datalink()
        for _ts, buf in reader:
            yield link, buf


def _l3_from_frame(link: int, buf: bytes):  # type: ignore[no-untyped-def]
    """Return a dpkt IP/IP6 object (or None) for the supported link types."""
    import dpkt

    if link == LINKTYPE_ETHERNET:
        eth = dpkt.ethernet.Ethernet(buf)
        data = eth.data
        if isinstance(data, dpkt.pppoe.PPPoE):  # ws-DTMFsipinfo: PPPoE session
            data = data.data
            if isinstance(data, dpkt.ppp.PPP):
                data = data.data
        return data
    if link == LINKTYPE_LINUX_SLL:
        return dpkt.sll.SLL(buf).data
    if link == LINKTYPE_NULL:  # BSD loopback: 4-byte host-order family
        family = int.from_bytes(buf[:4], "little") if buf[:4] != b"\x00\x00\x00\x02" else 2
        body = buf[4:]
        if family == 2:
            return dpkt.ip.IP(body)
        if family in (24, 28, 30):
            return dpkt.ip6.IP6(body)
        return None
    if link in (LINKTYPE_RAW, 12, 14, 228, 229):
        return dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
    raise AssertionError(f"unsupported link type {link}")


def read_capture(path: Path) -> CaptureStats:
    """UDP payloads (IPv6 fragments reassembled) and TCP segments per flow."""
    import dpkt

    st = CaptureStats()
    frags: dict[tuple, dict[int, tuple[bytes, bool, int]]] = defaultdict(dict)  # type: ignore[type-arg]

    def handle_l4(proto: int, l4: bytes, src: bytes, dst: bytes) -> None:
        if proto == 17:
            udp = dpkt.udp.UDP(l4)
            st.udp.append(bytes(udp.data))
        elif proto == 6:
            tcp = dpkt.tcp.TCP(l4)
            if tcp.data:
                st.tcp_streams[(src, tcp.sport, dst, tcp.dport)].append((tcp.seq, bytes(tcp.data)))
        else:
            st.skipped[f"ip-proto-{proto}"] += 1

    def handle_ip(ip) -> None:  # type: ignore[no-untyped-def]
        if isinstance(ip, dpkt.ip.IP):
            if ip.mf or ip.offset:
                st.skipped["ipv4-fragment"] += 1  # none in the corpus; counted
                return
            if ip.p == 4:  # IP-in-IP (sngrep-ipip)
                handle_ip(dpkt.ip.IP(bytes(ip.data)))
                return
            if ip.p == 41:
                handle_ip(dpkt.ip6.IP6(bytes(ip.data)))
                return
            handle_l4(ip.p, bytes(ip.data) if not isinstance(ip.data, bytes) else ip.data, ip.src, ip.dst)
        elif isinstance(ip, dpkt.ip6.IP6):
            fh = ip.extension_hdrs.get(dpkt.ip.IP_PROTO_FRAGMENT) if hasattr(ip, "extension_hdrs") else None
            if fh is not None:
                key = (ip.src, ip.dst, fh.id)
                payload = bytes(ip.data) if not isinstance(ip.data, bytes) else ip.data
                frags[key][fh.frag_off * 8] = (payload, bool(fh.m_flag), fh.nxt)
                parts = frags[key]
                # complete when the last fragment is present and offsets are contiguous
                if any(not mf for _p, mf, _n in parts.values()):
                    off, whole, nxt = 0, b"", None
                    for o in sorted(parts):
                        if o != off:
                            return
                        p, _mf, n = parts[o]
                        if o == 0:
                            nxt = n
                        whole += p
                        off += len(p)
                    del frags[key]
                    st.skipped["ipv6-reassembled"] += 1
                    handle_l4(nxt or 0, whole, ip.src, ip.dst)
                return
            handle_l4(ip.nxt, bytes(ip.data) if not isinstance(ip.data, bytes) else ip.data, ip.src, ip.dst)
        else:
            st.skipped["non-ip"] += 1

    for link, buf in _iter_frames(path):
        try:
            ip = _l3_from_frame(link, buf)
        except (dpkt.UnpackError, IndexError, ValueError):
            st.skipped["undecodable-frame"] += 1
            continue
        if ip is None or isinstance(ip, bytes):
            st.skipped["non-ip"] += 1
            continue
        try:
            handle_ip(ip)
        except (dpkt.UnpackError, IndexError, ValueError):
            st.skipped["undecodable-l4"] += 1
    st.skipped["ipv6-incomplete"] += sum(1 for _ in frags)
    return st


def tcp_stream_bytes(segments: list[tuple[int, bytes]]) -> bytes:
    """Concatenate segments in sequence order, dropping retransmitted bytes."""
    segments = sorted(segments)
    seq0 = segments[0][0]
    out = bytearray()
    for seq, data in segments:
        rel = (seq - seq0) % 2**32
        if rel + len(data) <= len(out):
            continue  # retransmission
        if rel > len(out):
            break  # gap: stop at the hole
        out += data[len(out) - rel :]
    return bytes(out)


# Datagrams that look like SIP but must be rejected, with the expected reason.
EXPECTED_UDP_ERRORS: dict[str, Counter[str]] = {
    # synthetic: "Content-Length: bad" in an INVITE and its 200
    "zeek-invalid-content-length.pcap": Counter({"bad-content-length": 2}),
    # synthetic (flowsynth): the INVITE carries both "t:" and "To:" (two To
    # header fields) -- rejected like RFC 4475 multi01.
    "suricata-sip_header_multi_val.pcap": Counter({"multiple-to": 1}),
    # Zeek test: a 4-byte junk datagram (not SIP-like, skipped) then a REGISTER
    # with only an Expires header.
    "zeek-sip-junk-before-request.pcap": Counter({"missing-call-id": 1}),
}


def _pcap_files() -> list[str]:
    if not PCAPS.exists():
        return []
    return sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng", ".cap"))


def _flow_count(name: str) -> int:
    tsv = PCAPS / "flows" / (name.rsplit(".", 1)[0] + ".tsv")
    with open(tsv) as f:
        return sum(1 for _ in f) - 1


def test_pcap_set_complete() -> None:
    need(PCAPS)
    assert len(_pcap_files()) == 32


@pytest.mark.parametrize("name", cases(_pcap_files(), PCAPS))
def test_pcap_messages(name: str) -> None:
    need(PCAPS / case(name))
    st = read_capture(PCAPS / name)
    parsed: list[SipMessage] = []
    errors: Counter[str] = Counter()
    skipped = Counter(st.skipped)
    for payload in st.udp:
        if not looks_like_sip(payload):
            skipped["udp-not-sip"] += 1
            continue
        try:
            msg = parse_valid(payload)
        except SipParseError as e:
            errors[e.reason] += 1
            continue
        assert msg.raw + msg.trailing == payload
        parsed.append(msg)
    for segs in st.tcp_streams.values():
        buf = tcp_stream_bytes(segs)
        while buf.strip(b"\r\n"):
            if not looks_like_sip(buf):
                skipped["tcp-not-sip"] += 1
                break
            try:
                msg = parse_valid(buf, stream=True)
            except SipParseError as e:
                assert e.incomplete, (name, e.reason)  # a TCP capture may end mid-message
                skipped["tcp-incomplete"] += 1
                break
            parsed.append(msg)
            buf = msg.trailing
    assert errors == EXPECTED_UDP_ERRORS.get(name, Counter()), (name, errors)
    # Every SIP message tshark saw (flows/*.tsv) is parsed or expected to fail.
    expected = _flow_count(name)
    assert len(parsed) + sum(errors.values()) == expected, (name, len(parsed), errors, skipped)
    for msg in parsed:
        assert apply_edits(msg, []) == msg.raw
        if msg.sdp is not None:
            check_rewrite(msg, stream=msg.vias[0].transport == "TCP")


def test_pcap_ipv6_fragments_reassembled() -> None:
    need(PCAPS / "sngrep-ipv6frag.pcap")
    st = read_capture(PCAPS / "sngrep-ipv6frag.pcap")
    msgs = [parse_message(p) for p in st.udp if looks_like_sip(p)]
    assert st.skipped["ipv6-incomplete"] == 0
    with_sdp = [m for m in msgs if m.sdp is not None]
    assert with_sdp
    for m in with_sdp:
        assert m.sdp is not None and m.sdp.connection is not None
        assert m.sdp.connection.addrtype == "IP6"
        assert m.sdp.connection.address.startswith("fd17:625c:f037:2:")
    assert any(v.sent_by.host.startswith("fd17:") for m in msgs for v in m.vias)


def test_pcap_junk_before_request_is_not_sip() -> None:
    """zeek-sip-junk-before-request: junk datagram, then a header-less REGISTER."""
    need(PCAPS / "zeek-sip-junk-before-request.pcap")
    st = read_capture(PCAPS / "zeek-sip-junk-before-request.pcap")
    reasons = []
    for payload in st.udp:
        with pytest.raises(SipParseError) as ei:
            parse_message(payload)
        reasons.append(ei.value.reason)
    assert reasons == ["no-start-line", "missing-call-id"]


def test_suricata_escaped_quote_display_name() -> None:
    """flowsynth wrote 'From: \\"arik\\" <sip:...>': quotes not at the start of
    the display-name are plain characters of an (invalid, tolerated) unquoted
    name -- unlike RFC 4475 quotbal whose display-name *starts* a quoted-string."""
    need(PCAPS / "suricata-sip_compact_form.pcap")
    st = read_capture(PCAPS / "suricata-sip_compact_form.pcap")
    msg = parse_message(st.udp[0])
    assert msg.from_.display_name == '\\"arik\\"'
    assert msg.from_.tag == "6433ef9"


def test_pcap_tcp_large_body() -> None:
    """suricata-sip-body-large: ~65 KB INVITE body over 5 TCP segments."""
    need(PCAPS / "suricata-sip-body-large.pcap")
    st = read_capture(PCAPS / "suricata-sip-body-large.pcap")
    sizes = []
    for segs in st.tcp_streams.values():
        buf = tcp_stream_bytes(segs)
        if looks_like_sip(buf):
            msg = parse_message(buf, stream=True)
            sizes.append(msg.content_length)
            # every strict prefix is "incomplete", never another error
            for cut in (10, len(buf) // 2, len(buf) - 1):
                with pytest.raises(SipParseError) as ei:
                    parse_message(buf[:cut], stream=True)
                assert ei.value.incomplete, ei.value.reason
    assert max(s or 0 for s in sizes) > 60000
