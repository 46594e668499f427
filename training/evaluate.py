"""Replay trace windows through the live engine once per controller, side by side.

    python -m training.evaluate --suite cpu --method ngram
    python -m training.evaluate --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv \\
        --windows 4 --window-s 20 --rate-scale 2 --controllers nospec,static:2,goodput,oracle

Every controller replays the same samples: trace windows (same requests, prompts and seed),
and on the wall clock `--repeats` of them. Controllers choose k inside the scheduler hook,
exactly as in serving; `nospec` runs a second engine with no speculation configured at all
(an engine with speculation at k = 0 still pays for drafting).

Clocks (`--clock`): in model time (the default) each step lasts what the cost profile
(`--profile`: the measured table of the method by default, or a GPU preset) says it
computed, so a replay repeats to the token and comparisons are exact for that profile; the
analytic controllers predict with the same profile. In wall time a step lasts what this
machine measured. The oracles (`oracle`, `oracle-per-request`: each step's best k knowing its
acceptance) are model-time references. With `--twin` every controller replays on the
engine's twin (`envs.twin`: exact against the live engine in model time, see
docs/environment.md), its acceptance recorded once per window on the live engine; `nospec`
on the twin of the plain engine, which needs no acceptance.

Per trace it prints the mean metrics per controller, then, per adaptive controller, the
geometric mean over samples of its goodput under SLO over the goodput controller's, the best
static k's (one k per trace, chosen after the fact) and the plain engine's, each with a 90%
paired bootstrap interval over samples, the worst sample's ratio to the goodput controller,
and the share of the gap from the best static k to the oracle it closes. A suite ends with
the geometric mean over its traces. A ratio whose reference did not run or scored 0 is
undefined: `n/a`, null in the JSON, with the reason. Each replay's metrics are appended to a
JSONL file (beside --json, or under runs/eval/) as soon as it finishes, so a failure after
some replays still reports them.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from agents.cost import Profile
from agents.registry import NAMES_HELP, ORACLES, ControllerSpec, parse_controller
from envs.build import EngineProvider, resolve
from envs.config import EnvConfig
from envs.traces import Trace, apply_replay, load_trace
from training.cli import add_env_flags, deprecated_alias, read_env_flags
from training.evaluation.report import report
from training.evaluation.runs import Entry, Run, Sample, evaluate, replays_path
from training.replays import Bench
from training.suites import REGIONS, SUITES, region_of, steady_state_problem, suite

MAX_WINDOWS = 64
"""More windows than this in one evaluation is almost surely a start meant as a count."""
DEFAULT_CONTROLLERS = "nospec,static:1,static:2,static:3,static:4,vllm-schedule,goodput"


@dataclass
class Plan:
    """What an evaluation will replay, checked before any engine starts."""

    env: EnvConfig
    """The engine (with a deployment profile's limits), clock, profile and SLOs."""
    profile: Profile
    """The cost profile: the model clock's, and the analytic controllers'."""
    specs: list[ControllerSpec]
    entries: list[Entry]


@dataclass(frozen=True)
class Target:
    """One trace at one load, and where its windows start."""

    label: str
    trace: Trace
    """The trace, loaded."""
    rate_scale: float
    window_s: float
    starts: list[float]
    max_output_tokens: int | None = None
    """Outputs are clipped to this (None: as the command line says)."""


def window_starts(args: argparse.Namespace, trace: Trace) -> list[float]:
    """The windows' starts: `--windows` as a count (spread over the trace's held-back region,
    or the whole trace when it has none) or a list, else `--window-start-s`; each checked
    to lie in the trace and, for a trace training draws from, outside its training region."""
    region = region_of(args.trace)
    if args.windows is None:
        starts = [args.window_start_s]
    elif "," in args.windows or "." in args.windows:
        starts = [float(s) for s in args.windows.split(",") if s]
    elif not args.windows.isdigit() or not 1 <= int(args.windows) <= MAX_WINDOWS:
        raise ValueError(
            f"--windows {args.windows}: give a count from 1 to {MAX_WINDOWS}, or a list of "
            "starts in seconds (one start: --window-start-s, or a trailing comma)"
        )
    elif region is not None:
        starts = region.starts(
            int(args.windows), args.window_s, [r.arrival_s for r in trace.requests]
        )
    else:
        room = trace.duration_s - args.window_s
        if room < 0:
            raise ValueError(f"the trace lasts {trace.duration_s:.0f} s, less than --window-s")
        count = int(args.windows)
        starts = [round(i * room / max(count - 1, 1), 3) for i in range(count)]
    for start in starts:
        if not 0 <= start < trace.duration_s:
            raise ValueError(
                f"window at {start} s lies outside the trace (0 to {trace.duration_s:.0f} s)"
            )
        if region is not None:
            region.check_eval_window(start, args.window_s)
    return starts


def targets(args: argparse.Namespace) -> list[Target]:
    """The suite's traces, or the one trace of the command line."""
    if args.suite is None:
        trace = load_trace(args.trace, args.trace_format)
        label = f"{Path(args.trace).name} x{args.rate_scale:g}"
        starts = window_starts(args, trace)
        return [Target(label, trace, args.rate_scale, args.window_s, starts)]
    entries = suite(args.suite).entries
    # A suite replays some traces at several loads: each is loaded once.
    loaded = {e.region: load_trace(REGIONS[e.region].trace) for e in entries}
    found = []
    for e in entries:
        trace = loaded[e.region]
        starts = e.starts([r.arrival_s for r in trace.requests])
        found.append(Target(e.label, trace, e.rate_scale, e.window_s, starts, e.max_output_tokens))
    return found


def check_inputs(args: argparse.Namespace) -> Plan:
    """The evaluation's options, controllers and workloads, or the error that stops it."""
    chosen = suite(args.suite) if args.suite is not None else None
    profile = args.profile
    if chosen is not None and chosen.profile is not None:
        if profile not in (None, chosen.profile):
            raise ValueError(f"suite {args.suite} is priced with {chosen.profile}, not {profile}")
        profile = chosen.profile
    # A GPU profile's deployment sets its SLOs in resolve; only the SLO flags given override them.
    env, profile = resolve(replace(read_env_flags(args), profile=profile))
    env = read_env_flags(args, env, names=("ttft_slo_s", "tpot_slo_s"))
    specs = [parse_controller(name, env.engine.k_max) for name in args.controllers.split(",")]
    if args.clock == "wall" and any(s.kind in ORACLES for s in specs):
        raise ValueError("the oracles peek at each step's k_max drafts: they need --clock model")
    if args.repeats < 1:
        raise ValueError(f"--repeats {args.repeats} must be >= 1")
    if args.clock == "model" and args.repeats > 1:
        raise ValueError(
            "model-time replays repeat to the token, so --repeats > 1 adds nothing; "
            "use --windows for variance over workloads"
        )
    entries = []
    for target in targets(args):
        options = replace(
            env,
            rate_scale=target.rate_scale,
            window_s=target.window_s,
            max_output_tokens=target.max_output_tokens or env.max_output_tokens,
        )
        samples = []
        for start in target.starts:
            workload = apply_replay(target.trace, options.replay_options(start))
            if not len(workload):
                raise ValueError(
                    f"no requests in the {target.window_s} s window at {start} s of {target.label}"
                )
            problem = steady_state_problem(workload, target.rate_scale, env.slo.tpot_s)
            if chosen is not None and chosen.steady and problem is not None:
                raise ValueError(
                    f"suite {args.suite}, {target.label}: the window at {start} s cannot hold "
                    f"steady state: {problem}"
                )
            samples += [Sample(start, r + 1, workload) for r in range(args.repeats)]
        entries.append(Entry(target.label, samples, [Run(spec) for spec in specs]))
    return Plan(env, profile, specs, entries)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default=None, help=f"a named suite: {', '.join(SUITES)}")
    flags = add_env_flags(
        p,
        defaults={"window_s": 60.0, "ttft_slo_s": None, "tpot_slo_s": None},
        help={
            "ttft_slo_s": "TTFT SLO, seconds (default: 1, or the GPU profile's)",
            "tpot_slo_s": "TPOT SLO, seconds per token (default: 0.05, or the GPU profile's)",
            "twin": "replay on the engine's twin (model clock; acceptance recorded once per "
            "window on the live engine); nospec on the plain engine's twin",
        },
    )
    deprecated_alias(p, flags["window_s"], "--window")
    deprecated_alias(p, flags["ttft_slo_s"], "--ttft-slo")
    deprecated_alias(p, flags["tpot_slo_s"], "--tpot-slo")
    start = p.add_argument(
        "--window-start-s", type=float, default=0.0, help="trace second the window starts at"
    )
    deprecated_alias(p, start, "--window-start")
    p.add_argument(
        "--windows",
        default=None,
        help="a count of windows spread over the trace's held-back region (or the whole "
        "trace), or a comma-separated list of starts in seconds",
    )
    p.add_argument(
        "--controllers", default=DEFAULT_CONTROLLERS, help=f"comma-separated: {NAMES_HELP}"
    )
    p.add_argument("--repeats", type=int, default=1, help="replays per window (wall clock only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and temperatures")
    p.add_argument(
        "--json", type=Path, default=None, help="write the tables here (the replays' JSONL beside)"
    )
    p.add_argument(
        "--plot", type=Path, default=None, help="write the plots here (PNG, one per trace)"
    )
    p.add_argument("--track", action="store_true", help="log to Weights & Biases")
    p.add_argument("--wandb-project", default="turbospec-rl")
    p.add_argument("--wandb-mode", default=None, help="online, offline (default) or disabled")
    return p


def main(argv: list[str] | None = None, engines: EngineProvider | None = None) -> int:
    """Run the command; `engines` provides live engines instead of building them (tests)."""
    args = parser().parse_args(argv)
    # Everything that can be wrong is checked here, before any engine starts.
    try:
        plan = check_inputs(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = plan.env
    print(
        f"{env.engine.method}{' (twin)' if env.twin else ''}, {env.clock} clock, "
        f"profile {plan.profile.describe()}, "
        f"{env.engine.max_num_seqs} running requests at most, SLO TTFT {env.slo.ttft_s:g} s "
        f"TPOT {env.slo.tpot_s:g} s"
    )
    for entry in plan.entries:
        sizes = ", ".join(str(len(s.workload)) for s in entry.samples)
        print(f"  {entry.label}: {len(entry.samples)} samples ({sizes} requests)")
    log = replays_path(args.json)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    print(f"each replay's metrics are appended to {log}")
    status, error = 0, None
    started = time.perf_counter()
    bench = None
    try:
        plain = any(not s.speculates for s in plan.specs)
        bench = Bench(env, plan.profile, plain=plain, engines=engines)
        evaluate(bench, plan.entries, seed=args.seed, rotate=env.clock == "wall", log=log)
    except KeyboardInterrupt:
        status, error = 130, "interrupted"
    except Exception as err:
        traceback.print_exc()
        status, error = 1, f"{type(err).__name__}: {err}"
    finally:
        if bench is not None:
            bench.close()
    if error is not None:
        print(f"error: {error}; reporting the replays that finished", file=sys.stderr)
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min of replays")
    report(args, plan.entries, env.engine.max_num_seqs, error)
    return status


if __name__ == "__main__":
    sys.exit(main())
