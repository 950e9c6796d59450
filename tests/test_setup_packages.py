"""scripts/setup installs everything the tests, the lab and the scripts run (issue 13, item 6).

A fresh Debian 12 machine failed two lab tests after `./scripts/test`: setup did not install `iptables`,
whose libxt_NFQUEUE.so `nft list` needs to print nfsip's compat queue rule. So here every external
program, and that xtables extension, must belong (`dpkg -S`) to a package in setup's `packages=( ... )`,
to one of their dependencies (apt installs those too), or to an Essential or Priority: required package
(present on every Debian system).

The programs are read from the code, not only from the list below: every string in tests/ and nfsiplab/
that names an installed program from an argv position (a list or tuple element, a call argument), every
argv head passed to subprocess or the lab's run/popen (installed or not), every `shutil.which("...")`, and
every command of the bash scripts in scripts/. A program the code starts that PROGRAMS does not list fails
`test_every_program_the_code_runs_is_listed`, so a newly used tool cannot slip through; a listed one the
code no longer runs fails it too.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

from .lab_support import require

ROOT = Path(__file__).resolve().parents[1]
SETUP = ROOT / "scripts" / "setup"
PYTHON_SOURCES = [
    p
    for p in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "nfsiplab").glob("*.py"))
    if p != Path(__file__).resolve()
]
"""Not this file: it names programs as data (it runs only dpkg and dpkg-query, Debian's own)."""
SCRIPTS = sorted(p for p in (ROOT / "scripts").iterdir() if p.is_file())
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""Where the programs are looked up: kamailio lives in /usr/sbin, which a user's PATH may lack."""

PROGRAMS = {
    # the lab and the tests
    "ip": "namespaces, veths, bridges, addresses, routes (iproute2)",
    "ss": "whether sipp and Kamailio listen (iproute2)",
    "nft": "the lab's rulesets and what the tests read back (nftables)",
    "conntrack": "the lab's conntrack listings and flushes (conntrack)",
    "sipp": "the SIP phones and server of the lab (sip-tester)",
    "dumpcap": "captures in the lab (wireshark-common, through tshark)",
    "kamailio": "the real registrar/proxy of the lab (kamailio)",
    "kamcmd": "asks the lab's Kamailio for its contacts (kamailio)",
    "promtool": "checks the metrics exposition and the example alerts (prometheus)",
    "systemd-analyze": "checks the shipped unit (systemd)",
    "sysctl": "reads conntrack accounting in a test namespace (procps)",
    "unshare": "a throwaway network namespace for nft -c and nfsip check (util-linux)",
    "sh": "sysctl writes in a namespace (dash)",
    "cat": "reads /proc files inside a namespace (coreutils)",
    "sleep": "a process to kill in the stale-lab test (coreutils)",
    "true": "a process that has exited (coreutils)",
    "strace": "tests/libnftables_capture.py re-takes libnftables' element batches (strace)",
    "openssl": "the lab's TLS stand-in makes its certificate (openssl)",
    # scripts/
    "bash": "the scripts' interpreter",
    "env": "the scripts' #! line",
    "apt-get": "scripts/setup installs the packages",
    "dpkg-query": "scripts/setup asks which packages are installed",
    "grep": "scripts/setup",
    "id": "scripts/setup checks for root",
    "dirname": "the scripts find the project",
    "sha256sum": "scripts/setup stamps the venv",
    "cut": "scripts/setup",
    "python3": "scripts/setup builds the venv",
}
BUILD_PROGRAMS = {"gcc": "pip builds netfilterqueue against libnetfilter-queue-dev in scripts/setup"}
"""Run by other programs, not named in the code."""
LIBRARIES = {
    "xtables/libxt_NFQUEUE.so": "`nft list` prints the compat queue rule through it (iptables)",
    "libnftables.so.1": "nfsip.kernel.nft loads it (libnftables1)",
    "libnetfilter_queue.so.1": "netfilterqueue links against it (libnetfilter-queue1)",
}
NOT_PROGRAMS = {
    "bridge": "`ip link add ... type bridge`",
    "link": "`ip link`",
    "route": "`ip route`",
    "service": "a sipp scenario name",
    "expr": "nft JSON key",
    "install": "a test parameter name",
    "size": "a dict key",
    "systemd": "a directory name",
    "timeout": "an nft element key",
    "prometheus": "the package name given to require_tool",
    "false": "a sipp option value (-reconnect_close false)",
}
RUNNERS = {"run", "Popen", "popen", "check_output", "check_call", "call", "_spawn"}
ARGV_NAMES = {"argv", "cmd", "command"}
SHELL_WORDS = {
    "if", "then", "else", "elif", "fi", "for", "in", "do", "done", "while", "until", "case", "esac", "function",
    "exec", "export", "set", "cd", "echo", "local", "return", "exit", "[", "[[", "test", "read", "shift",
    "unset", "printf", "source", ".", "eval", "trap", "wait", "true", "false", "!",
}  # fmt: skip


def _is_program_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[a-z][a-z0-9_.+-]*", value) is not None


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _argv_head(node: ast.AST) -> str | None:
    """The program of an argv list literal: its first element, a string or `_binary("name")`."""
    if not isinstance(node, ast.List | ast.Tuple) or not node.elts:
        return None
    first = node.elts[0]
    if isinstance(first, ast.Constant) and _is_program_name(first.value):
        return first.value
    if isinstance(first, ast.Call) and _call_name(first) == "_binary" and first.args:
        arg = first.args[0]
        return arg.value if isinstance(arg, ast.Constant) else None
    return None


def programs_in_python(path: Path) -> dict[str, set[str]]:
    """program -> where, for one Python file."""
    found: dict[str, set[str]] = defaultdict(set)
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    # Strings in an argv position: an element of a list or tuple, or a positional argument of a call
    # (`in_ns(netns, "ip", ...)`); not set members, dict keys or compared values.
    argv_strings = {
        id(arg)
        for node in ast.walk(tree)
        for arg in (
            node.elts if isinstance(node, ast.List | ast.Tuple) else node.args if isinstance(node, ast.Call) else []
        )
    }
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Constant) and _is_program_name(node.value):
            if id(node) in argv_strings and shutil.which(node.value, path=SEARCH_PATH):
                found[node.value].add(where)
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name in RUNNERS:
                for arg in node.args:
                    head = _argv_head(arg)
                    if head:
                        found[head].add(where)
            elif name in ("which", "_binary") and node.args and isinstance(node.args[0], ast.Constant):
                found[str(node.args[0].value)].add(where)
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id in ARGV_NAMES for t in node.targets):
                head = _argv_head(node.value)
                if head:
                    found[head].add(where)
        elif isinstance(node, ast.comprehension):
            # `[t for t in ("sipp", "dumpcap") if shutil.which(t) is None]`: each name is a program.
            uses_which = any(
                isinstance(c, ast.Call) and _call_name(c) == "which" for i in node.ifs for c in ast.walk(i)
            )
            if uses_which and isinstance(node.iter, ast.Tuple | ast.List):
                for elt in node.iter.elts:
                    if isinstance(elt, ast.Constant) and _is_program_name(elt.value):
                        found[elt.value].add(where)
    return found


def programs_in_script(path: Path) -> dict[str, set[str]]:
    """program -> where, for one bash script: the #! interpreter and the first word of every command."""
    found: dict[str, set[str]] = defaultdict(set)
    text = path.read_text()
    text = re.sub(r"^\s*\w+=\([^)]*\)", "", text, flags=re.M)  # array literals, e.g. packages=( ... )
    rel = path.relative_to(ROOT)
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{rel}:{number}"
        if number == 1 and line.startswith("#!"):
            for word in line[2:].split():
                found[Path(word).name].add(where)
            continue
        line = re.sub(r"(^|\s)#.*", "", line)
        commands = []
        while True:  # command substitutions, innermost first, are commands of their own
            inner = re.search(r"\$\(([^()]*)\)", line)
            if inner is None:
                break
            commands.append(inner.group(1))
            line = line[: inner.start()] + "X" + line[inner.end() :]
        for command in [line, *commands]:
            command = re.sub(r"\"[^\"]*\"|'[^']*'", "X", command)
            for segment in re.split(r"&&|\|\||[;|(){}`]", command):
                words = segment.split()
                if words and words[0] in ("for", "case", "select"):
                    continue
                while words and (words[0] in SHELL_WORDS or re.match(r"^\w+\+?=", words[0])):
                    words = words[1:]
                if words and _is_program_name(words[0]):
                    found[words[0]].add(where)
    return found


@cache
def programs_in_code() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for path in PYTHON_SOURCES:
        for name, where in programs_in_python(path).items():
            found[name] |= where
    for path in SCRIPTS:
        for name, where in programs_in_script(path).items():
            found[name] |= where
    return {name: where for name, where in found.items() if name not in NOT_PROGRAMS}


def setup_packages() -> list[str]:
    match = re.search(r"^packages=\(([^)]*)\)", SETUP.read_text(), re.M)
    assert match, "scripts/setup has no packages=( ... ) array"
    return match.group(1).split()


def _dependency_names(field: str) -> set[str]:
    names = set()
    for group in field.split(","):
        for alternative in group.split("|"):
            name = alternative.strip().split(" ")[0].split(":")[0]
            if name:
                names.add(name)
    return names


@cache
def installed_by_setup() -> frozenset[str]:
    """The packages setup's list brings in (Depends and Pre-Depends, recursively), plus the Essential and
    Priority: required packages every Debian system has."""
    require(shutil.which("dpkg-query"), "not a Debian system (no dpkg-query)")
    fmt = "${db:Status-Abbrev}\t${Package}\t${Essential}\t${Priority}\t${Provides}\t${Pre-Depends}\t${Depends}\n"
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    depends: dict[str, set[str]] = {}
    providers: dict[str, set[str]] = defaultdict(set)
    base = set()
    for line in out.splitlines():
        status, package, essential, priority, provides, pre_depends, plain_depends = line.split("\t")
        if not status.startswith("ii"):
            continue
        depends[package] = _dependency_names(pre_depends) | _dependency_names(plain_depends)
        for virtual in _dependency_names(provides):
            providers[virtual].add(package)
        if essential == "yes" or priority == "required":
            base.add(package)
    wanted = setup_packages()
    missing = [p for p in wanted if p not in depends]
    require(not missing, f"packages of scripts/setup not installed (run scripts/setup): {', '.join(missing)}")
    seen: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        for package in ({name} if name in depends else set()) | providers.get(name, set()):
            if package not in seen:
                seen.add(package)
                todo.extend(depends[package])
    return frozenset(seen | base)


def owners(path: str) -> set[str]:
    """The packages that own `path` (`dpkg -S`), trying the merged-/usr aliases of the path too."""
    real = os.path.realpath(path)
    candidates = []
    for p in dict.fromkeys((path, real)):
        candidates += [p, p.removeprefix("/usr")] if p.startswith("/usr/") else [p, "/usr" + p]
    for candidate in candidates:
        proc = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        found = set()
        for line in proc.stdout.splitlines():
            packages, _, owned = line.partition(": ")
            if owned == candidate and not line.startswith("diversion "):
                found |= {p.strip().split(":")[0] for p in packages.split(",")}
        if found:
            return found
    return set()


def test_setup_installs_iptables_for_the_xtables_extension():
    assert "iptables" in setup_packages()


def test_every_program_the_code_runs_is_listed():
    found = programs_in_code()
    unlisted = {name: sorted(where) for name, where in found.items() if name not in PROGRAMS}
    assert not unlisted, (
        f"programs the code runs that PROGRAMS does not list: {unlisted}; add each to PROGRAMS (and its package to "
        "scripts/setup), or to NOT_PROGRAMS when the string is not a program"
    )
    unused = sorted(set(PROGRAMS) - set(found))
    assert not unused, f"PROGRAMS lists programs the code no longer runs: {unused}"


def test_the_scan_finds_programs_the_code_names_only_in_argv(tmp_path: Path):
    """The scan sees argv heads and which() names even of programs not installed here."""
    source = (
        "import shutil, subprocess\n"
        "subprocess.run(['not-installed-tool', '-x'])\n"
        "lab.run(node, ['other-tool'])\n"
        "argv = ['third-tool', 'arg']\n"
        "shutil.which('fourth-tool')\n"
        "missing = [t for t in ('fifth-tool',) if shutil.which(t) is None]\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = programs_in_python(path)
    assert {"not-installed-tool", "other-tool", "third-tool", "fourth-tool", "fifth-tool"} <= set(found)


@pytest.mark.parametrize("program", sorted(PROGRAMS | BUILD_PROGRAMS))
def test_program_comes_from_a_package_setup_installs(program: str):
    why = PROGRAMS.get(program) or BUILD_PROGRAMS[program]
    path = shutil.which(program, path=SEARCH_PATH)
    require(path, f"{program} ({why}) is not installed: scripts/setup must install its package")
    assert path is not None
    packages = owners(path)
    assert packages, f"dpkg -S knows no package for {path} ({program}: {why})"
    assert packages & installed_by_setup(), (
        f"{program} ({why}) comes from {sorted(packages)}, which scripts/setup does not install: add it to "
        "packages=( ... )"
    )


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_library_comes_from_a_package_setup_installs(library: str):
    why = LIBRARIES[library]
    require(shutil.which("dpkg"), "not a Debian system (no dpkg)")
    proc = subprocess.run(["dpkg", "-S", f"*/{library}"], capture_output=True, text=True)
    packages = {
        p.strip().split(":")[0]
        for line in proc.stdout.splitlines()
        if not line.startswith("diversion ")
        for p in line.partition(": ")[0].split(",")
    }
    require(packages, f"{library} ({why}) is not installed: scripts/setup must install its package")
    assert packages & installed_by_setup(), (
        f"{library} ({why}) comes from {sorted(packages)}, which scripts/setup does not install"
    )
