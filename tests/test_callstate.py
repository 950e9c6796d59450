"""The call state machine (nfsip.core.callstate), row by row: the table itself, the messages that make each
trigger, and the engine carrying out each row on a real call; every pair the table leaves out changes
nothing."""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import product

import pytest

from nfsip.core.callstate import TRANSITIONS, Action, CallState, Trigger, first_state, step, trigger_of
from nfsip.core.engine import Engine, Timeouts
from nfsip.core.model import CallEstablished, Direction, Endpoint, Flow
from nfsip.core.ports import PortAllocator

OFFERED, EARLY, CONFIRMED, TERMINATED = CallState
LIVE = (OFFERED, EARLY, CONFIRMED)

# Every transition, as docs/architecture.md states it (RFC 3261 unless named otherwise).
ROWS = [
    (OFFERED, Trigger.PROVISIONAL, EARLY, Action.SETUP_DEADLINE),  # §17.1.1.2: Timer B stops
    (OFFERED, Trigger.SUCCESS, CONFIRMED, Action.ESTABLISH),  # §13.2.2.4
    (OFFERED, Trigger.FAILURE, TERMINATED, Action.END),  # §13.2.2.2-3
    (OFFERED, Trigger.BYE, TERMINATED, Action.END),  # §15
    (OFFERED, Trigger.BYE_ANSWERED, TERMINATED, Action.END),  # §15.1.1
    (OFFERED, Trigger.TIMEOUT, TERMINATED, Action.END),  # Timer B
    (EARLY, Trigger.SUCCESS, CONFIRMED, Action.ESTABLISH),
    (EARLY, Trigger.FAILURE, TERMINATED, Action.END),  # also the 487 after CANCEL (§9.2)
    (EARLY, Trigger.BYE, TERMINATED, Action.END),
    (EARLY, Trigger.BYE_ANSWERED, TERMINATED, Action.END),
    (EARLY, Trigger.TIMEOUT, TERMINATED, Action.END),  # setup timeout
    (CONFIRMED, Trigger.SUCCESS, CONFIRMED, Action.REFRESH),  # 2xx to a re-INVITE (§14, RFC 4028)
    (CONFIRMED, Trigger.IN_DIALOG, CONFIRMED, Action.REFRESH),  # RFC 3311 UPDATE, ACK, INFO, re-INVITE
    (CONFIRMED, Trigger.PRACK, CONFIRMED, Action.REFRESH),
    (CONFIRMED, Trigger.BYE, TERMINATED, Action.END),
    (CONFIRMED, Trigger.BYE_ANSWERED, TERMINATED, Action.END),
    (CONFIRMED, Trigger.TIMEOUT, TERMINATED, Action.END),
]
LISTED = {(state, trigger) for state, trigger, _, _ in ROWS}
UNLISTED = [pair for pair in product(CallState, Trigger) if pair not in LISTED]


def _id(row: tuple[object, ...]) -> str:
    return "-".join(x.name.lower() for x in row[:2])


# -- the table -------------------------------------------------------------------------------------------------


def test_the_table_is_exactly_the_listed_transitions():
    assert set(TRANSITIONS) == LISTED
    assert len(ROWS) == len(LISTED)


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_a_listed_transition(row):
    state, trigger, after, action = row
    assert step(state, trigger) == (after, action)


@pytest.mark.parametrize("pair", UNLISTED, ids=_id)
def test_an_unlisted_pair_changes_nothing(pair):
    state, trigger = pair
    assert step(state, trigger) == (state, Action.NONE)


def test_what_the_table_promises():
    # A terminated call stays terminated; no call moves back towards its setup.
    order = {OFFERED: 0, EARLY: 1, CONFIRMED: 2, TERMINATED: 3}
    assert all(order[after] >= order[state] for (state, _), (after, _) in TRANSITIONS.items())
    assert not [pair for pair in TRANSITIONS if pair[0] is TERMINATED]
    # BYE, its answer and the deadline end every live call; a failed INVITE ends only one not yet answered
    # (§14.1: a failed re-INVITE leaves the session as it was).
    for state in LIVE:
        for trigger in (Trigger.BYE, Trigger.BYE_ANSWERED, Trigger.TIMEOUT):
            assert step(state, trigger) == (TERMINATED, Action.END)
    assert step(CONFIRMED, Trigger.FAILURE) == (CONFIRMED, Action.NONE)
    # Only a 2xx confirms; an early dialog's UPDATE or PRACK (RFC 3311, RFC 3262) does not.
    assert {after for (_, trigger), (after, _) in TRANSITIONS.items() if trigger is Trigger.SUCCESS} == {CONFIRMED}
    assert step(EARLY, Trigger.IN_DIALOG) == step(EARLY, Trigger.PRACK) == (EARLY, Action.NONE)


# -- which message is which trigger ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_request", "method", "in_dialog", "status", "cseq_method", "trigger"),
    [
        (True, "INVITE", False, 0, "", None),  # the initial INVITE and its retransmissions
        (True, "CANCEL", False, 0, "", None),  # §9: the INVITE's 487 ends the call, not the CANCEL
        (True, "OPTIONS", False, 0, "", None),
        (True, "BYE", True, 0, "", Trigger.BYE),
        (True, "BYE", False, 0, "", Trigger.BYE),
        (True, "INVITE", True, 0, "", Trigger.IN_DIALOG),  # re-INVITE
        (True, "ACK", True, 0, "", Trigger.IN_DIALOG),
        (True, "UPDATE", True, 0, "", Trigger.IN_DIALOG),
        (True, "INFO", True, 0, "", Trigger.IN_DIALOG),
        (True, "PRACK", True, 0, "", Trigger.PRACK),
        (False, "", False, 100, "INVITE", Trigger.PROVISIONAL),
        (False, "", False, 183, "INVITE", Trigger.PROVISIONAL),
        (False, "", False, 200, "INVITE", Trigger.SUCCESS),
        (False, "", False, 299, "INVITE", Trigger.SUCCESS),
        (False, "", False, 302, "INVITE", Trigger.FAILURE),
        (False, "", False, 487, "INVITE", Trigger.FAILURE),
        (False, "", False, 603, "INVITE", Trigger.FAILURE),
        (False, "", False, 200, "BYE", Trigger.BYE_ANSWERED),
        (False, "", False, 481, "BYE", Trigger.BYE_ANSWERED),  # §15.1.1
        (False, "", False, 100, "BYE", None),
        (False, "", False, 200, "CANCEL", None),
        (False, "", False, 200, "UPDATE", None),
        (False, "", False, 200, "PRACK", None),
    ],
)
def test_trigger_of(is_request, method, in_dialog, status, cseq_method, trigger):
    assert trigger_of(is_request, method, in_dialog, status, cseq_method) is trigger


def test_first_state():
    assert first_state(Trigger.IN_DIALOG) is CONFIRMED
    assert first_state(Trigger.PRACK) is EARLY
    for trigger in (None, Trigger.PROVISIONAL, Trigger.SUCCESS, Trigger.FAILURE, Trigger.BYE):
        assert first_state(trigger) is OFFERED


# -- the engine carries out each row ---------------------------------------------------------------------------

PUBLIC = "203.0.113.7"
SERVER = Endpoint("198.51.100.2", 5060)
PHONE = "10.0.0.2"
SETUP, LIFETIME = 180, 7200
SDP = "v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8\r\n"
_REASONS = {100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 486: "Busy Here", 487: "Terminated"}


def _body(sdp: str) -> str:
    if not sdp:
        return "Content-Length: 0\r\n\r\n"
    return f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"


def outbound() -> Flow:
    return Flow(Direction.OUTBOUND, Endpoint(PHONE, 5060), Endpoint(PUBLIC, 5060), SERVER)


def inbound() -> Flow:
    return Flow(Direction.INBOUND, Endpoint(PHONE, 5060), Endpoint(PUBLIC, 0), SERVER)


def request(method: str, cseq: int, to_tag: str = ";tag=2", sdp: str = "", extra: str = "") -> bytes:
    """A request of the phone's call c1, as the phone sends it (the engine is told the direction)."""
    return (
        f"{method} sip:bob@198.51.100.2 SIP/2.0\r\nVia: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bK{method}{cseq}\r\n"
        f"From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>{to_tag}\r\nCall-ID: c1\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:alice@{PHONE}:5060>\r\n{extra}{_body(sdp)}"
    ).encode()


def response(status: int, method: str = "INVITE", cseq: int = 1, extra: str = "", sdp: str = "") -> bytes:
    return (
        f"SIP/2.0 {status} {_REASONS[status]}\r\nVia: SIP/2.0/UDP {PUBLIC}:5060;branch=z9hG4bK{method}{cseq}\r\n"
        f"From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>;tag=2\r\nCall-ID: c1\r\n"
        f"CSeq: {cseq} {method}\r\n{extra}{_body(sdp)}"
    ).encode()


SESSION_EXPIRES = "Session-Expires: 90;refresher=uac\r\n"


@dataclass(frozen=True)
class Stimulus:
    flow: Flow
    payload: bytes
    why: str  # CallEnded.why when it ends the call


# One message (from the far end, through the call's own path) per trigger; TIMEOUT is the engine's clock.
STIMULI = {
    Trigger.PROVISIONAL: Stimulus(inbound(), response(180), ""),
    Trigger.SUCCESS: Stimulus(inbound(), response(200, extra=SESSION_EXPIRES), ""),
    Trigger.FAILURE: Stimulus(inbound(), response(486), "INVITE failed with 486"),
    Trigger.BYE: Stimulus(inbound(), request("BYE", 2), "BYE (in)"),
    Trigger.BYE_ANSWERED: Stimulus(inbound(), response(200, "BYE", 2), "200 to BYE"),
    Trigger.IN_DIALOG: Stimulus(inbound(), request("UPDATE", 3, extra=SESSION_EXPIRES), ""),
    Trigger.PRACK: Stimulus(inbound(), request("PRACK", 4, extra=SESSION_EXPIRES), ""),
}
TIMEOUT_WHY = {OFFERED: "no answer (Timer B)", EARLY: "setup timed out", CONFIRMED: "timed out"}


def engine() -> Engine:
    return Engine(PUBLIC, PortAllocator(40000, 49999), Timeouts(setup=SETUP, call=LIFETIME))


def call_in(state: CallState) -> Engine:
    """An engine holding the phone's outbound call c1 in `state` (offered at 0 s, ringing at 1 s, answered
    at 2 s)."""
    eng = engine()
    eng.handle(outbound(), request("INVITE", 1, to_tag="", sdp=SDP), 0.0)
    if state is not OFFERED:
        eng.handle(inbound(), response(180), 1.0)
    if state is CONFIRMED:
        eng.handle(inbound(), response(200), 2.0)
    assert eng.calls.get("c1", PHONE).state is state
    return eng


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_the_engine_carries_out_a_listed_transition(row):
    state, trigger, after, action = row
    eng = call_in(state)
    call = eng.calls.get("c1", PHONE)
    if trigger is Trigger.TIMEOUT:
        now = call.expires_at
        _removed, ended = eng.expire_ended(now)
        decision, events, why = None, (), TIMEOUT_WHY[state]
    else:
        now = 10.0
        stimulus = STIMULI[trigger]
        decision = eng.handle(stimulus.flow, stimulus.payload, now)
        events, ended, why = decision.events, decision.ended, stimulus.why
    assert call.state is after
    if action is Action.END:
        assert eng.calls.get("c1", PHONE) is None
        assert [(e.call_id, e.why) for e in ended] == [("c1", why)]
        assert {h.lan.port for h in ended[0].pinholes} == {6000, 6001}
        return
    assert ended == () and eng.calls.get("c1", PHONE) is call
    if action is Action.SETUP_DEADLINE:
        assert call.expires_at == call.created + SETUP and events == ()
    elif action is Action.ESTABLISH:
        assert decision is not None and events == (CallEstablished("c1", PHONE, ((40000, 6000), (40001, 6001))),)
        holes = decision.install + decision.recreate
        assert len(holes) == 2 and all(h.established and h.timeout == 90 + 32 for h in holes)
        assert call.expires_at == now + 90 + 32  # RFC 4028 §10: Session-Expires + 32 s
    elif action is Action.REFRESH:
        assert events == () and call.expires_at == now + 90 + 32


@pytest.mark.parametrize("pair", [p for p in UNLISTED if p[0] is not TERMINATED], ids=_id)
def test_the_engine_does_nothing_for_an_unlisted_pair(pair):
    state, trigger = pair
    eng = call_in(state)
    call = eng.calls.get("c1", PHONE)
    before = replace(call, streams=dict(call.streams))
    stimulus = STIMULI[trigger]
    decision = eng.handle(stimulus.flow, stimulus.payload, 10.0)
    assert (decision.install, decision.recreate, decision.remove, decision.events, decision.ended) == ((),) * 5
    assert eng.calls.get("c1", PHONE) is call and call == before


def test_a_terminated_call_is_no_longer_in_the_table():
    eng = call_in(CONFIRMED)
    call = eng.calls.get("c1", PHONE)
    eng.handle(inbound(), request("BYE", 2), 10.0)
    assert call.state is TERMINATED and len(eng.calls) == 0
    for stimulus in STIMULI.values():
        d = eng.handle(stimulus.flow, stimulus.payload, 11.0)
        assert (d.install, d.recreate, d.remove, d.events, d.ended) == ((),) * 5 and len(eng.calls) == 0


def test_cancel_ends_the_call_by_the_invites_487():
    eng = call_in(EARLY)
    cancel = eng.handle(outbound(), request("CANCEL", 1, to_tag=""), 5.0)
    assert cancel.ended == () and eng.calls.get("c1", PHONE).state is EARLY
    ended = eng.handle(inbound(), response(487), 5.1).ended
    assert [e.why for e in ended] == ["INVITE failed with 487"]


def test_a_failed_reinvite_leaves_the_call_as_it_was():
    eng = call_in(CONFIRMED)
    call = eng.calls.get("c1", PHONE)
    reinvite = request("INVITE", 5, sdp=SDP.replace("c=IN IP4 10.0.0.2", "c=IN IP4 0.0.0.0"))
    eng.handle(outbound(), reinvite, 10.0)
    deadline = call.expires_at
    busy = eng.handle(inbound(), response(486, cseq=5), 11.0)
    assert busy.ended == busy.remove == () and call.state is CONFIRMED and call.expires_at == deadline


# -- the first state of a call, from the message that first binds its media ------------------------------------


def test_a_call_first_seen_in_an_ack_is_confirmed_at_once():
    eng = engine()
    d = eng.handle(outbound(), request("ACK", 1, sdp=SDP), 5.0)  # the answer to a late offer
    call = eng.calls.get("c1", PHONE)
    assert call.state is CONFIRMED and call.expires_at == 5.0 + LIFETIME
    assert {h.timeout for h in d.install} == {LIFETIME} and all(h.established for h in d.install)


def test_a_call_first_seen_in_a_prack_is_early_until_its_2xx():
    """RFC 3262 §3, §5: the phone's PRACK answers the offer of a reliable 183 (its INVITE had no SDP); the
    2xx can only follow it. Until then the call is early: a refusal ends it, the setup timeout applies."""
    eng = engine()
    d = eng.handle(outbound(), request("PRACK", 2, sdp=SDP), 5.0)
    call = eng.calls.get("c1", PHONE)
    assert call.state is EARLY and call.expires_at == 5.0 + SETUP
    assert {h.timeout for h in d.install} == {SETUP} and not any(h.established for h in d.install)
    ok = eng.handle(inbound(), response(200), 8.0)
    assert call.state is CONFIRMED and [type(e) for e in ok.events] == [CallEstablished]

    refused = engine()
    refused.handle(outbound(), request("PRACK", 2, sdp=SDP), 5.0)
    assert [e.why for e in refused.handle(inbound(), response(486), 8.0).ended] == ["INVITE failed with 486"]


def phone_answers(status: int) -> tuple[Engine, bytes]:
    """An inbound call: the far end's INVITE (no call yet), then the phone's answer with its SDP."""
    eng = engine()
    offer = request("INVITE", 1, to_tag="").replace(f"Via: SIP/2.0/UDP {PHONE}".encode(), b"Via: SIP/2.0/UDP x")
    eng.handle(inbound(), offer, 0.0)
    assert len(eng.calls) == 0
    return eng, response(status, sdp=SDP).replace(f"Via: SIP/2.0/UDP {PUBLIC}".encode(), b"Via: SIP/2.0/UDP x")


def test_a_call_first_seen_in_the_phones_183_is_early_under_the_setup_timeout():
    eng, ringing = phone_answers(183)
    d = eng.handle(outbound(), ringing, 1.0)
    call = eng.calls.get("c1", PHONE)
    assert call.state is EARLY and call.expires_at == 1.0 + SETUP and d.install
    assert eng.expire(1.0 + 32 + 1) == [] and len(eng.calls) == 1  # not Timer B: the INVITE was answered
    assert [e.why for e in eng.expire_ended(1.0 + SETUP)[1]] == ["setup timed out"]


def test_a_call_first_seen_in_the_phones_200_is_established():
    eng, ok = phone_answers(200)
    d = eng.handle(outbound(), ok, 1.0)
    assert eng.calls.get("c1", PHONE).state is CONFIRMED
    assert d.events == (CallEstablished("c1", PHONE, ((40000, 6000), (40001, 6001))),)


# -- crash recovery: element comments a (attempt) and e (established) ------------------------------------------


@pytest.mark.parametrize(("state", "adopted"), [(EARLY, EARLY), (OFFERED, EARLY), (CONFIRMED, CONFIRMED)])
def test_adoption_maps_the_comment_state_to_a_call_state(state, adopted):
    eng = call_in(state)
    holes = [replace(h, timeout=100) for h in eng.live_pinholes(3.0)]
    assert {h.established for h in holes} == {state is CONFIRMED}
    again = engine()
    again.adopt(holes, 50.0)
    call = again.calls.get("c1", PHONE)
    assert call.state is adopted and call.expires_at == 150.0
    assert [e.why for e in again.expire_ended(150.0)[1]] == [TIMEOUT_WHY[adopted]]
