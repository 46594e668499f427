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
acceptance) are model-time references. With `--twin` the speculating controllers replay on
the engine's twin (`envs.twin`: exact against the live engine in model time, see
docs/environment.md), its acceptance recorded once per window on the live engine; `nospec`
stays on a live plain engine.

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
import json
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.cost import Profile
from agents.registry import NAMES_HELP, ORACLES, ControllerSpec, parse_controller
from envs.build import resolve
from envs.config import DEFAULT_TRACE, EnvConfig
from envs.traces import Trace, apply_replay, load_trace
from serving.config import EngineConfig
from training.bootstrap import geometric_mean, ratio_interval
from training.cli import deprecated_alias
from training.ratio import UNDEFINED, format_ratio, ratio
from training.replays import Bench
from training.suites import REGIONS, SUITES, region_of, suite

METRICS = (
    "goodput_tps",
    "goodput_under_slo_tps",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "slo_attainment",
    "mean_k",
)
MEASURES = {"goodput_tps": "goodput", "goodput_under_slo_tps": "goodput under SLO"}
"""The metrics controllers are compared on, as the reasons of undefined ratios name them."""
EVAL_DIR = Path("runs") / "eval"
"""Where the replays' JSONL goes when there is no --json to put it beside."""
BASELINES = ("nospec", "static")
"""Kinds of controller the learned and analytic ones are measured against."""
INTERVAL_MIN_SAMPLES = 3
"""Fewer samples give too few distinct resamples for an interval to mean anything."""
CONFIDENCE = 0.9
"""Of the printed intervals."""
MAX_WINDOWS = 64
"""More windows than this in one evaluation is almost surely a start meant as a count."""
DEFAULT_CONTROLLERS = "nospec,static:1,static:2,static:3,static:4,vllm-schedule,goodput"


@dataclass(frozen=True)
class Sample:
    """One replay of every controller: a window of a trace, and which repeat of it."""

    window_start_s: float
    repeat: int
    workload: Trace = field(repr=False, compare=False)


@dataclass
class Entry:
    """One trace (at one load) of an evaluation: its samples and what each controller did."""

    label: str
    samples: list[Sample]
    runs: list[Run]


@dataclass
class Run:
    """One controller's replays: metrics per sample and the last sample's timeline."""

    spec: ControllerSpec
    metrics: list[dict[str, float]] = field(default_factory=list)
    timeline: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        """The metric averaged over samples."""
        return statistics.fmean(m[key] for m in self.metrics)

    def values(self, key: str = "goodput_under_slo_tps") -> list[float]:
        """The metric per sample, in sample order."""
        return [m[key] for m in self.metrics]


# --- running ------------------------------------------------------------------------------


def evaluate(
    bench: Bench, entries: list[Entry], *, seed: int, rotate: bool, log: Path | None = None
) -> None:
    """Replay every controller on every sample of every entry, adding metrics to the runs.

    With `rotate` (the wall clock) the controllers' order turns from sample to sample, so the
    machine's drift favours none. Each replay's metrics are also appended to `log` (JSONL) as
    soon as it finishes, so a failure in a later replay loses none of them.
    """
    for entry in entries:
        for index, sample in enumerate(entry.samples):
            shift = index % len(entry.runs) if rotate else 0
            for run in entry.runs[shift:] + entry.runs[:shift]:
                started = time.perf_counter()
                result = bench.run(run.spec, sample.workload, seed)
                metrics = result.metrics | {
                    "wall_s": time.perf_counter() - started,
                    "steps": result.steps,
                }
                run.metrics.append(metrics)
                run.timeline = result.timeline
                if log is not None:
                    line = {
                        "trace": entry.label,
                        "window_start_s": sample.window_start_s,
                        "repeat": sample.repeat,
                        "controller": run.spec.name,
                        "metrics": metrics,
                    }
                    with log.open("a") as out:
                        out.write(json.dumps(line, default=str) + "\n")
                print(
                    f"  {entry.label} window {sample.window_start_s:g} s"
                    + (f" repeat {sample.repeat}" if sample.repeat > 1 else "")
                    + f" {run.spec.name}: goodput {metrics['goodput_tps']:7.0f} tok/s  "
                    f"under SLO {metrics['goodput_under_slo_tps']:7.0f}  "
                    f"({metrics['wall_s']:.1f} s, {result.steps} steps)",
                    flush=True,
                )


# --- tables -------------------------------------------------------------------------------


def table(runs: list[Run]) -> list[dict]:
    """One row per controller: mean metrics and ratios to the best static k and nospec.

    A ratio is the geometric mean over samples of the per-sample ratios (one sample: the
    plain ratio); the best static k is the one with the best geometric mean. A ratio whose
    reference did not run or scored 0 is None, and the row's "undefined" maps its column to
    the reason.
    """
    rows = [{"controller": r.spec.name} | {m: r.mean(m) for m in METRICS} for r in runs]
    statics = [r for r in runs if r.spec.kind == "static"]
    plain = next((r for r in runs if r.spec.kind == "nospec"), None)
    for row, run in zip(rows, runs, strict=True):
        undefined = {}
        for key, label in (("goodput_tps", "goodput"), ("goodput_under_slo_tps", "under_slo")):
            references = {
                "best_static": (
                    [s.values(key) for s in statics],
                    f"the best static k's {MEASURES[key]}",
                ),
                "nospec": ([plain.values(key)] if plain else [], f"nospec's {MEASURES[key]}"),
            }
            for ref, (values, name) in references.items():
                column = f"{label}_vs_{ref}"
                row[column], why = geometric_ratio(run.values(key), values, name)
                if why is not None:
                    undefined[column] = why
        row["undefined"] = undefined
    return rows


def geometric_ratio(
    values: list[float], references: list[list[float]], name: str
) -> tuple[float | None, str | None]:
    """Geometric mean of values over that of the best reference, or (None, why)."""
    if not references:
        return None, f"{name} is missing"
    best = max(geometric_mean(r) for r in references)
    return ratio(geometric_mean(values), best, name)


def name_width(names: list[str]) -> int:
    """Width of the controller column, shared by the tables."""
    return max(20, *(len(name) for name in names))


def format_table(rows: list[dict]) -> str:
    """The table as fixed-width text."""
    width = name_width([r["controller"] for r in rows])
    head = (
        f"{'controller':<{width}} {'goodput':>8} {'underSLO':>8} {'TTFT50':>7} {'TTFT99':>7} "
        f"{'TPOT50':>7} {'TPOT99':>7} {'attain':>6} {'mean k':>6} {'gp/best':>7} "
        f"{'slo/best':>8} {'slo/nospec':>10}"
    )
    lines = [head, "-" * len(head)]
    shown = ("goodput_vs_best_static", "under_slo_vs_best_static", "under_slo_vs_nospec")
    for r in rows:
        lines.append(
            f"{r['controller']:<{width}} {r['goodput_tps']:8.0f} {r['goodput_under_slo_tps']:8.0f} "
            f"{r['ttft_p50_s'] * 1e3:7.1f} {r['ttft_p99_s'] * 1e3:7.1f} "
            f"{r['tpot_p50_s'] * 1e3:7.2f} {r['tpot_p99_s'] * 1e3:7.2f} "
            f"{r['slo_attainment']:6.3f} {r['mean_k']:6.2f} "
            f"{format_ratio(r['goodput_vs_best_static'], 7)} "
            f"{format_ratio(r['under_slo_vs_best_static'], 8)} "
            f"{format_ratio(r['under_slo_vs_nospec'], 10)}"
        )
    lines.append(
        "goodput, underSLO: tokens/s of engine time (means over samples); TTFT ms; "
        "TPOT ms per token; ratios: geometric means over samples"
    )
    reasons = (r["undefined"].get(column) for r in rows for column in shown)
    lines += _footnotes(reasons)
    return "\n".join(lines)


def _footnotes(reasons) -> list[str]:
    """One line per distinct reason (None skipped), saying why some ratios are n/a."""
    return [f"{UNDEFINED}: {why}" for why in dict.fromkeys(reasons) if why is not None]


def format_samples(entry: Entry) -> str:
    """Each controller's goodput under SLO per sample, in sample order."""
    width = name_width([r.spec.name for r in entry.runs])
    head = " / ".join(
        f"{s.window_start_s:g}" + (f"#{s.repeat}" if s.repeat > 1 else "") for s in entry.samples
    )
    lines = [f"{'under SLO per sample':<{width}} (window start s: {head})"]
    lines += [
        f"{r.spec.name:<{width}} " + " / ".join(f"{v:.0f}" for v in r.values()) for r in entry.runs
    ]
    return "\n".join(lines)


def comparisons(runs: list[Run], key: str = "goodput_under_slo_tps") -> dict[str, dict]:
    """Per adaptive controller, its standing against the references, under SLO.

    For each reference (the goodput controller, the best static k, the plain engine): the
    geometric-mean ratio with its paired bootstrap interval over samples (fewer than
    `INTERVAL_MIN_SAMPLES` samples: no interval), and the worst sample's ratio to the goodput
    controller; then the share of the gap from the best static k to the oracle it closes.
    """
    per_sample = {r.spec.name: r.values(key) for r in runs}
    kinds = {r.spec.name: r.spec.kind for r in runs}
    references = {
        "goodput": [v for n, v in per_sample.items() if kinds[n] == "goodput"][:1],
        "best_static": [v for n, v in per_sample.items() if kinds[n] == "static"],
        "nospec": [v for n, v in per_sample.items() if kinds[n] == "nospec"][:1],
    }
    names = {
        "goodput": "the goodput controller's",
        "best_static": "the best static k's",
        "nospec": "nospec's",
    }
    count = len(next(iter(per_sample.values())))
    oracle = per_sample.get("oracle")
    best_static = max((geometric_mean(v) for v in references["best_static"]), default=None)
    found = {}
    for run in runs:
        if run.spec.kind in BASELINES:
            continue
        own = per_sample[run.spec.name]
        row: dict[str, dict] = {}
        for ref, values in references.items():
            if ref == run.spec.kind:
                continue
            name = f"{names[ref]} {MEASURES[key]}"
            if count >= INTERVAL_MIN_SAMPLES:
                row[ref] = vars(
                    ratio_interval(own, values, name=name, geometric=True, confidence=CONFIDENCE)
                )
            else:
                value, why = geometric_ratio(own, values, name)
                row[ref] = {"ratio": value, "low": None, "high": None, "undefined": why}
        if references["goodput"] and run.spec.kind != "goodput":
            worst = [ratio(v, g, "")[0] for v, g in zip(own, references["goodput"][0], strict=True)]
            row["worst_vs_goodput"] = min((w for w in worst if w is not None), default=None)
        row["gap_closed"] = gap_share(geometric_mean(own), best_static, oracle)
        found[run.spec.name] = row
    return found


def gap_share(
    value: float, best_static: float | None, oracle: list[float] | None
) -> dict[str, float | str | None]:
    """The share of the gap from the best static k to the oracle that `value` closes:
    (value - best static) / (oracle - best static); undefined without a gap to close."""
    if best_static is None or oracle is None:
        return {"share": None, "undefined": "needs the static k's and the oracle"}
    gap = geometric_mean(oracle) - best_static
    if gap <= 0:
        return {"share": None, "undefined": "the oracle does not beat the best static k"}
    return {"share": (value - best_static) / gap, "undefined": None}


def format_comparisons(found: dict[str, dict], count: int) -> str:
    """The comparisons as lines: ratio [low, high] per reference, worst sample, gap closed."""
    width = name_width(list(found))
    how = (
        f"{CONFIDENCE:.0%} paired bootstrap interval over {count} samples"
        if count >= INTERVAL_MIN_SAMPLES
        else f"{count} sample(s): no interval"
    )
    lines = [f"under SLO, geometric mean of per-sample ratios [{how}]"]
    reasons = []
    for name, refs in found.items():
        cells = []
        for ref in ("goodput", "best_static", "nospec"):
            if ref not in refs:
                continue
            iv = refs[ref]
            cell = f"/ {ref} {format_ratio(iv['ratio'], 0)}"
            if iv["ratio"] is not None and iv["low"] is not None:
                cell += f" [{format_ratio(iv['low'], 0)}, {format_ratio(iv['high'], 0)}]"
            cells.append(cell)
            reasons.append(iv["undefined"])
        if "worst_vs_goodput" in refs:
            cells.append(f"worst / goodput {format_ratio(refs['worst_vs_goodput'], 0)}")
        share = refs["gap_closed"]["share"]
        cells.append(f"gap closed {format_ratio(share, 0, 2)}")
        lines.append(f"{name:<{width}} " + "  ".join(cells))
    lines += _footnotes(reasons)
    return "\n".join(lines)


def summary(entries: list[Entry]) -> dict[str, dict]:
    """Per controller, over the entries: the geometric mean of its per-entry ratios under
    SLO to each reference (undefined if any entry's is), and its worst sample against the
    goodput controller."""
    per_entry = {entry.label: comparisons(entry.runs) for entry in entries}
    found: dict[str, dict] = {}
    for name in dict.fromkeys(n for rows in per_entry.values() for n in rows):
        rows = [rows[name] for rows in per_entry.values() if name in rows]
        row: dict = {}
        for ref in ("goodput", "best_static", "nospec"):
            values = [r[ref]["ratio"] for r in rows if ref in r]
            if values:
                row[ref] = None if None in values else geometric_mean(values)
        worst = [r.get("worst_vs_goodput") for r in rows]
        row["worst_vs_goodput"] = None if None in worst else min(worst)
        row["entries"] = {label: rows[name] for label, rows in per_entry.items() if name in rows}
        found[name] = row
    return found


def format_summary(found: dict[str, dict], entries: list[Entry]) -> str:
    """The summary as lines, one per controller."""
    width = name_width(list(found))
    lines = [
        f"summary over {len(entries)} traces: geometric mean of the per-trace ratios under SLO"
    ]
    for name, row in found.items():
        cells = [
            f"/ {ref} {format_ratio(row[ref], 0)}"
            for ref in ("goodput", "best_static", "nospec")
            if ref in row
        ]
        cells.append(f"worst window / goodput {format_ratio(row['worst_vs_goodput'], 0)}")
        lines.append(f"{name:<{width}} " + "  ".join(cells))
    return "\n".join(lines)


# --- saving -------------------------------------------------------------------------------


def plot(entry: Entry, rows: list[dict], path: Path) -> None:
    """k, batch size, queue depth and goodput over the last sample per controller, and the
    table's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(10, 14))
    for run in entry.runs:
        t = np.asarray(run.timeline["t"])
        for ax, key in zip(axes[:4], ("k", "batch", "queue", "goodput"), strict=True):
            values = np.asarray(run.timeline[key], dtype=float)
            if key == "goodput":  # smooth per-step rates over 25 steps
                values = np.convolve(values, np.ones(25) / 25, mode="same")
            ax.plot(t, values, label=run.spec.name, lw=0.8)
            ax.set_ylabel(key)
    axes[0].set_title(f"{entry.label}, last sample")
    axes[0].legend(ncol=4, fontsize=8)
    axes[3].set_xlabel("replay time (s)")
    names = [r["controller"] for r in rows]
    x = np.arange(len(rows))
    axes[4].bar(x - 0.2, [r["goodput_tps"] for r in rows], 0.4, label="goodput")
    axes[4].bar(x + 0.2, [r["goodput_under_slo_tps"] for r in rows], 0.4, label="under SLO")
    axes[4].set_xticks(x, names, rotation=20, fontsize=8)
    axes[4].set_ylabel("tokens/s (mean over samples)")
    axes[4].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def track(args: argparse.Namespace, record: dict, plots: list[Path]) -> None:
    """Log the tables (and plots) to W&B; offline unless WANDB_MODE or --wandb-mode says else."""
    import wandb

    run = wandb.init(
        project=args.wandb_project, mode=args.wandb_mode, job_type="evaluate", config=vars(args)
    )
    for label, result in record["traces"].items():
        rows = result["rows"]
        columns = [c for c in rows[0] if c != "undefined"]  # the reasons stay in the JSON
        table_ = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
        run.log({f"evaluation/{label}": table_})
    for name, row in record["summary"].items():
        run.summary[name] = {k: v for k, v in row.items() if k != "entries"}
    for path in plots:
        run.log({f"plot/{path.stem}": wandb.Image(str(path))})
    run.finish()


# --- command line -------------------------------------------------------------------------


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
    entries = suite(args.suite)
    # A suite replays some traces at two loads: each is loaded once.
    loaded = {e.region: load_trace(REGIONS[e.region].trace) for e in entries}
    found = []
    for e in entries:
        trace = loaded[e.region]
        starts = e.starts([r.arrival_s for r in trace.requests])
        found.append(Target(e.label, trace, e.rate_scale, e.window_s, starts))
    return found


def check_inputs(args: argparse.Namespace) -> Plan:
    """The evaluation's options, controllers and workloads, or the error that stops it."""
    env = EnvConfig(
        trace=args.trace,
        trace_format=args.trace_format,
        window_s=args.window_s,
        rate_scale=args.rate_scale,
        length_scale=args.length_scale,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
        engine=EngineConfig(method=args.method, k_max=args.k_max, max_num_seqs=args.max_num_seqs),
        clock=args.clock,
        profile=args.profile,
        twin=args.twin,
    )
    env, profile = resolve(env)
    slo = {"ttft_s": args.ttft_slo_s, "tpot_s": args.tpot_slo_s}
    env = replace(env, slo=replace(env.slo, **{k: v for k, v in slo.items() if v is not None}))
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
        options = replace(env, rate_scale=target.rate_scale, window_s=target.window_s)
        samples = []
        for start in target.starts:
            workload = apply_replay(target.trace, options.replay_options(start))
            if not len(workload):
                raise ValueError(
                    f"no requests in the {target.window_s} s window at {start} s of {target.label}"
                )
            samples += [Sample(start, r + 1, workload) for r in range(args.repeats)]
        entries.append(Entry(target.label, samples, [Run(spec) for spec in specs]))
    return Plan(env, profile, specs, entries)


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default=None, help=f"a named suite: {', '.join(SUITES)}")
    p.add_argument("--trace", default=DEFAULT_TRACE, help="trace file or synthetic: spec")
    p.add_argument("--trace-format", default=None, choices=("azure", "burstgpt", "mooncake"))
    window = p.add_argument("--window-s", type=float, default=60.0, help="trace seconds a window")
    deprecated_alias(p, window, "--window")
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
    p.add_argument("--rate-scale", type=float, default=1.0, help="speed-up of arrivals")
    p.add_argument("--length-scale", type=float, default=1.0)
    p.add_argument("--max-input-tokens", type=int, default=EnvConfig.max_input_tokens)
    p.add_argument("--max-output-tokens", type=int, default=EnvConfig.max_output_tokens)
    p.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    p.add_argument("--k-max", type=int, default=EngineConfig.k_max)
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=EngineConfig.max_num_seqs,
        help="running requests at most (a GPU profile sets its own)",
    )
    p.add_argument("--clock", default="model", help="model (default) or wall")
    p.add_argument(
        "--profile",
        default=None,
        help="cost profile: a path or a name under checkpoints/profiles (e.g. a100-llama3-8b); "
        "default: the measured table of --method",
    )
    ttft = p.add_argument(
        "--ttft-slo-s",
        type=float,
        default=None,
        help="TTFT SLO, seconds (default: 1, or the GPU profile's)",
    )
    deprecated_alias(p, ttft, "--ttft-slo")
    tpot = p.add_argument(
        "--tpot-slo-s",
        type=float,
        default=None,
        help="TPOT SLO, seconds per token (default: 0.05, or the GPU profile's)",
    )
    deprecated_alias(p, tpot, "--tpot-slo")
    p.add_argument(
        "--controllers", default=DEFAULT_CONTROLLERS, help=f"comma-separated: {NAMES_HELP}"
    )
    p.add_argument(
        "--twin",
        action="store_true",
        help="replay the speculating controllers on the engine's twin (model clock; acceptance "
        "recorded once per window on the live engine); nospec stays live",
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


def main(argv: list[str] | None = None) -> int:
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
        bench = Bench(env, plan.profile, plain=any(not s.speculates for s in plan.specs))
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
    report(args, plan, error)
    return status


def replays_path(json_path: Path | None) -> Path:
    """The JSONL of every replay's metrics: beside the --json file, or a new one in runs/eval/."""
    if json_path is not None:
        return json_path.with_suffix(".replays.jsonl")
    return EVAL_DIR / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.replays.jsonl"


def report(args: argparse.Namespace, plan: Plan, error: str | None) -> None:
    """Print the tables of what ran and save them as the options ask.

    After a failure (`error`) the runs may hold different numbers of samples: only the
    samples every controller finished are compared.
    """
    entries = []
    for entry in plan.entries:
        runs = [r for r in entry.runs if r.metrics]
        if not runs:
            continue
        count = min(len(r.metrics) for r in runs)
        runs = [replace(r, metrics=r.metrics[:count]) for r in runs]
        entries.append(Entry(entry.label, entry.samples[:count], runs))
    record: dict = {"args": vars(args), "traces": {}, "summary": {}, "error": error}
    plots = []
    for entry in entries:
        rows = table(entry.runs)
        found = comparisons(entry.runs)
        print(f"\n== {entry.label} ({len(entry.samples)} samples) ==")
        print(format_table(rows))
        if len(entry.samples) > 1:
            print(format_samples(entry))
        if found:
            print(format_comparisons(found, len(entry.samples)))
        record["traces"][entry.label] = {
            "rows": rows,
            "comparisons": found,
            "samples": [
                {"window_start_s": s.window_start_s, "repeat": s.repeat} for s in entry.samples
            ],
            "metrics": {r.spec.name: r.metrics for r in entry.runs},
        }
        if args.plot:
            path = args.plot
            if len(entries) > 1:
                path = path.with_name(f"{path.stem}-{entry.label.replace(' ', '')}{path.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            plot(entry, rows, path)
            plots.append(path)
    if len(entries) > 1:
        record["summary"] = summary(entries)
        print()
        print(format_summary(record["summary"], entries))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=str))
    if args.track and entries:
        track(args, record, plots)


if __name__ == "__main__":
    sys.exit(main())
