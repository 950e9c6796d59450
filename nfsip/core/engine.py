"""The decision core: one SIP datagram in, a Decision out. Pure; the clock is an argument.

Flow of one message: parse (nfsip.core.sip) -> address rewrites for the direction -> media pinholes for an SDP
from the LAN host -> registration and call state transitions -> apply the edits (Content-Length fixed).

What is rewritten, and why:
- OUTBOUND (LAN -> WAN), only where the text names the sending LAN host itself:
  * top Via sent-by -> public ip:port of this SIP flow (RFC 3261 §18.2.1 servers answer to sent-by unless
    rport is used; many softswitches do not use rport),
  * Contact hosts -> public ip:port, so in-dialog requests and calls to a registration reach the router,
  * SDP o=/c= addresses -> public ip, m= ports and a=rtcp (RFC 3605) -> the allocated public ports.
  Text naming any other address (another LAN host, a public address the phone learned by STUN) is left
  alone and opens nothing: a pinhole only ever targets the host that sent the SDP (one of its addresses:
  Flow.host_addresses).
- IPv6 routed without NAT (the flow's public address is the phone's own): nothing is rewritten; the pinholes
  map the phone's own address and ports to themselves, which lets the far end in through the router's
  firewall. IPv6 with NAT (masquerade, NPTv6) is rewritten as IPv4 is. Addresses are compared in canonical
  form (RFC 5118 section 4, nfsip.core.addresses).
- INBOUND (WAN -> LAN): what we rewrote must look like the phone's own text again:
  * top Via of a response: our public sent-by goes back to the phone's original text (RFC 3261 §18.1.2:
    a client drops responses whose top Via is not its own), received=/rport= back to the LAN values,
  * Request-URI naming our public address -> the phone's address.

Lifetimes (all also enforced by the kernel element timeouts, which back up this state):
- an INVITE that got no response at all: Timer B, 64*T1 = 32 s (RFC 3261 §17.1.1.2);
- an attempt with provisional responses only: `setup` seconds;
- an established call: `call` seconds, or Session-Expires + 32 s when the dialog uses session timers
  (RFC 4028 §10), refreshed by every in-dialog request, never beyond `max_call` after the call began;
- ended at once by BYE, the 200 to BYE, or a final non-2xx answer to the initial INVITE.
Which message moves a call from one state to the next is the table in nfsip.core.callstate.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from ..config import DEFAULTS, Config
from .addresses import HOLD_ADDRESSES, canonical, hostport, is_ipv6
from .calls import Call, CallTable, stream_pinholes
from .callstate import Action, CallState, Trigger, first_state, step, trigger_of
from .model import CallEnded, CallEstablished, Decision, Direction, Endpoint, Event, Flow, Pinhole
from .policy import Policy, policy_from
from .ports import PortAllocator, PortsExhausted
from .registrations import DEFAULT_EXPIRES, PendingRegister, RegistrationTable
from .sip.edit import Edit, apply_edits
from .sip.errors import SipParseError
from .sip.message import SipMessage, parse_message
from .sip.sdp import Sdp, SdpMedia
from .streams import is_private, is_udp_media, out_of_range_port, port_edits, stream_ports

TIMER_B = 32.0  # 64*T1 with T1 = 500 ms
# Transaction memory for Via restoration: Timer F/H are 64*T1 = 32 s (RFC 3261 §17); 64 s is enough.
_TRANSACTION_SECONDS = 64.0
_TRANSACTION_LIMIT = 20000


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Lifetimes from nfsip.config (pinhole_setup_timeout, pinhole_call_timeout, call_max_duration,
    registration_grace); defaults are the configuration's."""

    setup: int = DEFAULTS.pinhole_setup_timeout
    call: int = DEFAULTS.pinhole_call_timeout
    max_call: int = DEFAULTS.call_max_duration
    registration_grace: int = DEFAULTS.registration_grace

    @classmethod
    def from_config(cls, config: Config) -> Timeouts:
        return cls(
            setup=config.pinhole_setup_timeout,
            call=config.pinhole_call_timeout,
            max_call=config.call_max_duration,
            registration_grace=config.registration_grace,
        )


_ADDRESS_TYPES = ("IP4", "IP6")  # RFC 8866 section 5.7; RFC 4566 names no other for IN
_OUTBOUND = Direction.OUTBOUND  # a module constant: Direction.OUTBOUND is an enum class lookup per message
_BYE_WHY = {d: f"BYE ({d.value})" for d in Direction}  # why a BYE ended a call, per direction
# Why a call's deadline ended it, per the state it was in.
_TIMEOUT_WHY = {
    CallState.OFFERED: "no answer (Timer B)",
    CallState.EARLY: "setup timed out",
    CallState.CONFIRMED: "timed out",
}


def _hostport_bytes(ep: Endpoint) -> bytes:
    return hostport(ep.ip, ep.port)


def _message_kind(msg: SipMessage) -> str:
    if msg.is_request:
        return msg.method or "?"
    return f"{(msg.status or 0) // 100}xx"


def _session_expires(msg: SipMessage) -> int | None:
    header = msg.header("session-expires")
    if header is None:
        return None
    digits = header.value.split(";", 1)[0].strip()
    return int(digits) if digits.isdigit() and 0 < int(digits) < 1 << 31 else None


def _in_dialog(msg: SipMessage) -> bool:
    """Whether the request's To carries a tag: it belongs to a dialog (RFC 3261 §12.2.1). A To that does not
    parse has no tag."""
    try:
        return msg.to.tag is not None
    except SipParseError:
        return False


def _trigger(msg: SipMessage) -> Trigger | None:
    """What the message is to its call (nfsip.core.callstate.trigger_of)."""
    if msg.is_request:
        return trigger_of(True, msg.method or "", _in_dialog(msg), 0, "")
    return trigger_of(False, "", False, msg.status or 0, msg.cseq_method or "")


def _end_reason(trigger: Trigger, before: CallState, msg: SipMessage | None, direction: Direction) -> str:
    """Why a call ended, for its log line (CallEnded.why); `msg` is None for a timeout."""
    if msg is None:
        return _TIMEOUT_WHY[before]
    if trigger is Trigger.BYE:
        return _BYE_WHY[direction]
    if trigger is Trigger.BYE_ANSWERED:
        return f"{msg.status} to BYE"
    return f"INVITE failed with {msg.status}"


class Engine:
    def __init__(
        self,
        public_ip: str,
        ports: PortAllocator,
        timeouts: Timeouts | None = None,
        registration_from_registrar_only: bool = DEFAULTS.registration_from == "registrar",
        policy: Policy | None = None,
        media_from_sdp: bool = DEFAULTS.media_from == "sdp",
    ) -> None:
        # media_from_sdp: inbound media only from the far end's SDP address (strict); else from anywhere
        # (latching), the default: far ends behind NAT and SBCs often send from another address.
        self.media_from_sdp = media_from_sdp
        self.public_ip = public_ip
        self.calls = CallTable(ports)
        self.timeouts = timeouts or Timeouts()
        self.policy = policy or Policy()
        self.registrations = RegistrationTable(self.timeouts.registration_grace, registration_from_registrar_only)
        # (Call-ID, lan ip) -> far-end media address per m= line, from an offer that arrived before the call
        # existed (strict mode only).
        self._far_offers: OrderedDict[tuple[str, str], dict[int, str]] = OrderedDict()
        # (branch, lan ip) -> (original sent-by bytes, deadline): to give the phone its own Via back.
        self._vias: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        # IPv6 LAN address -> the public address its outbound SIP left with (itself without NAT; the router's
        # with masquerade, the mapped one with NPTv6): the public address of its inbound SIP and its media.
        self._public6: OrderedDict[str, str] = OrderedDict()

    @classmethod
    def from_config(cls, public_ip: str, config: Config) -> Engine:
        """The engine of a daemon (or worker) with this configuration: its media ports, lifetimes, policy."""
        return cls(
            public_ip,
            PortAllocator(config.media_port_min, config.media_port_max),
            Timeouts.from_config(config),
            registration_from_registrar_only=config.registration_from == "registrar",
            policy=policy_from(config),
            media_from_sdp=config.media_from == "sdp",
        )

    # -- entry point ---------------------------------------------------------------------------------
    def handle(self, flow: Flow, payload: bytes, now: float) -> Decision:
        if not self.policy.server_allowed(flow.remote.ip):
            return Decision(
                None,
                "refused",
                detail=f"{flow.remote.ip} is not an allowed SIP server",
                refusals=("server-not-allowed",),
            )
        try:
            msg = parse_message(payload)
        except SipParseError as exc:
            return Decision(None, "parse-error", detail=exc.reason)
        if flow.direction is _OUTBOUND:
            return self._outbound(flow, msg, now)
        return self._inbound(flow, msg, now)

    # -- LAN -> WAN ----------------------------------------------------------------------------------
    # -- public addresses --------------------------------------------------------------------------------
    def _public_address(self, flow: Flow) -> str:
        """The address the far side sees for the flow's LAN host: the router's for IPv4 (masquerade); for
        IPv6 what the flow's outbound SIP left with, learned here (without NAT the host's own)."""
        lan_ip = flow.lan.ip
        if not is_ipv6(lan_ip):
            return self.public_ip
        if flow.direction is _OUTBOUND:
            public = flow.public.ip
            self._public6.pop(lan_ip, None)
            self._public6[lan_ip] = public
            if len(self._public6) > _TRANSACTION_LIMIT:
                self._public6.popitem(last=False)
            return public
        return self._public6.get(lan_ip, lan_ip)

    def _media_public(self, lan_ip: str, flow: Flow, public_ip: str) -> str:
        """The public address of media at `lan_ip`, one of the host's addresses: its signalling address's,
        the router's for another IPv4 address, for another IPv6 address what that address's SIP left with
        (or itself: IPv6 is routed without NAT unless the host's IPv6 SIP showed otherwise)."""
        if lan_ip == flow.lan.ip:
            return public_ip
        if not is_ipv6(lan_ip):
            return self.public_ip
        return self._public6.get(lan_ip, lan_ip)

    @staticmethod
    def _registered_endpoint(flow: Flow, msg: SipMessage) -> Endpoint:
        """The phone endpoint a registration keeps reachable: over UDP the one its SIP comes from; over TCP
        the one its Contact names (where it listens: its connection's own port is gone with the
        connection, and a registrar's new connection must reach the phone there, through the relay)."""
        if flow.transport != "tcp":
            return flow.lan
        for contact in msg.contacts:
            hp = contact.uri.hostport
            if hp is not None and canonical(hp.host) == flow.lan.ip:
                return Endpoint(flow.lan.ip, hp.port or 5060)
        return flow.lan

    # -- LAN -> WAN ----------------------------------------------------------------------------------
    def _outbound(self, flow: Flow, msg: SipMessage, now: float) -> Decision:
        edits: list[Edit] = []
        lan_ip = flow.lan.ip
        public_ip = self._public_address(flow)
        translated = public_ip != lan_ip
        public_sip = Endpoint(public_ip, flow.public.port)
        public_sip_text = _hostport_bytes(public_sip)
        if msg.is_request:
            # top_via, not vias[0]: the Vias below are parsed lazily and only when read (nfsip.core.sip.message).
            via = msg.top_via
            sent_by = via.sent_by
            if canonical(sent_by.host) == lan_ip:
                sent_by_span = sent_by.span
                branch = via.branch
                if translated:
                    edits.append(Edit(sent_by_span, public_sip_text))
                    if branch:
                        self._remember_via(branch, lan_ip, sent_by_span.slice(msg.raw), now)
                if branch:
                    if msg.method == "REGISTER":
                        try:
                            aor = msg.to.uri.span.slice(msg.raw).decode("utf-8", "replace")
                        except SipParseError:
                            aor = "?"
                        pending = PendingRegister(
                            self._registered_endpoint(flow, msg),
                            public_sip,
                            flow.remote,
                            aor,
                            now + _TRANSACTION_SECONDS,
                            flow.transport,
                        )
                        self.registrations.request(branch, pending)
        change = _Change()
        for contact in msg.contacts:
            hp = contact.uri.hostport
            if hp is not None:
                host = canonical(hp.host)
                if host == lan_ip:
                    if translated:
                        edits.append(Edit(hp.span, public_sip_text))
                elif is_private(host) and host not in flow.host_addresses:
                    change.refuse("foreign-contact", f"Contact names {hp.host}, sender is {lan_ip}")
        if msg.sdp is not None:
            call = self._outbound_sdp(flow, public_ip, msg, msg.sdp, now, change, edits)
        else:
            call = self.calls.get(msg.call_id, lan_ip)
        if call is not None:
            call.learn_path(flow.remote.ip, flow.lan.port)
        self._transitions(msg, call, flow.direction, now, change)
        return self._finish(msg, edits, change, now)

    def _outbound_sdp(
        self,
        flow: Flow,
        public_ip: str,
        msg: SipMessage,
        sdp: Sdp,
        now: float,
        change: _Change,
        edits: list[Edit],
    ) -> Call | None:
        """Rewrite and bind the streams of the LAN host's SDP; adds to `edits`, or leaves them alone when the
        whole message must pass unchanged (change.pass_unchanged). Returns the call as it stands afterwards
        (None when there is none), which _transitions would otherwise look up again."""
        lan_ip = flow.lan.ip
        own = flow.host_addresses
        sdp_edits: list[Edit] = []
        # (m= index, the m= line, its LAN address, its LAN ports, their labels)
        wanted: list[tuple[int, SdpMedia, str, tuple[int, ...], tuple[str, ...]]] = []
        disabled: list[int] = []
        held: list[tuple[int, SdpMedia]] = []
        session_conn = sdp.connection
        ports_allowed = self.policy.media_ports_allowed
        for index, media in enumerate(sdp.media):
            conn = media.connection
            if conn is None:
                conn = session_conn  # RFC 8866 §5.7 (Sdp.media_connection)
            if media.port == 0:
                disabled.append(index)  # RFC 3264 §8.2: a stream removed from the session
                continue
            if conn is None or not is_udp_media(media):
                continue
            address = canonical(conn.address)
            if address in HOLD_ADDRESSES:
                held.append((index, media))  # RFC 3264 §8.4 (old-style hold): the stream keeps its ports
                continue
            if address != lan_ip and address not in own:
                if is_private(address) or is_ipv6(address):
                    # Another LAN host named in this host's SDP: never a pinhole target (slipstreaming). An
                    # IPv6 address of nobody known to be this host is refused too: without NAT a global
                    # address may well be another LAN host's.
                    change.refuse("foreign-address", f"SDP names {conn.address}, sender is {lan_ip}")
                continue
            if self._too_many_ports(media):
                change.refuse(
                    "pinholes-per-host", f"SDP m={media.port}/{media.port_count} of {lan_ip} asks for too many ports"
                )
                continue
            derived = stream_ports(index, media)
            if derived is None:
                change.refuse(
                    "media-port-range",
                    f"SDP m={media.port}/{media.port_count} of {lan_ip} makes port {out_of_range_port(media)}, "
                    "outside 1-65535",
                )
                continue
            lan_ports, labels = derived
            if not ports_allowed(lan_ports):
                change.refuse("media-port", f"SDP asks for port {media.port} of {lan_ip}")
                continue
            wanted.append((index, media, address, lan_ports, labels))
        calls = self.calls
        call = calls.get(msg.call_id, lan_ip)
        if call is not None:
            for index in disabled:
                change.remove.extend(calls.drop_stream(call, index, now))
            for index, media in held:
                binding = call.streams.get(index)
                if binding is None or self._too_many_ports(media):
                    continue
                derived = stream_ports(index, media)
                if derived is not None and binding.lan_ports == derived[0] and binding.translated:
                    port_edits(media, binding, sdp_edits)
        if not wanted:
            edits.extend(sdp_edits)
            return call
        new_pinholes = 0
        streams = call.streams if call is not None else None
        for index, _media, address, lan_ports, _labels in wanted:
            old = streams.get(index) if streams is not None else None
            if old is None or old.lan_ports != lan_ports or old.lan_ip != address:
                new_pinholes += len(lan_ports)
        over = self._over_limit(lan_ip, new_pinholes, call is None, now)
        if over:
            # Beyond a limit the whole message passes unchanged: no half-rewritten SDP, no pinhole.
            change.refuse(over, f"{lan_ip}: {over} limit reached")
            change.pass_unchanged = True
            return call
        if call is None:
            call = calls.get_or_create(msg.call_id, lan_ip, public_ip, now)
            call.strict = self.media_from_sdp
            if call.strict:
                call.far_media.update(self._far_offers.pop((msg.call_id, lan_ip), {}))
            # Its first state (nfsip.core.callstate.FIRST_STATES): confirmed when first seen in a request inside
            # a dialog (an ACK carrying the answer to a late offer), early in a PRACK, else offered;
            # _transitions then moves it on by this same message (the phone's own 183 or 200 answering an
            # inbound INVITE).
            call.state = first_state(_trigger(msg))
            if call.state is CallState.CONFIRMED:
                call.expires_at = now + self._lifetime(call)
            elif call.state is CallState.EARLY:
                call.expires_at = call.created + self.timeouts.setup
            else:
                call.expires_at = now + TIMER_B
        try:
            bindings = []
            for index, media, address, lan_ports, labels in wanted:
                media_public = self._media_public(address, flow, public_ip)
                binding, replaced, is_new = calls.bind_stream(
                    call, index, lan_ports, labels, now, address, media_public
                )
                if replaced:
                    change.remove.extend(replaced)
                bindings.append((media, binding))
                if is_new:
                    change.new_lan_ports.update(Endpoint(address, port) for port in lan_ports)
        except PortsExhausted:
            if not call.streams:
                calls.end(call, now)
                call = None
            change.detail = "media ports exhausted"
            return call
        change.install_call = call
        # The public address of each LAN address the SDP may name, where it is translated (SDP writes IPv6
        # addresses bare, RFC 8866 section 5.7).
        public_of = {lan_ip: public_ip} if public_ip != lan_ip else {}
        for media, binding in bindings:
            if not binding.translated:
                continue
            public_of[binding.lan_ip] = binding.public_ip
            port_edits(media, binding, sdp_edits)
            rtcp = media.rtcp
            if rtcp is not None and rtcp.address is not None and canonical(rtcp.address.address) == binding.lan_ip:
                sdp_edits.append(Edit(rtcp.address.address_span, binding.public_ip.encode()))
            if media.connection is not None and canonical(media.connection.address) == binding.lan_ip:
                sdp_edits.append(Edit(media.connection.address_span, binding.public_ip.encode()))
        for line in (session_conn, sdp.origin):
            public = public_of.get(canonical(line.address)) if line is not None else None
            if line is not None and public is not None:
                sdp_edits.append(Edit(line.address_span, public.encode()))
        edits.extend(sdp_edits)
        return call

    def _too_many_ports(self, media: SdpMedia) -> bool:
        """More RTP ports than the host may hold pinholes: refused before its ports are listed (the count comes
        from the network; listing tens of thousands of ports per message would stall the queue)."""
        return media.port_count > self.policy.limits.pinholes_per_host

    def _over_limit(self, lan_ip: str, new_pinholes: int, new_call: bool, now: float) -> str:
        limits = self.policy.limits
        calls = self.calls
        # .get, not [] on the Counters: their __missing__ is Python code, and a host with no call misses.
        if new_call and calls.calls_of.get(lan_ip, 0) >= limits.calls_per_host:
            return "calls-per-host"
        if new_call and len(calls) >= limits.calls_total:
            return "calls-total"
        if calls.pinholes_of.get(lan_ip, 0) + new_pinholes > limits.pinholes_per_host:
            return "pinholes-per-host"
        if calls.pinholes_total + new_pinholes > limits.pinholes_total:
            return "pinholes-total"
        if not self.policy.take_pinholes(lan_ip, new_pinholes, now):
            return "pinhole-rate"
        return ""

    # -- WAN -> LAN ----------------------------------------------------------------------------------
    def _inbound(self, flow: Flow, msg: SipMessage, now: float) -> Decision:
        edits: list[Edit] = []
        lan_sip = flow.lan
        public_ip = self._public_address(flow)
        translated = public_ip != lan_sip.ip
        change = _Change()
        if not msg.is_request:
            via = msg.top_via
            if msg.cseq_method == "REGISTER":
                self._registered(msg, via.branch, flow.remote.ip, now, change)
            sent_by = via.sent_by
            if translated and canonical(sent_by.host) == public_ip:
                original = self._recall_via(via.branch, lan_sip.ip)
                edits.append(Edit(sent_by.span, original or _hostport_bytes(lan_sip)))
                received = via.param("received")
                if (
                    received is not None
                    and received.value_span is not None
                    and canonical(received.value.strip("[]")) == public_ip
                ):
                    edits.append(Edit(received.value_span, lan_sip.ip.encode()))
                rport = via.rport
                if rport is not None and rport.value_span is not None:
                    edits.append(Edit(rport.value_span, str(lan_sip.port).encode()))
        if msg.is_request and msg.request_uri is not None:
            hp = msg.request_uri.hostport
            if hp is not None and translated and canonical(hp.host) == public_ip:
                edits.append(Edit(hp.span, _hostport_bytes(lan_sip)))
        call = self.calls.get(msg.call_id, lan_sip.ip)
        if call is not None and not call.on_path(flow.remote.ip, lan_sip.port):
            # Not the call's signalling path (another host, or another port of the phone than its SIP
            # port): it is passed on, but changes neither the call's state nor its pinholes.
            change.refuse("not-dialog-peer", f"{msg.call_id}: from {flow.remote} to {lan_sip}, not the call's peer")
            return self._finish(msg, edits, change, now)
        if msg.sdp is not None:
            self._far_end_sdp(msg, msg.sdp, lan_sip.ip, call, change)
        self._transitions(msg, call, flow.direction, now, change)
        return self._finish(msg, edits, change, now)

    def _far_end_sdp(self, msg: SipMessage, sdp: Sdp, lan_ip: str, call: Call | None, change: _Change) -> None:
        """Strict mode: learn where the far end sends media from its SDP, and let only that address in."""
        if not self.media_from_sdp:
            return
        if call is None:
            # An inbound call's offer comes before the phone's answer creates the call: keep the far end's
            # addresses until then (bounded, like the Via memory).
            offer = {
                i: canonical(c.address)
                for i, m in enumerate(sdp.media)
                if m.port and (c := sdp.media_connection(m)) is not None and c.addrtype.upper() in _ADDRESS_TYPES
            }
            self._far_offers.pop((msg.call_id, lan_ip), None)
            self._far_offers[(msg.call_id, lan_ip)] = offer
            while len(self._far_offers) > _TRANSACTION_LIMIT:
                self._far_offers.popitem(last=False)
            return
        for index, media in enumerate(sdp.media):
            conn = sdp.media_connection(media)
            binding = call.streams.get(index)
            if binding is None or media.port == 0 or conn is None or conn.addrtype.upper() not in _ADDRESS_TYPES:
                continue
            address = canonical(conn.address)
            if address in HOLD_ADDRESSES or address == call.far_media.get(index):
                continue  # a hold (RFC 3264 §8.4) keeps the address media last came from
            if is_ipv6(address) != is_ipv6(binding.lan_ip):
                continue  # media of the other family cannot reach this stream: it keeps what it had
            if call.far_media.get(index):
                change.remove.extend(stream_pinholes(call, index, binding, 0))
            call.far_media[index] = address
            change.install_call = call

    def _registered(self, msg: SipMessage, branch: str | None, remote_ip: str, now: float, change: _Change) -> None:
        """A registrar's final answer to a REGISTER: keep, refresh or drop the phone's SIP pinhole."""
        if msg.status is None or msg.status < 200:
            return
        pending = self.registrations.pending(branch)
        if pending is not None and pending.registrar.ip != remote_ip:
            # Only the host the REGISTER went to answers it: a response from elsewhere (sent through a
            # registration pinhole open to any sender, say) neither opens nor closes anything.
            change.refuse("not-dialog-peer", f"REGISTER answered by {remote_ip}, sent to {pending.registrar.ip}")
            return
        granted: int | None = None
        if pending is not None and 200 <= msg.status < 300:
            for contact in msg.contacts:
                hp = contact.uri.hostport
                if (
                    hp is not None
                    and canonical(hp.host) == pending.public.ip
                    and (hp.port or 5060) == pending.public.port
                ):
                    param = contact.param("expires")
                    if param is not None and param.value is not None and param.value.isdigit():
                        granted = int(param.value)
                    elif msg.expires is not None:
                        granted = msg.expires
                    else:
                        granted = DEFAULT_EXPIRES
                    break
        if granted and pending is not None and pending.lan not in self.registrations.by_lan:
            limits = self.policy.limits
            of_host = self.registrations.of_host(pending.lan.ip)
            over = (
                "registrations-per-host"
                if of_host >= limits.registrations_per_host
                else "registrations-total"
                if len(self.registrations) >= limits.registrations_total
                else ""
            )
            if over:
                change.refuse(over, f"{pending.lan.ip}: {over} limit reached")
                granted = None
        install, remove, event = self.registrations.final_response(branch, msg.status, granted, now)
        change.install.extend(install)
        change.remove.extend(remove)
        if event is not None:
            change.opened.extend(install)
            change.events.append(event)

    # -- call state (the table: nfsip.core.callstate) ------------------------------------------------------
    def _transitions(
        self, msg: SipMessage, call: Call | None, direction: Direction, now: float, change: _Change
    ) -> None:
        """`call`: the message's call (Call-ID, LAN host) as it stands after the SDP steps, or None."""
        if call is None:
            return
        trigger = _trigger(msg)
        if trigger is not None:
            self._step(call, trigger, now, change, msg, direction)

    def _step(
        self,
        call: Call,
        trigger: Trigger,
        now: float,
        change: _Change,
        msg: SipMessage | None = None,
        direction: Direction = _OUTBOUND,
    ) -> None:
        """Move `call` by `trigger` (nfsip.core.callstate.TRANSITIONS) and carry out the action. `msg`: the message
        that is the trigger, None for a timeout."""
        before = call.state
        call.state, action = step(before, trigger)
        if action is Action.SETUP_DEADLINE:
            call.expires_at = call.created + self.timeouts.setup
        elif action is Action.ESTABLISH or action is Action.REFRESH:
            first = action is Action.ESTABLISH
            self._refresh(call, now, change, _session_expires(msg) if msg is not None else None, force=first)
            if first:
                # The ports of call.pinholes(), in the same order, without building the pinholes.
                ports = tuple(
                    (public, lan)
                    for binding in call.streams.values()
                    for lan, public in zip(binding.lan_ports, binding.public_ports, strict=True)
                )
                change.events.append(CallEstablished(call.call_id, call.lan_ip, ports))
        elif action is Action.END:
            self._end(call, now, _end_reason(trigger, before, msg, direction), change)

    def _lifetime(self, call: Call) -> int:
        if call.session_expires:
            return call.session_expires + int(TIMER_B)
        return self.timeouts.call

    def _refresh(
        self, call: Call, now: float, change: _Change, session_expires: int | None, force: bool = False
    ) -> None:
        """An established call showed life: push its deadline out, and the kernel's too when due."""
        if session_expires:
            call.session_expires = session_expires
        lifetime = self._lifetime(call)
        call.expires_at = min(now + lifetime, call.created + self.timeouts.max_call)
        # Re-adding the elements costs a transaction: only when the kernel timeout is half used up.
        if force or call.kernel_deadline - now < lifetime / 2:
            change.install_call = call
        if force:
            change.recreate = True

    def _end(self, call: Call, now: float, why: str, change: _Change) -> None:
        duration = now - call.created
        removed = self.calls.end(call, now)
        change.remove.extend(removed)
        if change.install_call is call:
            change.install_call = None
            change.new_lan_ports.clear()
        change.ended.append(CallEnded(call.call_id, call.lan_ip, why, duration, tuple(removed)))

    def adopt(self, holes: list[Pinhole], now: float) -> None:
        """Rebuild calls and registrations from the pinholes the kernel still holds after a restart (each
        with its remaining timeout), so that a BYE after a crash still tears its call down."""
        for hole in holes:
            if hole.kind == "sip":
                self.registrations.adopt(hole, now)
            else:
                self.calls.adopt(hole, now)

    def live_pinholes(self, now: float) -> list[Pinhole]:
        """Every pinhole nfsip holds, with its remaining lifetime (to restore a table reloaded empty)."""
        holes: list[Pinhole] = []
        for call in self.calls.calls.values():
            holes.extend(call.pinholes(max(1, int(call.kernel_deadline - now + 0.999))))
        grace = self.registrations.grace
        holes.extend(r.pinhole(now, grace) for r in self.registrations.by_lan.values())
        return holes

    def drop_all(self, now: float) -> list[Pinhole]:
        """Forget every call and registration (the public address they were made for is gone)."""
        removed: list[Pinhole] = []
        for call in list(self.calls.calls.values()):
            removed.extend(self.calls.end(call, now))
        removed.extend(self.registrations.drop_all(now))
        return removed

    def forget_opened(self, decision: Decision, now: float) -> tuple[list[Pinhole], list[CallEnded]]:
        """The kernel refused `decision`'s pinholes (its transaction changed nothing, and the message passes
        unchanged): forget the streams and the registration it opened, and end a call left without any
        stream, so that no call is kept with pinholes it does not have. Returns the pinholes forgotten (the
        daemon deletes them too, in case a later message of the same drain installed them) and the ended
        calls."""
        dropped: list[Pinhole] = []
        touched: dict[tuple[str, str], Call] = {}
        calls = self.calls
        for hole in decision.opened:
            if hole.kind == "sip":
                dropped.extend(self.registrations.forget(hole))
                continue
            call = calls.owner_of(hole.lan)
            if call is None or call.call_id != hole.call_id:
                continue  # ended since (a BYE in the same drain)
            for index, binding in list(call.streams.items()):
                if (
                    hole.lan.ip == binding.lan_ip
                    and hole.lan.port in binding.lan_ports
                    and hole.public.port in binding.public_ports
                ):
                    dropped.extend(calls.drop_stream(call, index, now))
            touched[(call.call_id, call.lan_ip)] = call
        ended: list[CallEnded] = []
        for call in touched.values():
            if not call.streams:  # as when its ports ran out (_outbound_sdp): no call without its media
                holes = tuple(h for h in dropped if h.call_id == call.call_id)
                calls.end(call, now)
                ended.append(CallEnded(call.call_id, call.lan_ip, "pinholes refused by nft", now - call.created, holes))
        return dropped, ended

    def expire(self, now: float) -> list[Pinhole]:
        """Drop state whose deadline passed; returns the pinholes to remove (and whose flows to purge)."""
        return self.expire_ended(now)[0]

    def expire_ended(self, now: float) -> tuple[list[Pinhole], list[CallEnded]]:
        """expire(), also saying which calls ended and why (for the call log)."""
        change = _Change()
        for call in self.calls.overdue(now):
            self._step(call, Trigger.TIMEOUT, now, change)
        removed, ended = change.remove, change.ended
        removed.extend(self.registrations.expire(now))
        self.policy.forget_idle(now)  # rate-limit buckets of hosts that went quiet: bounded memory
        while self._vias:
            key, (_text, deadline) = next(iter(self._vias.items()))
            if deadline > now:
                break
            del self._vias[key]
        return removed, ended

    # -- helpers -------------------------------------------------------------------------------------
    def _remember_via(self, branch: str, lan_ip: str, sent_by: bytes, now: float) -> None:
        key = (branch, lan_ip)
        self._vias.pop(key, None)
        self._vias[key] = (sent_by, now + _TRANSACTION_SECONDS)
        if len(self._vias) > _TRANSACTION_LIMIT:
            self._vias.popitem(last=False)

    def _recall_via(self, branch: str | None, lan_ip: str) -> bytes | None:
        if branch is None:
            return None
        entry = self._vias.get((branch, lan_ip))
        return entry[0] if entry else None

    def _finish(self, msg: SipMessage, edits: list[Edit], change: _Change, now: float) -> Decision:
        payload = None
        if change.pass_unchanged:
            return Decision(
                None,
                "refused",
                kind=_message_kind(msg),
                detail=change.detail,
                remove=tuple(change.remove),
                events=tuple(change.events),
                refusals=tuple(change.refusals),
            )
        if edits:
            new = apply_edits(msg, edits)
            if new != msg.raw or msg.trailing:
                payload = new
        install = list(change.install)
        recreate: list[Pinhole] = []
        opened = change.opened
        call = change.install_call
        if call is not None and call.streams:
            holes = self._call_pinholes(call, now)
            (recreate if change.recreate and not change.new_lan_ports else install).extend(holes)
            if change.new_lan_ports:
                opened = opened + [h for h in holes if h.lan in change.new_lan_ports]
        return Decision(
            payload,
            "rewritten" if payload is not None else "unchanged",
            kind=_message_kind(msg),
            detail=change.detail,
            install=tuple(install),
            recreate=tuple(recreate),
            opened=tuple(opened),
            remove=tuple(change.remove),
            events=tuple(change.events),
            refusals=tuple(change.refusals),
            ended=tuple(change.ended),
        )

    def _call_pinholes(self, call: Call, now: float) -> list[Pinhole]:
        """Every pinhole of the call, with a kernel timeout at least as long as the engine's deadline: the
        engine removes them itself in time; the kernel timeout matters only if the daemon is gone."""
        if call.confirmed:
            timeout = min(self._lifetime(call), call.created + self.timeouts.max_call - now)
        else:
            timeout = self.timeouts.setup
        timeout = max(1, int(timeout + 0.999))
        call.kernel_deadline = now + timeout
        return call.pinholes(timeout)


@dataclass(slots=True)
class _Change:
    """What one message changes: collected by the steps of the decision, turned into a Decision."""

    install_call: Call | None = None
    install: list[Pinhole] = field(default_factory=list)
    opened: list[Pinhole] = field(default_factory=list)
    remove: list[Pinhole] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    ended: list[CallEnded] = field(default_factory=list)
    new_lan_ports: set[Endpoint] = field(default_factory=set)  # LAN ends of streams bound by this message
    recreate: bool = False  # the call's state changed: its elements' comments must be rewritten
    detail: str = ""
    pass_unchanged: bool = False

    def refuse(self, reason: str, detail: str) -> None:
        self.refusals.append(reason)
        self.detail = detail
