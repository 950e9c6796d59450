"""SIP over TLS in the lab: a registrar stand-in on port 5061 and a phone that registers over TLS.

Why a stand-in: nfsip cannot read TLS, so what matters is that a TLS SIP flow crosses the router
untouched and is counted. Neither lab SIP program speaks TLS here: Debian's sipp 3.6.1 is built without
it (``-t`` offers no ``l1``) and the kamailio package has no ``tls.so`` (that is kamailio-tls-modules).
Python's ``ssl`` module does a real TLS handshake (TLS 1.3 with OpenSSL 3.0) and nothing else is needed:

* ``TlsRegistrar`` (``_tlspeer.py serve``) on a WAN host accepts TLS connections on 5061 with a
  self-signed certificate made at start (``openssl req``, naming the host's addresses), answers every
  SIP request with a 200 OK and logs each handshake, message and close as a JSON line (``events()``).
* ``TlsPhone`` (``_tlspeer.py send``) connects from a phone, verifies the registrar's certificate,
  sends one REGISTER, reads the answer and keeps the connection ``hold_s`` seconds (so that a test can
  look at the router while the flow lives) before closing it.

The REGISTER is the lab phone's own (the first request of ``scenarios/register.xml``, rendered as sipp
renders it) with ``[transport]`` TLS: the bytes a lab phone would send if sipp spoke TLS.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nfsiplab import topology as T
from nfsiplab.lab import Lab, LabError
from nfsiplab.sipp import REGISTER_SCENARIO

TLS_PORT = 5061
"""The SIP over TLS port (RFC 3261 section 26.2)."""
_PEER = str(Path(__file__).with_name("_tlspeer.py"))


def make_certificate(workdir: Path, addresses: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (P-256, valid one day) naming ``addresses`` as IP subjectAltNames;
    returns (certificate, key) PEM paths in ``workdir``."""
    cert, key = workdir / "registrar-cert.pem", workdir / "registrar-key.pem"
    san = ",".join(f"IP:{a}" for a in addresses)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=nfsip-lab-registrar",
            "-addext",
            f"subjectAltName={san}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _uri_host(ip: str) -> str:
    """An address as a SIP URI host: IPv6 in brackets (RFC 5118), as sipp's ``[local_ip]``."""
    return f"[{ip}]" if T.is_ip6(ip) else ip


def register_message(user: str, local_ip: str, local_port: int, registrar_ip: str, registrar_port: int) -> bytes:
    """The first REGISTER of ``scenarios/register.xml`` as sipp sends it, over TLS: keywords replaced
    (IPv6 addresses in brackets, as sipp writes ``[local_ip]``), lines trimmed, CRLF line ends."""
    cdata = ET.parse(REGISTER_SCENARIO).getroot().find("send")
    if cdata is None or cdata.text is None:
        raise LabError(f"no <send> in {REGISTER_SCENARIO}")
    local, remote = _uri_host(local_ip), _uri_host(registrar_ip)
    values = {
        "remote_ip": remote,
        "remote_port": str(registrar_port),
        "local_ip": local,
        "local_port": str(local_port),
        "transport": "TLS",
        "transport_param": ";transport=tls",
        "branch": "z9hG4bK-nfsiplab-tls-1",
        "service": user,
        "pid": "1",
        "call_number": "1",
        "call_id": f"1-tls@{local}",
        "expires": "300",
    }
    text = re.sub(r"\[(\w+)\]", lambda m: values.get(m.group(1), m.group(0)), cdata.text)
    leftover = re.findall(r"\[\w+\]", text)
    if leftover:
        raise LabError(f"unrendered keywords in {REGISTER_SCENARIO.name}: {leftover}")
    lines = [line.strip() for line in text.strip().splitlines()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class TlsRegistrar:
    """The registrar stand-in on ``node`` (default the server), listening on ``ip:port`` (TLS 5061);
    ``ip`` defaults to the node's IPv4 address, the certificate names both of its addresses."""

    def __init__(
        self,
        lab: Lab,
        node: str = T.SERVER,
        *,
        ip: str | None = None,
        port: int = TLS_PORT,
        workdir: str | Path | None = None,
    ) -> None:
        self.lab, self.node = lab, node
        self.ip = ip or lab.ip_of(node)
        self.port = port
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"nfsip-tls-{node}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "registrar.jsonl"
        self.cert: Path | None = None
        self.proc: subprocess.Popen[Any] | None = None

    @property
    def uri(self) -> str:
        """``ip:port`` of the registrar."""
        return T.hostport(self.ip, self.port)

    def start(self, timeout: float = 10.0) -> Self:
        """Make the certificate, start the server and return once it listens (LabError otherwise)."""
        addresses = sorted({self.lab.ip_of(self.node), self.lab.ip6_of(self.node), self.ip})
        self.cert, key = make_certificate(self.workdir, addresses)
        self.log_path.unlink(missing_ok=True)
        with open(self.workdir / "registrar.stderr", "wb") as err:
            self.proc = self.lab.popen(
                self.node,
                [sys.executable, _PEER, "serve", self.ip, str(self.port), str(self.cert), str(key), str(self.log_path)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LabError(f"TLS registrar on {self.node} exited: {self.stderr()}")
            if f"{self.uri} " in self.lab.run(self.node, ["ss", "-Hnlt"], check=False).stdout:
                return self
            time.sleep(0.02)
        self.stop()
        raise LabError(f"TLS registrar on {self.node} not listening on {self.uri} after {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        path = self.workdir / "registrar.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The logged events (``handshake``, ``message``, ``closed``, ``handshake-failed``, ``error``),
        each with ``peer_ip``/``peer_port``; ``message`` ones carry the request and the reply as text."""
        if not self.log_path.exists():
            return []
        events = [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]
        return [e for e in events if kind is None or e["event"] == kind]

    def stop(self) -> None:
        """End the server (SIGTERM, SIGKILL after 3 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        """Delete the work directory (certificate, log) if this object created it."""
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


@dataclass(frozen=True)
class TlsResult:
    """What the phone saw: its own address on the connection, the TLS version and cipher, the reply."""

    local: str
    """``ip:port`` the phone's connection left from (before any NAT)."""
    version: str
    cipher: str
    reply: str | None
    sent: bytes


class TlsPhone:
    """A phone registering ``user`` over TLS with ``registrar`` from ``ip:local_port`` (default: its
    address of the registrar's family, port 5061), in the background: ``start()``, then ``wait()``."""

    def __init__(
        self,
        lab: Lab,
        node: str,
        registrar: TlsRegistrar,
        *,
        user: str = "alice",
        ip: str | None = None,
        local_port: int = TLS_PORT,
        hold_s: float = 0.0,
    ) -> None:
        if registrar.cert is None:
            raise LabError("start the TlsRegistrar first (its certificate is made at start)")
        self.lab, self.node, self.registrar = lab, node, registrar
        self.ip = ip or (lab.ip6_of(node) if T.is_ip6(registrar.ip) else lab.ip_of(node))
        self.local_port, self.hold_s = local_port, hold_s
        self.message = register_message(user, self.ip, local_port, registrar.ip, registrar.port)
        self._message_file = registrar.workdir / f"register-{node}.sip"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        """Connect, handshake and send (the process holds the connection ``hold_s`` after the reply)."""
        self._message_file.write_bytes(self.message)
        argv = [sys.executable, _PEER, "send", self.registrar.ip, str(self.registrar.port)]
        argv += [str(self.registrar.cert), str(self._message_file), self.ip, str(self.local_port), str(self.hold_s)]
        self.proc = self.lab.popen(self.node, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def wait(self, timeout: float = 30.0) -> TlsResult:
        """The phone's result once it closed the connection; LabError if it failed or timed out."""
        if self.proc is None:
            raise LabError(f"TLS phone on {self.node} was never started")
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise LabError(f"TLS phone on {self.node} did not finish in {timeout}s: {err}") from None
        if self.proc.returncode != 0:
            raise LabError(f"TLS phone on {self.node} failed ({self.proc.returncode}): {err.strip()[-2000:]}")
        summary = json.loads(out)
        return TlsResult(
            local=T.hostport(summary["local"][0], summary["local"][1]),
            version=summary["version"],
            cipher=summary["cipher"],
            reply=summary["reply"],
            sent=self.message,
        )
