"""rtpengine (Debian package `rtpengine-daemon`) in userspace-only mode, driven by its ng control protocol.

    python bench/rtpengine_ng.py offer-answer NG_PORT PHONE_IP PHONE_PORT SERVER_IP SERVER_PORT

Runs inside the router namespace (stdlib only). The ng protocol is a UDP datagram "<cookie> <bencoded
dict>" to rtpengine's --listen-ng port, answered the same way. One call is set up as a SIP proxy would:
`offer` with the phone's SDP (c=PHONE_IP, m=audio PHONE_PORT), direction internal -> external, then
`answer` with the server's SDP (c=SERVER_IP, m=audio SERVER_PORT). rtpengine rewrites the offer to one of
its external ports: that port, where the server must send for media to reach the phone, is printed as JSON
({"port": N}). Used by bench/media.py, case (e).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
from typing import Any


def bencode(value: Any) -> bytes:
    """Bencoding (the ng protocol's format): ints, byte/str strings, lists and dicts with sorted keys."""
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, i: int = 0) -> tuple[Any, int]:
    """Decode one bencoded value at data[i:]; returns (value, next index). Strings come back as str."""
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c == b"l":
        i += 1
        items = []
        while data[i : i + 1] != b"e":
            item, i = bdecode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"d":
        i += 1
        result = {}
        while data[i : i + 1] != b"e":
            key, i = bdecode(data, i)
            result[key], i = bdecode(data, i)
        return result, i + 1
    colon = data.index(b":", i)
    length = int(data[i:colon])
    start = colon + 1
    return data[start : start + length].decode("utf-8", "replace"), start + length


def ng(port: int, command: dict[str, Any], timeout: float = 3.0) -> dict[str, Any]:
    """Send one ng command to 127.0.0.1:port and return the decoded reply (error if result != ok)."""
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(cookie + b" " + bencode(command), ("127.0.0.1", port))
        while True:
            data = sock.recv(65535)
            if data.startswith(cookie + b" "):
                break
    reply, _ = bdecode(data, len(cookie) + 1)
    if reply.get("result") not in ("ok", "pong"):
        raise RuntimeError(f"rtpengine {command['command']}: {reply}")
    return reply


def sdp(ip: str, port: int, session: int) -> str:
    return (
        f"v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
    )


def offer_answer(ng_port: int, phone: tuple[str, int], server: tuple[str, int], call_id: str) -> int:
    """Set up one call through rtpengine; return the external port the server must send to."""
    offer = ng(
        ng_port,
        {
            "command": "offer",
            "call-id": call_id,
            "from-tag": "phone",
            "sdp": sdp(phone[0], phone[1], 1),
            "direction": ["internal", "external"],
        },
    )
    match = re.search(r"m=audio (\d+) ", offer["sdp"])
    if match is None:
        raise RuntimeError(f"no m= line in rtpengine's offer: {offer['sdp']!r}")
    ng(
        ng_port,
        {
            "command": "answer",
            "call-id": call_id,
            "from-tag": "phone",
            "to-tag": "server",
            "sdp": sdp(server[0], server[1], 2),
        },
    )
    return int(match.group(1))


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "offer-answer":
        port = offer_answer(int(argv[1]), (argv[2], int(argv[3])), (argv[4], int(argv[5])), f"bench-{os.getpid()}")
        print(json.dumps({"port": port}))
        return 0
    if len(argv) == 2 and argv[0] == "ping":
        print(json.dumps(ng(int(argv[1]), {"command": "ping"})))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
