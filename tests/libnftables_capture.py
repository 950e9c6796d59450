"""Re-take tests/test_nftnl.py's CAPTURED: the bytes libnftables puts on the wire for its STEPS.

As root, from the project directory: `.venv/bin/python -m tests.libnftables_capture`. In a fresh network
namespace (`unshare --net`), under `strace -e trace=sendmsg,write -e write=all`, a probe installs nfsip's
table (`nfsip.kernel.ruleset.render`; wan_interface wan0, every other key its default) and sends each
step's element changes (Nft.changes with test_nftnl.LIBNFTABLES, as the test makes them) as one
libnftables JSON transaction (tests/libnftables_reference.py), after a marker line on stderr. The batch
that follows each marker is printed as the new CAPTURED, to paste over the old one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from nfsip.config import Config
from nfsip.kernel.netlink import NFNL_MSG_BATCH_BEGIN
from nfsip.kernel.nft import Nft
from nfsip.kernel.ruleset import options_from, render
from tests.libnftables_reference import json_command
from tests.test_nftnl import LIBNFTABLES, STEPS

TABLE = "nfsip"
MARKER = "capture "
_SYSCALL = re.compile(r"^(?:\d+ +)?(\w+)\(")


def probe() -> None:
    """Install the table, then each step's changes as one libnftables transaction after its marker."""
    import nftables

    nft = Nft(TABLE)
    nft.install(render(options_from(Config(wan_interface="wan0", table_name=TABLE), native_queue=False)))
    ctx = nftables.Nftables()
    for name, (install, remove) in STEPS.items():
        changes = nft.changes([(install, remove, ())], LIBNFTABLES)
        os.write(2, f"{MARKER}{name}\n".encode())
        rc, _out, err = ctx.json_cmd({"nftables": [json_command(change, TABLE) for change in changes]})
        if rc != 0:
            raise SystemExit(f"{name}: libnftables refused it: {err}")


def batches(trace: str) -> dict[str, bytes]:
    """The batch (the sendmsg that starts with NFNL_MSG_BATCH_BEGIN) after each marker of a strace log."""
    calls: list[tuple[str, bytearray]] = []  # (syscall, the bytes strace dumped for it)
    for line in trace.splitlines():
        if line.startswith(" | "):  # ' | 00000  14 00 00 00 ...  ascii |': 16 bytes of hex from column 10
            calls[-1][1].extend(bytes.fromhex(line[10:59]))
        elif match := _SYSCALL.match(line):
            calls.append((match[1], bytearray()))
    out: dict[str, bytes] = {}
    name = ""
    for syscall, data in calls:
        if syscall == "write" and data.startswith(MARKER.encode()):
            name = data[len(MARKER) :].decode().strip()
        elif syscall == "sendmsg" and name and int.from_bytes(data[4:6], sys.byteorder) == NFNL_MSG_BATCH_BEGIN:
            if name in out:
                raise SystemExit(f"{name}: more than one batch")
            out[name] = bytes(data)
    return out


def python_source(captured: dict[str, bytes], width: int = 112) -> str:
    lines = ["CAPTURED = {"]
    for name, data in captured.items():
        text = data.hex()
        lines.append(f'    "{name}": bytes.fromhex(')
        lines += [f'        "{text[i : i + width]}"' for i in range(0, len(text), width)]
        lines.append("    ),")
    return "\n".join([*lines, "}"])


def main() -> None:
    if sys.argv[1:] == ["--probe"]:
        probe()
        return
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace"
        strace = ["strace", "-qq", "-e", "trace=sendmsg,write", "-e", "write=all", "-o", str(log)]
        subprocess.run(["unshare", "--net", *strace, sys.executable, "-m", __spec__.name, "--probe"], check=True)
        captured = batches(log.read_text())
    if missing := STEPS.keys() - captured.keys():
        raise SystemExit(f"no batch captured for {sorted(missing)}")
    print(python_source({name: captured[name] for name in STEPS}))


if __name__ == "__main__":
    main()
