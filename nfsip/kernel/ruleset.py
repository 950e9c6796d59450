"""The nftables table nfsip owns, rendered from the configuration.

nfsip lives on someone else's router: it never touches the admin's tables and never flushes the ruleset;
it only replaces its own table (`table inet nfsip`: IPv4 and IPv6, each map in both families, the IPv6
one named with a "6"). Priorities, and why:

- media NAT at dstnat-10 / srcnat-10: the first NAT chain that binds a new connection wins, so our map
  lookups run before the admin's dnat/masquerade (dstnat, srcnat). A map miss matches nothing and the
  admin's rules apply as if nfsip were not there.
- Every flow a pinhole lets in gets the `pinhole_mark` bit in its conntrack mark, in the same rule as its
  DNAT: nfsip's accept cannot override a drop in the admin's forward chain (every base chain must
  accept), so a forward policy of drop lets nfsip's pinholes through with one rule matching that bit
  (nfsip.firewall.admin_rule). A conntrack mark, not a packet mark: a UDP flow stays "new", not
  "established", until its first reply, and every packet of it must pass the admin's rule until then (the
  far end's media before the phone's); only the flow's first packet crosses a NAT chain. Without IPv6 NAT
  the map's value is the key itself (an identity DNAT that translates nothing): the mark is what such a
  pinhole is for. Teardown deletes the flows' conntrack entries, and the mark with them.
- SIP divert at dstnat+10 / srcnat+10, in *filter* chains (a nat chain only sees the first packet of a
  connection): there the queue sees the translated addresses, i.e. the public port masquerade chose for
  an outbound message and the LAN host an inbound one is for (docs/architecture.md, "The kernel side").
  The daemon tells the directions apart by the hook (prerouting: inbound, postrouting: outbound).
- Filter chains cost every forwarded packet, media included (bench/ruleset_cost.py): as few base chains
  as the hooks above need, one protocol test per chain, and in each rule the port test that fails for
  media (a literal, not a set lookup) before interface names, ct status or fib. No per-packet counter
  lookups: per-call media counts come from conntrack accounting (nfsip.kernel.conntrack.media_counters);
  the two counter-set lookups the table had cost every forwarded packet (docs/nftables.md). The table
  itself turns accounting on, through a rule no packet runs (ACCOUNTING_CHAIN).
- The queue statement itself sits alone in `sip_queue`, and the daemon adds it: as `queue num N bypass`
  where the kernel has nft_queue, else as the xt NFQUEUE target through nft_compat over netlink
  (nfsip.kernel.divert), which `nft -f` cannot express. So the same table text loads with `nft -f` (or an
  `include` from the admin's nftables.conf) on every kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DEFAULTS, Config

DNAT_MAP = "media_dnat"
DNAT_STRICT_MAP = "media_dnat_strict"  # far-end ip . public ip . public port -> LAN ip . port
SNAT_MAP = "media_snat"
SIP_DNAT_MAP = "sip_dnat"  # registrar ip . public ip . public port -> LAN ip . port
SIP_DNAT_ANY_MAP = "sip_dnat_any"  # public ip . public port -> LAN ip . port (registration_from = "any")
SIP_SNAT_MAP = "sip_snat"
# A TCP registration: a registrar's new connection to the phone's public endpoint goes to the TCP relay, which
# connects to the phone; the value (the phone's Contact) is the relay's to read, and a restarted daemon's.
SIP_TCP_MAP = "sip_tcp"  # registrar ip . public ip . public port -> phone ip . port
SIP_TCP_ANY_MAP = "sip_tcp_any"  # public ip . public port -> phone ip . port (registration_from = "any")
# The regular chain the daemon fills with the TCP relay's redirects when its relay listens (relay_rules()).
TCP_RELAY_CHAIN = "tcp_relay"
# Counts new TLS SIP connections from the LAN (nfsip cannot read them); the set keeps which hosts made them.
TLS_CHAIN = "sip_tls"
TLS_HOSTS_SET = "sip_tls_hosts"
# Each map exists once per family: the IPv6 twin has this suffix (`media_dnat6`), and its addresses are
# ipv6_addr. Which one a pinhole's elements go to follows its addresses' family (map_for()).
IPV6_SUFFIX = "6"
QUEUE_CHAIN = "sip_queue"
# The per-LAN-host SIP rate check in front of the queue: one chain per direction, each with the dynamic set
# that holds one token bucket per LAN host (see render()).
RATE_OUT_CHAIN = "sip_rate_out"
RATE_IN_CHAIN = "sip_rate_in"
RATE_OUT_SET = "sip_hosts_out"
RATE_IN_SET = "sip_hosts_in"
# Buckets kept at once per direction; a host beyond that is not rate-checked (its SIP is queued as before).
RATE_SET_SIZE = 65536
# The filter chains every forwarded packet traverses (see render() for what each does, and why in that order).
BEFORE_SNAT_CHAIN = "before_snat"  # the first datagram of a new LAN -> WAN SIP flow
SIP_TO_WAN_CHAIN = "sip_to_wan"
SIP_FROM_WAN_CHAIN = "sip_from_wan"
# A regular chain nothing jumps to: loading its rule turns on conntrack accounting (see render()).
ACCOUNTING_CHAIN = "conntrack_accounting"


def map_for(name: str, address: str) -> str:
    """The map of that name for the family of `address` (an IPv6 address contains ":")."""
    return name + IPV6_SUFFIX if ":" in address else name


@dataclass(frozen=True, slots=True)
class RulesetOptions:
    table: str
    wan_interface: str
    queue_num: int
    sip_ports: tuple[int, ...]
    native_queue: bool  # False: sip_queue gets its NFQUEUE rule through nft_compat
    bypass: bool
    sip_rate_per_host: int
    sip_burst_per_host: int
    pinhole_mark: int = DEFAULTS.pinhole_mark
    tcp_relay_port: int = DEFAULTS.tcp_relay_port
    sip_tls_ports: tuple[int, ...] = DEFAULTS.sip_tls_ports


def options_from(config: Config, native_queue: bool) -> RulesetOptions:
    return RulesetOptions(
        table=config.table_name,
        wan_interface=config.wan_interface,
        queue_num=config.queue_num,
        sip_ports=config.sip_ports,
        native_queue=native_queue,
        bypass=config.queue_bypass,
        sip_rate_per_host=config.sip_rate_per_host,
        sip_burst_per_host=config.sip_burst_per_host,
        pinhole_mark=config.pinhole_mark,
        tcp_relay_port=config.tcp_relay_port,
        sip_tls_ports=config.sip_tls_ports,
    )


def queue_rule(opts: RulesetOptions) -> str:
    """The native queue rule the daemon appends to `sip_queue` on kernels with nft_queue."""
    bypass = " bypass" if opts.bypass else ""
    return f"add rule inet {opts.table} {QUEUE_CHAIN} queue num {opts.queue_num}{bypass}\n"


def port_match(ports: tuple[int, ...]) -> str:
    """Ports as a rule compares them: one port a literal, several an anonymous set. The divert rules carry
    the ports themselves rather than "@sip_ports": a literal is a plain compare, evaluated inline by the
    kernel, where a set lookup is a call into the set backend, and each of the port tests runs for every
    forwarded UDP packet (docs/nftables.md, measured by bench/ruleset_cost.py)."""
    listed = ", ".join(str(p) for p in ports)
    return listed if len(ports) == 1 else f"{{ {listed} }}"


def relay_rules(opts: RulesetOptions) -> str:
    """The TCP relay's redirects, added to `tcp_relay` by the daemon once its relay listens (so that with no
    daemon TCP SIP is not sent to a port nobody listens on): a LAN host's connection to a SIP port of a host
    beyond the WAN, and a registrar's to a TCP-registered phone's public endpoint (marked like every
    pinhole: the admin's firewall accepts it with the same rule, in its input chain, since the relay is the
    router itself)."""
    wan, port = opts.wan_interface, opts.tcp_relay_port
    sip = port_match(opts.sip_ports)
    rule = f"add rule inet {opts.table} {TCP_RELAY_CHAIN}"
    mark_set = f"ct mark set ct mark | {opts.pinhole_mark:#010x}"
    redirect = f"redirect to :{port}"
    text = f'{rule} iifname != "{wan}" tcp dport {sip} fib daddr oifname "{wan}" {redirect}\n'
    for ip, _addr, x in _FAMILIES:
        for key, name in (
            (f"{ip} saddr . {ip} daddr . tcp dport", SIP_TCP_MAP),
            (f"{ip} daddr . tcp dport", SIP_TCP_ANY_MAP),
        ):
            text += f'{rule} iifname "{wan}" {key} @{name}{x} {mark_set} {redirect}\n'
    return text


# (nft address keyword, nft address type, map-name suffix) per family.
_FAMILIES = (("ip", "ipv4_addr", ""), ("ip6", "ipv6_addr", IPV6_SUFFIX))


def _maps() -> str:
    """Every pinhole map, in both families."""
    maps = (
        (
            DNAT_MAP,
            "{a} . inet_service : {a} . inet_service",
            "public ip . public port -> LAN ip . LAN port, one element per pinhole, each with its own timeout",
        ),
        (
            DNAT_STRICT_MAP,
            "{a} . {a} . inet_service : {a} . inet_service",
            'media_from = "sdp": the same, but only for media from the far end\'s SDP address',
        ),
        (
            SNAT_MAP,
            "{a} . inet_service : {a} . inet_service",
            "LAN ip . LAN port -> public ip . public port (outgoing media leaves from the port the SDP named)",
        ),
        (
            SIP_DNAT_MAP,
            "{a} . {a} . inet_service : {a} . inet_service",
            "a registered phone's SIP port, kept reachable for the registration's lifetime even after the UDP "
            "conntrack entry expired: from the registrar that accepted it only ...",
        ),
        (
            SIP_DNAT_ANY_MAP,
            "{a} . inet_service : {a} . inet_service",
            '... or, when configured (registration_from = "any"), from anywhere',
        ),
        (
            SIP_SNAT_MAP,
            "{a} . inet_service : {a} . inet_service",
            "and its outgoing SIP keeps the public port the registrar knows",
        ),
        (
            SIP_TCP_MAP,
            "{a} . {a} . inet_service : {a} . inet_service",
            "a phone registered over TCP: its registrar's new connection to the phone's public endpoint goes to "
            "the TCP relay (which connects to the phone) ...",
        ),
        (
            SIP_TCP_ANY_MAP,
            "{a} . inet_service : {a} . inet_service",
            '... or anyone\'s, with registration_from = "any"',
        ),
    )
    text = ""
    for name, kind, what in maps:
        text += f"\t# {what}\n"
        for _ip, addr, suffix in _FAMILIES:
            text += f"\tmap {name}{suffix} {{\n\t\ttype {kind.format(a=addr)}\n\t\tflags timeout\n\t}}\n"
        text += "\n"
    return text


def _pinhole_rules(wan: str, mark: int) -> tuple[str, str]:
    """The NAT chains' rules, in both families: (prerouting, postrouting)."""
    mark_set = f"ct mark set ct mark | {mark:#010x}"
    pre = post = hairpin = ""
    for ip, _addr, x in _FAMILIES:
        # The key is looked up first: a hit is marked and translated, a miss matches nothing. No iifname on
        # the media rules: a LAN phone sending to another LAN phone's public media port (a hairpin call
        # through an outside softswitch) is forwarded inside too.
        for iif, key, name in (
            ("", f"{ip} daddr . udp dport", DNAT_MAP),
            ("", f"{ip} saddr . {ip} daddr . udp dport", DNAT_STRICT_MAP),
            (f'iifname "{wan}" ', f"{ip} saddr . {ip} daddr . udp dport", SIP_DNAT_MAP),
            (f'iifname "{wan}" ', f"{ip} daddr . udp dport", SIP_DNAT_ANY_MAP),
        ):
            pre += f"\t\t{iif}meta l4proto udp {key} @{name}{x} {mark_set} dnat {ip} to {key} map @{name}{x}\n"
        for name in (SNAT_MAP, SIP_SNAT_MAP):
            post += f'\t\toifname "{wan}" meta l4proto udp snat {ip} to {ip} saddr . udp sport map @{name}{x}\n'
        hairpin += f"\t\tct status dnat meta l4proto udp snat {ip} to {ip} saddr . udp sport map @{SNAT_MAP}{x}\n"
    return pre, post + hairpin


def _tls_rules(wan: str, tls_ports: tuple[int, ...]) -> str:
    """New TLS SIP connections from the LAN: counted, and their hosts kept for `nfsip status`."""
    if not tls_ports:
        return ""
    tls = port_match(tls_ports)
    return "".join(
        f'\t\tiifname != "{wan}" meta l4proto tcp th dport {tls} update @{TLS_HOSTS_SET}{x} {{ {ip} saddr }} '
        f"jump {TLS_CHAIN}\n"
        for ip, _addr, x in _FAMILIES
    )


def render(opts: RulesetOptions) -> str:
    """The table as nft text. Loaded by `nft -f` it replaces an older nfsip table atomically."""
    wan = opts.wan_interface
    ports = ", ".join(str(p) for p in opts.sip_ports)  # the elements of the set sip_ports
    sip = port_match(opts.sip_ports)
    bypass = " bypass" if opts.bypass else ""
    limit = f"limit rate over {opts.sip_rate_per_host}/second burst {opts.sip_burst_per_host} packets"
    if opts.native_queue:
        queue_line = f"queue num {opts.queue_num}{bypass}"
    else:
        queue_line = f"xt NFQUEUE target, which nft lists as: queue num {opts.queue_num}{bypass}"
    queue_rule = (
        "\t\tcounter\n"
        "\t\t# The daemon appends the queue rule at start, in the form this kernel supports (native\n"
        "\t\t# nft_queue, or the xt NFQUEUE target through nft_compat, which `nft -f` cannot express):\n"
        f"\t\t#   {queue_line}\n"
        "\t\t# With `workers` > 1 it appends instead a dispatch by LAN host to chains sip_queue_<i>, one queue\n"
        "\t\t# each (`nfsip ruleset` shows them; nfsip.kernel.fanout).\n"
        "\t\t# Until then, or with no daemon running, SIP crosses the router unchanged.\n"
    )
    pre, post = _pinhole_rules(wan, opts.pinhole_mark)
    tls = _tls_rules(wan, opts.sip_tls_ports)
    rate_sets = "".join(
        f"\tset {name}{x} {{\n\t\ttype {addr}\n\t\tsize {RATE_SET_SIZE}\n\t\tflags dynamic,timeout\n"
        "\t\ttimeout 1m\n\t}\n\n"
        for name in (RATE_OUT_SET, RATE_IN_SET)
        for _ip, addr, x in _FAMILIES
    )
    return f"""\
# nfsip: SIP-through-NAT helper. This table is owned by nfsip; the daemon replaces it as a whole.
# Generated by `nfsip ruleset`. Include it from /etc/nftables.conf or let `nfsip run` install it.
# nfsip's table was `table ip` while nfsip spoke IPv4 only: a load removes that one too.
add table ip {opts.table}
delete table ip {opts.table}
add table inet {opts.table}
delete table inet {opts.table}
table inet {opts.table} {{
\tcomment "managed by nfsip"

\tset sip_ports {{
\t\ttype inet_service
\t\telements = {{ {ports} }}
\t}}

{_maps()}\t# NAT chains see only the first packet of a connection: their cost is per flow, not per packet.
\tchain pinholes_prerouting {{
\t\ttype nat hook prerouting priority dstnat - 10; policy accept;
{pre}\t\t# SIP over TCP: the daemon puts the redirects to its relay into {TCP_RELAY_CHAIN} while it runs.
\t\tmeta l4proto tcp jump {TCP_RELAY_CHAIN}
{tls}\t}}

\t# Empty until the daemon's TCP relay listens (nfsip.kernel.ruleset.relay_rules; `nfsip ruleset` shows
\t# them): with no daemon, TCP SIP crosses the router untouched, as UDP SIP does with no queue reader.
\tchain {TCP_RELAY_CHAIN} {{
\t}}

\t# TLS SIP from the LAN cannot be read: its new connections are counted here (nfsip_sip_tls_flows_total)
\t# and its hosts kept for `nfsip status`, so that an admin sees why such a phone is not helped.
\tset {TLS_HOSTS_SET} {{
\t\ttype ipv4_addr
\t\tsize {RATE_SET_SIZE}
\t\tflags dynamic,timeout
\t\ttimeout 1h
\t}}

\tset {TLS_HOSTS_SET}6 {{
\t\ttype ipv6_addr
\t\tsize {RATE_SET_SIZE}
\t\tflags dynamic,timeout
\t\ttimeout 1h
\t}}

\tchain {TLS_CHAIN} {{
\t\tcounter
\t}}

\tchain pinholes_postrouting {{
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\t# The last rules, hairpin: media DNATed back into the LAN leaves from the sender's public port, so the
\t\t# receiver sees the address its SDP peer announced and answers through the router too.
{post}\t}}

\t# The filter chains below run for EVERY packet the router forwards, media included, so each is written
\t# for the packet that is neither SIP nor media: one protocol test per chain (the "th" loads after it
\t# need no protocol test of their own), then the cheapest test that fails for it (the SIP port, compared
\t# as a literal), and only then interface names, conntrack status or a FIB lookup. Media passes them
\t# without a verdict; its cost here is the protocol tests and the port compares. (Per-call media counts
\t# come from conntrack accounting, which the daemon turns on: no counter lookup per packet here.)

\t# Before source NAT, after the admin's forward filter (what it drops is not queued): the first datagram
\t# of a new LAN -> WAN SIP flow. At srcnat+10 its conntrack entry is not confirmed yet, so ctnetlink
\t# cannot say which LAN host sent it; the daemon notes the sender here and recognises the same bytes when
\t# they come back through {SIP_TO_WAN_CHAIN} (nfsip.kernel.firstpacket). "! confirmed", not "ct state
\t# new": a UDP flow stays "new" until its first reply, and every datagram of it would be queued twice.
\tchain {BEFORE_SNAT_CHAIN} {{
\t\ttype filter hook postrouting priority mangle; policy accept;
\t\tmeta l4proto != udp return
\t\tth dport {sip} ct status ! confirmed oifname "{wan}" jump {RATE_OUT_CHAIN}
\t\tth sport {sip} ct status ! confirmed oifname "{wan}" jump {RATE_OUT_CHAIN}
\t}}

\t# LAN -> WAN SIP, after source NAT: the queue sees the public address and port the server will see.
\tchain {SIP_TO_WAN_CHAIN} {{
\t\ttype filter hook postrouting priority srcnat + 10; policy accept;
\t\tmeta l4proto != udp return
\t\tth dport {sip} oifname "{wan}" jump {RATE_OUT_CHAIN}
\t\tth sport {sip} oifname "{wan}" jump {RATE_OUT_CHAIN}
\t}}

\t# WAN -> LAN SIP, after destination NAT: the queue sees the LAN host it is for. Datagrams for the router
\t# itself (scans, floods of udp/5060 with no LAN flow behind them) are not queued; that FIB lookup is the
\t# dearest test here, so only SIP from the WAN gets that far. A datagram from a SIP port that a media
\t# pinhole DNATed to a phone's media port (its LAN ip . port is a key of {SNAT_MAP}) is media whatever
\t# it carries: never queued, so no outside host reaches the engine through a call's media ports (a BYE
\t# forged there would end the call). The dport rule needs no such test: a media pinhole never leads to
\t# a SIP port (nfsip.core.policy).
\tchain {SIP_FROM_WAN_CHAIN} {{
\t\ttype filter hook prerouting priority dstnat + 10; policy accept;
\t\tmeta l4proto != udp return
\t\tth sport {sip} iifname "{wan}" fib daddr type != local ip daddr . th dport != @{SNAT_MAP} jump {RATE_IN_CHAIN}
\t\tth sport {sip} iifname "{wan}" fib daddr type != local ip6 daddr . th dport != @{SNAT_MAP}6 jump {RATE_IN_CHAIN}
\t\tth dport {sip} iifname "{wan}" fib daddr type != local jump {RATE_IN_CHAIN}
\t}}

\t# One token bucket of SIP datagrams per LAN host and direction, before the queue: a host over its rate
\t# (sip_rate_per_host, burst sip_burst_per_host) has the excess of its SIP accepted unchanged, here, and
\t# counted, so that its flood cannot fill the queue and push other phones' SIP past nfsip (a full queue
\t# fails open for everyone). The LAN host of an outbound datagram is its flow's original source (a flow
\t# the phone opened), or the reply source of a flow opened towards it (a registration pinhole); of an
\t# inbound one, its destination after DNAT. Buckets of hosts quiet for a minute are forgotten.
{rate_sets}
\tchain {RATE_OUT_CHAIN} {{
\t\tct direction original update @{RATE_OUT_SET} {{ ct original ip saddr {limit} }} counter accept
\t\tct direction reply update @{RATE_OUT_SET} {{ ct reply ip saddr {limit} }} counter accept
\t\tct direction original update @{RATE_OUT_SET}6 {{ ct original ip6 saddr {limit} }} counter accept
\t\tct direction reply update @{RATE_OUT_SET}6 {{ ct reply ip6 saddr {limit} }} counter accept
\t\tjump {QUEUE_CHAIN}
\t}}

\tchain {RATE_IN_CHAIN} {{
\t\tupdate @{RATE_IN_SET} {{ ip daddr {limit} }} counter accept
\t\tupdate @{RATE_IN_SET}6 {{ ip6 daddr {limit} }} counter accept
\t\tjump {QUEUE_CHAIN}
\t}}

\tchain {QUEUE_CHAIN} {{
{queue_rule}\t}}

\t# Per-call media counts come from conntrack accounting (net.netfilter.nf_conntrack_acct), which Linux
\t# leaves off. Loading a rule that reads a flow's packet count turns it on for this network namespace
\t# (the kernel's nft_ct_get_init), through netlink: also under a service sandbox that hides /proc/sys,
\t# and also when this file is loaded with `nft -f`. Nothing jumps to this chain: no packet runs the rule.
\t# It stays on after nfsip is gone (other users' flows may count on it by then).
\tchain {ACCOUNTING_CHAIN} {{
\t\tct packets 0 return
\t}}
}}
"""
