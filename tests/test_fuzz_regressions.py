"""Replays the coverage corpus the atheris fuzzer built (tests/fuzz_corpus, from fuzz/fuzz_engine.py):
every input gets a Decision in both directions, never an exception, and a rewrite is a valid message."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfsip.core.engine import Engine
from nfsip.core.model import Decision, Direction, Endpoint, Flow
from nfsip.core.packet import PacketError, decode_ipv4_udp
from nfsip.core.ports import PortAllocator
from nfsip.core.sip.message import parse_message

CORPUS = sorted((Path(__file__).parent / "fuzz_corpus").iterdir())
PUBLIC = "198.51.100.1"
OUT = Flow(Direction.OUTBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 5060), Endpoint("198.51.100.2", 5060))
IN = Flow(Direction.INBOUND, Endpoint("10.0.0.2", 5060), Endpoint(PUBLIC, 0), Endpoint("198.51.100.2", 5060))


def test_corpus_is_there():
    assert len(CORPUS) >= 100


def test_replay_with_shared_state():
    """All inputs through one engine, as the fuzzer ran them: state carried from message to message."""
    engine = Engine(PUBLIC, PortAllocator(40000, 40999))
    for i, path in enumerate(CORPUS):
        data = path.read_bytes()
        for flow in (OUT, IN):
            decision = engine.handle(flow, data, i * 0.25)
            assert isinstance(decision, Decision), path.name
            if decision.payload is not None:
                parse_message(decision.payload)
        engine.expire(i * 0.25)
        try:
            decode_ipv4_udp(data)
        except PacketError:
            pass
    assert engine.expire(1e9) is not None


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name[:12])
def test_each_input_alone(path: Path):
    engine = Engine(PUBLIC, PortAllocator(40000, 40999))
    for flow in (OUT, IN):
        decision = engine.handle(flow, path.read_bytes(), 0.0)
        if decision.payload is not None:
            assert parse_message(decision.payload).call_id
