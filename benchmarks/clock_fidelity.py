"""How well the model clock predicts the wall clock: the same windows replayed on both.

    python -m benchmarks.clock_fidelity --method ngram [--profile ngram-fitted]

For every window and controller, one model-time replay (it repeats to the token) and
`--repeats` wall-clock replays (the controllers alternating, so the machine's drift hits
them alike). Prints per controller the modelled over measured goodput and goodput under SLO
(the mean over windows of the model's over that of the wall's), the mean of
|modelled/measured - 1| over the controllers, and whether the controllers rank the same way
on both clocks wherever the wall clock can tell them apart (its 90% paired interval of their
ratio excludes 1). Run it on a quiet machine: the wall clock here is the reference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from agents.registry import parse_controller
from envs.build import resolve
from envs.traces import apply_replay, load_trace
from training.bootstrap import ratio_interval
from training.cli import add_env_flags, read_env_flags
from training.replays import Bench
from training.suites import REGIONS

MEASURES = ("goodput_tps", "goodput_under_slo_tps")
SHOWN = ("goodput_tps", "goodput_under_slo_tps", "slo_attainment", "tpot_p50_s", "ttft_p50_s")
"""Reported on both clocks, as means over windows (and the wall clock's repeats)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_env_flags(
        p,
        ("method", "profile", "trace", "rate_scale", "window_s"),
        defaults={"trace": "azure-conv", "rate_scale": 2.0, "window_s": 20.0},
        help={"trace": f"a region: {', '.join(REGIONS)}"},
    )
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3, help="wall-clock replays per window")
    p.add_argument("--controllers", default="nospec,static:1,static:2,static:4,goodput")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    region = REGIONS[args.trace]
    try:
        model_env, profile = resolve(replace(read_env_flags(args), trace=region.trace))
        if not profile.measured:
            raise ValueError(f"{profile.name} prices a GPU: this machine cannot check it")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    specs = [parse_controller(name, model_env.engine.k_max) for name in args.controllers.split(",")]
    trace = load_trace(region.trace)
    windows = [
        apply_replay(trace, model_env.replay_options(start))
        for start in region.starts(args.windows, args.window_s)
    ]
    plain = any(not s.speculates for s in specs)
    benches = {
        "model": Bench(model_env, profile, plain=plain),
        "wall": Bench(replace(model_env, clock="wall"), profile, plain=plain),
    }
    started = time.perf_counter()
    # results[clock][controller] = per window, a list of replays' metrics
    results = {clock: {s.name: [] for s in specs} for clock in benches}
    try:
        for index, workload in enumerate(windows):
            for clock in benches:
                for spec in specs:
                    results[clock][spec.name].append([])
            for repeat in range(args.repeats):
                order = specs if (index + repeat) % 2 == 0 else specs[::-1]
                for spec in order:
                    metrics = benches["wall"].run(spec, workload, seed=0).metrics
                    results["wall"][spec.name][-1].append(metrics)
            for spec in specs:
                metrics = benches["model"].run(spec, workload, seed=0).metrics
                results["model"][spec.name][-1].append(metrics)
            print(f"window {index + 1}/{len(windows)} done", flush=True)
    finally:
        for bench in benches.values():
            bench.close()
    minutes = (time.perf_counter() - started) / 60
    report = fidelity(results, specs)
    print(format_report(report, args, profile.describe(), minutes))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"args": vars(args), "report": report}
        args.json.write_text(json.dumps(record, indent=2, default=str))
    return 0


def fidelity(results: dict, specs: list) -> dict:
    """Per controller, modelled over measured of each measure (mean over windows); the mean
    absolute error over all; and the rank agreements where the wall clock separates pairs."""
    per_controller = {}
    errors = {measure: [] for measure in MEASURES}
    for spec in specs:
        row = {}
        for measure in MEASURES:
            # Ratio of means over windows: a window where hardly a request met its SLO on one
            # clock would make a mean of per-window ratios explode.
            model = statistics.fmean(w[0][measure] for w in results["model"][spec.name])
            wall = statistics.fmean(m[measure] for w in results["wall"][spec.name] for m in w)
            row[measure] = model / wall if wall > 0 else None
            if row[measure] is not None:
                errors[measure].append(abs(row[measure] - 1))
        for clock in ("model", "wall"):
            row[clock] = {
                key: statistics.fmean(m[key] for w in results[clock][spec.name] for m in w)
                for key in SHOWN
            }
        per_controller[spec.name] = row
    pairs = []
    for a, b in itertools.combinations([s.name for s in specs], 2):
        wall_a = [m["goodput_under_slo_tps"] for w in results["wall"][a] for m in w]
        wall_b = [m["goodput_under_slo_tps"] for w in results["wall"][b] for m in w]
        if len(wall_a) < 2:
            continue
        interval = ratio_interval(wall_a, [wall_b], name=b)
        if interval.low is None or interval.low <= 1 <= interval.high:
            continue  # the wall clock cannot tell them apart
        model_a = sum(w[0]["goodput_under_slo_tps"] for w in results["model"][a])
        model_b = sum(w[0]["goodput_under_slo_tps"] for w in results["model"][b])
        pairs.append(
            {
                "pair": [a, b],
                "wall_ratio": interval.ratio,
                "model_ratio": model_a / model_b if model_b else None,
                "agree": (interval.ratio > 1) == (model_a > model_b),
            }
        )
    return {
        "per_controller": per_controller,
        "mean_abs_error": {m: statistics.fmean(e) if e else None for m, e in errors.items()},
        "separated_pairs": pairs,
    }


def format_report(report: dict, args: argparse.Namespace, profile: str, minutes: float) -> str:
    """The report as text."""
    lines = [
        f"clock fidelity: {args.method}, profile {profile}, {args.trace} x{args.rate_scale:g}, "
        f"{args.windows} windows of {args.window_s:g} s, {args.repeats} wall replays each "
        f"({minutes:.1f} min)",
        f"{'controller':<20} {'goodput model/wall':>19} {'under SLO model/wall':>21}   "
        "model | wall: goodput, under SLO (tok/s), attainment, TPOT p50 (ms), TTFT p50 (ms)",
    ]
    for name, row in report["per_controller"].items():
        cells = [f"{row[m]:.3f}" if row[m] is not None else "n/a" for m in MEASURES]
        clocks = "  |  ".join(
            f"{v['goodput_tps']:5.0f} {v['goodput_under_slo_tps']:5.0f} {v['slo_attainment']:5.2f} "
            f"{v['tpot_p50_s'] * 1e3:5.1f} {v['ttft_p50_s'] * 1e3:6.0f}"
            for v in (row["model"], row["wall"])
        )
        lines.append(f"{name:<20} {cells[0]:>19} {cells[1]:>21}   {clocks}")
    errors = report["mean_abs_error"]
    lines.append(
        "mean |modelled/measured - 1|: goodput "
        + (f"{errors['goodput_tps']:.3f}" if errors["goodput_tps"] is not None else "n/a")
        + ", under SLO "
        + (
            f"{errors['goodput_under_slo_tps']:.3f}"
            if errors["goodput_under_slo_tps"] is not None
            else "n/a"
        )
    )
    pairs = report["separated_pairs"]
    agree = sum(p["agree"] for p in pairs)
    lines.append(
        f"pairs the wall clock separates (90% interval under SLO): {len(pairs)}; "
        f"ranked the same in model time: {agree}"
    )
    for p in pairs:
        if not p["agree"]:
            lines.append(
                f"  disagree: {p['pair']} wall {p['wall_ratio']:.3f} model {p['model_ratio']:.3f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
