"""CPU per packet of the NFQUEUE round trip itself, the floor under any NFQUEUE-based SIP helper in Python.

    .venv/bin/python bench/queue_roundtrip.py [--n 20000]          (root: it uses a scratch netns)

In a scratch network namespace, datagrams sent to 127.0.0.1 are diverted to a queue by an output-hook
chain (the same queue rule the daemon uses: native `queue` or the xt NFQUEUE target through nft_compat)
and read through nfsip's own Queue adapter (nfsip.kernel.queue: same copy range, same drain loop). Two
callbacks are timed in the same run, alternating:

- "accept": `pkt.accept()` and nothing else - the queue round trip (netlink read, libnetfilter_queue
  parse, the Python callback, the verdict message);
- "get_payload + accept": also copies the payload into Python, as every real handler must.

The figure is the loop process's CPU time (user + system: the netlink reads and verdicts are system
time) divided by the packets it handled. bench/engine.py runs this next to its per-message numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUEUE_NUM = 7
PORT = 9999
TABLE = "nfsip_qrt"
CHILD = "--child"
# Bursts well under the queue's length (4096): packets over it would bypass the loop (fail-open). Bursts,
# as at a busy router: the loop drains many packets per wakeup.
_SENDER = f"""
import socket, sys, time
payload = sys.stdin.buffer.read()
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", {PORT}))
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    out.sendto(payload, ("127.0.0.1", {PORT}))
    if i % 1024 == 1023:
        time.sleep(0.004)
        try:
            while True:
                sink.recv(70000, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
"""


def _setup_rule() -> None:
    from nfsip.kernel import divert
    from nfsip.kernel.nft import Nft

    nft = Nft(TABLE)
    nft.run_text(
        f"table inet {TABLE} {{\n"
        "  chain sip_queue {\n  }\n"
        "  chain out {\n    type filter hook output priority 0; policy accept;\n"
        f"    udp dport {PORT} jump sip_queue\n  }}\n}}\n"
    )
    if nft.has_native_queue():
        nft.run_text(f"add rule inet {TABLE} sip_queue queue num {QUEUE_NUM} bypass\n")
    else:
        divert.add_compat_queue_rule(TABLE, QUEUE_NUM, bypass=True)


def _round(callback_kind: str, payload: bytes, n: int) -> float:
    """CPU seconds of the loop per packet it handled, for `n` datagrams sent by another process (the
    sender's sendto and the kernel's enqueue are not counted; the reads, the callback, the verdict and the
    reinjection are)."""
    from nfsip.kernel.queue import Queue

    handled = 0

    def accept(pkt: Any) -> None:
        nonlocal handled
        handled += 1
        pkt.accept()

    def copy_accept(pkt: Any) -> None:
        nonlocal handled
        handled += 1
        pkt.get_payload()
        pkt.accept()

    queue = Queue(QUEUE_NUM, accept if callback_kind == "accept" else copy_accept)
    # The sender is another process (not a thread: the GIL handoffs would be charged to the loop).
    sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(n)], stdin=subprocess.PIPE)
    assert sender.stdin is not None
    sender.stdin.write(payload)
    sender.stdin.close()
    selector = selectors.DefaultSelector()
    selector.register(queue.fd, selectors.EVENT_READ)
    loop_start = time.process_time()
    deadline = time.monotonic() + 60
    while handled < n and time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            queue.drain()
        elif sender.poll() is not None:
            break
    loop_cpu = time.process_time() - loop_start
    sender.wait()
    queue.close()
    return loop_cpu / max(handled, 1)


def child(n: int, rounds: int, payload: bytes) -> None:
    _setup_rule()
    results: dict[str, list[float]] = {"accept": [], "get_payload + accept": []}
    for _ in range(rounds):
        for kind in results:
            results[kind].append(_round(kind, payload, n))
    print(json.dumps({kind: statistics.median(v) * 1e6 for kind, v in results.items()}))


def measure(n: int = 20000, rounds: int = 3, payload: bytes = b"x" * 700) -> dict[str, float] | str:
    """µs of CPU per packet, median over rounds, measured in a scratch netns; a string saying why not."""
    return in_scratch_netns([__file__, CHILD, str(n), str(rounds)], payload)


def in_scratch_netns(argv: list[str], stdin: bytes = b"") -> Any:
    """Run `python argv...` in a network namespace of its own (loopback up) and return the JSON it prints;
    a string saying why not when it could not run or failed. Used here and by bench/engine.py."""
    if os.geteuid() != 0:
        return "skipped (needs root)"
    ns = f"nfsip-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, *argv], input=stdin, capture_output=True, check=False
        )
        if proc.returncode != 0:
            return f"failed: {proc.stderr.decode(errors='replace').strip()[-300:]}"
        return json.loads(proc.stdout)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == CHILD:
        child(int(sys.argv[2]), int(sys.argv[3]), sys.stdin.buffer.read())
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.n, args.rounds)
    if isinstance(result, str):
        print(result)
        return 1
    for kind, us in result.items():
        print(f"{kind:<24}{us:>8.1f} µs CPU per packet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
