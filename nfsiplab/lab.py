"""The network-namespace lab: phones behind a NAT router, a SIP server on the "internet".

Why namespaces and not containers/VMs: they are instant (a full lab comes up in well under a
second), need only iproute2, and every node is a real Linux network stack with its own
netfilter, conntrack and sysctls, so the router namespace behaves like the router nfsip is for.

Every node is a namespace named ``<prefix>-<node>`` with ``prefix = nfl<pid>x<n>``: two labs
(even in one process) never collide, and ``cleanup_stale()`` can remove what a crashed run left
behind by checking whether ``<pid>`` is still alive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nfsip.config import DEFAULTS
from nfsip.firewall import admin_rule
from nfsiplab import topology as T

NS_PREFIX = "nfl"
_STALE_RE = re.compile(rf"^{NS_PREFIX}(\d+)x\d+-")
_counter = itertools.count(1)
_NSTOOLS = str(Path(__file__).with_name("_nstools.py"))

REQUIRED_TOOLS = ("ip", "nft")

MASQUERADE_TABLE = "lab_admin"
ALG_TABLE = "lab_alg"
ADMIN_FIREWALL_TABLE = "filter"
"""``table inet filter``: the admin's firewall (``Lab.admin_firewall``), named as Debian's
/etc/nftables.conf names it."""
POLICY_DROP_COMMENT = "lab: reached the drop policy"

# The "admin's" plain NAT. Its own table so that nfsip's table lives beside it: the lab never
# flushes the ruleset. "add table" + "flush table" first makes the call idempotent.
_MASQUERADE_SCRIPT = f"""\
add table ip {MASQUERADE_TABLE}
flush table ip {MASQUERADE_TABLE}
table ip {MASQUERADE_TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{T.ROUTER_WAN_IF}" masquerade
  }}
}}
"""

# The kernel SIP ALG (nf_conntrack_sip + nf_nat_sip), the baseline nfsip competes with. Since
# kernel 4.7 helpers are no longer assigned automatically by port: a ct helper object has to be
# attached explicitly. "output" covers SIP sent by the router itself. Never enable this and nfsip
# on the same flows (LAB.md).
_ALG_SCRIPT = f"""\
add table ip {ALG_TABLE}
flush table ip {ALG_TABLE}
table ip {ALG_TABLE} {{
  ct helper sip-5060 {{ type "sip" protocol udp; }}
  chain pre {{
    type filter hook prerouting priority filter; policy accept;
    udp dport {T.SIP_PORT} ct helper set "sip-5060"
  }}
  chain out {{
    type filter hook output priority filter; policy accept;
    udp dport {T.SIP_PORT} ct helper set "sip-5060"
  }}
}}
"""


def admin_firewall_script(nfsip_rule: bool = False, mark: int = DEFAULTS.pinhole_mark) -> str:
    """The admin's forward chain of a router that firewalls its LAN (RFC 6092's default for IPv6):
    policy drop, replies (established/related) and LAN to WAN accepted, nothing unsolicited in.

    ``nfsip_rule`` adds the one rule the admin adds for nfsip, as `nfsip admin-rule` prints it: accept
    a flow whose conntrack mark carries nfsip's pinhole bit. The last rule only counts what falls through
    to the drop policy (``Lab.admin_firewall_dropped``); it changes no verdict. Idempotent like the other
    scripts.
    """
    nfsip = f"    {admin_rule(mark)}\n" if nfsip_rule else ""
    return (
        f"add table inet {ADMIN_FIREWALL_TABLE}\n"
        f"delete table inet {ADMIN_FIREWALL_TABLE}\n"
        f"table inet {ADMIN_FIREWALL_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter; policy drop;\n"
        "    ct state established,related accept\n"
        f'    iifname "{T.ROUTER_LAN_IF}" oifname "{T.ROUTER_WAN_IF}" accept\n'
        f"{nfsip}"
        f'    counter comment "{POLICY_DROP_COMMENT}"\n'
        "  }\n"
        "}\n"
    )


class LabError(RuntimeError):
    """The lab could not be built or a lab operation failed."""


class CommandError(subprocess.CalledProcessError):
    """A command run in a namespace failed; unlike CalledProcessError, str() includes its stderr."""

    def __init__(self, node: str, exc: subprocess.CalledProcessError) -> None:
        super().__init__(exc.returncode, exc.cmd, exc.output, exc.stderr)
        self.node = node

    def __str__(self) -> str:
        cmd = shlex.join(self.cmd) if isinstance(self.cmd, list | tuple) else str(self.cmd)
        err = (self.stderr or "").strip() if isinstance(self.stderr, str) else self.stderr
        return f"[{self.node}] {cmd!r} exited {self.returncode}: {err}"


def missing_tools(tools: Sequence[str] = REQUIRED_TOOLS) -> list[str]:
    """The executables of ``tools`` that are not on PATH (the lab needs them)."""
    return [t for t in tools if shutil.which(t) is None]


def can_run() -> str | None:
    """None if a Lab can be built here, else the reason why not (used for pytest.skip)."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, nftables)"
    missing = missing_tools()
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not Path("/proc/self/ns/net").exists():
        return "no network namespace support"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)
    except subprocess.CalledProcessError as exc:
        raise CommandError("root", exc) from None


def list_namespaces() -> list[str]:
    """Names of all named network namespaces (``ip netns list``, "name (id: N)" → "name")."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_namespace_processes(ns: str, grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL, every process still living in namespace ``ns``.

    Why: ``ip netns del`` only removes the name; the namespace (with its interfaces, addresses and
    a sipp still holding port 5060) lives on as long as a process is inside it.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        res = _ip("netns", "pids", ns, check=False)
        pids = [int(p) for p in res.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
            time.sleep(0.05)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    _ip("netns", "del", ns, check=False)


def cleanup_stale() -> list[str]:
    """Delete lab namespaces (``nfl<pid>x<n>-*``) whose creating process is dead; return their names.

    Only the lab's own name pattern is touched; namespaces of other tools are left alone.
    """
    removed = []
    for ns in list_namespaces():
        m = _STALE_RE.match(ns)
        if m and not _pid_alive(int(m.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    return removed


class Lab:
    """phones → LAN switch → router (NAT) → WAN switch → server, each a network namespace.

    Use as a context manager (``with Lab(phones=2) as lab:``) or call ``up()``/``down()``;
    ``down()`` always removes everything and may be called any number of times.
    The router only forwards until ``masquerade()`` (or nfsip) gives it NAT: without NAT the
    server cannot answer a private source address, because it has no route to 10.0.0.0/24.

    Every host is dual-stack (addresses in ``topology``): IPv6 is routed without NAT and, until
    ``admin_firewall()``, without a firewall. ``ip6_of(node)`` is a node's IPv6 address,
    ``media_ip6_of(node)`` a WAN host's second one.
    """

    def __init__(self, phones: int = 2, *, prefix: str | None = None) -> None:
        if not 1 <= phones <= T.MAX_PHONES:
            raise ValueError(f"phones must be 1..{T.MAX_PHONES}")
        self.prefix = prefix or f"{NS_PREFIX}{os.getpid()}x{next(_counter)}"
        self.phones: list[str] = [T.phone_name(n) for n in range(1, phones + 1)]
        self.addresses: dict[str, str] = {T.phone_name(n): T.phone_ip(n) for n in range(1, phones + 1)}
        self.addresses[T.ROUTER] = T.ROUTER_LAN_IP
        self.addresses[T.SERVER] = T.SERVER_IP
        self.addresses6: dict[str, str] = {T.phone_name(n): T.phone_ip6(n) for n in range(1, phones + 1)}
        self.addresses6[T.ROUTER] = T.ROUTER_LAN_IP6
        self.addresses6[T.SERVER] = T.SERVER_IP6
        self.media_addresses6: dict[str, str] = {T.SERVER: T.SERVER_MEDIA_IP6}
        self.wan_hosts: list[str] = [T.SERVER]
        self._created: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self.is_up = False

    # ----------------------------------------------------------------- names
    @property
    def nodes(self) -> list[str]:
        """All node names, switches included."""
        return [*self.phones, T.LAN_SWITCH, T.ROUTER, T.WAN_SWITCH, *self.wan_hosts]

    def netns(self, node: str) -> str:
        """Namespace name of ``node`` (use it with ``ip netns exec`` / ``ip -n``)."""
        if node not in self.nodes:
            raise KeyError(f"unknown lab node {node!r}; nodes: {', '.join(self.nodes)}")
        return f"{self.prefix}-{node}"

    def ip_of(self, node: str) -> str:
        """The address of a host node (the LAN address for the router)."""
        return self.addresses[node]

    def ip6_of(self, node: str) -> str:
        """The IPv6 address of a host node (the LAN address for the router)."""
        return self.addresses6[node]

    def media_ip6_of(self, node: str) -> str:
        """A WAN host's second IPv6 address, for media from another address than its signalling."""
        return self.media_addresses6[node]

    def lan_routes6(self) -> list[tuple[str, str]]:
        """(LAN prefix, router WAN address) of every routed IPv6 LAN: the routes of a WAN host."""
        return [(T.LAN_NET6, T.ROUTER_WAN_IP6)]

    # --------------------------------------------------------------- running
    def _argv(self, node: str, argv: Sequence[str]) -> list[str]:
        # `ip netns exec` execs the command directly (no fork in non-batch mode), so the pid of a
        # Popen is the pid of the command itself: signals (SIGINT to dumpcap) reach it.
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def run(
        self,
        node: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``node`` (text mode, output captured); CommandError on failure if check."""
        try:
            return subprocess.run(
                self._argv(node, argv),
                check=check,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except subprocess.CalledProcessError as exc:
            raise CommandError(node, exc) from None

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``node`` in the background; ``down()`` ends it if still running.

        stdin defaults to /dev/null: nothing started by the lab may wait for a terminal.
        """
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self._argv(node, argv), **kw)
        self._procs.append(proc)
        return proc

    def python(
        self, node: str, args: Sequence[str], *, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run the stdlib helper script ``_nstools.py`` in ``node`` (ping, checksum offload)."""
        return self.run(node, [sys.executable, _NSTOOLS, *args], check=check, timeout=timeout)

    def nft(self, node: str, script: str) -> subprocess.CompletedProcess[str]:
        """Feed ``script`` to ``nft -f -`` in ``node`` (one atomic transaction)."""
        return self.run(node, ["nft", "-f", "-"], input=script)

    def sysctl(self, node: str, key: str, value: str | int) -> None:
        """Set a sysctl (``net.ipv4.ip_forward`` style key) inside ``node``'s namespace.

        Written through /proc/sys from a process inside the namespace: /proc/sys/net shows the
        namespace of the process that opens it.
        """
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(node, ["sh", "-c", f"printf '%s\\n' {shlex.quote(str(value))} > {shlex.quote(path)}"])

    def read_sysctl(self, node: str, key: str) -> str:
        """Read a sysctl inside ``node``."""
        return self.run(node, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()

    # ------------------------------------------------------------- NAT setups
    def masquerade(self) -> None:
        """Install the admin's plain NAT in the router: table ip lab_admin, masquerade on wan0."""
        self.nft(T.ROUTER, _MASQUERADE_SCRIPT)

    def remove_masquerade(self) -> None:
        """Delete the lab_admin table (no error if absent)."""
        self.nft(T.ROUTER, f"add table ip {MASQUERADE_TABLE}\ndelete table ip {MASQUERADE_TABLE}\n")

    def kernel_sip_alg(self) -> None:
        """Attach the kernel SIP helper (nf_conntrack_sip/nf_nat_sip) to port 5060 in the router.

        Baseline only: with masquerade it rewrites SIP/SDP and creates RTP expectations, so media
        flows both ways. The module is built in on the lab kernel (CONFIG_NF_CONNTRACK_SIP=y); on a
        modular kernel nft autoloads it via the "sip" helper type.
        """
        self.nft(T.ROUTER, _ALG_SCRIPT)

    def remove_kernel_sip_alg(self) -> None:
        """Delete the lab_alg table (no error if absent)."""
        self.nft(T.ROUTER, f"add table ip {ALG_TABLE}\ndelete table ip {ALG_TABLE}\n")

    def flush_conntrack(self, node: str = T.ROUTER) -> None:
        """Delete all conntrack entries in ``node`` (between calls: a stale entry pins old NAT)."""
        self.run(node, ["conntrack", "-F"], check=False)

    def admin_firewall(self, nfsip_rule: bool = False, node: str = T.ROUTER) -> None:
        """Install the admin's firewall in ``node``: ``table inet filter``, forward policy drop,
        established/related and LAN to WAN accepted (``admin_firewall_script``). ``nfsip_rule``
        adds the one rule for nfsip's pinholes (the mark bit ``DEFAULTS.pinhole_mark``).

        Both families: an IPv4 flow that a DNAT (one of nfsip's pinholes) sends on to the LAN is
        forwarded, so without the nfsip rule the policy drops it like an IPv6 one.
        """
        self.nft(node, admin_firewall_script(nfsip_rule))

    def remove_admin_firewall(self, node: str = T.ROUTER) -> None:
        """Delete ``table inet filter`` (no error if absent)."""
        self.nft(node, f"add table inet {ADMIN_FIREWALL_TABLE}\ndelete table inet {ADMIN_FIREWALL_TABLE}\n")

    def admin_firewall_dropped(self, node: str = T.ROUTER) -> int:
        """Packets the admin firewall's forward policy dropped so far (its counting last rule)."""
        listing = self.run(node, ["nft", "list", "chain", "inet", ADMIN_FIREWALL_TABLE, "forward"]).stdout
        m = re.search(rf'counter packets (\d+) bytes \d+ comment "{re.escape(POLICY_DROP_COMMENT)}"', listing)
        if m is None:
            raise LabError(f"no policy-drop counter in the admin firewall of {node}:\n{listing}")
        return int(m.group(1))

    def conntrack_udp_timeouts(self, unreplied_s: int, stream_s: int, node: str = T.ROUTER) -> None:
        """Set ``node``'s UDP conntrack timeouts (``nf_conntrack_udp_timeout``, ``..._stream``).

        Per namespace on the lab kernel (6.18): writable inside the router namespace, the root
        namespace and the other nodes keep the defaults (30 s / 120 s). Short values let a test
        wait past them: the situation of a phone whose state in the router expired between its
        REGISTER and an inbound call.
        """
        self.sysctl(node, "net.netfilter.nf_conntrack_udp_timeout", unreplied_s)
        self.sysctl(node, "net.netfilter.nf_conntrack_udp_timeout_stream", stream_s)

    def conntrack_udp(self, address: str, port: int | None = None, node: str = T.ROUTER) -> list[str]:
        """``node``'s UDP conntrack entries (``conntrack -L`` lines) in which ``address`` appears,
        on ``port`` when given (either side, either direction; the family follows ``address``)."""
        family = "ipv6" if T.is_ip6(address) else "ipv4"
        out = self.run(node, ["conntrack", "-L", "-f", family, "-p", "udp"], check=False).stdout
        return [
            line for line in out.splitlines() if f"={address} " in line and (port is None or f"port={port} " in line)
        ]

    def wait_conntrack_udp_gone(
        self, address: str, port: int | None = None, timeout: float = 30.0, node: str = T.ROUTER
    ) -> list[str]:
        """Wait until ``conntrack_udp(address, port)`` is empty (expired); returns what is left."""
        deadline = time.monotonic() + timeout
        while (left := self.conntrack_udp(address, port, node)) and time.monotonic() < deadline:
            time.sleep(0.25)
        return left

    # --------------------------------------------------------------- checks
    def ping(self, src: str, dst: str, *, count: int = 1, timeout: float = 1.0) -> bool:
        """True if all ``count`` ICMP echoes from ``src`` to address ``dst`` (IPv4 or IPv6) were answered.

        The lab VM has no ping binary: this runs a stdlib ICMP echo in the namespace.
        """
        res = self.python(src, ["ping", dst, str(count), str(timeout)], check=False, timeout=count * timeout + 10)
        return res.returncode == 0

    # -------------------------------------------------------------- building
    def _add_ns(self, node: str) -> None:
        ns = self.netns(node)
        _ip("netns", "add", ns)
        self._created.append(ns)
        # Set before any interface exists (new interfaces copy conf.default).
        if node in (T.LAN_SWITCH, T.WAN_SWITCH, T.LANB_SWITCH):
            # A switch needs no address of its own: IPv6 off, no MLD or DAD traffic from it.
            sysctls = {
                "net.ipv6.conf.all.disable_ipv6": 1,
                "net.ipv6.conf.default.disable_ipv6": 1,
            }
        else:
            # Static addresses only: no DAD (an address is usable at once, not "tentative" for a
            # second), no router advertisements taken, no router solicitations, no SLAAC.
            sysctls = {
                f"net.ipv6.conf.{conf}.{key}": 0
                for conf in ("all", "default")
                for key in ("accept_dad", "accept_ra", "autoconf")
            }
        if node in (T.LAN_SWITCH, T.WAN_SWITCH):
            # br_netfilter is built into the lab kernel and bridge-nf-call-iptables=1 is the
            # per-netns default: the bridge would run IP sanity checks and trim skbs to the IP
            # total length, which can hide a broken packet that nfsip produced (LAB.md).
            sysctls.update(
                {
                    "net.bridge.bridge-nf-call-iptables": 0,
                    "net.bridge.bridge-nf-call-ip6tables": 0,
                    "net.bridge.bridge-nf-call-arptables": 0,
                }
            )
        if node == T.ROUTER:
            sysctls["net.ipv4.ip_forward"] = 1
            sysctls["net.ipv6.conf.all.forwarding"] = 1
        script = ["set -e"]
        for key, value in sysctls.items():
            path = "/proc/sys/" + key.replace(".", "/")
            # The bridge keys exist only when br_netfilter is loaded; if it is not, the bridge
            # does not call netfilter at all, which is what we want anyway.
            if key.startswith("net.bridge."):
                script.append(f"if [ -e {path} ]; then echo {value} > {path}; fi")
            else:
                script.append(f"echo {value} > {path}")
        self.run(node, ["sh", "-c", "\n".join(script)])
        _ip("-n", ns, "link", "set", "lo", "up")

    def _wire(self, switch: str, node: str, ifname: str) -> None:
        """Connect ``node`` (interface ``ifname``) to a port of ``switch`` named after the node.

        The veth is created inside the switch namespace with its peer placed directly into the
        node's namespace: no interface ever appears in the root namespace.
        """
        sw_ns, node_ns = self.netns(switch), self.netns(node)
        _ip("-n", sw_ns, "link", "add", node, "type", "veth", "peer", "name", ifname, "netns", node_ns)
        _ip("-n", sw_ns, "link", "set", node, "master", T.BRIDGE_IF, "up")
        _ip("-n", node_ns, "link", "set", ifname, "up")
        # Pitfall (LAB.md): veth TX checksum offload leaves CHECKSUM_PARTIAL packets whose
        # captured UDP checksum is wrong. There is no ethtool on the lab VM; _nstools does the
        # ioctl. Off on both ends so that every capture point shows final checksums.
        self.python(switch, ["txcsum-off", node])
        self.python(node, ["txcsum-off", ifname])

    def _add_switch(self, switch: str) -> None:
        self._add_ns(switch)
        ns = self.netns(switch)
        # STP off (the default) so that ports forward at once instead of after 2 x forward_delay.
        # Multicast snooping off: IPv6 neighbour discovery is multicast, and a snooping bridge
        # without an MLD querier would decide by the hosts' reports which port gets it.
        _ip("-n", ns, "link", "add", T.BRIDGE_IF, "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        _ip("-n", ns, "link", "set", T.BRIDGE_IF, "up")

    def _add_host(
        self,
        node: str,
        ip: str,
        switch: str,
        gateway: str | None,
        ip6: str,
        routes6: Sequence[tuple[str, str]],
    ) -> None:
        """A host on ``switch``: ``ip``/24 and ``ip6``/64; the IPv4 default route via ``gateway``
        (None: no route off the subnet) and the IPv6 routes ``routes6`` ((prefix, via) pairs)."""
        self._add_ns(node)
        self._wire(switch, node, T.HOST_IF)
        ns = self.netns(node)
        _ip("-n", ns, "addr", "add", f"{ip}/{T.PREFIX_LEN}", "dev", T.HOST_IF)
        self._add_addr6(ns, T.HOST_IF, ip6)
        if gateway:
            _ip("-n", ns, "route", "add", "default", "via", gateway)
        for prefix, via in routes6:
            _ip("-n", ns, "-6", "route", "add", prefix, "via", via)

    @staticmethod
    def _add_addr6(ns: str, ifname: str, ip6: str) -> None:
        # nodad: usable at once (accept_dad=0 covers the link-local address, nodad this one).
        _ip("-n", ns, "addr", "add", f"{ip6}/{T.PREFIX_LEN6}", "dev", ifname, "nodad")

    def add_ip6(self, node: str, ip6: str) -> None:
        """Give host ``node`` one more IPv6 address on its interface (usable at once)."""
        self._add_addr6(self.netns(node), T.HOST_IF, ip6)

    def up(self) -> Self:
        """Build the whole topology; on any failure everything built so far is removed."""
        if self.is_up:
            return self
        try:
            self._add_switch(T.LAN_SWITCH)
            self._add_switch(T.WAN_SWITCH)
            self._add_ns(T.ROUTER)
            self._wire(T.LAN_SWITCH, T.ROUTER, T.ROUTER_LAN_IF)
            self._wire(T.WAN_SWITCH, T.ROUTER, T.ROUTER_WAN_IF)
            rns = self.netns(T.ROUTER)
            _ip("-n", rns, "addr", "add", f"{T.ROUTER_LAN_IP}/{T.PREFIX_LEN}", "dev", T.ROUTER_LAN_IF)
            _ip("-n", rns, "addr", "add", f"{T.ROUTER_WAN_IP}/{T.PREFIX_LEN}", "dev", T.ROUTER_WAN_IF)
            self._add_addr6(rns, T.ROUTER_LAN_IF, T.ROUTER_LAN_IP6)
            self._add_addr6(rns, T.ROUTER_WAN_IF, T.ROUTER_WAN_IP6)
            lan_gateway6 = [("default", T.ROUTER_LAN_IP6)]
            for phone in self.phones:
                self._add_host(
                    phone, self.addresses[phone], T.LAN_SWITCH, T.ROUTER_LAN_IP, self.addresses6[phone], lan_gateway6
                )
            # The server deliberately gets no default route and no route to the LAN: an
            # un-translated private address must be unreachable, as on the real internet.
            # In IPv6 the LAN prefix is global and routed: the server reaches it via the router.
            self._add_host(T.SERVER, T.SERVER_IP, T.WAN_SWITCH, None, T.SERVER_IP6, self.lan_routes6())
            self.add_ip6(T.SERVER, T.SERVER_MEDIA_IP6)
        except BaseException:
            self.down()
            raise
        self.is_up = True
        return self

    def add_wan_host(
        self,
        node: str = "wanhost2",
        ip: str = T.WAN_HOST2_IP,
        ip6: str = T.WAN_HOST2_IP6,
        media_ip6: str = T.WAN_HOST2_MEDIA_IP6,
    ) -> str:
        """Attach one more "internet" host to the WAN switch (no default route, like the server;
        IPv6 routes to the LANs), with the IPv6 addresses ``ip6`` and ``media_ip6``."""
        if node in self.nodes:
            raise LabError(f"node {node!r} exists")
        self.wan_hosts.append(node)
        self.addresses[node] = ip
        self.addresses6[node] = ip6
        self.media_addresses6[node] = media_ip6
        self._add_host(node, ip, T.WAN_SWITCH, None, ip6, self.lan_routes6())
        self.add_ip6(node, media_ip6)
        return node

    def down(self) -> None:
        """Stop the lab's processes and delete all its namespaces. Idempotent, never raises."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=3)
        self._procs.clear()
        existing = set(list_namespaces())
        for ns in reversed(self._created):
            if ns in existing:
                _delete_namespace(ns)
        # Also anything with our prefix that we lost track of (e.g. up() interrupted mid-way).
        for ns in existing:
            if ns.startswith(self.prefix + "-") and ns not in self._created:
                _delete_namespace(ns)
        self._created.clear()
        self.is_up = False

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, phones={len(self.phones)}, up={self.is_up})"


class TwoSiteLab(Lab):
    """Two NAT sites on one WAN: the usual lab (phones behind ``router``) plus site B, phones
    ``phoneb<n>`` (10.1.0.x) behind ``routerb`` (LAN 10.1.0.1, WAN 198.51.100.4), for calls where
    both ends are behind NAT (addresses in ``topology``).

    Why a subclass: the one-site ``Lab`` stays exactly as the other tests know it. ``masquerade()``
    and ``remove_masquerade()`` act on both routers; ``router_of(node)`` names a phone's router.
    """

    def __init__(self, phones: int = 1, phones_b: int = 1, *, prefix: str | None = None) -> None:
        super().__init__(phones, prefix=prefix)
        if not 1 <= phones_b <= len(T.SITEB_PHONE_IPS):
            raise ValueError(f"phones_b must be 1..{len(T.SITEB_PHONE_IPS)}")
        self.phones_b: list[str] = [T.siteb_phone_name(n) for n in range(1, phones_b + 1)]
        self.addresses.update({T.siteb_phone_name(n): T.siteb_phone_ip(n) for n in range(1, phones_b + 1)})
        self.addresses[T.ROUTERB] = T.ROUTERB_LAN_IP
        self.addresses6.update({T.siteb_phone_name(n): T.siteb_phone_ip6(n) for n in range(1, phones_b + 1)})
        self.addresses6[T.ROUTERB] = T.ROUTERB_LAN_IP6

    @property
    def nodes(self) -> list[str]:
        """All node names of both sites, switches included."""
        return [*super().nodes, T.LANB_SWITCH, T.ROUTERB, *self.phones_b]

    def router_of(self, node: str) -> str:
        """The NAT router in front of a phone (``router`` or ``routerb``)."""
        return T.ROUTERB if node in self.phones_b else T.ROUTER

    def lan_routes6(self) -> list[tuple[str, str]]:
        """Both sites' IPv6 LANs, each via its router's WAN address."""
        return [*super().lan_routes6(), (T.LANB_NET6, T.ROUTERB_WAN_IP6)]

    def up(self) -> Self:
        """Build site A (``Lab.up``), then site B; on failure everything is removed."""
        if self.is_up:
            return self
        super().up()
        try:
            self._add_switch(T.LANB_SWITCH)
            # _add_ns sets ip_forward only for T.ROUTER: routerb gets it here.
            self._add_ns(T.ROUTERB)
            self.sysctl(T.ROUTERB, "net.ipv4.ip_forward", 1)
            self.sysctl(T.ROUTERB, "net.ipv6.conf.all.forwarding", 1)
            self._wire(T.LANB_SWITCH, T.ROUTERB, T.ROUTER_LAN_IF)
            self._wire(T.WAN_SWITCH, T.ROUTERB, T.ROUTER_WAN_IF)
            rns = self.netns(T.ROUTERB)
            _ip("-n", rns, "addr", "add", f"{T.ROUTERB_LAN_IP}/{T.PREFIX_LEN}", "dev", T.ROUTER_LAN_IF)
            _ip("-n", rns, "addr", "add", f"{T.ROUTERB_WAN_IP}/{T.PREFIX_LEN}", "dev", T.ROUTER_WAN_IF)
            self._add_addr6(rns, T.ROUTER_LAN_IF, T.ROUTERB_LAN_IP6)
            self._add_addr6(rns, T.ROUTER_WAN_IF, T.ROUTERB_WAN_IP6)
            for phone in self.phones_b:
                self._add_host(
                    phone,
                    self.addresses[phone],
                    T.LANB_SWITCH,
                    T.ROUTERB_LAN_IP,
                    self.addresses6[phone],
                    [("default", T.ROUTERB_LAN_IP6)],
                )
        except BaseException:
            self.down()
            raise
        return self

    def masquerade(self) -> None:
        """The admin's plain NAT (table ip lab_admin) in both routers."""
        super().masquerade()
        self.nft(T.ROUTERB, _MASQUERADE_SCRIPT)

    def remove_masquerade(self) -> None:
        """Delete the lab_admin table in both routers."""
        super().remove_masquerade()
        self.nft(T.ROUTERB, f"add table ip {MASQUERADE_TABLE}\ndelete table ip {MASQUERADE_TABLE}\n")

    def __repr__(self) -> str:
        return (
            f"TwoSiteLab(prefix={self.prefix!r}, phones={len(self.phones)}, phones_b={len(self.phones_b)}, "
            f"up={self.is_up})"
        )
