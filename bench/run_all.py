"""Run the whole nfsip benchmark suite in one go and write a table (markdown + JSON) and PNG plots.

    sudo ./.venv/bin/python bench/run_all.py --out out/bench            (about 10 minutes on 2 vCPUs)
    sudo ./.venv/bin/python bench/run_all.py --out out/bench --quick    (about 2-3 minutes)

Parts, each also runnable alone (see their docstrings for the method):
  media       bench/media.py       RTP pps: masquerade, nfsip pinholes, kernel SIP ALG, Python relay, rtpengine;
                                   unpinned and on one core (every process on CPU 0), side by side
  signalling  bench/signalling.py  SIP messages/s and added latency: nfsip, accept-only queue loop, kernel ALG
  callsetup   bench/callsetup.py   sipp calls/s through nfsip, pinhole install time, no media lost at call start
  scale       bench/scale.py       10,000 concurrent calls held and torn down: memory, nft cost, leftovers

Writes into --out: results.md (summary + one table per part), results.json (everything measured),
<part>.md/.json, and media.png, signalling.png, callsetup.png, scale.png. A part that cannot run here
says why in the table ("not run: ..."); a part that fails says so and the others still run.

Needs root, iproute2, nftables, conntrack, gcc, sipp (sip-tester); optional rtpengine-daemon (case (e))
and py-spy (--profile). Python extras: matplotlib (plots), py-spy (profiling).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import callsetup
import media
import scale
import signalling
from common import ROOT, PartResult, background_busy, make_workdir

PARTS = {"media": media, "signalling": signalling, "callsetup": callsetup, "scale": scale}


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""

    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    def cmd(argv: list[str]) -> str:
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.SubprocessError):
            return "?"
        return (res.stdout.strip() or res.stderr.strip()).removeprefix("Version: ")

    cpu_model = next(
        (line.split(":", 1)[1].strip() for line in read("/proc/cpuinfo").splitlines() if line.startswith("model name")),
        "?",
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "nft": cmd(["nft", "--version"]),
        "sipp": cmd(["sipp", "-v"]).splitlines()[0] if shutil.which("sipp") else "not installed",
        "rtpengine": cmd(["rtpengine", "--version"]) if shutil.which("rtpengine") else "not installed",
        "nf_conntrack_buckets": read("/proc/sys/net/netfilter/nf_conntrack_buckets"),
        "nfsip": nfsip_version(),
    }


def nfsip_version() -> str:
    """The commit and whether nfsip/ has uncommitted changes, read when a part starts (the code under test may
    change between parts while others work on it)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    dirty = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "nfsip")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted nfsip/ changes" if dirty else "")


def not_run(name: str, reason: str) -> PartResult:
    mod = PARTS[name]
    title = (mod.__doc__ or name).splitlines()[0].rstrip(".")
    return PartResult(name, title, ["result"], rows=[{"result": f"not run: {reason}"}])


def g(d: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def headline(parts: dict[str, PartResult]) -> list[dict[str, str]]:
    """The summary table: the claims of the issue and what was measured for each."""
    rows: list[dict[str, str]] = []

    def add(claim: str, measured: str, goal: str = "", met: bool | None = None) -> None:
        rows.append(
            {
                "claim": claim,
                "measured": measured,
                "goal": goal,
                "verdict": "" if met is None else ("met" if met else "**MISSED**"),
            }
        )

    m = parts.get("media")
    r_any = m.data.get("ratios") if m is not None else None
    r_one = g(m.data, "one_core", "ratios") if m is not None else None
    if m is not None and (r_any or r_one):
        nf = m.data["nfsip_during_pinhole_media"]
        # Two CPU layouts, each with its own verdict: unpinned (an otherwise idle 2-core box: the relay gets the
        # second core) and one core (every process of a case on CPU 0: the same CPU budget for every path).
        layouts = [(label, r) for label, r in (("unpinned", r_any), ("one core", r_one)) if r]

        def b_out(r: dict[str, float]) -> float:
            return r["b'/a"]

        def each(fmt_one: Any) -> str:
            return "; ".join(f"{label}: {fmt_one(r)}" for label, r in layouts)

        for label, r in layouts:
            suffix = "" if label == "unpinned" else ", same CPU budget (one core: every process on CPU 0)"
            add(
                f"media through nfsip pinholes as fast as plain routing + masquerade{suffix}",
                f"{label}: (b)/(a) = {r['b/a']:.2f}, (b')/(a) = {b_out(r):.2f}; vs masquerade on the same nfsip "
                f"router (b)/(n) = {r['b/n']:.2f}",
                ">= 0.95",
                r["b/a"] >= 0.95,
            )
        add("what nfsip's table costs other forwarded traffic", each(lambda r: f"(n)/(a) = {r['n/a']:.2f}"))
        for label, r in layouts:
            e_text = f"(b)/(e) rtpengine = {r['b/e']:.2f}" if r["b/e"] == r["b/e"] else "rtpengine not run"
            cpu = r.get("router CPU/pkt d/b", float("nan"))
            cpu_text = f"; router CPU per packet (d)/(b) = {cpu:.2f}" if cpu == cpu else ""
            claim = (
                "faster than a userspace relay"
                if label == "unpinned"
                else "faster than a userspace relay, same CPU budget (one core: every process on CPU 0)"
            )
            add(claim, f"{label}: (b)/(d) Python relay = {r['b/d']:.2f}; {e_text}{cpu_text}", ">= 2", r["b/d"] >= 2)
        add("as fast as the kernel SIP ALG's expectations", each(lambda r: f"(b)/(c) = {r['b/c']:.2f}"))
        add(
            "no media packet reaches Python",
            f"daemon CPU {nf['daemon_cpu_s'] * 1000:.0f} ms for "
            f"{nf['packets']:,} packets; {nf['queued_packets']} queued",
            "0",
            nf["queued_packets"] == 0 and nf["daemon_cpu_s"] < 0.02 * max(nf["wall_s"], 1e-9),
        )
    elif m is not None:
        add("media", m.rows[0].get("result", "failed") if m.rows else "failed")
    s = parts.get("signalling")
    if s is not None and s.data.get("throughput"):
        rows_by = {r["path"]: r for r in s.rows}
        msg_col = s.columns[1]
        nf, acc, alg = (rows_by[signalling.TITLES[p]] for p in ("nfsip", "accept", "alg"))
        add(
            "SIP messages/s through nfsip",
            f"nfsip {nf[msg_col]} msg/s; accept-only queue loop {acc[msg_col]}; "
            f"kernel ALG {alg[msg_col]} (generator-bound)",
        )
        add(
            "latency nfsip adds per SIP message",
            f"p50 +{nf['added p50 µs']} µs (p50 {nf['latency p50 µs']}, "
            f"p99 {nf['p99 µs']} µs); accept-only loop +{acc['added p50 µs']} µs; kernel ALG "
            f"+{alg['added p50 µs']} µs",
        )
    elif s is not None:
        add("signalling", s.rows[0].get("result", "failed") if s.rows else "failed")
    c = parts.get("callsetup")
    if c is not None and c.data.get("ladder") is not None:
        nft = g(c.data, "pinhole_time", "nft_transaction", default={}) or {}
        add(
            "call setup rate through nfsip (sipp, <= 1 % failed)",
            f"{c.data['max_rate_passed']} calls/s (best completed {c.data['best_completed_rate']:.1f}/s)",
        )
        if nft:
            add(
                "time to make a pinhole live",
                f"nft transaction mean {nft['mean_us']:.0f} µs, p99 <= {nft['p99_us']:.0f} µs",
            )
        for loss in c.data.get("zero_loss", []):
            add(
                f"media lost at call start ({loss['path']})",
                f"{loss['lost']} of {loss['rtp_sent']:,} RTP packets sent the instant the far end had the SDP",
                "0",
                loss["lost"] == 0,
            )
    elif c is not None:
        add("call setup", c.rows[0].get("result", "failed") if c.rows else "failed")
    sc = parts.get("scale")
    if sc is not None and sc.data.get("levels"):
        peak = max(lv["calls"] for lv in sc.data["levels"])
        after = sc.data.get("after", {})
        want = sc.data["options"]["calls"]
        add(
            f"{want:,} concurrent calls held",
            f"{peak:,} calls ({2 * peak:,} pinholes), {sc.data['per_call_bytes']:,.0f} bytes of daemon RSS per call",
            f"{want:,}",
            peak >= want,
        )
        left = (after.get("status_calls"), after.get("status_pinholes"), after.get("conntrack_other_than_sip"))
        add(
            "leftovers after teardown",
            f"status: {left[0]} calls, {left[1]} pinholes; conntrack: {left[2]}",
            "0",
            left == (0, 0, 0),
        )
    elif sc is not None:
        add("scale", sc.rows[0].get("result", "failed") if sc.rows else "failed")
    return rows


def markdown(parts: dict[str, PartResult], env: dict[str, Any], args: argparse.Namespace, pngs: list[Path]) -> str:
    lines = [
        "# nfsip benchmark results",
        "",
        f"Measured {env['date']} on Linux {env['kernel']}, {env['cpus']} vCPU ({env['cpu_model']}), "
        f"{env['nft']}, {env['sipp']}, rtpengine {env['rtpengine']}; nf_conntrack_buckets "
        f"{env['nf_conntrack_buckets']}; nfsip {env['nfsip']}.",
        f"Command: `{' '.join(['./.venv/bin/python', 'bench/run_all.py', *sys.argv[1:]])}`"
        f"{' (quick mode)' if args.quick else ''}. Total {sum(p.seconds for p in parts.values()):.0f} s.",
        "",
        "## Summary",
        "",
        "| claim | measured | goal | verdict |",
        "|---|---|---|---|",
    ]
    for row in headline(parts):
        lines.append(f"| {row['claim']} | {row['measured']} | {row['goal']} | {row['verdict']} |")
    lines.append("")
    for part in parts.values():
        lines.append(part.markdown())
        version = part.data.get("nfsip_version")
        load = part.data.get("other_load_cpus")
        lines.append(
            f"_{part.name}: {part.seconds:.0f} s"
            + (f", nfsip {version}" if version else "")
            + (f", other load on the VM before the part: {load:.2f} CPUs_" if load is not None else "_")
        )
        if load is not None and load > 0.2:
            lines.append(
                f"**Warning: something else kept {load:.1f} of the {env['cpus']} CPUs busy when this part "
                "started: its absolute numbers (and ratios between paths that need different numbers of "
                "CPUs) are not representative. Run again on an idle machine.**"
            )
            lines.append("")
        lines.append("")
    if pngs:
        lines.append("Plots: " + ", ".join(p.name for p in pngs))
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output folder (default out/bench)")
    parser.add_argument("--quick", action="store_true", help="short runs (about 2-3 minutes in all)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the daemon in the signalling and scale parts (needs py-spy)"
    )
    parser.add_argument("--scale-calls", type=int, default=None, help="concurrent calls in the scale part")
    parser.add_argument("--scale-budget", type=float, default=None, help="seconds for the scale part")
    parser.add_argument("--no-rtpengine", action="store_true", help="skip rtpengine in the media part")
    args = parser.parse_args()
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    parts: dict[str, PartResult] = {}
    workdir = make_workdir()
    try:
        for name in wanted:
            mod = PARTS[name]
            opts = mod.Options.quick() if args.quick else mod.Options()
            if name == "media":
                opts.rtpengine = not args.no_rtpengine
            if name in ("signalling", "scale"):
                opts.profile = args.profile
            if name == "scale":
                if args.scale_calls:
                    opts.calls = args.scale_calls
                if args.scale_budget:
                    opts.budget_s = args.scale_budget
            reason = mod.reason_not_runnable()
            print(f"\n=== {name} ===", flush=True)
            if reason:
                parts[name] = not_run(name, reason)
                continue
            started = time.monotonic()
            version = nfsip_version()
            idle_load = background_busy(2.0)
            try:
                parts[name] = mod.run(opts, workdir)
                parts[name].data["nfsip_version"] = version
                parts[name].data["other_load_cpus"] = idle_load
            except Exception as exc:  # one part failing must not lose the others' results
                traceback.print_exc()
                parts[name] = not_run(name, f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                parts[name].seconds = time.monotonic() - started
            print(parts[name].markdown(), flush=True)
            (args.out / f"{name}.json").write_text(json.dumps(parts[name].to_json(), indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    pngs: list[Path] = []
    try:
        import plots

        pngs = plots.plot_all({n: p.to_json() for n, p in parts.items()}, args.out)
    except ImportError as exc:
        print(f"no plots: {exc} (.venv/bin/pip install matplotlib)", file=sys.stderr)
    results = {
        "environment": env,
        "quick": args.quick,
        "summary": headline(parts),
        "parts": {n: p.to_json() for n, p in parts.items()},
        "plots": [p.name for p in pngs],
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(parts, env, args, pngs)
    (args.out / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwritten: {args.out}/results.md, results.json, {', '.join(p.name for p in pngs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
