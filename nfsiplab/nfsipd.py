"""Run the real nfsip daemon inside the lab's router namespace (for the integration tests and the demo)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nfsiplab import topology as T
from nfsiplab.lab import Lab, LabError

METRICS_PORT = 9477


class NfsipDaemon:
    """`python -m nfsip run --wan-interface wan0` in the router namespace, with its log in a file."""

    def __init__(
        self,
        lab: Lab,
        *,
        config: dict[str, Any] | None = None,
        log_level: str = "info",
        watchdog_usec: int = 0,
        workers: int = 1,
        source: Path | None = None,
    ) -> None:
        # source: run the nfsip package of another checkout (bench: an older commit beside this one).
        self.lab = lab
        self.source = source
        self.watchdog_usec = watchdog_usec
        self.workdir = Path(tempfile.mkdtemp(prefix="nfsip-daemon-"))
        self.config_path = self.workdir / "nfsip.toml"
        settings = {"log_level": log_level, "metrics_listen": f"127.0.0.1:{METRICS_PORT}", **(config or {})}
        if workers != 1:
            settings["workers"] = workers
        self.workers = int(settings.get("workers", 1))
        self.config_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
        self.log_path = self.workdir / "nfsip.log"
        self.proc: subprocess.Popen[bytes] | None = None
        # The daemon reports readiness (and watchdog pings) the way it does to systemd: sd_notify datagrams.
        self.notify_path = self.workdir / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(self.notify_path))
        self.notifications: list[str] = []

    def start(self, timeout: float = 15.0) -> Self:
        log = open(self.log_path, "wb")  # noqa: SIM115 - owned by the child process
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        if self.source is not None:
            env["PYTHONPATH"] = str(self.source)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        self.proc = self.lab.popen(
            T.ROUTER,
            [sys.executable, "-m", "nfsip", "run", "--wan-interface", "wan0", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            # `python -m` puts the working directory first on sys.path: in the source's, its nfsip is found.
            cwd=self.source,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"nfsip exited with {self.proc.returncode}:\n{self.log()}")
            if any(n.startswith("READY=1") for n in self.read_notifications(0.05)):
                return self
        raise LabError(f"nfsip not ready after {timeout}s:\n{self.log()}")

    def read_notifications(self, wait: float = 0.0) -> list[str]:
        """sd_notify messages received so far (all of them, in order)."""
        # settimeout(wait) waits at most `wait` for the first message (setblocking(True) would wait forever,
        # e.g. for a daemon that exits before it is ready); 0: take what is there.
        if wait > 0:
            self._notify.settimeout(wait)
        else:
            self._notify.setblocking(False)
        try:
            while True:
                self.notifications.append(self._notify.recv(4096).decode())
                self._notify.setblocking(False)
        except (BlockingIOError, TimeoutError):
            pass
        return self.notifications

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of the live worker processes (workers > 1): the supervisor's children named
        nfsip-worker-<i> (nfsip.workers.process_name)."""
        if self.proc is None:
            return {}
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return {}
        pids = {}
        for pid in children:
            try:
                name = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile
            if name.startswith("nfsip-worker-"):
                pids[int(name.rsplit("-", 1)[1])] = int(pid)
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
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

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.lab.run(
            T.ROUTER, [sys.executable, "-m", "nfsip", *args, "--config", str(self.config_path)], check=check
        )

    def status(self) -> dict[str, Any]:
        return json.loads(self.cli("status", "--json", check=False).stdout)

    def metrics(self) -> str:
        code = (
            "import urllib.request;"
            f"print(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode())"
        )
        return self.lab.run(T.ROUTER, [sys.executable, "-c", code]).stdout

    def verdicts(self) -> dict[str, float]:
        """nfsip_verdicts_total by outcome, from one scrape: every datagram the daemon read, once each."""
        found = re.findall(r'^nfsip_verdicts_total\{outcome="([^"]+)"\} (\S+)$', self.metrics(), re.M)
        return {outcome: float(value) for outcome, value in found}

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` in the last scrape whose labels include `labels` (0 when none):
        a label the caller does not name (the address family, say) is summed over."""
        wanted = {f'{k}="{v}"' for k, v in labels.items()}
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            name_part, _, label_part = sample.partition("{")
            got = set(label_part.rstrip("}").split(",")) if label_part else set()
            if name_part == name and wanted <= got:
                total += float(value)
        return total

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
