"""systemd's service notification protocol (sd_notify), without a dependency: one datagram per state.

READY=1 once the table is installed and the queue bound (Type=notify), WATCHDOG=1 from the packet loop at
half the WatchdogSec interval systemd passes in WATCHDOG_USEC (so a daemon whose loop hangs is killed and
restarted), STOPPING=1 on the way out. Without NOTIFY_SOCKET (not started by systemd) it does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core.mediastats import CallMedia

log = logging.getLogger("nfsip")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | None = None
        if address.startswith("@"):
            self._address = "\0" + address[1:]  # abstract namespace socket
        elif address.startswith("/"):
            self._address = address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval = int(usec) / 2e6 if watchdog else 0.0
        self._sock: socket.socket | None = None
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, state: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(state.encode(), self._address)
        except OSError:
            pass  # systemd gone or socket full: nothing useful to do about it from here

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SystemdLink:
    """The one daemon's SupervisorLink (nfsip.adapters): systemd, told READY, WATCHDOG and STOPPING. It
    sends no requests, and the daemon's own metrics endpoint serves the media counts."""

    lost = False

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        interval = notifier.watchdog_interval
        self.wake_seconds = min(1.0, interval) if interval else 1.0

    def fileno(self) -> int | None:
        return None

    def requests(self) -> list[str]:
        return []

    def ready(self, detail: str) -> None:
        log.info("ready")
        self.notifier.ready(detail)

    def alive(self, now: float) -> None:
        if self.notifier.watchdog_interval:
            self.notifier.watchdog()

    def media(self, calls: list[CallMedia]) -> None:
        pass

    def ended(self, calls: list[tuple[str, str]]) -> None:
        pass

    def stopping(self) -> None:
        self.notifier.stopping()

    def close(self) -> None:
        self.notifier.close()
