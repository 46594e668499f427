"""Replay one trace window through the live engine once per controller, side by side.

    python -m training.evaluate --trace ../shared/traces/AzureLLMInferenceTrace_conv.csv \\
        --window-s 60 --rate-scale 2 --controllers nospec,static:1,static:2,static:4,goodput

Every controller sees the same requests (same window, prompts and seed). Controllers choose
k inside the scheduler hook, exactly as in serving; `nospec` runs a second engine with no
speculation configured at all (an engine with speculation at k=0 still pays for drafting).
With --repeats, the controllers' order rotates each repeat so the machine's drift does not
favour one of them; metrics are averaged over repeats, and each repeat's goodput under SLO is
printed under the table (how far one replay is from another). From 3 repeats on, each
adaptive controller's ratios under SLO to the goodput controller, the best static k and
nospec follow, with 90% paired bootstrap intervals (`training.bootstrap`). A ratio whose
reference did not run or scored 0 is undefined: `n/a` in the table, null in the JSON, with the
reason. Prints one table; --json (with every repeat's metrics and the intervals), --plot and
--track save it. Each replay's metrics are appended to a JSONL file (beside --json, or under
runs/eval/) as soon as it finishes, and a failure after some replays still reports them.
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

from agents.controller import Controller
from agents.cost import Profile, load_profile
from agents.features import FeatureBuilder, FeatureConfig
from agents.registry import (
    NAMES_HELP,
    ControllerContext,
    ControllerSpec,
    build_controller,
    parse_controller,
)
from envs.config import DEFAULT_TRACE, EnvConfig
from envs.ledger import SLO
from envs.replayer import WorkloadReplayer
from envs.spec_decode_env import feature_config
from envs.traces import PromptFactory, Trace, apply_replay, load_trace
from serving.config import EngineConfig, default_profile_path
from serving.live_engine import LiveEngine
from training.bootstrap import ratio_interval
from training.cli import deprecated_alias
from training.ratio import UNDEFINED, format_ratio, ratio

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


@dataclass
class Run:
    """One controller's replays: metrics per repeat and the last repeat's timeline."""

    spec: ControllerSpec
    metrics: list[dict[str, float]] = field(default_factory=list)
    timeline: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        """The metric averaged over repeats."""
        return statistics.fmean(m[key] for m in self.metrics)


def replay(
    replayer: WorkloadReplayer,
    workload: Trace,
    seed: int,
    controller: Controller | None = None,
    features: FeatureConfig | None = None,
) -> tuple[dict, dict]:
    """One full replay, `controller` choosing k inside the scheduler hook as in serving.

    Without a controller the engine keeps its k (nospec's engine has none to choose).
    """
    engine = replayer.engine
    if controller is not None:
        engine.attach(controller, FeatureBuilder(features))
    timeline: dict[str, list[float]] = {k: [] for k in ("t", "k", "batch", "queue", "goodput")}
    try:
        replayer.start(workload, np.random.default_rng(seed))
        while not replayer.finished:
            record, _ = replayer.step()
            timeline["t"].append(record.finished_at)
            timeline["k"].append(record.k)
            timeline["batch"].append(record.batch_size)
            timeline["queue"].append(record.num_waiting)
            timeline["goodput"].append(record.generated / record.step_time)
    finally:
        if controller is not None:
            engine.attach(None, None)
    return replayer.ledger.metrics(), timeline


def evaluate(
    env: EnvConfig,
    runs: list[Run],
    *,
    workload: Trace,
    repeats: int,
    seed: int,
    profile: Profile | None,
    log: Path | None = None,
) -> None:
    """Run every controller `repeats` times on the workload, adding the metrics to `runs`.

    Each replay's metrics are also appended to `log` (JSONL) as soon as it finishes, so a
    failure in a later replay loses none of them; `runs` holds them too.
    """
    specs = [run.spec for run in runs]
    engines: dict[bool, LiveEngine] = {}
    if any(s.speculates for s in specs):
        engines[True] = LiveEngine(env.engine)
    if any(not s.speculates for s in specs):
        engines[False] = LiveEngine(replace(env.engine, method="none", k_max=0))
    for engine in engines.values():
        engine.warm_up()
    prompts = PromptFactory(env.engine.model, weights=env.prompt_styles)
    replayers = {
        speculates: WorkloadReplayer(engine, prompts, env.slo, env.temperatures)
        for speculates, engine in engines.items()
    }
    features_config = feature_config(env, env.engine)
    context = ControllerContext.from_features(features_config, profile)
    try:
        for repeat in range(repeats):
            shift = repeat % len(runs)
            for run in runs[shift:] + runs[:shift]:
                controller = build_controller(run.spec, context)
                started = time.perf_counter()
                metrics, run.timeline = replay(
                    replayers[run.spec.speculates], workload, seed, controller, features_config
                )
                metrics["wall_s"] = time.perf_counter() - started
                run.metrics.append(metrics)
                if log is not None:
                    line = {"controller": run.spec.name, "repeat": repeat + 1, "metrics": metrics}
                    with log.open("a") as out:
                        out.write(json.dumps(line, default=str) + "\n")
                print(
                    f"  repeat {repeat + 1}/{repeats} {run.spec.name} "
                    f"goodput {metrics['goodput_tps']:7.0f} tok/s  "
                    f"under SLO {metrics['goodput_under_slo_tps']:7.0f}  "
                    f"({metrics['wall_s']:.1f} s)",
                    flush=True,
                )
    finally:
        for engine in engines.values():
            engine.close()


def table(runs: list[Run]) -> list[dict]:
    """One row per controller: mean metrics and ratios to the best static k and nospec.

    A ratio whose reference did not run or scored 0 is None, and the row's "undefined" maps
    its column to the reason.
    """
    rows = [{"controller": r.spec.name} | {m: r.mean(m) for m in METRICS} for r in runs]
    statics = [row for row, r in zip(rows, runs, strict=True) if r.spec.kind == "static"]
    plain = next((row for row, r in zip(rows, runs, strict=True) if r.spec.kind == "nospec"), None)
    references = {}  # column: (metric, the reference's value or None, what the reference is)
    for key, label in (("goodput_tps", "goodput"), ("goodput_under_slo_tps", "under_slo")):
        best = max((row[key] for row in statics), default=None)
        references[f"{label}_vs_best_static"] = (key, best, f"the best static k's {MEASURES[key]}")
        nospec = plain[key] if plain else None
        references[f"{label}_vs_nospec"] = (key, nospec, f"nospec's {MEASURES[key]}")
    for row in rows:
        undefined = {}
        for column, (key, reference, name) in references.items():
            row[column], why = ratio(row[key], reference, name)
            if why is not None:
                undefined[column] = why
        row["undefined"] = undefined
    return rows


def name_width(names: list[str]) -> int:
    """Width of the controller column, shared by the table and the per-repeat lines."""
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
    lines.append("goodput, underSLO: tokens/s of engine time; TTFT ms; TPOT ms per token")
    reasons = (r["undefined"].get(column) for r in rows for column in shown)
    lines += _footnotes(reasons)
    return "\n".join(lines)


def _footnotes(reasons) -> list[str]:
    """One line per distinct reason (None skipped), saying why some ratios are n/a."""
    return [f"{UNDEFINED}: {why}" for why in dict.fromkeys(reasons) if why is not None]


def format_repeats(runs: list[Run]) -> str:
    """Each controller's goodput under SLO per repeat, in the order the repeats ran."""
    width = name_width([r.spec.name for r in runs])
    return "\n".join(
        f"{r.spec.name:<{width}} under SLO per repeat: "
        + " / ".join(f"{m['goodput_under_slo_tps']:.0f}" for m in r.metrics)
        for r in runs
    )


BASELINES = ("nospec", "static")
"""Kinds of controller the learned and analytic ones are measured against."""
INTERVAL_MIN_REPEATS = 3
"""Fewer repeats give too few distinct resamples for an interval to mean anything."""
CONFIDENCE = 0.9
"""Of the printed intervals."""


def intervals(runs: list[Run], key: str = "goodput_under_slo_tps") -> dict[str, dict]:
    """Per adaptive controller: its ratio of means to each reference, with an interval.

    References: the goodput controller ("goodput"), the best static k ("best_static") and
    the plain engine ("nospec"). One that did not run or scored 0 gives an undefined
    (None) ratio and interval, with the reason under "undefined".
    """
    per_repeat = {r.spec.name: [m[key] for m in r.metrics] for r in runs}
    references = {
        "goodput": [per_repeat[r.spec.name] for r in runs if r.spec.kind == "goodput"][:1],
        "best_static": [per_repeat[r.spec.name] for r in runs if r.spec.kind == "static"],
        "nospec": [per_repeat[r.spec.name] for r in runs if r.spec.kind == "nospec"][:1],
    }
    names = {
        "goodput": "the goodput controller's",
        "best_static": "the best static k's",
        "nospec": "nospec's",
    }
    return {
        r.spec.name: {
            ref: vars(
                ratio_interval(
                    per_repeat[r.spec.name],
                    values,
                    name=f"{names[ref]} {MEASURES[key]}",
                    confidence=CONFIDENCE,
                )
            )
            for ref, values in references.items()
            if ref != r.spec.kind
        }
        for r in runs
        if r.spec.kind not in BASELINES
    }


def format_intervals(found: dict[str, dict], repeats: int) -> str:
    """The intervals as lines: ratio [low, high] per reference."""
    width = name_width(list(found))
    head = f"{CONFIDENCE:.0%} paired bootstrap interval over {repeats} repeats"
    lines = [f"under SLO, ratio of means [{head}]"]
    for name, refs in found.items():
        cells = []
        for ref, iv in refs.items():
            cell = f"/ {ref} {format_ratio(iv['ratio'], 0)}"
            if iv["ratio"] is not None:
                cell += f" [{format_ratio(iv['low'], 0)}, {format_ratio(iv['high'], 0)}]"
            cells.append(cell)
        lines.append(f"{name:<{width}} " + "  ".join(cells))
    lines += _footnotes(iv["undefined"] for refs in found.values() for iv in refs.values())
    return "\n".join(lines)


def plot(runs: list[Run], rows: list[dict], path: Path) -> None:
    """k, batch size, queue depth and goodput over time per controller, and the table's bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(5, 1, figsize=(10, 14))
    for run in runs:
        t = np.asarray(run.timeline["t"])
        for ax, key in zip(axes[:4], ("k", "batch", "queue", "goodput"), strict=True):
            values = np.asarray(run.timeline[key], dtype=float)
            if key == "goodput":  # smooth per-step rates over 25 steps
                values = np.convolve(values, np.ones(25) / 25, mode="same")
            ax.plot(t, values, label=run.spec.name, lw=0.8)
            ax.set_ylabel(key)
    axes[0].legend(ncol=4, fontsize=8)
    axes[3].set_xlabel("trace time (s)")
    names = [r["controller"] for r in rows]
    x = np.arange(len(rows))
    axes[4].bar(x - 0.2, [r["goodput_tps"] for r in rows], 0.4, label="goodput")
    axes[4].bar(x + 0.2, [r["goodput_under_slo_tps"] for r in rows], 0.4, label="under SLO")
    axes[4].set_xticks(x, names, rotation=20, fontsize=8)
    axes[4].set_ylabel("tokens/s")
    axes[4].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def track(args: argparse.Namespace, rows: list[dict], plot_path: Path | None) -> None:
    """Log the table (and plot) to W&B; offline unless WANDB_MODE or --wandb-mode says else."""
    import wandb

    run = wandb.init(
        project=args.wandb_project,
        mode=args.wandb_mode,
        job_type="evaluate",
        config=vars(args) | {"controllers": args.controllers},
    )
    columns = [c for c in rows[0] if c != "undefined"]  # the reasons stay in the JSON
    run.log(
        {"evaluation": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}
    )
    for row in rows:
        run.summary[row["controller"]] = {k: v for k, v in row.items() if k != "controller"}
    if plot_path is not None:
        run.log({"evaluation_plot": wandb.Image(str(plot_path))})
    run.finish()


def check_inputs(args: argparse.Namespace) -> tuple[EnvConfig, list, Trace, Profile | None]:
    """The replay's options, controllers, workload and profile, or the error that stops it."""
    engine_config = EngineConfig(
        method=args.method, k_max=args.k_max, max_num_seqs=args.max_num_seqs
    )
    env = EnvConfig(
        trace=args.trace,
        trace_format=args.trace_format,
        window_s=args.window_s,
        window_start_s=args.window_start_s,
        rate_scale=args.rate_scale,
        length_scale=args.length_scale,
        max_input_tokens=args.max_input_tokens,
        max_output_tokens=args.max_output_tokens,
        engine=engine_config,
        slo=SLO(ttft_s=args.ttft_slo_s, tpot_s=args.tpot_slo_s),
    )
    specs = [parse_controller(name, args.k_max) for name in args.controllers.split(",")]
    workload = apply_replay(
        load_trace(args.trace, args.trace_format), env.replay_options(args.window_start_s)
    )
    if not len(workload):
        raise ValueError(f"no requests in the {args.window_s} s window at {args.window_start_s} s")
    profile = None
    if any(s.needs_profile for s in specs):
        engine_config.check_models()
        profile = load_profile(
            args.profile or default_profile_path(args.method),
            model_id=engine_config.model_id(),
            method=args.method,
        )

    return env, specs, workload, profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", default=DEFAULT_TRACE, help="trace file or synthetic: spec")
    parser.add_argument("--trace-format", default=None, choices=("azure", "burstgpt", "mooncake"))
    window = parser.add_argument(
        "--window-s", type=float, default=60.0, help="trace seconds to replay"
    )
    deprecated_alias(parser, window, "--window")
    start = parser.add_argument(
        "--window-start-s", type=float, default=0.0, help="trace second the window starts at"
    )
    deprecated_alias(parser, start, "--window-start")
    parser.add_argument("--rate-scale", type=float, default=1.0)
    parser.add_argument("--length-scale", type=float, default=1.0)
    parser.add_argument("--max-input-tokens", type=int, default=EnvConfig.max_input_tokens)
    parser.add_argument("--max-output-tokens", type=int, default=EnvConfig.max_output_tokens)
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    parser.add_argument("--k-max", type=int, default=EngineConfig.k_max)
    parser.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    ttft = parser.add_argument(
        "--ttft-slo-s", type=float, default=SLO.ttft_s, help="time-to-first-token SLO, seconds"
    )
    deprecated_alias(parser, ttft, "--ttft-slo")
    tpot = parser.add_argument(
        "--tpot-slo-s", type=float, default=SLO.tpot_s, help="time-per-output-token SLO, seconds"
    )
    deprecated_alias(parser, tpot, "--tpot-slo")
    parser.add_argument(
        "--controllers",
        default="nospec,static:1,static:2,static:3,static:4,vllm-schedule,goodput",
        help=f"comma-separated: {NAMES_HELP}",
    )
    parser.add_argument("--profile", type=Path, default=None, help="step-time profile JSON")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", type=Path, default=None, help="write the table here (the replays' JSONL beside)"
    )
    parser.add_argument("--plot", type=Path, default=None, help="write the plots here (PNG)")
    parser.add_argument("--track", action="store_true", help="log to Weights & Biases")
    parser.add_argument("--wandb-project", default="turbospec-rl")
    parser.add_argument("--wandb-mode", default=None, help="online, offline (default) or disabled")
    args = parser.parse_args(argv)

    # Everything that can be wrong is checked here, before any engine starts.
    try:
        env, specs, workload, profile = check_inputs(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.method}: {len(workload)} requests over {workload.duration_s:.1f} s "
        f"(window {args.window_s} s at {args.window_start_s} s, rate x{args.rate_scale}) "
        f"from {args.trace}"
    )
    log = replays_path(args.json)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    print(f"each replay's metrics are appended to {log}")
    runs = [Run(spec) for spec in specs]
    status, error = 0, None
    try:
        evaluate(
            env,
            runs,
            workload=workload,
            repeats=args.repeats,
            seed=args.seed,
            profile=profile,
            log=log,
        )
    except KeyboardInterrupt:
        status, error = 130, "interrupted"
    except Exception as err:
        traceback.print_exc()
        status, error = 1, f"{type(err).__name__}: {err}"
    if error is not None:
        print(f"error: {error}; reporting the replays that finished", file=sys.stderr)
    report(args, [r for r in runs if r.metrics], error)
    return status


def replays_path(json_path: Path | None) -> Path:
    """The JSONL of every replay's metrics: beside the --json file, or a new one in runs/eval/."""
    if json_path is not None:
        return json_path.with_suffix(".replays.jsonl")
    return EVAL_DIR / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.replays.jsonl"


def report(args: argparse.Namespace, runs: list[Run], error: str | None) -> None:
    """Print the table of the runs that have replays and save it as the options ask.

    After a failure (`error`) the runs may hold different numbers of repeats; the intervals,
    which pair repeats, are then left out.
    """
    if not runs:
        return
    rows = table(runs)
    print()
    print(format_table(rows))
    counts = {len(r.metrics) for r in runs}
    if max(counts) > 1:
        print(format_repeats(runs))
    repeats = counts.pop() if len(counts) == 1 else 0
    found = intervals(runs) if repeats >= INTERVAL_MIN_REPEATS else {}
    if found:
        print(format_intervals(found, repeats))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "args": vars(args),
            "rows": rows,
            "repeats": {r.spec.name: r.metrics for r in runs},
            "intervals": found,
            "error": error,
        }
        args.json.write_text(json.dumps(record, indent=2, default=str))
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(runs, rows, args.plot)
    if args.track:
        track(args, rows, args.plot)


if __name__ == "__main__":
    sys.exit(main())
