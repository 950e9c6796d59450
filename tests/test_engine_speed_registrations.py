"""RegistrationTable keeps a per-host count of its endpoints for the engine's limit check instead of
counting by_lan per registration: after any sequence of operations it must equal that count."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from nfsip.core.model import Endpoint, Pinhole
from nfsip.core.registrations import PendingRegister, RegistrationTable

_lans = st.builds(Endpoint, st.sampled_from(["10.0.0.2", "10.0.0.3", "192.168.1.9"]), st.sampled_from([5060, 5062]))
_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("register"),
            _lans,
            st.sampled_from(["sip:a@x", "sip:b@x"]),
            st.sampled_from([200, 202, 401, 100]),
            st.sampled_from([None, 0, 30, 3600]),
        ),
        st.tuples(st.just("adopt"), _lans, st.integers(1, 4000)),
        st.tuples(st.just("expire"), st.integers(0, 5000)),
        st.tuples(st.just("drop_all")),
    ),
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_per_host_count_follows_by_lan(ops):
    table = RegistrationTable(grace=30)
    now = 0.0
    public = Endpoint("203.0.113.7", 5060)
    for i, op in enumerate(ops):
        now += 10.0
        if op[0] == "register":
            _, lan, aor, status, granted = op
            branch = f"z9hG4bK{i}"
            table.request(branch, PendingRegister(lan, public, Endpoint("198.51.100.2", 5060), aor, now + 64))
            table.final_response(branch, status, granted, now)
        elif op[0] == "adopt":
            _, lan, timeout = op
            table.adopt(Pinhole(public, lan, "reg:sip:a@x", "sip", timeout, kind="sip"), now)
        elif op[0] == "expire":
            now += op[1]
            table.expire(now)
        else:
            table.drop_all(now)
        expected = Counter(lan.ip for lan in table.by_lan)
        for ip in ("10.0.0.2", "10.0.0.3", "192.168.1.9"):
            assert table.of_host(ip) == expected[ip], (ip, ops[: i + 1])
        assert table._of_host == dict(expected)
