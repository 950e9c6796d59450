"""The engine reports what happened as typed events (nfsip.core.model); the daemon turns them into the log lines
docs/troubleshooting.md quotes."""

from __future__ import annotations

import logging

import pytest

from nfsip.core.model import CallEstablished, Endpoint, RegistrationOpened, RegistrationRemoved
from nfsip.loglines import log_event

from .test_engine import REGISTER, bye, engine, inbound, invite, outbound, register_ok, response

PUBLIC = "203.0.113.7"
PHONE_SIP = Endpoint("10.0.0.2", 5060)


def test_a_calls_first_2xx_is_its_established_event_and_no_other_message_is():
    eng = engine()
    offer = eng.handle(outbound("10.0.0.2"), invite(port=41000), 0.0)
    ringing = eng.handle(inbound("10.0.0.2"), response(100), 0.5)
    ok = eng.handle(inbound("10.0.0.2"), response(200), 1.0)
    again = eng.handle(inbound("10.0.0.2"), response(200), 1.2)  # a retransmission
    gone = eng.handle(inbound("10.0.0.2"), bye(), 5.0)
    assert offer.events == ringing.events == again.events == gone.events == ()
    assert ok.events == (CallEstablished("c1", "10.0.0.2", ((41000, 41000), (41001, 41001))),)


def test_registration_events_open_and_remove_but_a_refresh_is_none():
    eng = engine()
    contact = f"Contact: <sip:alice@{PUBLIC}:1024>;expires=600\r\n"
    events = []
    for branch, cseq, expires, contacts in (("a", 1, 600, contact), ("b", 2, 600, contact), ("c", 3, 0, "")):
        register = REGISTER.format(branch=branch, cseq=cseq, expires=expires).encode()
        eng.handle(outbound("10.0.0.2", public_port=1024), register, float(cseq))
        events.append(eng.handle(inbound("10.0.0.2"), register_ok(branch, cseq, contacts), cseq + 0.1).events)
    assert events == [
        (RegistrationOpened("sip:alice@example.org", PHONE_SIP, Endpoint(PUBLIC, 1024), 600),),
        (),
        (RegistrationRemoved("sip:alice@example.org", PHONE_SIP),),
    ]


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            CallEstablished("3c2a7f1e@10.0.0.2", "10.0.0.2", ((6000, 6000), (6001, 6001))),
            "call 3c2a7f1e@10.0.0.2 established: phone 10.0.0.2; ports 6000->6000,6001->6001",
        ),
        (CallEstablished("c1", "10.0.0.2", ()), "call c1 established: phone 10.0.0.2; ports -"),
        (
            RegistrationOpened("sip:alice@example.org", PHONE_SIP, Endpoint(PUBLIC, 1024), 600),
            "registration of sip:alice@example.org from 10.0.0.2:5060 as 203.0.113.7:1024, 600s",
        ),
        (
            RegistrationRemoved("sip:alice@example.org", PHONE_SIP),
            "registration of sip:alice@example.org from 10.0.0.2:5060 removed",
        ),
    ],
)
def test_the_daemon_logs_each_event_as_one_info_line(event, line, caplog):
    with caplog.at_level(logging.INFO, logger="nfsip"):
        log_event(event)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.INFO, line)]
