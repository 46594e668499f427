"""SLO capacity of each controller: the highest sustained arrival rate at which at least 90% of
requests meet both objectives, found by bisection on the twin in model time.

    python -m training.capacity --suite a100-steady --method ngram
    python -m training.capacity --profile a100-llama3-8b --trace azure-conv --windows 3 \\
        --window-s 240 --max-output-tokens 256 --scales 2,12 --controllers nospec,goodput

Each trace's windows are fixed sets of requests; their arrival times are scaled to set the
rate, so one acceptance table per window (recorded once on the live engine) serves every rate
tried. Per controller and window the search (`training.evaluation.capacity`) starts from the
bracket of scales (a suite's lowest and highest), widens it until the bottom passes and the
top fails, and bisects to 1%. It prints each controller's capacity in requests per second per
window and their mean, and its ratio to the plain engine's (`nospec`: "serves x% more requests
per second on the same hardware"), the geometric mean over windows with a 90% paired bootstrap
interval; `--json` keeps every probe.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from agents.registry import NAMES_HELP, parse_controller
from envs.build import EngineProvider, resolve
from envs.config import EnvConfig
from envs.traces import Trace, apply_replay, load_trace
from training.bootstrap import geometric_mean, ratio_interval
from training.cli import add_env_flags, read_env_flags
from training.evaluation.capacity import ATTAINMENT, Capacity, find_capacity
from training.evaluation.compare import CONFIDENCE, INTERVAL_MIN_SAMPLES
from training.ratio import format_ratio
from training.replays import Bench
from training.suites import REGIONS, suite

DEFAULT_CONTROLLERS = "nospec,static:1,static:2,static:3,static:4,goodput,oracle,oracle-per-request"


@dataclass(frozen=True)
class Group:
    """One trace's windows and the bracket of scales a search starts from."""

    label: str
    trace: Trace
    starts: list[float]
    window_s: float
    max_output_tokens: int
    low: float
    high: float


def groups(args: argparse.Namespace) -> list[Group]:
    """The suite's traces (their entries' windows, bracketed by their scales), or the one
    trace of the command line; raises naming what is wrong."""
    if args.suite is not None:
        found: dict[tuple, list[float]] = {}
        for entry in suite(args.suite).entries:
            key = (entry.region, entry.windows, entry.window_s, entry.max_output_tokens)
            found.setdefault(key, []).append(entry.rate_scale)
        result = []
        for (region, windows, window_s, max_output), scales in found.items():
            trace = load_trace(REGIONS[region].trace)
            starts = REGIONS[region].starts(
                windows, window_s, [r.arrival_s for r in trace.requests]
            )
            result.append(
                Group(region, trace, starts, window_s, max_output, min(scales), max(scales))
            )
        return result
    region = REGIONS.get(args.trace)
    spec = region.trace if region is not None else args.trace
    trace = load_trace(spec)
    if region is not None:
        starts = region.starts(args.windows, args.window_s, [r.arrival_s for r in trace.requests])
    else:
        room = trace.duration_s - args.window_s
        if room < 0:
            raise ValueError(f"the trace lasts {trace.duration_s:.0f} s, less than --window-s")
        starts = [i * room / max(args.windows - 1, 1) for i in range(args.windows)]
    low, high = (float(s) for s in args.scales.split(","))
    return [Group(args.trace, trace, starts, args.window_s, args.max_output_tokens, low, high)]


def check_inputs(args: argparse.Namespace) -> tuple[EnvConfig, object, list, list[Group]]:
    """The engine, profile, controllers and traces, or the error that stops the command."""
    profile = args.profile
    if args.suite is not None:
        wanted = suite(args.suite).profile
        if profile is not None and wanted is not None and profile != wanted:
            raise ValueError(f"suite {args.suite} is priced with {wanted}, not {profile}")
        profile = profile or wanted
    env, cost_profile = resolve(replace(read_env_flags(args), profile=profile, twin=True))
    specs = [parse_controller(name, env.engine.k_max) for name in args.controllers.split(",")]
    return env, cost_profile, specs, groups(args)


def search(bench: Bench, spec, group: Group, start: float, env: EnvConfig, seed: int):
    """The capacity of one controller on one window, and the window's requests."""
    options = replace(
        env, window_s=group.window_s, max_output_tokens=group.max_output_tokens
    ).replay_options

    def attainment_at(scale: float) -> float:
        workload = apply_replay(group.trace, replace(options(start), rate_scale=scale))
        return bench.run(spec, workload, seed).metrics["slo_attainment"]

    requests = len(apply_replay(group.trace, options(start)))
    return find_capacity(attainment_at, group.low, group.high), requests


def rate(capacity: Capacity, requests: int, window_s: float) -> float | None:
    """The capacity as requests per second offered over the window, or None if not found."""
    return None if capacity.scale is None else requests * capacity.scale / window_s


def main(argv: list[str] | None = None, engines: EngineProvider | None = None) -> int:
    """Run the command; `engines` provides live engines instead of building them (tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default=None, help="a steady-state suite (training.suites)")
    p.add_argument("--trace", default="azure-conv", help="a known region, trace file or spec")
    p.add_argument("--windows", type=int, default=3, help="windows of the trace")
    p.add_argument("--scales", default="1,8", help="the bracket of rate scales to start from")
    add_env_flags(
        p,
        (
            "window_s",
            "max_input_tokens",
            "max_output_tokens",
            "method",
            "k_max",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "profile",
        ),
        defaults={"window_s": 240.0, "max_output_tokens": 256},
        help={"profile": "cost profile (default: the suite's, else the method's measured table)"},
    )
    p.add_argument("--controllers", default=DEFAULT_CONTROLLERS, help=NAMES_HELP)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write every search here")
    args = p.parse_args(argv)
    try:
        env, profile, specs, found = check_inputs(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"SLO capacity ({ATTAINMENT:.0%} of requests within TTFT {env.slo.ttft_s:g} s and TPOT "
        f"{env.slo.tpot_s:g} s): {env.engine.method} (twin), model clock, profile "
        f"{profile.describe()}, {env.engine.max_num_seqs} running requests at most"
    )
    started = time.perf_counter()
    bench = Bench(env, profile, plain=any(not s.speculates for s in specs), engines=engines)
    record: dict = {"args": vars(args), "traces": {}}
    try:
        for group in found:
            record["traces"][group.label] = traced = {"starts": group.starts, "controllers": {}}
            for spec in specs:
                rows = []
                for start in group.starts:
                    capacity, requests = search(bench, spec, group, start, env, args.seed)
                    rows.append(
                        {
                            "window_start_s": start,
                            "requests": requests,
                            "rate": rate(capacity, requests, group.window_s),
                            "bounded": capacity.bounded,
                            "probes": [vars(probe) for probe in capacity.probes],
                        }
                    )
                traced["controllers"][spec.name] = rows
                print(
                    f"  {group.label} {spec.name}: "
                    + " / ".join(_rate_cell(r) for r in rows)
                    + " requests/s",
                    flush=True,
                )
    finally:
        bench.close()
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min of searches")
    for label, traced in record["traces"].items():
        traced["summary"] = summarise(traced["controllers"])
        print(f"\n== {label} ({len(traced['starts'])} windows) ==")
        print(format_summary(traced["summary"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str))
    return 0


def _rate_cell(row: dict) -> str:
    if row["rate"] is None:
        return "none"
    return f"{row['rate']:.1f}" + ("" if row["bounded"] else "+")


def summarise(controllers: dict[str, list[dict]]) -> dict[str, dict]:
    """Per controller: its mean capacity over windows, and its ratio to the plain engine's
    (geometric mean over windows with a paired bootstrap interval). A window where a search
    found no capacity counts as 0 (every replay missed the bar), and the ratio is then
    undefined."""
    per_window = {name: [row["rate"] or 0.0 for row in rows] for name, rows in controllers.items()}
    plain = per_window.get("nospec")
    found = {}
    for name, values in per_window.items():
        row: dict = {
            "mean": statistics.fmean(values),
            "bounded": all(r["bounded"] for r in controllers[name]),
        }
        if plain is not None and name != "nospec":
            if len(values) >= INTERVAL_MIN_SAMPLES:
                row["vs_nospec"] = vars(
                    ratio_interval(
                        values, [plain], name="nospec's capacity", geometric=True,
                        confidence=CONFIDENCE,
                    )
                )  # fmt: skip
            else:
                value = geometric_mean(values) / geometric_mean(plain) if min(plain) else None
                row["vs_nospec"] = {"ratio": value, "low": None, "high": None}
        found[name] = row
    return found


def format_summary(found: dict[str, dict]) -> str:
    """The summary as lines: mean capacity, and the ratio to the plain engine's."""
    width = max(20, *(len(n) for n in found))
    lines = [
        f"{'controller':<{width}} {'req/s':>7}  / nospec [{CONFIDENCE:.0%} interval over windows]"
    ]
    for name, row in found.items():
        cell = f"{name:<{width}} {row['mean']:7.1f}" + ("" if row["bounded"] else "+")
        vs = row.get("vs_nospec")
        if vs is not None:
            cell += f"  {format_ratio(vs['ratio'], 0)}"
            if vs["ratio"] is not None and vs["low"] is not None:
                cell += f" [{format_ratio(vs['low'], 0)}, {format_ratio(vs['high'], 0)}]"
        lines.append(cell)
    lines.append("+: every probe passed up to the last scale tried (the capacity is higher)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
