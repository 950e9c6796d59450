"""PNG plots of the benchmark results (matplotlib, Agg backend: no display needed).

    .venv/bin/python bench/plots.py out/bench/results.json [--out out/bench]

Called by bench/run_all.py after the parts ran; standalone it re-draws the plots from a results.json.
Each function takes one part's JSON (PartResult.to_json()) and writes one PNG; a part that did not run
gets no plot. Needs matplotlib (.venv/bin/pip install matplotlib).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

NFSIP = "#2b7bba"
KERNEL = "#7f7f7f"
USERSPACE = "#d95f02"
ALG = "#1b9e77"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pps_bars(samples: dict[str, list[dict[str, Any]]], ladder: list[dict[str, Any]], keys: list[str]) -> tuple:
    """Median, below/above spread (thousand packets/s) per case key; (e) is the best lossless ladder step."""
    med, lo, hi = [], [], []
    ok = [s for s in ladder if s["loss_pct"] <= 1.0]
    for k in keys:
        if k == "e":
            best = max((s["recv_pps"] for s in ok), default=math.nan)
            med.append(best / 1000)
            lo.append(0)
            hi.append(0)
            continue
        pps = sorted(s["recv_pps"] for s in samples.get(k, []))
        if not pps:
            med.append(math.nan)
            lo.append(0)
            hi.append(0)
            continue
        m = statistics.median(pps)
        med.append(m / 1000)
        lo.append((m - pps[0]) / 1000)
        hi.append((pps[-1] - m) / 1000)
    return med, lo, hi


def media(part: dict[str, Any], out: Path) -> Path | None:
    data = part["data"]
    samples = data.get("samples")
    one = data.get("one_core") or {}
    if not samples and not one.get("samples"):
        return None
    samples = samples or {}
    order = ["a", "a'", "n", "b", "b'", "c", "d"]
    samples_z = samples.get("z", [])
    zs = [s["cpu"]["machine"] / s["received"] * 1e6 for s in samples_z if s["received"]]
    floor = statistics.median(zs) if zs else 0.0
    labels = {
        "a": "(a)\nmasq out\nno nfsip",
        "a'": "(a')\nmasq in\nno nfsip",
        "n": "(n)\nmasq out\nnfsip loaded",
        "b": "(b)\nnfsip\npinhole in",
        "b'": "(b')\nnfsip\npinhole out",
        "c": "(c)\nkernel\nSIP ALG",
        "d": "(d)\nPython\nrelay",
        "e": "(e)\nrtpengine\n(paced)",
    }
    colors = {"a": KERNEL, "a'": KERNEL, "n": KERNEL, "b": NFSIP, "b'": NFSIP, "c": ALG, "d": USERSPACE, "e": USERSPACE}
    keys = [k for k in order if k in samples or k in one.get("samples", {})]
    if any(s["loss_pct"] <= 1.0 for s in data.get("rtpengine_ladder", []) + one.get("rtpengine_ladder", [])):
        keys.append("e")
    cpu = []
    for k in keys:
        if k == "e":
            ok = [s for s in data.get("rtpengine_ladder", []) if s["loss_pct"] <= 1.0]
            best = max(ok, key=lambda s: s["recv_pps"]) if ok else None
            cpu.append(best["cpu"]["machine"] / best["received"] * 1e6 if best else math.nan)
            continue
        per = [s["cpu"]["machine"] / s["received"] * 1e6 for s in samples.get(k, []) if s["received"]]
        cpu.append(statistics.median(per) if per else math.nan)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = list(range(len(keys)))
    # Both CPU layouts side by side: solid bars unpinned (any CPU), hatched bars one core (all on CPU 0).
    layouts = [
        (name, smp, lad)
        for name, smp, lad in (
            ("unpinned", samples, data.get("rtpengine_ladder", [])),
            ("one core", one.get("samples", {}), one.get("rtpengine_ladder", [])),
        )
        if smp
    ]
    width = 0.8 / len(layouts)
    for i, (name, smp, lad) in enumerate(layouts):
        med, lo, hi = _pps_bars(smp, lad, keys)
        pos = [p - 0.4 + width * (i + 0.5) for p in x]
        hatched = name != "unpinned"
        ax1.bar(
            pos,
            med,
            width,
            yerr=[lo, hi],
            color=[colors[k] for k in keys],
            capsize=2,
            alpha=0.55 if hatched else 1.0,
            hatch="//" if hatched else None,
            edgecolor="white",
            label=name + (" (every process on CPU 0)" if hatched else " (any CPU)"),
        )
        if "a" in keys and med[keys.index("a")] == med[keys.index("a")]:
            ax1.axhline(
                med[keys.index("a")] * 0.95,
                color=NFSIP,
                ls=":" if hatched else "--",
                lw=1,
                label=f"95 % of (a), {name}",
            )
    ax1.set_xticks(x, [labels[k] for k in keys], fontsize=8)
    ax1.set_ylabel("thousand packets/s received (172-byte UDP)")
    ax1.set_title("Forwarding rate (median, min-max of rounds)")
    ax1.legend(fontsize=7)
    router = [max(0.0, c - floor) for c in cpu]
    ax2.bar(
        x,
        [c - r for c, r in zip(cpu, router, strict=True)],
        color="#d9d9d9",
        label="sender + bridge + receiver (case z)",
    )
    ax2.bar(
        x,
        router,
        bottom=[c - r for c, r in zip(cpu, router, strict=True)],
        color=[colors[k] for k in keys],
        label="router (estimate)",
    )
    ax2.set_xticks(x, [labels[k] for k in keys], fontsize=8)
    ax2.set_ylabel("µs of CPU (whole VM) per forwarded packet")
    ax2.set_title("CPU per forwarded packet (unpinned)")
    ax2.legend(fontsize=8)
    return _save(fig, out / "media.png")


def signalling(part: dict[str, Any], out: Path) -> Path | None:
    data = part["data"]
    if "throughput" not in data:
        return None
    paths = ["plain", "accept", "nfsip", "alg"]
    names = ["plain\nmasquerade", "accept-only\nqueue loop", "nfsip", "kernel\nSIP ALG"]
    colors = [KERNEL, USERSPACE, NFSIP, ALG]

    def med(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    msgs = [med([r["msg_per_s"] for r in data["throughput"][p]]) for p in paths]
    p50 = [data["latency"][p]["p50_us"] for p in paths]
    p99 = [data["latency"][p]["p99_us"] for p in paths]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    ax1.bar(range(4), msgs, color=colors)
    ax1.set_yscale("log")
    ax1.set_xticks(range(4), names, fontsize=9)
    ax1.set_ylabel("SIP messages/s crossing the router (log)")
    ax1.set_title("Signalling throughput (closed loop)")
    for i, v in enumerate(msgs):
        ax1.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    width = 0.38
    ax2.bar([i - width / 2 for i in range(4)], p50, width, color=colors, label="p50")
    ax2.bar([i + width / 2 for i in range(4)], p99, width, color=colors, alpha=0.45, label="p99")
    ax2.set_yscale("log")
    ax2.set_xticks(range(4), names, fontsize=9)
    ax2.set_ylabel("one-way latency per message, µs (log)")
    ax2.set_title(f"Latency at {data['options']['latency_rate']:g} calls/s (dark p50, light p99)")
    return _save(fig, out / "signalling.png")


def callsetup(part: dict[str, Any], out: Path) -> Path | None:
    data = part["data"]
    ladder = data.get("ladder")
    if not ladder:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    asked = [s["rate"] for s in ladder]
    done = [s["completed_rate"] for s in ladder]
    ax.plot(asked, done, "o-", color=NFSIP, label="nfsip")
    for s in ladder:
        if s["failed"]:
            ax.annotate(
                f"{s['failed']} failed",
                (s["rate"], s["completed_rate"]),
                fontsize=8,
                textcoords="offset points",
                xytext=(4, -12),
            )
    for path, color, label, marker, size in (
        ("plain", KERNEL, "plain masquerade", "s", 10),
        ("alg", ALG, "kernel SIP ALG", "D", 5),
    ):
        pts = [s for s in data.get("baselines", []) if s["path"] == path]
        if pts:
            ax.plot(
                [s["rate"] for s in pts],
                [s["completed_rate"] for s in pts],
                marker,
                color=color,
                label=label,
                markersize=size,
                linestyle="none",
            )
    top = max(asked + [s["rate"] for s in data.get("baselines", [])])
    ax.plot([1, top], [1, top], ":", color="black", lw=1, label="completed = asked")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted(set(asked + [s["rate"] for s in data.get("baselines", [])]))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(left=min(asked) / 1.5)
    ax.set_ylim(bottom=max(0.5, min(d for d in done if d > 0) / 2) if any(d > 0 for d in done) else 0.5)
    ax.set_xlabel("calls/s asked of sipp (-r)")
    ax.set_ylabel("calls/s completed")
    ax.set_title("sipp call setup rate (INVITE/200/ACK/BYE, 100 ms calls)")
    ax.legend(fontsize=8)
    return _save(fig, out / "callsetup.png")


def scale(part: dict[str, Any], out: Path) -> Path | None:
    levels = part["data"].get("levels")
    if not levels:
        return None
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    up = [lv for lv in levels if lv["phase"] in ("start", "up")]
    down = up[-1:] + [lv for lv in levels if lv["phase"] == "down"]
    ax1.plot([lv["calls"] for lv in up], [lv["rss_kib"] / 1024 for lv in up], "o-", color=NFSIP, label="bring up")
    ax1.plot(
        [lv["calls"] for lv in down], [lv["rss_kib"] / 1024 for lv in down], "s--", color=USERSPACE, label="tear down"
    )
    ax1.set_xlabel("concurrent calls (2 pinholes each)")
    ax1.set_ylabel("daemon RSS, MiB")
    ax1.set_title("Daemon memory")
    ax1.legend(fontsize=8)
    pins = [2 * lv["calls"] for lv in levels]
    ax2.plot(
        pins,
        [lv["probe"].get("add_p50_us", math.nan) for lv in levels],
        "o",
        color=NFSIP,
        label="probe: add 2 pinholes (p50)",
    )
    ax2.plot(
        pins,
        [lv["probe"].get("remove_p50_us", math.nan) for lv in levels],
        "s",
        color=ALG,
        label="probe: remove 2 pinholes (p50)",
    )
    stage = [lv for lv in levels if lv["nft"].get("count")]
    ax2.plot(
        [2 * lv["calls"] for lv in stage],
        [lv["nft"]["mean_us"] for lv in stage],
        "^",
        color=USERSPACE,
        label="daemon's own transactions (mean of stage)",
    )
    ax2.set_xlabel("media pinholes in the maps (2 elements each)")
    ax2.set_ylabel("µs per nft transaction")
    ax2.set_ylim(bottom=0)
    ax2.set_title("nft transaction cost as the maps grow")
    ax2.legend(fontsize=8)
    if any("table_check_s" in lv["probe"] for lv in levels):
        ax3.plot(
            pins,
            [lv["probe"].get("table_check_s", math.nan) for lv in levels],
            "o",
            color=NFSIP,
            label="table check (ensure_installed)",
        )
        ax3.plot(
            pins,
            [lv["probe"].get("media_counters_s", math.nan) for lv in levels],
            "s",
            color=USERSPACE,
            label="media counters read (sample_media)",
        )
        ax3.set_xlabel("media pinholes in the maps")
        ax3.set_ylabel("seconds per read (every 5 s in the daemon's loop)")
        ax3.set_ylim(bottom=0)
        ax3.set_title("Kernel read-backs of the daemon's tick")
        ax3.legend(fontsize=8)
    else:
        ax3.set_visible(False)
    return _save(fig, out / "scale.png")


PLOTTERS = {"media": media, "signalling": signalling, "callsetup": callsetup, "scale": scale}


def plot_all(parts: dict[str, dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per part that has data; errors in one plot do not stop the others."""
    written = []
    for name, part in parts.items():
        plotter = PLOTTERS.get(name)
        if plotter is None or not part.get("data"):
            continue
        try:
            path = plotter(part, out)
        except (KeyError, ValueError, IndexError, ZeroDivisionError) as exc:
            print(f"plot {name}: {exc!r}", file=sys.stderr)
            continue
        if path is not None:
            written.append(path)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.json written by bench/run_all.py")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: beside results)")
    args = parser.parse_args()
    parts = json.loads(args.results.read_text())["parts"]
    out = args.out or args.results.parent
    out.mkdir(parents=True, exist_ok=True)
    for path in plot_all(parts, out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
