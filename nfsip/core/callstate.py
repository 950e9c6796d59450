"""A call's state machine: which message or deadline moves a call from one state to the next, as one table.

A call (nfsip.core.calls.Call) exists from the message in which its LAN host's SDP first bound media ports; its
first state depends on that message (`first_state`). Every later SIP message of the call is classified
(`trigger_of`) and looked up with the call's state in TRANSITIONS, which gives the next state and the
action the engine carries out (nfsip.core.engine). A pair that is not in the table changes nothing.
docs/architecture.md has the same table with the RFC sections it follows.
"""

from __future__ import annotations

import enum


class CallState(enum.Enum):
    OFFERED = "offered"  # INVITE with SDP sent or received, no response to it yet: Timer B applies
    EARLY = "early"  # a provisional response to the INVITE was seen: the setup timeout applies
    CONFIRMED = "confirmed"  # a 2xx to the INVITE was seen: the call lifetime (or the session timer) applies
    TERMINATED = "terminated"  # ended; the call is no longer in the call table


class Trigger(enum.Enum):
    PROVISIONAL = "1xx to INVITE"
    SUCCESS = "2xx to INVITE"  # to the initial INVITE or to a re-INVITE
    FAILURE = "3xx-6xx to INVITE"  # including the 487 that answers a CANCELled INVITE
    BYE = "BYE"
    BYE_ANSWERED = "final response to BYE"
    IN_DIALOG = "request inside the dialog"  # a request with a To tag: ACK, re-INVITE, UPDATE, INFO, ...
    PRACK = "PRACK"  # inside the dialog too: acknowledges a reliable 1xx (RFC 3262), so sent before the 2xx
    TIMEOUT = "deadline passed"  # the engine's clock: Timer B, setup timeout or call lifetime


class Action(enum.Enum):
    NONE = "none"
    SETUP_DEADLINE = "setup deadline"  # deadline: call start + setup timeout (Timer B no longer applies)
    ESTABLISH = "establish"  # deadline: call lifetime; kernel elements re-made as established; CallEstablished
    REFRESH = "refresh"  # deadline pushed out by the call lifetime, Session-Expires applied (RFC 4028)
    END = "end"  # pinholes removed, CallEnded


_OFFERED, _EARLY, _CONFIRMED, _TERMINATED = CallState
_END = (_TERMINATED, Action.END)

# (state, trigger) -> (next state, action). Sections are RFC 3261 unless named otherwise.
TRANSITIONS: dict[tuple[CallState, Trigger], tuple[CallState, Action]] = {
    (_OFFERED, Trigger.PROVISIONAL): (_EARLY, Action.SETUP_DEADLINE),  # §17.1.1.2 Calling -> Proceeding
    (_OFFERED, Trigger.SUCCESS): (_CONFIRMED, Action.ESTABLISH),  # §13.2.2.4
    (_OFFERED, Trigger.FAILURE): _END,  # §13.2.2.2-3
    (_OFFERED, Trigger.BYE): _END,  # §15
    (_OFFERED, Trigger.BYE_ANSWERED): _END,  # §15.1.1
    (_OFFERED, Trigger.TIMEOUT): _END,  # §17.1.1.2 Timer B
    (_EARLY, Trigger.SUCCESS): (_CONFIRMED, Action.ESTABLISH),  # §13.2.2.4
    (_EARLY, Trigger.FAILURE): _END,  # §13.2.2.3; §9.2 CANCEL: the INVITE gets a 487
    (_EARLY, Trigger.BYE): _END,  # §15: the caller may BYE an early dialog
    (_EARLY, Trigger.BYE_ANSWERED): _END,  # §15.1.1
    (_EARLY, Trigger.TIMEOUT): _END,  # setup timeout
    (_CONFIRMED, Trigger.SUCCESS): (_CONFIRMED, Action.REFRESH),  # §14 re-INVITE; RFC 4028 §7.2
    (_CONFIRMED, Trigger.IN_DIALOG): (_CONFIRMED, Action.REFRESH),  # §12.2; RFC 3311; RFC 4028 §10
    (_CONFIRMED, Trigger.PRACK): (_CONFIRMED, Action.REFRESH),  # RFC 3262 §3: a PRACK after the 2xx
    (_CONFIRMED, Trigger.BYE): _END,  # §15.1
    (_CONFIRMED, Trigger.BYE_ANSWERED): _END,  # §15.1.1
    (_CONFIRMED, Trigger.TIMEOUT): _END,  # call lifetime, RFC 4028 §10 session expiry
}

# The state of a call first seen in a message with this trigger; any other message begins OFFERED (an
# INVITE, or the LAN host's own response to one: that response then moves the call on by TRANSITIONS).
FIRST_STATES: dict[Trigger | None, CallState] = {
    Trigger.IN_DIALOG: _CONFIRMED,  # the dialog had its 2xx already: an ACK with the answer to a late offer
    Trigger.PRACK: _EARLY,  # RFC 3262 §3, §5: the answer to a reliable 1xx's offer, before any 2xx
}


def step(state: CallState, trigger: Trigger) -> tuple[CallState, Action]:
    """The next state and the action for `trigger` in `state`: unchanged and nothing for a pair not listed."""
    return TRANSITIONS.get((state, trigger), (state, Action.NONE))


def first_state(trigger: Trigger | None) -> CallState:
    return FIRST_STATES.get(trigger, _OFFERED)


def trigger_of(is_request: bool, method: str, in_dialog: bool, status: int, cseq_method: str) -> Trigger | None:
    """What a SIP message is to its call; None for a message that never moves a call (an INVITE outside a
    dialog and its retransmissions, CANCEL, OPTIONS, a 1xx to BYE, responses to other methods).

    `in_dialog`: the request's To header has a tag (§12.2); `status` and `cseq_method` describe a response."""
    if is_request:
        if method == "BYE":
            return Trigger.BYE
        if not in_dialog:
            return None
        return Trigger.PRACK if method == "PRACK" else Trigger.IN_DIALOG
    if cseq_method == "INVITE":
        if status >= 300:
            return Trigger.FAILURE
        if status >= 200:
            return Trigger.SUCCESS
        return Trigger.PROVISIONAL if status >= 100 else None
    if cseq_method == "BYE" and status >= 200:
        return Trigger.BYE_ANSWERED
    return None
