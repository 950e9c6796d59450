"""The sans-I/O core: packet codec, SIP/SDP parser, decisions, call and registration state, policy.

Nothing here touches a socket, nftables, conntrack or the clock: the adapters in nfsip.kernel and the
daemon feed it bytes and times and carry out what it decides (docs/architecture.md).
"""
