"""SIP over TCP through the daemon: a relay between a phone's connection and the router's own to the server.

The queue cannot change the length of a TCP segment (that needs sequence number adjustment, which this
kernel's queue cannot do: no NETLINK_GLUE_CT), so TCP SIP is not queued. The table redirects a LAN host's
TCP connection to a SIP port of a host beyond the WAN to the relay's port on the router (nfsip.kernel.
ruleset, `redirect`); the relay accepts it, asks conntrack where it was going (SO_ORIGINAL_DST), opens its
own connection there from the router, and from then on hands every whole SIP message of either side to the
daemon (`on_message`), which decides as for UDP and returns the bytes to send on. Connections a registrar
opens to a registered phone's public endpoint are redirected here too (a TCP registration pinhole): the relay
asks the daemon which phone that endpoint belongs to (`phone_for`) and connects to it.

This module moves bytes only: the framing of the stream into messages is nfsip.core.sip.stream's, every
decision the daemon's. One selector (the daemon's) serves the queue and every relay socket: nothing here
blocks, and each side's unsent bytes wait in its own bounded buffer.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DEFAULTS
from ..core.model import Direction, Endpoint
from ..core.sip.stream import Keepalive, StreamError, StreamFramer

log = logging.getLogger(__name__)

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h) is 80 too
# Unsent bytes one side may hold before its connection is given up: a peer that stops reading.
MAX_BUFFERED = 1 << 20
# Seconds a side may leave a message unfinished (a Content-Length larger than what follows, a slow drip):
# then the connection is given up. A connection without a message under way may idle as long as its ends
# keep it.
PARTIAL_SECONDS = 30.0
# Connections relayed at once, in all and per LAN host: beyond them a new connection is closed at once.
MAX_CONNECTIONS = 4096
MAX_CONNECTIONS_PER_HOST = 64
# After accept() failed (out of file descriptors): this long before the relay accepts again.
ACCEPT_PAUSE_SECONDS = 1.0
_READ = 65536


@dataclass(eq=False)
class Side:
    """One socket of a relayed connection, with the framer of what it sends and what waits to be sent to it."""

    sock: socket.socket
    peer: Endpoint
    framer: StreamFramer = field(default_factory=StreamFramer)
    out: bytearray = field(default_factory=bytearray)
    connected: bool = True
    eof: bool = False
    partial_since: float | None = None  # when the message it is sending began, while unfinished


@dataclass(eq=False)
class Relayed:
    """A phone's SIP connection and the router's to the server (or the registrar's to the router, and the
    router's to the phone). `public`: the router's end towards the server, the endpoint the server sees."""

    phone: Side
    server: Side
    public: Endpoint
    opened_by_phone: bool
    closed: bool = False
    opener: str = ""  # the address that opened it: the phone's, or the registrar's

    def other(self, side: Side) -> Side:
        """The side `side`'s messages go to."""
        return self.server if side is self.phone else self.phone

    def direction(self, side: Side) -> Direction:
        """Which way the messages `side` sends travel."""
        return Direction.OUTBOUND if side is self.phone else Direction.INBOUND


# on_message(connection, direction, message bytes) -> the bytes to send on (the message as it is, or rewritten)
OnMessage = Callable[[Relayed, Direction, bytes], bytes]
# phone_for(public endpoint a registrar connected to, registrar address) -> the phone to connect to, or None
PhoneFor = Callable[[Endpoint, str], Endpoint | None]


def _endpoint(address: tuple) -> Endpoint:  # type: ignore[type-arg]
    return Endpoint(address[0], address[1])


def original_destination(sock: socket.socket) -> Endpoint | None:
    """Where conntrack says the accepted connection was going before the redirect (None: it was not)."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return Endpoint(socket.inet_ntop(socket.AF_INET, packed), port)
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return Endpoint(socket.inet_ntop(socket.AF_INET6, packed), port)
    except OSError:
        return None


class TcpRelay:
    def __init__(
        self,
        port: int,
        selector: selectors.BaseSelector,
        on_message: OnMessage,
        phone_for: PhoneFor,
        on_error: Callable[[str], None] = lambda reason: None,
        clock: Callable[[], float] = time.monotonic,
        rate: float = DEFAULTS.sip_rate_per_host,
        burst: int = DEFAULTS.sip_burst_per_host,
        on_pause: Callable[[], None] = lambda: None,
    ) -> None:
        """Listen on `port` (IPv4 and IPv6, or IPv4 alone on a host without IPv6). `on_error`: a reason per
        connection given up (a metrics label). `rate`, `burst`: SIP messages per second a host that opens
        connections may send through them (a token bucket, as the kernel's for UDP); beyond it the relay
        reads from its connections only as the bucket fills."""
        self.rate = rate
        self.burst = burst
        self.on_pause = on_pause
        self.port = port
        self.selector = selector
        self.on_message = on_message
        self.phone_for = phone_for
        self.on_error = on_error
        self.clock = clock
        self.per_host: dict[str, int] = {}
        self.connections: set[Relayed] = set()
        self.listeners: list[socket.socket] = []
        self._buckets: dict[tuple[str, str], list[float]] = {}  # (host, direction) -> [tokens, when last filled]
        self._paused: set[tuple[Relayed, Side]] = set()
        self._accept_paused_until = 0.0
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                if family == socket.AF_INET6:
                    log.warning("tcp relay: no IPv6 on this host: relaying IPv4 only")
                    continue
                raise
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind((host, port))
                sock.listen(128)
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, ("tcp-listen", self))
            except OSError:
                sock.close()
                self.shutdown()  # nothing half-made stays in the daemon's selector
                raise
            self.listeners.append(sock)

    # -- the selector's events -------------------------------------------------------------------------
    def on_event(self, data: object, mask: int) -> None:
        """One selector event. Whatever goes wrong here ends at most the connection it concerns: never the
        daemon's loop, which also serves the queue."""
        conn = None
        try:
            if data is self:
                self._accept_all()
                return
            assert isinstance(data, tuple)
            conn, side = data
            if conn.closed:
                return
            if mask & selectors.EVENT_WRITE:
                self._writable(conn, side)
            if mask & selectors.EVENT_READ and not conn.closed:
                self._readable(conn, side)
        except Exception:
            log.exception("tcp relay: internal error; connection closed")
            self.on_error("internal-error")
            if conn is not None:
                self.close(conn)

    def _accept_all(self) -> None:
        for listener in self.listeners:
            while True:
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    # Out of file descriptors, say: the listener stays readable, so stop asking it for a
                    # second instead of spinning (expire() takes it back).
                    log.warning("tcp relay: accept failed: %s; not accepting for %.0fs", exc, ACCEPT_PAUSE_SECONDS)
                    self.on_error("accept-failed")
                    self._pause_accepting()
                    return
                try:
                    self._accepted(sock, _endpoint(address))
                except Exception:
                    log.exception("tcp relay: internal error accepting a connection; closed")
                    self.on_error("internal-error")
                    sock.close()

    def _accepted(self, sock: socket.socket, peer: Endpoint) -> None:
        sock.setblocking(False)
        # Each write is a whole message: Nagle's algorithm would hold a message behind the peer's delayed
        # ACK of the one before (docs/performance.md, "SIP over TCP").
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Counted by who opened the connection: a phone, or (through a registration's pinhole) a WAN host.
        if len(self.connections) >= MAX_CONNECTIONS or self.per_host.get(peer.ip, 0) >= MAX_CONNECTIONS_PER_HOST:
            sock.close()
            self.on_error("too-many-connections")
            return
        target = original_destination(sock)
        if target is None or target.port == self.port:
            sock.close()  # not redirected here by nfsip's table: someone connected to the relay port itself
            self.on_error("not-redirected")
            return
        # A registrar's connection to a registered phone's public endpoint (a TCP registration pinhole), or a
        # phone's to a server beyond the router. Asked of the registrations, not told by the address the
        # redirect chose (an IPv6 redirect lands on the interface's first address, not the public one).
        phone = self.phone_for(target, peer.ip)
        if phone is None and target.ip == sock.getsockname()[0]:
            sock.close()  # the router's own endpoint, which no registration holds (any more)
            self.on_error("no-registration")
            return
        if phone is not None:
            server_side = Side(sock, peer)
            phone_side = self._connect(phone)
            if phone_side is None:
                sock.close()
                return
            conn = Relayed(phone_side, server_side, target, opened_by_phone=False)
        else:
            phone_side = Side(sock, peer)
            server_side = self._connect(target)
            if server_side is None:
                sock.close()
                return
            conn = Relayed(phone_side, server_side, Endpoint("", 0), opened_by_phone=True)
        conn.opener = peer.ip
        self.connections.add(conn)
        self.per_host[peer.ip] = self.per_host.get(peer.ip, 0) + 1
        # The side we connected is registered for write (connect completion); the accepted one is read only
        # once the other is connected (a phone's message cannot be rewritten before the public end is known).
        for side in (conn.phone, conn.server):
            events = selectors.EVENT_WRITE if not side.connected else 0
            if events:
                self.selector.register(side.sock, events, ("tcp", (conn, side)))

    def _connect(self, target: Endpoint) -> Side | None:
        family = socket.AF_INET6 if ":" in target.ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex((target.ip, target.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            self.on_error("connect-failed")
            return None
        return Side(sock, target, connected=False)

    def _interest(self, conn: Relayed, side: Side) -> None:
        """(Re)register a side: read while its peer side is connected, write while it has bytes to send."""
        other = conn.other(side)
        events = 0
        if side.connected and other.connected and not side.eof:
            events |= selectors.EVENT_READ
        if not side.connected or side.out:
            events |= selectors.EVENT_WRITE
        key = self.selector.get_map().get(side.sock.fileno())
        if (conn, side) in self._paused:
            events &= ~selectors.EVENT_READ
        if events and key is None:
            self.selector.register(side.sock, events, ("tcp", (conn, side)))
        elif events and key is not None and key.events != events:
            self.selector.modify(side.sock, events, ("tcp", (conn, side)))
        elif not events and key is not None:
            self.selector.unregister(side.sock)

    def _writable(self, conn: Relayed, side: Side) -> None:
        if not side.connected:
            code = side.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                log.info("tcp relay: cannot connect to %s: %s", side.peer, errno.errorcode.get(code, code))
                self.on_error("connect-failed")
                self.close(conn)
                return
            side.connected = True
            if conn.opened_by_phone:
                conn.public = _endpoint(side.sock.getsockname())
            for each in (conn.phone, conn.server):
                self._interest(conn, each)
            return
        if side.out:
            try:
                sent = side.sock.send(side.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close(conn)
                return
            del side.out[:sent]
        self._interest(conn, side)
        other = conn.other(side)
        if other.eof and not side.out:
            self.close(conn)

    def _readable(self, conn: Relayed, side: Side) -> None:
        try:
            data = side.sock.recv(_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            side.eof = True
            other = conn.other(side)
            if not other.out:
                self.close(conn)
            else:
                self._interest(conn, side)
            return
        direction = conn.direction(side)
        other = conn.other(side)
        error: StreamError | None = None
        try:
            frames = side.framer.feed(data)
        except StreamError as exc:
            error, frames = exc, list(exc.frames)  # what was whole before the bad bytes still goes on
        # A message under way is timed from when it began: a read that finished messages starts a new one.
        if not side.framer.pending:
            side.partial_since = None
        elif frames or side.partial_since is None:
            side.partial_since = self.clock()
        for frame in frames:
            if isinstance(frame, Keepalive):
                other.out += frame.raw
            else:
                other.out += self.on_message(conn, direction, frame.raw)
        messages = sum(1 for f in frames if not isinstance(f, Keepalive))
        if messages and not self._take((conn.opener, direction.value), messages):
            self._pause(conn, side)
        if error is not None:
            log.info("tcp relay: %s from %s: connection closed", error.reason, side.peer)
            self.on_error(error.reason)
            self._flush_and_close(conn, other)
            return
        if len(other.out) > MAX_BUFFERED:
            self.on_error("peer-not-reading")
            self.close(conn)
            return
        self._interest(conn, other)

    def _flush_and_close(self, conn: Relayed, side: Side) -> None:
        """Close after a best-effort send of what `side` still has to receive (without waiting)."""
        if side.out and side.connected:
            try:
                side.sock.send(side.out)
            except OSError:
                pass
        self.close(conn)

    def close(self, conn: Relayed) -> None:
        if conn.closed:
            return
        conn.closed = True
        host = conn.opener
        if host in self.per_host:
            self.per_host[host] -= 1
            if not self.per_host[host]:
                del self.per_host[host]
        for side in (conn.phone, conn.server):
            if side.sock.fileno() in self.selector.get_map():
                self.selector.unregister(side.sock)
            side.sock.close()
        self.connections.discard(conn)

    # -- the rate of messages per host, like the kernel's for UDP (sip_rate_per_host) -----------------------
    def _take(self, bucket: tuple[str, str], count: int) -> bool:
        """Take `count` tokens from a bucket (the host that opened the connection, and the direction, like
        the kernel's two sets for UDP); False when it is now empty. The messages already read still go on
        (they are whole); the connection is then read again only as the bucket fills."""
        now = self.clock()
        tokens = self._tokens(bucket, now) - count
        self._buckets[bucket] = [tokens, now]
        return tokens > 0

    def _tokens(self, bucket: tuple[str, str], now: float) -> float:
        """The bucket's tokens now: what it held, filled at `rate` since, at most `burst`."""
        tokens, stamp = self._buckets.get(bucket, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - stamp) * self.rate)

    def _pause(self, conn: Relayed, side: Side) -> None:
        """Stop reading from a side whose host is over its rate, until expire() finds tokens again."""
        self._paused.add((conn, side))
        self.on_pause()
        key = self.selector.get_map().get(side.sock.fileno())
        if key is not None:
            events = key.events & ~selectors.EVENT_READ
            if events:
                self.selector.modify(side.sock, events, key.data)
            else:
                self.selector.unregister(side.sock)

    def _pause_accepting(self) -> None:
        self._accept_paused_until = self.clock() + ACCEPT_PAUSE_SECONDS
        for listener in self.listeners:
            if listener.fileno() in self.selector.get_map():
                self.selector.unregister(listener)

    def _resume(self) -> None:
        now = self.clock()
        for conn, side in list(self._paused):
            if conn.closed or self._tokens((conn.opener, conn.direction(side).value), now) > 0:
                self._paused.discard((conn, side))
                if not conn.closed:
                    self._interest(conn, side)
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            for listener in self.listeners:
                if listener.fileno() not in self.selector.get_map():
                    self.selector.register(listener, selectors.EVENT_READ, ("tcp-listen", self))
        if len(self._buckets) > 4 * MAX_CONNECTIONS:  # hosts gone quiet: their buckets are full again
            self._buckets = {h: b for h, b in self._buckets.items() if b[0] < self.burst}

    def expire(self) -> None:
        """Give up the connections whose message has been under way for more than PARTIAL_SECONDS; read again
        from hosts back under their rate; accept again after a pause."""
        self._resume()
        now = self.clock()
        for conn in list(self.connections):
            for side in (conn.phone, conn.server):
                if side.partial_since is not None and now - side.partial_since > PARTIAL_SECONDS:
                    log.info("tcp relay: %s left a message unfinished for %.0fs: closed", side.peer, PARTIAL_SECONDS)
                    self.on_error("incomplete-message")
                    self.close(conn)
                    break

    def shutdown(self) -> None:
        """Close every connection and the listeners (the phones reconnect to a daemon that comes back)."""
        for conn in list(self.connections):
            self.close(conn)
        for listener in self.listeners:
            if listener.fileno() in self.selector.get_map():
                self.selector.unregister(listener)
            listener.close()
        self.listeners = []
