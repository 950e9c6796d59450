#!/usr/bin/env python3
"""Coverage-guided fuzzing of nfsip's entry point (atheris / libFuzzer).

    .venv/bin/python fuzz/fuzz_engine.py -atheris_runs=1000000 fuzz/corpus tests/fuzz_corpus

Each input is one datagram handed to `Engine.handle` in both directions (a phone's message going out, a
server's coming in), with state kept across inputs so call and registration transitions are exercised too.
Anything but a Decision is a crash: the engine must answer every byte string, passing what it cannot
handle unchanged. Seeds: the RFC 4475/5118 torture messages and the vendor messages of ../shared/corpus,
plus tests/fuzz_corpus (inputs found by earlier runs, replayed by tests/test_fuzz_regressions.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from nfsip.core.engine import Engine
    from nfsip.core.model import Decision, Direction, Endpoint, Flow
    from nfsip.core.packet import PacketError, decode_ipv4_udp
    from nfsip.core.ports import PortAllocator
    from nfsip.core.sip.edit import apply_edits  # noqa: F401 - instrumented for coverage
    from nfsip.core.sip.message import parse_message

PUBLIC = "198.51.100.1"
OUT = Flow(Direction.OUTBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 5060), Endpoint("198.51.100.2", 5060))
IN = Flow(Direction.INBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 0), Endpoint("198.51.100.2", 5060))
ENGINE = Engine(PUBLIC, PortAllocator(40000, 40999))
CLOCK = [0.0]


def one_input(data: bytes) -> None:
    CLOCK[0] += 0.25
    for flow in (OUT, IN):
        decision = ENGINE.handle(flow, data, CLOCK[0])
        if not isinstance(decision, Decision):
            raise AssertionError("no decision")
        if decision.payload is not None:
            parse_message(decision.payload)  # a rewrite must still be a valid message
    ENGINE.expire(CLOCK[0])
    try:
        decode_ipv4_udp(data)
    except PacketError:
        pass


def seeds() -> list[Path]:
    corpus = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    return [p for sub in ("rfc4475", "rfc5118", "vendors") for p in sorted((corpus / sub).glob("*")) if p.is_file()]


if __name__ == "__main__":
    seed_dir = Path(__file__).with_name("corpus")
    seed_dir.mkdir(exist_ok=True)
    for path in seeds():
        target = seed_dir / path.name
        if not target.exists():
            target.write_bytes(path.read_bytes())
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
