"""Kamailio as the lab's SIP server: a plain registrar and stateful forking proxy, nothing NAT-aware.

Why Kamailio: nfsip's job is to make phones behind a NAT work with an *ordinary* SIP server, one that
takes Via, Contact and SDP at face value. The sipp UAS alone cannot register phones or route a call to
them; Kamailio with the configuration below is what a small provider runs minus its NAT helpers:

* REGISTER → ``save("location")`` (in memory, no auth): the Contact the router sent is stored as is.
* A request for a registered AOR → ``lookup("location")`` → ``t_relay()``: one branch per contact,
  forked in parallel; when one branch answers 2xx, tm CANCELs the others (they answer 487).
* A request for a user that is not registered but whose Request-URI names another host is relayed
  there (so a phone can use Kamailio as outbound proxy towards a sipp UAS on a WAN host).
* Dialog-forming requests are record-routed and in-dialog requests loose-routed: Kamailio stays in the
  signalling path, as real proxies do (two phones behind two NATs could not reach each other's
  registered-only SIP port directly). The sipp scenarios therefore honour Record-Route (``rrs``).
* No ``fix_nated_contact``/``fix_nated_register``, no rtpproxy/rtpengine: what the router does not fix
  stays broken. ``nat_helper=True`` adds the classic nathelper trio (``fix_nated_register`` + received
  path, ``fix_nated_contact``) for a baseline that separates "private Contact" from "expired
  conntrack entry" as the cause of a failed inbound call.

Kamailio 5.6.3 listens 40-60 ms after exec with ``-m 64 -M 8``.

Kamailio pitfalls that shaped this module:

* Without ``-Y`` Kamailio puts its runtime files under /run/kamailio and the ``ctl`` socket at
  /run/kamailio/kamailio_ctl: two labs would share (and steal) it. Everything lives in a temp dir.
* ``registrar`` has ``min_expires=60`` by default: a REGISTER asking for 10 s is stored (and answered)
  with 60 s. Tests of short registrations need ``min_expires`` lowered (default here: 1).
* With ``auto_aliases=yes`` (the default) and DNS enabled Kamailio resolves its own addresses at start;
  the lab has no DNS server (resolv.conf points outside), so ``dns=no``/``rev_dns=no`` keep start fast.
* tm's ``fr_timer`` (30 s) is how long a branch may stay without any response before Kamailio answers
  408 itself, and ``fr_inv_timer`` (120 s) how long an INVITE may ring. Tests shorten them.
* ``-DD`` keeps the main process in the foreground (children are still forked): SIGTERM to the Popen
  ends all of them. ``-E`` sends the log to stderr, which goes to a file here (never an unread pipe).
* A Record-Route header makes every in-dialog request go through Kamailio: sipp scenarios must store
  the route set (``rrs="true"``) and use ``[next_url]``/``[routes]``, or the ACK/BYE bypass the proxy.
  Kamailio's Record-Route has no port (``<sip:198.51.100.2;lr;ftag=...>``: 5060 implied).
* usrloc runs without ``use_domain``: the AOR is the user part. ``kamcmd ul.lookup location alice``
  works, ``... sip:alice@198.51.100.2`` answers "AOR not found".
* A Contact with a private address (no nfsip, no nathelper) fails at once with
  "477 Unfortunately error on sending to next hop occurred" (sendto: ENETUNREACH on the server), not
  with a timeout. tm answers the caller's INVITE with its own "100 trying -- your call is important
  to us" and absorbs the callee's 100.
* nathelper needs ``received_avp`` set identically in nathelper and registrar, and
  ``fix_nated_contact()`` in an onreply_route too: otherwise the ACK of a 2xx goes to the private
  Contact of the 200 (seen here).
* ``kamailio -c`` checks the rendered file without root and without the listen address existing.

TCP (``tcp=True``; measured with Kamailio 5.6.3): it listens on TCP too, same addresses and port, as
registrar and proxy for both transports, and forwards each request over the transport its target
names (``;transport=tcp`` in a Contact or Record-Route, else UDP).

* Connection reuse: Kamailio knows each connection by its peer's ``ip:port`` and sends a request for a
  Contact over an open connection to exactly that ``ip:port``, else opens a new connection to it. A
  binding records the REGISTER's connection (``Tcpconn-Id`` in ``bindings()``), but ``lookup`` does not
  route by it. sipp's connections leave from the port its Contact names, so over IPv6 (no NAT) an
  inbound call reaches a TCP phone over the phone's own connection. Behind plain masquerade the Contact
  is the private address: the new connection fails at once (connect: ENETUNREACH) and the caller gets
  477; with ``nat_helper`` ``fix_nated_register`` stores ``received=sip:198.51.100.1:5060;transport=tcp``
  and the call goes over the phone's connection.
* ``tcp_connection_lifetime``: an idle connection is closed after it. Kamailio's own default is 120 s;
  the lab takes Debian's stock kamailio.cfg value, 3605 s (longer than a registration), so a phone's
  connection lives as long as it is registered. ``tcp_connection_lifetime_s`` short is the variant where
  Kamailio has closed the phone's connection and opens a NEW one to the Contact for the next inbound
  call. The close comes late (the idle check runs only after the worker released the connection):
  11 s after the REGISTER with a lifetime of 2 or 5 s, 26 s with 20 s.
* ``tcp_accept_aliases`` (honour a Via ``;alias``) and ``force_tcp_alias()`` add the Via's port as one
  more name of the connection, for the connection's source address. That helps a UA whose Via port is
  not its source port on the same address; sipp's never differ, and behind NAT the alias would name the
  public address with the phone's private port (RFC 5923's hijacking risk for end-user connections).
  Left at Kamailio's default, off.
* ``tcp_connections()`` reads ``core.tcp_list``.

IPv6: in a dual-stack lab Kamailio also listens on the server's IPv6 address (``listen6``), the same
registrar and proxy for both families. It sends each request from its socket of the destination's
family, and a request that changes family on the way gets two Record-Routes, one per socket
(rr's ``enable_double_rr``, on by default), so that in-dialog requests can come back either way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from nfsiplab import topology as T
from nfsiplab.lab import Lab, LabError

MODULE_DIR = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
TCP_CONNECTION_LIFETIME_S = 3605
"""How long Kamailio keeps an idle TCP connection: the value of Debian's stock kamailio.cfg ("a bit
higher than registration expires to cope with UA behind NAT"); Kamailio's own default is 120 s."""

# @@NAME@@ placeholders (Kamailio's own syntax uses $ and braces, so neither str.format nor
# string.Template can render it).
CONFIG_TEMPLATE = r"""#!KAMAILIO
# nfsip lab: plain registrar + stateful forking proxy. NO NAT traversal help, NO media relay
# (unless rendered with nat_helper, for baselines only).
@@NAT_DEFINE@@

debug=@@DEBUG@@
log_stderror=yes
log_facility=LOG_LOCAL0
memdbg=5
memlog=5
children=@@CHILDREN@@
@@TCP@@
enable_sctp=no
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=no
listen=udp:@@IP@@:@@PORT@@
@@LISTEN_TCP@@
alias="@@IP@@:@@PORT@@"
@@LISTEN6@@

mpath="@@MPATH@@"
loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "ctl.so"
#!ifdef WITH_NAT
loadmodule "nathelper.so"
#!endif

modparam("ctl", "binrpc", "unix:@@CTL@@")
modparam("tm", "fr_timer", @@FR_TIMER@@)
modparam("tm", "fr_inv_timer", @@FR_INV_TIMER@@)
modparam("rr", "enable_full_lr", 0)
modparam("rr", "append_fromtag", 1)
modparam("usrloc", "db_mode", 0)
modparam("registrar", "min_expires", @@MIN_EXPIRES@@)
modparam("registrar", "max_expires", 3600)
modparam("registrar", "max_contacts", 10)
#!ifdef WITH_NAT
modparam("nathelper", "received_avp", "$avp(RECEIVED)")
modparam("registrar", "received_avp", "$avp(RECEIVED)")
#!endif

request_route {
	xlog("L_INFO", "RQ $rm $ru from $si:$sp ci=$ci pr=$pr\n");
	if (!mf_process_maxfwd_header("10")) {
		sl_send_reply("483", "Too Many Hops");
		exit;
	}
	if (is_method("CANCEL")) {
		if (t_check_trans()) {
			t_relay();
		}
		exit;
	}
	# Retransmissions of a request tm already handles: let tm absorb them.
	if (!is_method("ACK")) {
		if (t_precheck_trans()) {
			t_check_trans();
			exit;
		}
		t_check_trans();
	}
#!ifdef WITH_NAT
	if (nat_uac_test("19")) {
		if (is_method("REGISTER")) {
			fix_nated_register();
		} else {
			fix_nated_contact();
		}
		force_rport();
	}
#!endif
	if (has_totag()) {
		if (loose_route()) {
			route(RELAY);
		}
		if (is_method("ACK")) {
			if (t_check_trans()) {
				route(RELAY);
			}
			exit;
		}
		sl_send_reply("404", "Not here");
		exit;
	}
	remove_hf("Route");
	if (is_method("INVITE|SUBSCRIBE")) {
		record_route();
	}
	if (is_method("REGISTER")) {
		if (!save("location")) {
			sl_reply_error();
		}
		exit;
	}
	if ($rU == $null) {
		sl_send_reply("484", "Address Incomplete");
		exit;
	}
	if (!uri == myself) {
		# Outbound-proxy use: relay to the host the Request-URI names.
		route(RELAY);
	}
	if (!lookup("location")) {
		xlog("L_INFO", "no contact for $ru\n");
		send_reply("404", "Not Found");
		exit;
	}
	route(RELAY);
}

route[RELAY] {
	if (!t_relay()) {
		sl_reply_error();
	}
	exit;
}

onreply_route {
	xlog("L_INFO", "RS $rs $rr cseq=$cs from $si:$sp ci=$ci pr=$pr\n");
#!ifdef WITH_NAT
	if (nat_uac_test("1")) {
		fix_nated_contact();
	}
#!endif
}
"""


def render_config(
    *,
    ip: str,
    port: int,
    ctl_socket: str,
    ip6: str | None = None,
    children: int = 1,
    debug: int = 2,
    fr_timer_ms: int = 30000,
    fr_inv_timer_ms: int = 120000,
    min_expires: int = 1,
    nat_helper: bool = False,
    tcp: bool = False,
    tcp_connection_lifetime_s: int = TCP_CONNECTION_LIFETIME_S,
) -> str:
    """The Kamailio configuration text for one lab instance (see the module doc for what it does);
    with ``ip6`` it listens on that IPv6 address too, with ``tcp`` on TCP beside UDP (same addresses
    and port), closing a TCP connection idle for ``tcp_connection_lifetime_s``."""
    listen6 = [f"listen=udp:[{ip6}]:{port}"] + ([f"listen=tcp:[{ip6}]:{port}"] if tcp else [])
    tcp_lines = ["disable_tcp=yes"]
    if tcp:
        tcp_lines = [
            "disable_tcp=no",
            f"tcp_children={children}",
            f"tcp_connection_lifetime={tcp_connection_lifetime_s}",
        ]
    values = {
        "IP": ip,
        "PORT": str(port),
        "TCP": "\n".join(tcp_lines),
        "LISTEN_TCP": f"listen=tcp:{ip}:{port}" if tcp else "# no TCP listen address",
        "LISTEN6": "\n".join([*listen6, f'alias="[{ip6}]:{port}"']) if ip6 else "# no IPv6 listen address",
        "CTL": ctl_socket,
        "CHILDREN": str(children),
        "DEBUG": str(debug),
        "FR_TIMER": str(fr_timer_ms),
        "FR_INV_TIMER": str(fr_inv_timer_ms),
        "MIN_EXPIRES": str(min_expires),
        "MPATH": MODULE_DIR,
        # "#!define WITH_NAT" turns the nathelper blocks (#!ifdef WITH_NAT) on.
        "NAT_DEFINE": "#!define WITH_NAT" if nat_helper else "# nat_helper off: WITH_NAT undefined",
    }
    text = CONFIG_TEMPLATE
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    leftover = re.findall(r"@@\w+@@", text)
    if leftover:
        raise ValueError(f"unrendered placeholders: {leftover}")
    return text


@dataclass(frozen=True)
class TcpConnection:
    """One TCP connection of a running Kamailio, as ``core.tcp_list`` reports it."""

    id: int
    """Kamailio's connection id; a binding's ``Tcpconn-Id`` names the connection its REGISTER came on."""
    peer_ip: str
    peer_port: int
    local_ip: str
    local_port: int
    """The listening port for a connection Kamailio accepted; 0 for one it opened itself (measured)."""
    state: str

    @property
    def peer(self) -> str:
        """``ip:port`` of the far end (brackets for IPv6)."""
        return T.hostport(self.peer_ip, self.peer_port)


def parse_tcp_list(text: str) -> list[TcpConnection]:
    """The connections of a ``kamcmd core.tcp_list`` answer (``src_*`` is the peer, ``dst_*`` Kamailio)."""
    found = []
    for block in text.split("{")[1:]:
        fields = dict(re.findall(r"^\s*(\w+): (.*?)\s*$", block, re.MULTILINE))
        found.append(
            TcpConnection(
                id=int(fields["id"]),
                peer_ip=fields["src_ip"],
                peer_port=int(fields["src_port"]),
                local_ip=fields["dst_ip"],
                local_port=int(fields["dst_port"]),
                state=fields["state"],
            )
        )
    return found


def have_kamailio() -> bool:
    """True if the kamailio binary is installed (it lives in /usr/sbin, which may not be on PATH)."""
    return shutil.which("kamailio") is not None or Path("/usr/sbin/kamailio").exists()


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Kamailio:
    """A Kamailio registrar/proxy in a lab namespace (default: the server, 198.51.100.2:5060 and
    [2001:db8:f::2]:5060; ``listen6=False`` for IPv4 only, ``ip6`` for another IPv6 address; ``tcp``
    on TCP too, closing connections idle for ``tcp_connection_lifetime_s``).

    Context manager; ``start()`` returns when its sockets listen. ``log()`` is the full log (one
    ``RQ``/``RS`` line per request/reply it routed, with the protocol it came over, plus Kamailio's own
    messages); ``contacts(aor)``
    asks the running instance (binrpc ``ul.lookup``) which contacts an AOR has.
    """

    def __init__(
        self,
        lab: Lab,
        node: str = T.SERVER,
        *,
        ip: str | None = None,
        ip6: str | None = None,
        listen6: bool = True,
        port: int = T.SIP_PORT,
        # One UDP worker: two responses of one transaction that reach Kamailio together (nfsip gives the
        # verdicts of one queue drain together) are relayed in the order they came. With two workers they
        # could overtake each other, and sipp ends a call on a response out of its scenario's order.
        children: int = 1,
        shm_mb: int = 64,
        pkg_mb: int = 8,
        debug: int = 2,
        fr_timer_ms: int = 30000,
        fr_inv_timer_ms: int = 120000,
        min_expires: int = 1,
        nat_helper: bool = False,
        tcp: bool = False,
        tcp_connection_lifetime_s: int = TCP_CONNECTION_LIFETIME_S,
        workdir: str | Path | None = None,
    ) -> None:
        self.lab, self.node = lab, node
        self.ip = ip or lab.ip_of(node)
        self.ip6 = (ip6 or lab.ip6_of(node)) if listen6 else None
        self.port = port
        self.tcp = tcp
        self.shm_mb, self.pkg_mb = shm_mb, pkg_mb
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"nfsip-kamailio-{node}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "kamailio.cfg"
        self.log_path = self.workdir / "kamailio.log"
        self.pid_path = self.workdir / "kamailio.pid"
        self.ctl_socket = str(self.workdir / "kamailio_ctl")
        self.config_path.write_text(
            render_config(
                ip=self.ip,
                port=port,
                ctl_socket=self.ctl_socket,
                ip6=self.ip6,
                children=children,
                debug=debug,
                fr_timer_ms=fr_timer_ms,
                fr_inv_timer_ms=fr_inv_timer_ms,
                min_expires=min_expires,
                nat_helper=nat_helper,
                tcp=tcp,
                tcp_connection_lifetime_s=tcp_connection_lifetime_s,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        """Seconds from exec to listening, measured by ``start()``."""

    @property
    def uri(self) -> str:
        """``ip:port`` of the proxy (what sipp takes as remote host)."""
        return f"{self.ip}:{self.port}"

    @property
    def uri6(self) -> str | None:
        """``[ip6]:port`` of the proxy's IPv6 socket, None without one."""
        return T.hostport(self.ip6, self.port) if self.ip6 else None

    def check_config(self) -> subprocess.CompletedProcess[str]:
        """``kamailio -c``: syntax and module check of the rendered configuration (no sockets needed)."""
        return subprocess.run(
            [_binary("kamailio"), "-c", "-f", str(self.config_path), "-L", MODULE_DIR],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def start(self, timeout: float = 10.0) -> Self:
        """Start Kamailio and return once its UDP socket listens; LabError (with the log) otherwise."""
        argv = [
            _binary("kamailio"),
            "-DD",
            "-E",
            "-f",
            str(self.config_path),
            "-m",
            str(self.shm_mb),
            "-M",
            str(self.pkg_mb),
            "-Y",
            str(self.workdir),
            "-P",
            str(self.pid_path),
            "-w",
            str(self.workdir),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = self.lab.popen(self.node, argv, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        deadline = t0 + timeout
        needles = [f"{self.ip}:{self.port} "] + ([f"{self.uri6} "] if self.uri6 else [])
        protocols = ["-Hnlu", "-Hnlt"] if self.tcp else ["-Hnlu"]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"kamailio exited with {self.proc.returncode} at start:\n{self.log()[-4000:]}")
            listening = [self.lab.run(self.node, ["ss", p], check=False).stdout for p in protocols]
            if all(n in out for n in needles for out in listening) and Path(self.ctl_socket).exists():
                self.startup_s = time.monotonic() - t0
                return self
            time.sleep(0.02)
        self.stop()
        raise LabError(f"kamailio not listening on {self.uri} after {timeout}s:\n{self.log()[-4000:]}")

    def alive(self) -> bool:
        """True while the main process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """Everything Kamailio logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def routed(self, pattern: str = "") -> list[str]:
        """The ``RQ``/``RS`` lines of the log (what Kamailio routed), optionally filtered by a regex."""
        lines = [ln for ln in self.log().splitlines() if re.search(r"\b(RQ|RS) ", ln)]
        return [ln for ln in lines if re.search(pattern, ln)] if pattern else lines

    def rpc(self, *args: str, check: bool = True) -> str:
        """Run a binrpc command (``kamcmd``) against this instance, e.g. ``rpc("ul.dump")``.

        The socket is a file in the work directory, so kamcmd can run from the root namespace.
        """
        res = subprocess.run(
            [_binary("kamcmd"), "-s", f"unix:{self.ctl_socket}", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if check and res.returncode != 0:
            raise LabError(f"kamcmd {' '.join(args)} failed: {res.stdout}{res.stderr}")
        return res.stdout

    def bindings(self, aor: str) -> list[dict[str, str]]:
        """The registered contacts of ``aor`` as dicts of ``ul.lookup`` fields (Address, Expires,
        Received, Call-ID, ...); [] when the AOR has none.

        usrloc runs without ``use_domain``: the AOR is the user part only (``alice``), whatever
        domain the REGISTER named.
        """
        user = aor.removeprefix("sip:").split("@", 1)[0]
        out = self.rpc("ul.lookup", "location", user, check=False)
        found: list[dict[str, str]] = []
        for block in out.split("Contact: {")[1:]:
            fields = dict(re.findall(r"^\s*([\w-]+): (.*?)\s*$", block, re.MULTILINE))
            if "Address" in fields:
                found.append(fields)
        return found

    def contacts(self, aor: str) -> list[str]:
        """The contact URIs registered for ``aor`` (``alice`` or ``sip:alice@...``); [] when none."""
        return [b["Address"] for b in self.bindings(aor)]

    def tcp_connections(self) -> list[TcpConnection]:
        """Kamailio's open TCP connections (``core.tcp_list``); [] without TCP or with none open."""
        return parse_tcp_list(self.rpc("core.tcp_list", check=False))

    def wait_tcp_closed(self, conn_id: int, timeout: float = 30.0) -> list[TcpConnection]:
        """Wait until connection ``conn_id`` is gone (closed by either side); returns the ones left
        (LabError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            left = self.tcp_connections()
            if all(c.id != conn_id for c in left):
                return left
            if time.monotonic() > deadline:
                raise LabError(f"TCP connection {conn_id} still open after {timeout}s: {left}")
            time.sleep(0.2)

    def wait_registered(self, aor: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until ``aor`` has at least ``count`` contacts; returns them (LabError on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.contacts(aor)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise LabError(f"{aor}: {len(found)} contacts after {timeout}s, wanted {count}: {found}")
            time.sleep(0.05)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM (Kamailio's main process then ends its children), SIGKILL after ``timeout``."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        """Delete the work directory (config, log) if this object created it."""
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._own_workdir = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        uris = f"{self.uri} {self.uri6}" if self.uri6 else self.uri
        return f"Kamailio({self.node} {uris}, {state})"
