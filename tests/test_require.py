"""Under scripts/test (NFSIP_REQUIRE_LAB=1) a missing tool, privilege or corpus fails; nothing skips
(issue 13, item 7). Locally the same tests skip with the reason."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .lab_support import REQUIRE_ENV, require

ROOT = Path(__file__).resolve().parents[1]
CORPUS_TESTS = [
    "tests/test_sip_corpus.py",
    "tests/test_sip_rfc4475.py",
    "tests/test_engine.py",
]
"""Every test module that reads ../shared/corpus."""


def test_require_skips_locally(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no frobnicator"):
        require(False, "no frobnicator")
    require(True, "never shown")


def test_require_fails_under_require_lab(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no frobnicator"):
        require(False, "no frobnicator")
    require(True, "never shown")


def test_no_test_skips_around_the_guard():
    """pytest.skip, skipif, importorskip and empty parameter lists would skip even under scripts/test:
    every condition goes through lab_support.require (and corpus tests through corpus.cases/case)."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name in ("lab_support.py", "test_require.py"):  # the guard, and its tests
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("skip", "skipif", "importorskip", "xfail"):
                offenders.append(f"{path.name}:{node.lineno} {node.attr}")
    assert not offenders, offenders


def _pytest(tmp_path: Path, require_lab: bool) -> subprocess.CompletedProcess[str]:
    """The corpus tests against a corpus folder that does not exist."""
    env = dict(os.environ, NFSIP_CORPUS=str(tmp_path / "no-corpus"))
    env.pop(REQUIRE_ENV, None)
    if require_lab:
        env[REQUIRE_ENV] = "1"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", "--no-header", *CORPUS_TESTS]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _summary(out: str) -> dict[str, int]:
    last = out.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}


def test_missing_corpus_fails_every_corpus_test_under_require_lab(tmp_path: Path):
    proc = _pytest(tmp_path, require_lab=True)
    counts = _summary(proc.stdout)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "skipped" not in counts, proc.stdout[-3000:]
    failed = set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M))
    for test in (
        "tests/test_engine.py::test_vendor_corpus_present",
        "tests/test_engine.py::test_pcap_corpus_has_private_sdp_messages",
        "tests/test_engine.py::test_vendor_messages_with_sdp[vendors-no-cases]",
        "tests/test_engine.py::test_pcap_invites_and_200s[pcap-no-cases]",
        "tests/test_engine.py::test_rfc4475_invalid_messages_pass_unchanged",
        "tests/test_sip_corpus.py::test_vendor_message[vendors-no-cases]",
        "tests/test_sip_corpus.py::test_pcap_messages[pcap-no-cases]",
        "tests/test_sip_rfc4475.py::test_every_file_classified",
        "tests/test_sip_rfc4475.py::test_valid[wsinv.dat]",
    ):
        assert test in failed, (test, proc.stdout[-3000:])
    assert "no-corpus" in proc.stdout  # the failures name the folder that is missing


def test_missing_corpus_skips_locally(tmp_path: Path):
    proc = _pytest(tmp_path, require_lab=False)
    counts = _summary(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert counts.get("skipped", 0) > 0 and "failed" not in counts, counts
