"""How well the engine's twin reproduces the live engine in model time, and how much faster.

    python -m benchmarks.twin_fidelity --method ngram --trace azure-conv --windows 4
    python -m benchmarks.twin_fidelity --profile a100-llama3-8b --trace azure-conv \\
        --rate-scale 10 --windows 3 --window-s 5

Every window is replayed per controller twice on the model clock: on the live engine (the
judge) and on its twin (`envs.twin`), with the same requests, prompts and cost profile. The
twin's acceptance table of each window is recorded first on the same live engine (or read
from the cache under runs/cache). Per controller it prints the mean of each metric on both
and the mean |twin/live - 1| over windows; then the mean absolute error over every window and
controller of goodput, goodput under SLO and the TTFT/TPOT percentiles, whether both pick the
same best static k per window (by goodput under SLO), and each engine's steps per second over
all replays (recording excluded), with the speed-up. With `--lookahead H` the twin also runs
the lookahead oracle (`envs.twin.lookahead`: every k tried for H steps on a fork of the twin),
a tighter ceiling than the myopic oracle, and prints both.

Targets (issue 15): goodput under SLO within 2%, TTFT/TPOT p50 within 5%, the same best
static k on at least 90% of windows, the twin at least 100 times faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.paths import cache_dir
from agents.registry import parse_controller
from envs.build import resolve
from envs.replayer import plan_requests
from envs.traces import apply_replay, load_trace
from envs.twin.lookahead import LookaheadOracle
from envs.twin.record import TableSource
from training.cli import add_env_flags, read_env_flags
from training.replays import Bench
from training.replays import replay as replay_window
from training.suites import REGIONS

METRICS = (
    "goodput_tps",
    "goodput_under_slo_tps",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
)
TARGETS = {"goodput_under_slo_tps": 0.02, "ttft_p50_s": 0.05, "tpot_p50_s": 0.05}
"""Largest mean |twin/live - 1| the issue accepts, per metric."""
SAME_BEST_K = 0.9
"""Share of windows on which both must pick the same best static k."""
ENGINES = ("live", "twin")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_env_flags(
        p,
        ("method", "profile", "trace", "rate_scale", "window_s"),
        defaults={"trace": "azure-conv", "rate_scale": 2.0, "window_s": 20.0},
        help={"trace": f"a region: {', '.join(REGIONS)}"},
    )
    p.add_argument("--windows", type=int, default=4)
    p.add_argument(
        "--controllers",
        default=None,
        help="comma-separated (default: static:0..k_max, goodput, oracle)",
    )
    p.add_argument("--seed", type=int, default=0, help="prompt seed of every window")
    p.add_argument(
        "--kv-cache-gib",
        type=int,
        default=None,
        help="the live engine's KV cache (default: the profile's); the twin reads its blocks",
    )
    p.add_argument("--cache-dir", type=Path, default=cache_dir())
    p.add_argument(
        "--lookahead", type=int, default=0, help="horizon of the twin's lookahead oracle (0: off)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    region = REGIONS.get(args.trace)
    if region is None:
        print(f"error: unknown region {args.trace!r}", file=sys.stderr)
        return 2
    try:
        env, profile = resolve(replace(read_env_flags(args), trace=region.trace))
        if args.kv_cache_gib is not None:
            env = replace(env, engine=replace(env.engine, kv_cache_gib=args.kv_cache_gib))
        k_max = env.engine.k_max
        names = args.controllers or ",".join(
            [f"static:{k}" for k in range(k_max + 1)] + ["goodput", "oracle"]
        )
        specs = [parse_controller(name, k_max) for name in names.split(",")]
        if any(not s.speculates for s in specs):
            raise ValueError("the twin does not model nospec's plain engine")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # Static controllers first: a live replay leaves the outputs the oracle needs.
    specs.sort(key=lambda s: s.kind != "static")
    trace = load_trace(region.trace)
    starts = region.starts(args.windows, args.window_s)
    windows = [apply_replay(trace, env.replay_options(start)) for start in starts]

    live = Bench(env, profile)
    source = TableSource(env.engine, args.cache_dir, engine=live.engines[True])
    twin = Bench(replace(env, twin=True), profile, source=source)
    limits = source.limits()
    results = {engine: {s.name: [] for s in specs} for engine in ENGINES}
    lookahead: list[dict] = []
    lookahead_preemptions = 0
    timing = {engine: {"steps": 0, "seconds": 0.0} for engine in ENGINES}
    recording = 0.0
    try:
        for index, workload in enumerate(windows):
            started = time.perf_counter()
            replayer = twin.replayers[True]
            plan = plan_requests(
                workload, replayer.prompts, env.temperatures, np.random.default_rng(args.seed)
            )
            source.table(plan, json.dumps(workload.describe(), default=str))
            recording += time.perf_counter() - started
            for spec in specs:
                for name, bench in (("live", live), ("twin", twin)):
                    started = time.perf_counter()
                    replay = bench.run(spec, workload, args.seed)
                    timing[name]["seconds"] += time.perf_counter() - started
                    timing[name]["steps"] += replay.steps
                    results[name][spec.name].append(replay.metrics | {"steps": replay.steps})
            if args.lookahead:
                before = replayer.engine.preemptions
                oracle = LookaheadOracle(replayer.engine, args.lookahead)
                found = replay_window(replayer, workload, args.seed, oracle, twin.features)
                lookahead.append(found.metrics)
                lookahead_preemptions += replayer.engine.preemptions - before
            print(f"window {index + 1}/{len(windows)} ({starts[index]:g} s) done", flush=True)
    finally:
        live.close()
    report = fidelity(results, specs, starts)
    if lookahead:
        myopic = results["twin"].get("oracle", [])
        report["lookahead"] = {
            "horizon": args.lookahead,
            "goodput_under_slo_tps": [m["goodput_under_slo_tps"] for m in lookahead],
            "myopic_oracle": [m["goodput_under_slo_tps"] for m in myopic],
        }
    report["speed"] = {
        name: t["steps"] / t["seconds"] if t["seconds"] else None for name, t in timing.items()
    } | {"tables_recorded": source.recorded, "recording_s": recording}
    # Requests the twin preempted in the replays compared (KV-cache pressure), not counting
    # the lookahead oracle's.
    report["twin_preemptions"] = twin.engines[True].preemptions - lookahead_preemptions
    twin.close()
    header = (
        f"twin fidelity: {args.method}, profile {profile.describe()}, {args.trace} "
        f"x{args.rate_scale:g}, {len(windows)} windows of {args.window_s:g} s, engine "
        f"max_num_seqs {env.engine.max_num_seqs}, budget {env.engine.max_num_batched_tokens}, "
        f"KV cache {env.engine.kv_cache_gib} GiB ({limits.num_blocks} blocks of "
        f"{limits.block_size} tokens)"
    )
    print(format_report(report, header))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"args": vars(args), "report": report}, indent=2, default=str)
        )
    return 0


def relative_error(twin: float, live: float) -> float:
    """|twin/live - 1|, 0 where both are 0 and 1 where only live is."""
    if live == 0:
        return 0.0 if twin == 0 else 1.0
    return abs(twin / live - 1)


def fidelity(results: dict, specs: list, starts: list[float]) -> dict:
    """Per controller the mean metrics on both engines and the mean relative error; over all
    the mean absolute error per metric; the best static k per window on both."""
    per_controller = {}
    errors: dict[str, list[float]] = {m: [] for m in METRICS}
    for spec in specs:
        live, twin = results["live"][spec.name], results["twin"][spec.name]
        row = {}
        for metric in (*METRICS, "steps"):
            pairs = [(t[metric], w[metric]) for t, w in zip(twin, live, strict=True)]
            row[metric] = {
                "live": statistics.fmean(w for _, w in pairs),
                "twin": statistics.fmean(t for t, _ in pairs),
                "error": statistics.fmean(relative_error(t, w) for t, w in pairs),
            }
            if metric in errors:
                errors[metric] += [relative_error(t, w) for t, w in pairs]
        per_controller[spec.name] = row
    statics = [s for s in specs if s.kind == "static"]
    best = []
    for index, start in enumerate(starts):
        picks = {}
        for engine in ENGINES:
            scores = {s.k: results[engine][s.name][index]["goodput_under_slo_tps"] for s in statics}
            top = max(scores.values(), default=0.0)
            picks[engine] = min(k for k, v in scores.items() if v == top) if scores else None
            picks[f"{engine}_scores"] = scores
        best.append({"window_start_s": start} | picks)
    same = [b["live"] == b["twin"] for b in best]
    return {
        "per_controller": per_controller,
        "mean_abs_error": {m: statistics.fmean(e) if e else None for m, e in errors.items()},
        "best_static": best,
        "same_best_static": sum(same) / len(same) if same else None,
    }


def format_report(report: dict, header: str) -> str:
    """The report as text."""
    lines = [header, ""]
    width = max(12, *(len(n) for n in report["per_controller"]))
    lines.append(
        f"{'controller':<{width}} {'goodput live/twin':>19} {'err':>6} "
        f"{'underSLO live/twin':>19} {'err':>6} {'TTFT50 ms':>15} {'TPOT50 ms':>13} "
        f"{'steps live/twin':>16}"
    )
    for name, row in report["per_controller"].items():
        g, u, t, p, s = (
            row[m]
            for m in ("goodput_tps", "goodput_under_slo_tps", "ttft_p50_s", "tpot_p50_s", "steps")
        )
        lines.append(
            f"{name:<{width}} {g['live']:9.0f}/{g['twin']:<9.0f} {g['error']:6.2%} "
            f"{u['live']:9.0f}/{u['twin']:<9.0f} {u['error']:6.2%} "
            f"{t['live'] * 1e3:7.1f}/{t['twin'] * 1e3:<7.1f} "
            f"{p['live'] * 1e3:6.2f}/{p['twin'] * 1e3:<6.2f} "
            f"{s['live']:8.0f}/{s['twin']:<7.0f}"
        )
    lines.append("")
    lines.append("mean |twin/live - 1| over windows and controllers (target):")
    for metric, error in report["mean_abs_error"].items():
        target = TARGETS.get(metric)
        verdict = ""
        if target is not None:
            verdict = f" (<= {target:.0%}: {'met' if error <= target else 'MISSED'})"
        lines.append(f"  {metric:<22} {error:8.3%}{verdict}")
    same = report["same_best_static"]
    lines.append(
        f"same best static k: {same:.0%} of windows (>= {SAME_BEST_K:.0%}: "
        f"{'met' if same >= SAME_BEST_K else 'MISSED'})"
    )
    for b in report["best_static"]:
        if b["live"] != b["twin"]:
            lines.append(
                f"  window {b['window_start_s']:g} s: live k={b['live']} twin k={b['twin']}; "
                f"under SLO live {b['live_scores']} twin {b['twin_scores']}"
            )
    speed = report["speed"]
    live, twin = speed["live"], speed["twin"]
    ratio = twin / live if live and twin else None
    lines.append(
        f"steps per second: live (model time) {live:.1f}, twin {twin:.0f}"
        + (f", {ratio:.0f}x (>= 100x: {'met' if ratio >= 100 else 'MISSED'})" if ratio else "")
    )
    lines.append(
        f"tables recorded {speed['tables_recorded']} ({speed['recording_s']:.1f} s, excluded)"
    )
    lines.append(f"requests preempted in the twin's replays: {report['twin_preemptions']}")
    if "lookahead" in report:
        found = report["lookahead"]
        cells = " / ".join(f"{v:.0f}" for v in found["goodput_under_slo_tps"])
        myopic = " / ".join(f"{v:.0f}" for v in found["myopic_oracle"]) or "not run"
        lines.append(
            f"twin under SLO per window: lookahead oracle ({found['horizon']} steps) {cells}; "
            f"myopic oracle {myopic}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
