"""What the operator docs quote and state, checked against the code: every log line they quote comes from a
format string in nfsip/, the metric labels are the ones registered, the exit codes are cli.py's. Each
matcher is also shown to reject a wrong quote, so that none of these checks passes vacuously."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import fields
from functools import cache
from inspect import signature
from pathlib import Path

import pytest

from nfsip import cli
from nfsip.config import Config
from nfsip.core.mediastats import CallMedia
from nfsip.metrics import Metrics, QueueCollector

from .test_docs import _CODE_BLOCK, DOCS, ROOT
from .test_docs import operator_docs as _operator_docs

_SPAN = re.compile(r"`([^`\n]+)`")
_PROSE_SPAN = re.compile(r"`((?:[^`\n]|\n(?!\n))+)`")


def operator_docs() -> list[Path]:
    return [*_operator_docs(), ROOT / "README.md"]


# -- templates: the strings the code can print ---------------------------------------------------------------


class _Mark:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


PH = _Mark("PH")  # a placeholder of a template: any text
VALUE = _Mark("VALUE")  # `<something>` in a doc quote: a value, which the code fills into a placeholder
ELIDED = _Mark("ELIDED")  # `...` in a doc quote: text left out, the template's own text included

_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\d+|\*)?(?:\.\d+)?[diouxXeEfFgGcrsa%]")
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}


def _percent_template(text: str) -> tuple[object, ...]:
    out: list[object] = []
    pos = 0
    for m in _PERCENT.finditer(text):
        out.extend(text[pos : m.start()])
        out.extend("%" if m.group(0) == "%%" else [PH])
        pos = m.end()
    out.extend(text[pos:])
    return tuple(out)


def _fstring_template(node: ast.JoinedStr) -> tuple[object, ...]:
    out: list[object] = []
    for part in node.values:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            out.extend(part.value)
        else:
            out.append(PH)
    return tuple(out)


@cache
def templates() -> tuple[frozenset[tuple[object, ...]], frozenset[tuple[object, ...]]]:
    """(the format strings of nfsip's logging calls, every f-string of nfsip), as templates: characters and
    placeholders. The namespace lab (nfsiplab/, outside the package) is a test tool, not the daemon."""
    logged: set[tuple[object, ...]] = set()
    fstrings: set[tuple[object, ...]] = set()
    for path in sorted((ROOT / "nfsip").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                fstrings.add(_fstring_template(node))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in _LOG_METHODS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"log", "logger", "logging"}
                and node.args
            ):
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    logged.add(_percent_template(first.value))
                elif isinstance(first, ast.JoinedStr):
                    logged.add(_fstring_template(first))
    return frozenset(logged), frozenset(fstrings)


def quote_pattern(text: str) -> tuple[object, ...]:
    """A doc quote as a pattern: `...` (ELIDED) and `<anything>` (VALUE) are wildcards, the rest literal."""
    out: list[object] = []
    for i, part in enumerate(re.split(r"(\.\.\.|…|<[^<>]+>)", text)):
        if i % 2 == 0:
            out.extend(part)
        else:
            out.append(VALUE if part.startswith("<") else ELIDED)
    return tuple(out)


def aligned_text(template: tuple[object, ...], quote: tuple[object, ...]) -> int:
    """How many characters of the template's own text the quote can show, at most, in a text that fits
    both (-1: none fits). A placeholder takes any text of the quote, wildcards included, but no `;` (the
    field separator of nfsip's log lines) unless it opens or closes the template (`%s; SIP passes ...`).
    `<value>` falls inside a placeholder, unless it opens or closes the quote; `...` may also stand for
    the template's own text (`WAN address changed ...`, `(...)`). Dynamic programming over (template
    position, quote position), from the ends."""
    n, m = len(template), len(quote)
    best = [[-1] * (m + 1) for _ in range(n + 1)]
    best[n][m] = 0
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            t = template[i] if i < n else ""
            q = quote[j] if j < m else ""
            options = []
            if t is PH:
                options.append(best[i + 1][j])  # the placeholder ends
                if j < m and (q is VALUE or q is ELIDED or q != ";" or i in (0, n - 1)):
                    options.append(best[i][j + 1])  # it takes the quote's next character or wildcard
            elif q is ELIDED or (q is VALUE and j in (0, m - 1)):
                options.append(best[i][j + 1])  # the wildcard ends
                if i < n:
                    options.append(best[i + 1][j])  # it takes the template's next character
            elif i < n and j < m and isinstance(q, str) and t == q and best[i + 1][j + 1] >= 0:
                options.append(best[i + 1][j + 1] + 1)
            best[i][j] = max(options, default=-1)
    return best[0][0]


def fits(template: tuple[object, ...], quote: tuple[object, ...]) -> bool:
    """The quote fits the template and shows its text: 16 characters of it, or all when it has fewer
    (else `...` and placeholders together let anything through: `{}: public address {}`)."""
    own = sum(1 for t in template if isinstance(t, str))
    return aligned_text(template, quote) >= min(16, own)


def grams(parts: tuple[object, ...], size: int = 5) -> frozenset[str]:
    """The runs of `size` characters in the text parts (between placeholders or wildcards)."""
    chunks = "".join(p if isinstance(p, str) else "\0" for p in parts).split("\0")
    return frozenset(c[k : k + size] for c in chunks for k in range(len(c) - size + 1))


@cache
def _candidates() -> tuple[tuple[tuple[object, ...], frozenset[str]], ...]:
    logged, fstrings = templates()
    return tuple((t, grams(t)) for t in sorted({*logged, *fstrings}, key=repr) if meaningful(t))


def produced_by_code(quote: str) -> bool:
    """A quote fits a logging format string or an f-string (a call event, say, that the daemon logs as
    `log.info("%s", event)`); a configuration error may carry the key in front (`key: problem`, as
    ConfigError prints it)."""
    pattern = quote_pattern(quote)
    # The exact check on the 8 templates with the most text in common (or all those without 5 characters
    # of text, which that cannot rank): a template ranked lower would show as a quote nothing produces.
    shared = grams(pattern)
    ranked = sorted(_candidates(), key=lambda c: -len(c[1] & shared))
    tried = [t for t, g in ranked[:8] if g & shared] + [t for t, g in ranked if not g]
    if any(fits(t, pattern) for t in tried):
        return True
    keyed = re.match(r"^[a-z_]+(?:\[\d+\])?: (.+)$", quote)
    return keyed is not None and any(fits(t, quote_pattern(keyed.group(1))) for t in config_templates())


@cache
def config_templates() -> tuple[tuple[object, ...], ...]:
    tree = ast.parse((ROOT / "nfsip" / "config.py").read_text())
    return tuple(
        _fstring_template(n) if isinstance(n, ast.JoinedStr) else tuple(n.value)
        for n in ast.walk(tree)
        if isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
    )


def meaningful(template: tuple[object, ...]) -> bool:
    """Fixed text, or at least 6 letters around the placeholders: `log.info("%s", event)`, f"table {name}"
    or f"{key}: {problem}" would fit nearly any quote."""
    return PH not in template or sum(1 for t in template if isinstance(t, str) and t.isalpha()) >= 6


_LOG_LINE = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:,]+ )?(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) nfsip[\w.]*: (.+)$")
_SHARED_RUN = 16


@cache
def _logged_runs() -> frozenset[str]:
    return frozenset().union(*(grams(t, _SHARED_RUN) for t in templates()[0]))


def _looks_logged(span: str) -> bool:
    """A prose span sharing a run of 16 characters with a logging format string is taken as a log quote."""
    return bool(grams(tuple(span), _SHARED_RUN) & _logged_runs())


def quoted_log_lines() -> list[tuple[str, str]]:
    """(doc, quote) for every log line the operator docs quote: lines of code blocks in the daemon's format
    (`INFO nfsip: ...`), the first column of `| line | meaning |` tables, and spans in the prose that share
    a long run of text with a logging format string."""
    found = []
    for path in operator_docs():
        text = path.read_text()
        for _, body in _CODE_BLOCK.findall(text):
            for line in body.splitlines():
                m = _LOG_LINE.match(line.strip())
                if m:
                    found.append((path.name, m.group(1)))
        prose = _CODE_BLOCK.sub("", text)
        in_line_table = False
        for line in prose.splitlines():
            if re.match(r"^\| *line *\| *meaning *\|", line):
                in_line_table = True
            elif in_line_table and line.startswith("|") and not line.startswith("|---"):
                found.extend((path.name, s) for s in _SPAN.findall(line.strip("|").split("|")[0]))
            elif not line.startswith("|"):
                in_line_table = False
        # In prose a span may go on over a line break.
        for span in _PROSE_SPAN.findall(prose):
            quote = " ".join(span.split())
            if _looks_logged(quote) and (path.name, quote) not in found:
                found.append((path.name, quote))
    return found


def test_the_docs_quote_log_lines():
    """The collection itself finds what the docs quote (else the next test would check nothing)."""
    by_doc: dict[str, int] = {}
    for name, _ in quoted_log_lines():
        by_doc[name] = by_doc.get(name, 0) + 1
    assert by_doc.get("troubleshooting.md", 0) >= 10, by_doc
    assert by_doc.get("security.md", 0) >= 1 and by_doc.get("metrics.md", 0) >= 1, by_doc


def test_every_quoted_log_line_is_produced_by_the_code():
    wrong = [f"{name}: `{quote}`" for name, quote in quoted_log_lines() if not produced_by_code(quote)]
    assert not wrong, "log lines quoted in the docs that no format string in nfsip/ produces:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "quote",
    [
        # What the docs said before they were checked: no such lines.
        "hook 4: rewritten",
        "nft transaction failed (EEXIST); retrying element by element",
        "call 3c2a7f1e@10.0.0.2: one-way audio, no media far end -> phone for 10s",
        "table inet nfsip installed; WAN eth0 public address 203.0.113.7; queue 5060 via nft queue",
        "call <id> ended: BYE (out); 9.5s; ports -",
        "took over N pinholes of M calls left by a previous run",
    ],
)
def test_the_log_line_matcher_rejects_lines_the_code_does_not_produce(quote):
    assert not produced_by_code(quote)


def test_the_log_line_matcher_takes_placeholders_and_ellipses():
    assert produced_by_code("took over 3 pinholes of 1 calls and 0 registrations left by a previous run")
    assert produced_by_code("took over N pinholes of M calls and K registrations left by a previous run")
    assert produced_by_code("WAN address changed ...")
    assert produced_by_code("call <id>: one-way audio, no media far end -> phone for 10s (...)")


# -- metrics: names, types and label names -------------------------------------------------------------------


def registered_labels() -> dict[str, frozenset[str]]:
    """Label names of every metric family the daemon exposes, by name as scraped (counters with `_total`)."""
    metrics = Metrics(lambda: [CallMedia("c1@10.0.0.2", "10.0.0.2")])
    for value in vars(metrics).values():
        names = getattr(value, "_labelnames", ())
        if names:  # a child, so that the family's samples show its label names
            value.labels(*["x"] * len(names))
    # Every kernel value the collector reads, as 0: each family it can yield.
    kernel = QueueCollector.families(
        **{name: defaultdict(int) if name == "stats" else 0 for name in signature(QueueCollector.families).parameters}
    )
    found = {}
    for family in [*metrics.registry.collect(), *kernel]:
        name = family.name + "_total" if family.type == "counter" else family.name
        found[name] = frozenset(label for s in family.samples for label in s.labels if label != "le")
    return found


def documented_labels(text: str) -> dict[str, frozenset[str]]:
    """Rows of the `| metric | type | labels | meaning |` tables: metric -> its label names."""
    found = {}
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\| *metric *\| *type *\| *labels *\|", line):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        if in_table and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            found[cells[0].strip("`")] = frozenset() if cells[2] == "none" else frozenset(_SPAN.findall(cells[2]))
    return found


def label_mismatches(documented: dict[str, frozenset[str]], registered: dict[str, frozenset[str]]) -> list[str]:
    wrong = []
    for name in sorted(documented.keys() | registered.keys()):
        if name not in documented:
            wrong.append(f"{name}: registered, not in a metric table of docs/metrics.md")
        elif name not in registered:
            wrong.append(f"{name}: documented, not registered")
        elif documented[name] != registered[name]:
            wrong.append(f"{name}: labels documented {sorted(documented[name])}, registered {sorted(registered[name])}")
    return wrong


def test_metric_tables_list_every_family_with_its_labels_and_nothing_else():
    wrong = label_mismatches(documented_labels((DOCS / "metrics.md").read_text()), registered_labels())
    assert not wrong, "\n".join(wrong)


def test_the_label_check_sees_a_missing_label_and_a_row_too_many():
    registered = registered_labels()
    documented = dict(registered)
    documented["nfsip_call_media_packets_total"] = frozenset({"call_id", "direction"})
    documented["nfsip_no_such_metric"] = frozenset()
    wrong = label_mismatches(documented, registered)
    assert len(wrong) == 2 and "lan_host" in wrong[0] and "not registered" in wrong[1], wrong
    assert registered["nfsip_call_media_packets_total"] == {"call_id", "lan_host", "direction"}


# -- exit codes -----------------------------------------------------------------------------------------------

CODES = {cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_CONFIG, cli.EXIT_MISSING}
_CODE_STATEMENT = re.compile(
    r"\b(?:exit code|exits with code|exits with|exits|exit|code|codes?)\s+\**(\d+)\b(?!\s*(?:s|ms|seconds|bytes))"
)


def stated_exit_codes(text: str) -> list[int]:
    """Numbers the text gives as exit codes: "exit code 2", "exits 3", "(exit 2 otherwise)", "code **2**"."""
    return [int(n) for n in _CODE_STATEMENT.findall(_CODE_BLOCK.sub("", text))]


def code_meanings(text: str) -> dict[int, str]:
    """ "Exit codes: 0 ok, 1 runtime failure, 2 usage/configuration error, 3 missing ..." -> {0: "ok", ...}."""
    m = re.search(r"Exit codes:\s*(.+?)\.(?:\s|$)", " ".join(text.split()))
    assert m, text
    return {int(n): meaning.strip() for n, meaning in re.findall(r"(\d)\s+([^,;]+)", m.group(1))}


def test_every_exit_code_the_docs_state_is_one_of_clis():
    for path in [*operator_docs()]:
        stated = stated_exit_codes(path.read_text())
        assert set(stated) <= CODES, f"{path.name} states exit codes {sorted(set(stated) - CODES)}, cli.py has {CODES}"
    assert stated_exit_codes((DOCS / "cli.md").read_text()), "cli.md states no exit code?"
    assert stated_exit_codes("it exits 4 then; exit code 7") == [4, 7]  # the check can fail


def test_the_exit_code_summaries_agree_with_cli():
    """README, `nfsip --help` and cli.py's docstring give the same meaning to the same codes."""
    readme = code_meanings((ROOT / "README.md").read_text())
    epilog = code_meanings(cli.build_parser().epilog or "")
    assert readme == epilog, (readme, epilog)
    assert set(readme) == CODES
    assert "ok" in readme[cli.EXIT_OK] and "runtime" in readme[cli.EXIT_FAILURE]
    assert "configuration" in readme[cli.EXIT_CONFIG] and "privilege" in readme[cli.EXIT_MISSING]
    doc = cli.__doc__ or ""
    meanings = ((cli.EXIT_FAILURE, "runtime"), (cli.EXIT_CONFIG, "configuration"), (cli.EXIT_MISSING, "privilege"))
    for code, word in meanings:
        assert re.search(rf"\b{code} [^;]*{word}", doc), (code, word, doc)


def test_systemd_does_not_restart_configuration_errors_and_missing_features():
    unit = (ROOT / "systemd" / "nfsip.service").read_text()
    stated = {f"RestartPreventExitStatus={cli.EXIT_CONFIG} {cli.EXIT_MISSING}"}
    assert stated <= set(unit.split()) | {ln.strip() for ln in unit.splitlines()}, unit
    for path in operator_docs():
        for value in re.findall(r"RestartPreventExitStatus=([\d ]+)", path.read_text()):
            assert value.split() == [str(cli.EXIT_CONFIG), str(cli.EXIT_MISSING)], (path.name, value)


# -- stated behaviours ---------------------------------------------------------------------------------------


def test_the_end_reasons_troubleshooting_lists_are_the_engines():
    text = (DOCS / "troubleshooting.md").read_text()
    sentence = re.search(r"The end reason is one of (.+?)\. ", " ".join(text.split()))
    assert sentence, "troubleshooting.md no longer lists the end reasons"
    keys = {f.name for f in fields(Config)}
    reasons = [s for s in _SPAN.findall(sentence.group(1)) if s not in keys]  # keys: which timeout
    engine = ast.parse((ROOT / "nfsip" / "core" / "engine.py").read_text())
    strings = [
        _fstring_template(n) if isinstance(n, ast.JoinedStr) else tuple(n.value)
        for n in ast.walk(engine)
        if isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
    ]
    assert len(reasons) >= 6, reasons
    for reason in reasons:
        assert any(fits(s, quote_pattern(reason)) for s in strings), f"no end reason {reason!r} in the engine"
    assert not any(fits(s, quote_pattern("hung up")) for s in strings)


def test_the_configuration_errors_configuration_md_quotes_are_the_codes():
    text = (DOCS / "configuration.md").read_text()
    section = text[text.index("## Validation") : text.index("\n## ", text.index("## Validation") + 1)]
    quotes = [s for s in _SPAN.findall(_CODE_BLOCK.sub("", section)) if ": " in s]
    assert len(quotes) >= 6, quotes
    wrong = [q for q in quotes if not produced_by_code(q)]
    assert not wrong, wrong
    assert not produced_by_code("media_port_min: must lie between 1024 and 65535, got 80")
