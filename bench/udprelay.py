"""A minimal userspace RTP relay, the design of siproxd's and other userspace media proxies.

    python bench/udprelay.py PUBLIC_IP PUBLIC_PORT LAN_IP LAN_PORT PHONE_IP PHONE_PORT

Runs inside the router namespace (stdlib only). It owns two sockets: PUBLIC_IP:PUBLIC_PORT, where the far
end sends (the address a relaying ALG writes into the SDP), and LAN_IP:LAN_PORT, from which it sends on to
the phone at PHONE_IP:PHONE_PORT. Per packet one recvfrom() and one sendto(), as siproxd's rtp relay does;
a select() tells which socket is readable, and then each readable socket is drained (non-blocking) before
the next select(), which is as cheap as a single-threaded relay gets in Python. Packets from the phone go
back to whatever address last sent to the public socket (latching).

Prints one JSON line with the packets relayed each way and its CPU time when it gets SIGTERM/SIGINT.
Used by bench/media.py, case (d).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    public = (argv[0], int(argv[1]))
    lan = (argv[2], int(argv[3]))
    phone = (argv[4], int(argv[5]))
    outside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    inside = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock, addr in ((outside, public), (inside, lan)):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        sock.bind(addr)
        sock.setblocking(False)
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sel = selectors.DefaultSelector()
    sel.register(outside, selectors.EVENT_READ, "out")
    sel.register(inside, selectors.EVENT_READ, "in")
    to_phone = from_phone = 0
    far_end: tuple[str, int] | None = None
    print("ready", flush=True)
    while not stop:
        try:
            events = sel.select(0.2)
        except InterruptedError:
            continue
        for key, _ in events:
            if key.data == "out":
                while True:
                    try:
                        data, far_end = outside.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    try:
                        inside.sendto(data, phone)
                        to_phone += 1
                    except (BlockingIOError, OSError):
                        pass
            else:
                while True:
                    try:
                        data, _addr = inside.recvfrom(2048)
                    except (BlockingIOError, InterruptedError):
                        break
                    if far_end is not None:
                        try:
                            outside.sendto(data, far_end)
                            from_phone += 1
                        except (BlockingIOError, OSError):
                            pass
    times = os.times()
    print(
        json.dumps(
            {"to_phone": to_phone, "from_phone": from_phone, "cpu": times.user + times.system, "t": time.time()}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
