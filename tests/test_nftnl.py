"""Encoding of the raw nfnetlink element batches (nfsip.kernel.nftnl) against bytes libnftables sent.

CAPTURED holds what libnftables 1.0.6 (Debian 12) put on the wire for the element changes of each of STEPS,
sent as JSON commands (tests/libnftables_reference.py), one transaction per step, into `table inet nfsip`
(nfsip.kernel.ruleset.render) in a scratch namespace: the sendmsg batches of a probe script, dumped by
strace. `.venv/bin/python -m tests.libnftables_capture` (as root) re-takes them and prints CAPTURED. The
steps: (1) one media pinhole 198.51.100.1:40000 -> 10.0.0.2:6000 (call "c1@x", label "m0.rtp", 180 s,
since 1700000000), (2) its removal, (3) one registration pinhole 198.51.100.1:5060 -> 10.0.0.3:5062 from
registrar 198.51.100.2 (3630 s, since 1700000001); and IPv6 without NAT, where a pinhole's public endpoint
is the phone's own: (4) media [2001:db8:1::10]:6000 (media_snat6, media_dnat6), (5) its removal, (6) a
registration of [2001:db8:1::11]:5062 from registrar 2001:db8:ff::2 (sip_dnat6, sip_snat6).
Two things differ on purpose and are normalised before comparing: libnftables adds
NFTA_SET_ELEM_LIST_SET_ID (its cache's set id; the kernel finds the set by name) and leaves uninitialised
bytes in attribute padding (the kernel ignores padding).
"""

from __future__ import annotations

import errno
import struct

import pytest

from nfsip.core.model import Endpoint, Pinhole
from nfsip.kernel import netlink, nftnl
from nfsip.kernel.nft import ElementFeatures, Nft

CAPTURED = {
    "add_media": bytes.fromhex(
        "140000001000010000000000000000000000000a8c0000000c0a01040100000000000000010000000a0001006e667369700000000f000200"
        "6d656469615f736e61740000080004000000001754000380500001800c000400000000000002bf20100001800c0001000a00000217700000"
        "100002800c000100c63364019c4000001f00060000196d302e72747020612031373030303030303030206331407800008c0000000c0a0104"
        "0200000000000000010000000a0001006e667369700000000f0002006d656469615f646e6174000008000400000000135400038050000180"
        "0c000400000000000002bf20100001800c000100c63364019c400000100002800c0001000a000002177000001f00060000196d302e727470"
        "2061203137303030303030303020633140780000140000001100010003000000000000000000000a"
    ),
    "remove_media": bytes.fromhex(
        "140000001000010000000000000000000000000a6c0000000c0a01040100000000000000010000000a0001006e667369700000000f000200"
        "6d656469615f736e61740000080004000000002834000380300001800c00040000000000000003e8100001800c0001000a00000217700000"
        "100002800c000100c63364019c400000480000000e0a01000200000000000000010000000a0001006e667369700000000f0002006d656469"
        "615f736e617400001800038014000180100001800c0001000a000002177000006c0000000c0a01040300000000000000010000000a000100"
        "6e667369700000000f0002006d656469615f646e61740001080004000000002434000380300001800c00040000000000000003e810000180"
        "0c000100c63364019c400000100002800c0001000a00000217700000480000000e0a01000400000000000000010000000a0001006e667369"
        "700000000f0002006d656469615f646e617400001800038014000180100001800c000100c63364019c400000140000001100010005000000"
        "000000000000000a"
    ),
    "add_sip": bytes.fromhex(
        "140000001000010000000000000000000000000aa00000000c0a01040100000000000000010000000a0001006e667369700000000d000200"
        "7369705f646e617400740000080004000000003b68000380640001800c00040000000000003763b01400018010000100c6336402c6336401"
        "13c40000100002800c0001000a00000313c600002f000600002973697020722031373030303030303031207265673a7369703a626f624065"
        "78616d706c652e6f726700809c0000000c0a01040200000000000000010000000a0001006e667369700000000d0002007369705f736e6174"
        "00667369080004000000003f64000380600001800c00040000000000003763b0100001800c0001000a00000313c60000100002800c000100"
        "c633640113c400002f000600002973697020722031373030303030303031207265673a7369703a626f62406578616d706c652e6f72670069"
        "140000001100010003000000000000000000000a"
    ),
    "add_media6": bytes.fromhex(
        "140000001000010000000000000000000000000aa40000000c0a01040100000000000000010000000a0001006e6673697000000010000200"
        "6d656469615f736e61743600080004000000004b6c000380680001800c000400000000000002bf201c0001801800010020010db800010000"
        "0000000000000010177000001c0002801800010020010db8000100000000000000000010177000001f00060000196d302e72747020612031"
        "37303030303030303220633640780000a40000000c0a01040200000000000000010000000a0001006e66736970000200100002006d656469"
        "615f646e6174360008000400000000476c000380680001800c000400000000000002bf201c0001801800010020010db80001000000000000"
        "00000010177000001c0002801800010020010db8000100000000000000000010177000001f00060000196d302e7274702061203137303030"
        "303030303220633640780000140000001100010003000000000000000000000a"
    ),
    "remove_media6": bytes.fromhex(
        "140000001000010000000000000000000000000a840000000c0a01040100000000000000010000000a0001006e6673697000000010000200"
        "6d656469615f736e61743600080004000000005c4c000380480001800c00040000000000000003e81c0001801800010020010db800010000"
        "0000000000000010177000001c0002801800010020010db800010000000000000000001017700000540000000e0a01000200000000000000"
        "010000000a0001006e66736970000000100002006d656469615f736e6174360024000380200001801c0001801800010020010db800010000"
        "000000000000001017700000840000000c0a01040300000000000000010000000a0001006e66736970000100100002006d656469615f646e"
        "6174360008000400000000584c000380480001800c00040000000000000003e81c0001801800010020010db8000100000000000000000010"
        "177000001c0002801800010020010db800010000000000000000001017700000540000000e0a01000400000000000000010000000a000100"
        "6e6673697000000a100002006d656469615f646e6174360024000380200001801c0001801800010020010db8000100000000000000000010"
        "17700000140000001100010005000000000000000000000a"
    ),
    "add_sip6": bytes.fromhex(
        "140000001000010000000000000000000000000ac80000000c0a01040100000000000000010000000a0001006e667369700000000e000200"
        "7369705f646e617436003600080004000000006f900003808c0001800c00040000000000003763b02c0001802800010020010db800ff0000"
        "000000000000000220010db800010000000000000000001113c600001c0002801800010020010db800010000000000000000001113c60000"
        "31000600002b73697020722031373030303030303033207265673a7369703a6361726f6c406578616d706c652e6f726700010db8b8000000"
        "0c0a01040200000000000000010000000a0001006e667369700000000e0002007369705f736e617436000100080004000000007380000380"
        "7c0001800c00040000000000003763b01c0001801800010020010db800010000000000000000001113c600001c0002801800010020010db8"
        "00010000000000000000001113c6000031000600002b73697020722031373030303030303033207265673a7369703a6361726f6c40657861"
        "6d706c652e6f726700000200140000001100010003000000000000000000000a"
    ),
}

MEDIA = Pinhole(Endpoint("198.51.100.1", 40000), Endpoint("10.0.0.2", 6000), "c1@x", "m0.rtp", 180, since=1700000000)
REGISTRATION = Pinhole(
    Endpoint("198.51.100.1", 5060),
    Endpoint("10.0.0.3", 5062),
    "reg:sip:bob@example.org",
    "sip",
    3630,
    kind="sip",
    remote_ip="198.51.100.2",
    since=1700000001,
)
# IPv6 without NAT: the public endpoint is the phone's own (identity map entries).
PHONE6 = Endpoint("2001:db8:1::10", 6000)
MEDIA6 = Pinhole(PHONE6, PHONE6, "c6@x", "m0.rtp", 180, since=1700000002)
SIP_PHONE6 = Endpoint("2001:db8:1::11", 5062)
REGISTRATION6 = Pinhole(
    SIP_PHONE6,
    SIP_PHONE6,
    "reg:sip:carol@example.org",
    "sip",
    3630,
    kind="sip",
    remote_ip="2001:db8:ff::2",
    since=1700000003,
)

# What each capture is of: (install, remove), one transaction each, in this order.
STEPS = {
    "add_media": ([MEDIA], []),
    "remove_media": ([], [MEDIA]),
    "add_sip": ([REGISTRATION], []),
    "add_media6": ([MEDIA6], []),
    "remove_media6": ([], [MEDIA6]),
    "add_sip6": ([REGISTRATION6], []),
}


def _attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, offset)
        out.append((kind, data[offset + 4 : offset + size]))
        offset += (size + 3) & ~3
    return out


def _normalise_attrs(data: bytes, top: bool = False) -> bytes:
    out = b""
    for kind, payload in _attrs(data):
        if top and kind == nftnl.NFTA_SET_ELEM_LIST_SET_ID:
            continue
        if kind & netlink.NLA_F_NESTED:
            inner = _normalise_attrs(payload)
            out += struct.pack("=HH", 4 + len(inner), kind) + inner
        else:
            out += struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)
    return out


def normalise(batch: bytes) -> bytes:
    """Re-encode a batch without SET_ID attributes and with zeroed padding (lengths recomputed)."""
    out, offset = b"", 0
    while offset < len(batch):
        size, kind, flags, seq, pid = struct.unpack_from("=IHHII", batch, offset)
        nfgen, attrs = batch[offset + 16 : offset + 20], batch[offset + 20 : offset + size]
        if kind >> 8 == netlink.NFNL_SUBSYS_NFTABLES:
            attrs = _normalise_attrs(attrs, top=True)
        out += struct.pack("=IHHII", 20 + len(attrs), kind, flags, seq, pid) + nfgen + attrs
        offset += (size + 3) & ~3
    return out


def messages(batch: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, seq) of every message of a batch."""
    out, offset = [], 0
    while offset < len(batch):
        size, kind, flags, seq, _pid = struct.unpack_from("=IHHII", batch, offset)
        out.append((kind, flags, seq))
        offset += (size + 3) & ~3
    return out


# What libnftables 1.0.6 sends (the captures): removals as add + delete, refreshes as plain re-adds.
LIBNFTABLES = ElementFeatures(destroy=False, timeout_update=True)
NEW_KERNEL = ElementFeatures(destroy=True, timeout_update=True)  # Linux >= 6.12
OLD_KERNEL = ElementFeatures(destroy=False, timeout_update=False)  # Linux < 6.3


@pytest.fixture(scope="module")
def nft() -> Nft:
    nft = Nft("nfsip")  # no kernel access: only the element changes are built
    nft._features = LIBNFTABLES  # never probe the machine's kernel from a unit test
    return nft


def ops(changes: list[nftnl.Change]) -> list[tuple[str, str]]:
    """(operation, set) per change: add / delete / destroy."""
    return [("add" if c.add else "destroy" if c.destroy else "delete", c.set_name) for c in changes]


def changes_of(nft: Nft, install, remove, recreate=(), features: ElementFeatures = LIBNFTABLES) -> list[nftnl.Change]:
    """The changes of one message's transaction."""
    return nft.changes([(install, remove, recreate)], features)


def batch(changes: list[nftnl.Change], seq: int, ack_last: bool = True) -> bytes:
    return nftnl.encode_batch(nftnl.messages_of(changes), "nfsip", seq, ack_last)


def one_message(change: nftnl.Change, seq: int) -> bytes:
    """`change` alone in a message."""
    return nftnl.encode_message(nftnl.messages_of([change])[0], "nfsip", seq)


MEDIA_SETS = ["media_snat", "media_dnat"]


def test_destroy_removes_each_element_with_one_message(nft):
    changes = changes_of(nft, [], [MEDIA], (), NEW_KERNEL)
    assert ops(changes) == [("destroy", name) for name in MEDIA_SETS]
    plain = changes_of(nft, [], [MEDIA], (), LIBNFTABLES)
    assert ops(plain) == [op for name in MEDIA_SETS for op in (("add", name), ("delete", name))]


def test_destroy_message_is_the_delete_message_with_another_type():
    delete = one_message(nftnl.Change(False, "media_snat", ("10.0.0.2", 6000)), 5)
    destroy = one_message(nftnl.Change(False, "media_snat", ("10.0.0.2", 6000), destroy=True), 5)
    assert struct.unpack_from("=H", destroy, 4)[0] == netlink.NFNL_SUBSYS_NFTABLES << 8 | 30
    assert destroy[:4] + destroy[6:] == delete[:4] + delete[6:]


def test_recreate_re_creates_every_element(nft):
    """A state change renews the comments: a re-add would keep the old one."""
    changes = changes_of(nft, [], [], [MEDIA], NEW_KERNEL)
    assert ops(changes) == [("destroy", "media_snat"), ("destroy", "media_dnat")] + [("add", n) for n in MEDIA_SETS]


def test_old_kernel_deletes_before_every_add(nft):
    """Through Linux 6.11 a re-add leaves the old timeout: installs and state changes delete first."""
    cleared_then_added = [op for n in MEDIA_SETS for op in (("add", n), ("delete", n))] + [
        ("add", n) for n in MEDIA_SETS
    ]
    assert ops(changes_of(nft, [MEDIA], [], (), OLD_KERNEL)) == cleared_then_added
    assert ops(changes_of(nft, [], [], [MEDIA], OLD_KERNEL)) == cleared_then_added
    refresh = changes_of(nft, [MEDIA], [], (), OLD_KERNEL)
    cleared = 2 * len(MEDIA_SETS)
    assert all(c.timeout_ms == 1000 for c in refresh[:cleared] if c.add)  # the guard add before the delete
    assert {c.timeout_ms for c in refresh[cleared:]} == {MEDIA.timeout * 1000}


@pytest.mark.parametrize(("name", "install", "remove"), [(name, *step) for name, step in STEPS.items()])
def test_batch_is_what_libnftables_sends(nft, name, install, remove):
    captured = CAPTURED[name]
    assert normalise(captured) != captured  # the capture really has a set id / dirty padding to drop
    ours = batch(changes_of(nft, install, remove, (), LIBNFTABLES), 0, ack_last=False)
    assert ours == normalise(captured)


def test_only_the_last_element_message_asks_for_an_ack(nft):
    msgs = messages(batch(changes_of(nft, [MEDIA], []), 7))
    assert [m[2] for m in msgs] == list(range(7, 11))  # begin, media_snat, media_dnat, end
    assert msgs[0][0] == netlink.NFNL_MSG_BATCH_BEGIN and msgs[-1][0] == netlink.NFNL_MSG_BATCH_END
    acks = [m for m in msgs if m[1] & netlink.NLM_F_ACK]
    assert acks == [msgs[-2]]
    assert msgs[-2][1] == netlink.NLM_F_REQUEST | netlink.NLM_F_CREATE | netlink.NLM_F_ACK


def test_sequence_numbers_wrap():
    change = nftnl.Change(False, "media_snat", ("10.0.0.2", 6000))
    assert [m[2] for m in messages(batch([change], 0xFFFFFFFF))] == [0xFFFFFFFF, 0, 1]


def test_concat_pads_every_field_to_a_register():
    assert nftnl.concat(("10.0.0.2", 6000)) == bytes.fromhex("0a00000217700000")
    assert nftnl.concat(("198.51.100.2", "198.51.100.1", 5060)) == bytes.fromhex("c6336402c633640113c40000")
    # an ipv6_addr fills four registers
    assert nftnl.concat(("2001:db8:1::10", 6000)) == bytes.fromhex("20010db8000100000000000000000010 17700000")
    bad6 = (("[2001:db8::1]", 1), ("2001:db8::g", 1), ("2001:db8::1%eth0", 1))
    for bad in (("10.0.0", 1), ("10.0.0.2", 65536), ("10.0.0.2", -1), ("10.0.0.2", None), *bad6):
        with pytest.raises(ValueError):
            nftnl.concat(bad)


def test_element_attributes_in_libnftables_order():
    change = nftnl.Change(True, "media_dnat", ("198.51.100.1", 40000), ("10.0.0.2", 6000), 180000, "m0 a 1 c")
    elem = nftnl.encode_element(change)
    kind, body = _attrs(elem)[0]
    assert kind == nftnl.NFTA_LIST_ELEM | netlink.NLA_F_NESTED
    attrs = _attrs(body)
    assert [k for k, _ in attrs] == [
        nftnl.NFTA_SET_ELEM_TIMEOUT,
        nftnl.NFTA_SET_ELEM_KEY | netlink.NLA_F_NESTED,
        nftnl.NFTA_SET_ELEM_DATA | netlink.NLA_F_NESTED,
        nftnl.NFTA_SET_ELEM_USERDATA,
    ]
    assert attrs[0][1] == (180000).to_bytes(8, "big")
    assert _attrs(attrs[1][1]) == [(nftnl.NFTA_DATA_VALUE, bytes.fromhex("c6336401 9c400000"))]
    assert _attrs(attrs[2][1]) == [(nftnl.NFTA_DATA_VALUE, bytes.fromhex("0a000002 17700000"))]
    assert attrs[3][1] == bytes((nftnl.NFTNL_UDATA_SET_ELEM_COMMENT, 9)) + b"m0 a 1 c\0"
    # A delete carries the key only, even when given a value (what nft sends).
    deleted = nftnl.encode_element(change._replace(add=False))
    assert [k for k, _ in _attrs(_attrs(deleted)[0][1])] == [nftnl.NFTA_SET_ELEM_KEY | netlink.NLA_F_NESTED]


def test_comment_limit_is_libnftables():
    longest = "x" * (nftnl.NFTNL_UDATA_COMMENT_MAXLEN - 1)
    nftnl.encode_element(nftnl.Change(True, "media_snat", ("10.0.0.2", 6000), None, 1000, longest))
    with pytest.raises(ValueError, match="comment"):
        nftnl.encode_element(nftnl.Change(True, "media_snat", ("10.0.0.2", 6000), None, 1000, longest + "x"))


def _answer(code: int, req_type: int, seq: int) -> bytes:
    """An NLMSG_ERROR as the kernel sends it with NETLINK_CAP_ACK (the request's header, no payload)."""
    body = struct.pack("=iIHHII", -code, 60, req_type, 0, seq, 0)
    return struct.pack("=IHHII", 16 + len(body), netlink.NLMSG_ERROR, 0, seq, 1234) + body


CHANGES = [
    nftnl.Change(True, "media_snat", ("10.0.0.2", 6000), ("198.51.100.1", 40000), 1000),
    nftnl.Change(False, "media_snat", ("10.0.0.2", 6000)),
]
NEW = netlink.NFNL_SUBSYS_NFTABLES << 8 | nftnl.NFT_MSG_NEWSETELEM
DEL = netlink.NFNL_SUBSYS_NFTABLES << 8 | nftnl.NFT_MSG_DELSETELEM


def check(answers: list[bytes], begin: int = 100, overrun: bool = False) -> None:
    parsed = [a for data in answers for a in netlink.acks(data)]
    nftnl.check_answers(parsed, overrun, nftnl.messages_of(CHANGES), "nfsip", begin)


def test_ack_of_the_last_message_confirms_the_batch():
    check([_answer(0, DEL, 102)])
    with pytest.raises(nftnl.BatchError) as info:
        check([])  # the kernel dropped the batch without a word: not taken as success
    assert info.value.errno == errno.EPROTO


def test_error_names_errno_message_type_and_element():
    with pytest.raises(nftnl.BatchError) as info:
        check([_answer(errno.ENOENT, DEL, 102), _answer(0, DEL, 102)])
    assert info.value.errno == errno.ENOENT
    assert info.value.msg_type == "DELSETELEM"
    assert "media_snat { 10.0.0.2 . 6000 }" in str(info.value)
    assert "No such file or directory" in str(info.value)


def test_first_refused_message_is_reported():
    with pytest.raises(nftnl.BatchError) as info:
        check([_answer(errno.ENOENT, DEL, 102), _answer(errno.EEXIST, NEW, 101)])
    assert (info.value.errno, info.value.msg_type) == (errno.EEXIST, "NEWSETELEM")
    assert "10.0.0.2 . 6000 : 198.51.100.1 . 40000" in str(info.value)


def test_commit_failure_is_reported_on_the_batch():
    with pytest.raises(nftnl.BatchError) as info:
        check([_answer(errno.ENOMEM, netlink.NFNL_MSG_BATCH_BEGIN, 100), _answer(0, DEL, 102)])
    assert (info.value.errno, info.value.msg_type) == (errno.ENOMEM, "BATCH")


def test_answers_of_other_batches_are_ignored():
    check([_answer(errno.ENOENT, DEL, 7), _answer(0, DEL, 102)])
    with pytest.raises(nftnl.BatchError):
        check([_answer(0, DEL, 2)])  # an ack, but for sequence 2, not this batch's last message


def test_lost_answers_fail_the_batch():
    with pytest.raises(nftnl.BatchError) as info:
        check([_answer(0, DEL, 102)], overrun=True)
    assert info.value.errno == errno.ENOBUFS


def test_several_answers_in_one_datagram():
    data = _answer(0, NEW, 101) + _answer(errno.EINVAL, DEL, 102)
    assert netlink.acks(data) == [(0, NEW, 101), (errno.EINVAL, DEL, 102)]


def parse_messages(batch: bytes) -> list[tuple[int, str, list[bytes]]]:
    """(type, set, NFTA_LIST_ELEM payloads) of every element message of a batch, parsed the kernel's way."""
    out, offset = [], 0
    while offset < len(batch):
        size, kind = struct.unpack_from("=IH", batch, offset)
        if kind >> 8 == netlink.NFNL_SUBSYS_NFTABLES:
            attrs, set_name, elements = batch[offset + 20 : offset + size], "", []
            for attr_type, payload in _attrs(attrs):
                attr_type &= ~netlink.NLA_F_NESTED
                if attr_type == nftnl.NFTA_SET_ELEM_LIST_SET:
                    set_name = payload.rstrip(b"\0").decode()
                elif attr_type == nftnl.NFTA_SET_ELEM_LIST_ELEMENTS:
                    elements = [elem for _t, elem in _attrs(payload)]
            out.append((kind & 0xFF, set_name, elements))
        offset += (size + 3) & ~3
    return out


SECOND = Pinhole(Endpoint("198.51.100.1", 40002), Endpoint("10.0.0.2", 6002), "c1@x", "m1.rtp", 180, since=1700000000)


def test_one_message_per_set_holds_every_element_of_that_set(nft):
    """Two pinholes installed: 4 messages (one per set) of 2 elements each, the same element bytes as one
    message per element would carry."""
    changes = changes_of(nft, [MEDIA, SECOND], [], (), NEW_KERNEL)
    msgs = parse_messages(batch(changes, 0))
    assert [(kind, name, len(elems)) for kind, name, elems in msgs] == [
        (nftnl.NFT_MSG_NEWSETELEM, name, 2) for name in MEDIA_SETS
    ]
    singles = [elem for change in changes for elem in parse_messages(one_message(change, 1))[0][2]]
    assert [elem for _kind, _name, elems in msgs for elem in elems] == singles


def test_a_run_is_cut_at_the_message_limit():
    changes = [nftnl.Change(False, "media_snat", ("10.0.0.2", port), destroy=True) for port in range(300)]
    assert [len(m.changes) for m in nftnl.messages_of(changes)] == [
        nftnl.RUN_MAX,
        nftnl.RUN_MAX,
        300 - 2 * nftnl.RUN_MAX,
    ]


def test_parts_merge_into_deletions_then_additions(nft):
    ended, started = MEDIA, SECOND
    changes = nft.changes([([started], [], ()), ((), [ended], ()), ((), [ended], ())], NEW_KERNEL)
    assert ops(changes) == [("destroy", n) for n in MEDIA_SETS] + [("add", n) for n in MEDIA_SETS]
    assert {c.key for c in changes if c.add and c.set_name == "media_dnat"} == {("198.51.100.1", 40002)}


def test_parts_keep_their_order_when_one_deletes_what_another_added(nft):
    """A call set up and ended in one drain: its elements must be gone at the end, so the deletion stays
    after the addition."""
    parts = [([MEDIA], [], ()), ((), [MEDIA], ())]
    changes = nft.changes(parts, NEW_KERNEL)
    assert ops(changes) == [("add", n) for n in MEDIA_SETS] + [("destroy", n) for n in MEDIA_SETS]


def test_a_failed_run_is_described_by_its_first_elements():
    run = [nftnl.Change(True, "media_snat", ("10.0.0.2", port), ("198.51.100.1", port), 1000) for port in range(5)]
    with pytest.raises(nftnl.BatchError) as info:
        nftnl.check_answers([netlink.Ack(errno.EEXIST, NEW, 101)], False, nftnl.messages_of(run), "nfsip", 100)
    assert "media_snat { 10.0.0.2 . 0 : 198.51.100.1 . 0 }" in str(info.value)
    assert "and 2 more in this message" in str(info.value)
