"""The operator documentation stays true of the code: configuration keys and defaults, metric names, CLI
commands and options, nft objects, example files that tools can check, and links between the docs."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from nfsip import config as configmod
from nfsip.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_MISSING, EXIT_OK, build_parser
from nfsip.config import Config
from nfsip.kernel import ruleset
from nfsip.metrics import Metrics, QueueCollector

from .lab_support import require, require_tool

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Written by the developers, not part of the operator documentation checked here (links are still checked).
NOT_OPERATOR_DOCS = {"architecture.md"}

_CODE_BLOCK = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def code_blocks(text: str, lang: str) -> list[str]:
    return [body for kind, body in _CODE_BLOCK.findall(text) if kind == lang]


def operator_docs() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name not in NOT_OPERATOR_DOCS)


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {value!r}")


def table_rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows keyed by their first cell (without backticks)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


# -- configuration ------------------------------------------------------------------------------------


def test_every_config_key_is_documented_with_its_default():
    rows = table_rows(doc("configuration.md"))
    for f in fields(Config):
        assert f.name in rows, f"docs/configuration.md has no table row for {f.name}"
        default_cell = rows[f.name][2]
        assert default_cell == f"`{toml_literal(f.default)}`", (f.name, default_cell)


def test_full_example_holds_every_key_with_its_default_and_is_valid():
    text = doc("configuration.md")
    section = text[text.index("## Full example") :]
    example = tomllib.loads(code_blocks(section, "toml")[0])
    assert set(example) == {f.name for f in fields(Config)}
    loaded = configmod.from_mapping(example)
    for f in fields(Config):
        if f.name != "wan_interface":
            assert getattr(loaded, f.name) == f.default, f.name


def test_every_toml_example_in_the_docs_is_a_valid_configuration():
    for path in operator_docs():
        for block in code_blocks(path.read_text(), "toml"):
            configmod.from_mapping(tomllib.loads(block))


# -- metrics --------------------------------------------------------------------------------------------


def scraped_families() -> dict[str, str]:
    """Metric families as scraped (counters with `_total`) -> type."""
    families = {}
    kernel = QueueCollector.families(0, 0, {"enqueued": 0, "queue_dropped": 0, "user_dropped": 0}, 0)
    for family in [*Metrics(lambda: []).registry.collect(), *kernel]:
        name = family.name + "_total" if family.type == "counter" else family.name
        families[name] = family.type
    return families


def sample_names() -> set[str]:
    names = set()
    for name, kind in scraped_families().items():
        if kind == "counter":
            base = name.removesuffix("_total")
            names |= {name, base + "_created"}
        elif kind == "histogram":
            names |= {name, *(name + s for s in ("_bucket", "_sum", "_count", "_created"))}
        else:
            names.add(name)
    return names


def test_every_metric_family_is_documented():
    text = doc("metrics.md")
    rows = table_rows(text)
    for name, kind in scraped_families().items():
        assert name in rows, f"docs/metrics.md has no table row for {name}"
        assert rows[name][1] == kind, (name, rows[name][1], kind)


def test_metric_names_in_the_docs_exist():
    known = sample_names() | {"nfsip_probe"}  # the throwaway table of `nfsip check`
    for path in operator_docs():
        for token in set(re.findall(r"\bnfsip_[a-z0-9_]+", path.read_text())):
            assert token in known, f"{path.name} names {token}, which the daemon does not expose"


def test_example_alerts_and_scrape_config_pass_promtool(tmp_path: Path):
    require_tool("promtool", "prometheus")
    blocks = code_blocks(doc("metrics.md"), "yaml")
    rules = [b for b in blocks if b.startswith("groups:")]
    scrape = [b for b in blocks if b.startswith("scrape_configs:")]
    assert rules and scrape
    (tmp_path / "rules.yml").write_text(rules[0])
    (tmp_path / "prometheus.yml").write_text(scrape[0])
    for args in (["check", "rules", "rules.yml"], ["check", "config", "prometheus.yml"]):
        proc = subprocess.run(["promtool", *args], cwd=tmp_path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# -- command line ---------------------------------------------------------------------------------------


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_cli_subcommand_and_option_is_documented():
    text = doc("cli.md")
    for name, sub in subcommands().items():
        assert f"## `nfsip {name}`" in text, f"docs/cli.md has no section for nfsip {name}"
        for action in sub._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"docs/cli.md does not mention nfsip {name} {option}"


def test_exit_codes_are_documented():
    rows = {}
    for line in doc("cli.md").splitlines():
        match = re.match(r"\| (\d) \| (.+) \|$", line)
        if match:
            rows[int(match.group(1))] = match.group(2)
    assert set(rows) == {EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_MISSING}
    assert "configuration" in rows[EXIT_CONFIG] and "kernel feature" in rows[EXIT_MISSING]


# -- nftables -------------------------------------------------------------------------------------------


def test_every_table_object_is_documented():
    text = ruleset.render(ruleset.options_from(Config(wan_interface="eth0"), native_queue=True))
    page = doc("nftables.md")
    rows = table_rows(page)
    for kind, name in re.findall(r"^\t(set|map|chain) (\w+) \{", text, re.M):
        base = name.removesuffix(ruleset.IPV6_SUFFIX)
        if base != name and base in rows:
            assert f"`{name}`" in page, f"docs/nftables.md does not name {kind} {name}, the IPv6 twin of {base}"
        else:
            assert name in rows, f"docs/nftables.md has no table row for {kind} {name}"


def test_firewall_example_loads_beside_the_table(tmp_path: Path):
    """`nft -c` (check only) in a network namespace of its own: nothing is loaded anywhere."""
    require(os.geteuid() == 0, "needs root (a network namespace of its own)")
    require_tool("nft", "nftables")
    require_tool("unshare", "util-linux")
    example = next(b for b in code_blocks(doc("nftables.md"), "") if b.startswith("flush ruleset"))
    table = tmp_path / "nfsip.nft"
    table.write_text(ruleset.render(ruleset.options_from(Config(wan_interface="wan0"), native_queue=True)))
    conf = tmp_path / "nftables.conf"
    conf.write_text(example.replace("/usr/share/nfsip/nfsip.nft", str(table)))
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# -- links ----------------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _CODE_BLOCK.sub("", path.read_text())
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_relative_links_between_docs_resolve():
    for path in sorted(DOCS.glob("*.md")):
        text = _CODE_BLOCK.sub("", path.read_text())
        for target in _LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            assert dest.exists(), f"{path.name}: broken link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{path.name}: no heading for #{anchor} in {dest.name}"


def test_index_links_every_doc():
    linked = set(_LINK.findall(doc("README.md")))
    for path in DOCS.glob("*.md"):
        if path.name != "README.md":
            assert path.name in linked, f"docs/README.md does not link {path.name}"
