"""Registrations of LAN phones (pure state; the clock is passed in).

Why: a phone behind NAT is reachable for inbound calls only while the UDP conntrack entry of its SIP flow
lives (30 s unreplied, 120 s replied by default). Phones and registrars work around that with keepalives
every few seconds; nfsip instead keeps the mapping itself: when the registrar's 2xx accepts the phone's
(rewritten) Contact, a `sip` pinhole maps public ip:port -> phone ip:port for the granted expiry plus a
grace, reachable by default only from the registrar that answered (RFC 3261 §10.3; §10.2.4 for the
granted expiry: the contact's expires parameter, else the Expires header).

One registration per phone SIP endpoint (LAN ip:port): several accounts registered from one endpoint, or
several phones registering the same address-of-record, all share this one mapping rule, because what must
stay reachable is the endpoint, not the AOR.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

from ..config import DEFAULTS
from .model import Endpoint, Pinhole, RegistrationOpened, RegistrationRemoved

_PENDING_LIMIT = 20000
DEFAULT_EXPIRES = 3600  # RFC 3261 §10.2.1.1: the registrar's default when the request asked for none


@dataclass
class Registration:
    lan: Endpoint
    public: Endpoint
    registrar_ip: str  # "" when the pinhole accepts any sender
    aor: str
    expires_at: float
    since: float = 0.0
    transport: str = "udp"

    def pinhole(self, now: float, grace: int) -> Pinhole:
        timeout = max(1, int(self.expires_at - now) + grace)
        return Pinhole(
            self.public,
            self.lan,
            f"reg:{self.aor}",
            "sip",
            timeout,
            kind="sip",
            remote_ip=self.registrar_ip,
            since=self.since,
            transport=self.transport,
        )


@dataclass(frozen=True, slots=True)
class PendingRegister:
    lan: Endpoint
    public: Endpoint
    registrar: Endpoint
    aor: str
    deadline: float
    transport: str = "udp"


class RegistrationTable:
    def __init__(
        self,
        grace: int = DEFAULTS.registration_grace,
        from_registrar_only: bool = DEFAULTS.registration_from == "registrar",
    ) -> None:
        self.grace = grace
        self.from_registrar_only = from_registrar_only
        self.by_lan: dict[Endpoint, Registration] = {}
        # Every address-of-record registered from one endpoint, with its own expiry: the endpoint stays
        # reachable while any of them lives (one phone, several accounts).
        self.accounts: dict[Endpoint, dict[str, float]] = {}
        self._pending: OrderedDict[str, PendingRegister] = OrderedDict()
        # LAN ip -> how many endpoints of that host are in by_lan, kept up to date with it: the per-host
        # limit is checked on every new registration, and counting by_lan cost O(registrations) each time.
        self._of_host: dict[str, int] = {}

    def of_host(self, ip: str) -> int:
        """How many registered endpoints (by_lan) the LAN host `ip` has."""
        return self._of_host.get(ip, 0)

    def _counted(self, lan: Endpoint, delta: int) -> None:
        count = self._of_host.get(lan.ip, 0) + delta
        if count > 0:
            self._of_host[lan.ip] = count
        else:
            self._of_host.pop(lan.ip, None)

    def request(self, branch: str, pending: PendingRegister) -> None:
        """A REGISTER left the LAN: remember what its 2xx will be about."""
        self._pending.pop(branch, None)
        self._pending[branch] = pending
        while len(self._pending) > _PENDING_LIMIT:
            self._pending.popitem(last=False)

    def pending(self, branch: str | None) -> PendingRegister | None:
        return self._pending.get(branch) if branch else None

    def final_response(
        self, branch: str | None, status: int, granted: int | None, now: float
    ) -> tuple[list[Pinhole], list[Pinhole], RegistrationOpened | RegistrationRemoved | None]:
        """The registrar answered. Returns (install, remove, event); the event is None for a refresh.

        `granted` is the expiry the 2xx gives for this phone's contact, None when the 2xx no longer lists
        it (un-REGISTER, or the binding was dropped), 0 when it is removed explicitly."""
        pending = self._pending.pop(branch, None) if branch else None
        if pending is None or status < 200 or status >= 300:
            return [], [], None
        old = self.by_lan.get(pending.lan)
        remove = [old.pinhole(now, self.grace)] if old is not None else []
        accounts = self.accounts.setdefault(pending.lan, {})
        if not granted:
            accounts.pop(pending.aor, None)
            if old is None:
                return [], [], None
            removed = RegistrationRemoved(pending.aor, pending.lan)
            if accounts:  # other accounts of this endpoint still live: keep it reachable for them
                old.expires_at = max(accounts.values())
                return [old.pinhole(now, self.grace)], [], removed
            del self.by_lan[pending.lan]
            self._counted(pending.lan, -1)
            del self.accounts[pending.lan]
            return [], remove, removed
        accounts[pending.aor] = now + granted
        registrar = pending.registrar.ip if self.from_registrar_only else ""
        since = old.since if old is not None else now
        reg = Registration(
            pending.lan, pending.public, registrar, pending.aor, max(accounts.values()), since, pending.transport
        )
        self.by_lan[pending.lan] = reg
        if old is None:
            self._counted(pending.lan, 1)
        if old is not None and (old.public, old.registrar_ip, old.transport) == (
            reg.public,
            reg.registrar_ip,
            reg.transport,
        ):
            remove = []  # a refresh: the same elements are re-added with the new timeout
        opened = RegistrationOpened(reg.aor, reg.lan, reg.public, granted) if old is None else None
        return [reg.pinhole(now, self.grace)], remove, opened

    def adopt(self, hole: Pinhole, now: float) -> None:
        """Take over a registration pinhole found in the kernel at start (crash recovery)."""
        expires_at = now + hole.timeout - self.grace
        self.accounts[hole.lan] = {hole.call_id.removeprefix("reg:"): expires_at}
        if hole.lan not in self.by_lan:
            self._counted(hole.lan, 1)
        self.by_lan[hole.lan] = Registration(
            hole.lan,
            hole.public,
            hole.remote_ip,
            hole.call_id.removeprefix("reg:"),
            expires_at,
            hole.since or now,
            hole.transport,
        )

    def phone_for(self, public: Endpoint, sender_ip: str) -> Endpoint | None:
        """The phone registered over TCP at public endpoint `public`, when `sender_ip` may reach it (its
        registrar, or anyone with registration_from = "any"): where the TCP relay takes a registrar's new
        connection. A scan of the registrations: only a registrar's new connection asks."""
        for reg in self.by_lan.values():
            if reg.transport == "tcp" and reg.public == public and reg.registrar_ip in ("", sender_ip):
                return reg.lan
        return None

    def forget(self, hole: Pinhole) -> list[Pinhole]:
        """Forget the registration whose new pinhole `hole` the kernel refused (it was never installed);
        returns it, or nothing when the endpoint's registration is another one by now."""
        reg = self.by_lan.get(hole.lan)
        if reg is None or reg.public != hole.public:
            return []
        del self.by_lan[hole.lan]
        self._counted(hole.lan, -1)
        self.accounts.pop(hole.lan, None)
        return [replace(hole, timeout=0)]

    def drop_all(self, now: float) -> list[Pinhole]:
        holes = [r.pinhole(now, self.grace) for r in self.by_lan.values()]
        self.by_lan.clear()
        self._of_host.clear()
        self.accounts.clear()
        return holes

    def expire(self, now: float) -> list[Pinhole]:
        for lan, accounts in self.accounts.items():
            for aor in [a for a, expires_at in accounts.items() if expires_at + self.grace <= now]:
                del accounts[aor]
            if accounts and lan in self.by_lan:
                self.by_lan[lan].expires_at = max(accounts.values())
        gone = [r for r in self.by_lan.values() if r.expires_at + self.grace <= now]
        for reg in gone:
            del self.by_lan[reg.lan]
            self._counted(reg.lan, -1)
            self.accounts.pop(reg.lan, None)
        while self._pending:
            branch, pending = next(iter(self._pending.items()))
            if pending.deadline > now:
                break
            del self._pending[branch]
        return [r.pinhole(now, self.grace) for r in gone]

    def __len__(self) -> int:
        return len(self.by_lan)
