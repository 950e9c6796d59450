"""The queue rule on kernels without the native nft `queue` statement.

CONFIG_NFT_QUEUE is off on some kernels (this lab's among them) while the xt NFQUEUE target is available
through nft_compat. `nft -f` cannot write that expression, and `iptables-nft` only creates its own tables
at standard priorities. So the daemon adds, by a netlink NEWRULE
message (pyroute2), the very expression iptables-nft emits - target "NFQUEUE" revision 3 with a
struct xt_NFQ_info_v3 - to the `sip_queue` chain of its own table. `nft list` shows it as
`queue num N bypass`.
"""

from __future__ import annotations

import struct
from collections import OrderedDict

from .ruleset import QUEUE_CHAIN

NFQ_FLAG_BYPASS = 0x01


def nfqueue_info(queue_num: int, queues_total: int = 1, bypass: bool = True) -> bytes:
    """struct xt_NFQ_info_v3 { __u16 queuenum; __u16 queues_total; __u16 flags; }, padded to 8 bytes
    (XT_ALIGN) as the kernel's size check expects."""
    flags = NFQ_FLAG_BYPASS if bypass else 0
    return struct.pack("=HHHxx", queue_num, queues_total, flags)


def add_compat_queue_rule(
    table: str, queue_num: int, queues_total: int = 1, bypass: bool = True, chain: str = QUEUE_CHAIN
) -> None:
    """Append `queue num N [bypass]` (xt NFQUEUE through nft_compat) to nfsip's queue chain (or, with
    several workers, to one worker's chain: nfsip.kernel.fanout)."""
    from pyroute2.nftables.expressions import genex
    from pyroute2.nftables.main import NFTables

    target = OrderedDict()
    target["name"] = "NFQUEUE"
    target["rev"] = 3
    target["info"] = nfqueue_info(queue_num, queues_total, bypass)
    nft = NFTables(nfgen_family=1)  # NFPROTO_INET: table inet nfsip
    try:
        nft.rule("add", table=table, chain=chain, expressions=[[genex("target", target)]])
    finally:
        nft.close()
