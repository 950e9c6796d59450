"""The trivial accept-only queue loop: nfsip's table and queue, but every datagram accepted untouched.

    python bench/queue_accept.py --wan-interface wan0        (inside the router namespace, as root)

The floor for any NFQUEUE-based SIP helper in Python. It installs exactly the table the daemon installs
(nfsip.kernel.ruleset, same chains and priorities, the same queue rule: native `queue` or the xt NFQUEUE
target through nft_compat) and binds the same queue number through nfsip's own Queue adapter (same copy
range, same fail-open flag, same drain loop), but its callback is `pkt.accept()` and nothing else: no
decode, no conntrack lookup, no parse, no nft transaction. Comparing it with the daemon under the same load
separates the cost of NFQUEUE + netfilterqueue from the cost of nfsip's own work.

Prints "ready" once the rule is in place; on SIGTERM/SIGINT it removes the table, drains the queue, and
prints one JSON line: packets accepted and its CPU seconds. Used by bench/signalling.py.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nfsip.config import Config
from nfsip.kernel import divert, ruleset
from nfsip.kernel.nft import Nft
from nfsip.kernel.queue import Queue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wan-interface", required=True)
    args = parser.parse_args()
    # The per-host SIP rate out of reach, as in BENCH_CONFIG: every datagram of the load goes to the queue.
    config = Config(wan_interface=args.wan_interface, sip_rate_per_host=1_000_000, sip_burst_per_host=1_000_000)
    accepted = 0

    def on_packet(pkt: Any) -> None:
        nonlocal accepted
        accepted += 1
        pkt.accept()

    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    nft = Nft(config.table_name)
    native = nft.has_native_queue()
    opts = ruleset.options_from(config, native)
    queue = Queue(config.queue_num, on_packet)  # bound before the rule exists, as the daemon does
    nft.install(ruleset.render(opts))
    if native:
        nft.run_text(ruleset.queue_rule(opts))
    else:
        divert.add_compat_queue_rule(config.table_name, config.queue_num, bypass=config.queue_bypass)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    selector = selectors.DefaultSelector()
    selector.register(queue.fd, selectors.EVENT_READ)
    print("ready", flush=True)
    try:
        while not stop:
            if selector.select(timeout=0.5):
                queue.drain()
    finally:
        nft.remove_table()
        queue.drain()
        queue.close()
    times = os.times()
    print(json.dumps({"accepted": accepted, "cpu": times.user + times.system}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
