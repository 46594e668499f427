"""The landscape a controller plays on: every static k's goodput under SLO at a ladder of
arrival rates, for one cost profile and trace.

    python -m training.landscape --method ngram --trace azure-conv --rates 1,2,3,4
    python -m training.landscape --profile a100-llama3-8b --trace azure-conv --rates 5,10,20,40

Each rate replays the same windows (of the trace's held-back region when it has one) with
the plain engine and with k = 0..k_max at every step, in model time by default. It prints a
table (goodput under SLO, mean over windows; the best static k per rate marked)
and plots it: where the best k moves with load there is something to control; where one k
is best at every load, a static k is all a controller needs to match.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from agents.registry import parse_controller
from envs.build import EngineProvider, resolve
from envs.traces import apply_replay, load_trace
from training.cli import add_env_flags, read_env_flags
from training.evaluation.runs import Entry, Run, Sample, evaluate, replays_path
from training.replays import Bench
from training.suites import REGIONS


def main(argv: list[str] | None = None, engines: EngineProvider | None = None) -> int:
    """Run the command; `engines` provides live engines instead of building them (tests)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_env_flags(
        p,
        (
            "trace",
            "window_s",
            "max_input_tokens",
            "max_output_tokens",
            "method",
            "k_max",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_model_len",
            "clock",
            "profile",
            "twin",
        ),
        defaults={"trace": "azure-conv", "window_s": 20.0},
        help={"trace": f"a trace file, a synthetic: spec, or a known region: {', '.join(REGIONS)}"},
    )
    p.add_argument("--rates", default="1,2,3,4", help="comma-separated arrival-rate scales")
    p.add_argument("--windows", type=int, default=2, help="windows per rate")
    p.add_argument("--extra", default="goodput", help="controllers to add to the static k's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the landscape here")
    p.add_argument("--plot", type=Path, default=None, help="write the plot here (PNG)")
    args = p.parse_args(argv)

    try:
        plan = check_inputs(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env, profile, entries = plan
    print(
        f"landscape: {env.engine.method}{' (twin)' if env.twin else ''}, {env.clock} clock, "
        f"profile {profile.describe()}, "
        f"{env.engine.max_num_seqs} running requests at most, SLO TTFT {env.slo.ttft_s:g} s "
        f"TPOT {env.slo.tpot_s:g} s; {args.trace}, {args.windows} windows of {args.window_s:g} s"
    )
    started = time.perf_counter()
    bench = Bench(env, profile, plain=True, engines=engines)
    try:
        evaluate(bench, entries, seed=args.seed, rotate=False, log=replays_path(args.json))
    finally:
        bench.close()
    print(f"\n{(time.perf_counter() - started) / 60:.1f} min of replays")
    rows = landscape(entries)
    print(format_landscape(rows, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2, default=str))
    if args.plot:
        plot(rows, args, profile.describe(), args.plot)
    return 0


def check_inputs(args: argparse.Namespace):
    """The engine and clock, the profile, and one entry per rate, before any engine starts."""
    region = REGIONS.get(args.trace)
    spec = region.trace if region is not None else args.trace
    env, profile = resolve(replace(read_env_flags(args), trace=spec))
    trace = load_trace(spec)
    if region is not None:
        starts = region.starts(args.windows, args.window_s, [r.arrival_s for r in trace.requests])
    else:
        room = trace.duration_s - args.window_s
        starts = [i * room / max(args.windows - 1, 1) for i in range(args.windows)]
    names = ["nospec", *(f"static:{k}" for k in range(env.engine.k_max + 1))]
    names += [n for n in args.extra.split(",") if n]
    specs = [parse_controller(n, env.engine.k_max) for n in names]
    entries = []
    for rate in (float(r) for r in args.rates.split(",")):
        options = replace(env, rate_scale=rate).replay_options
        samples = [Sample(s, 1, apply_replay(trace, options(s))) for s in starts]
        if any(not len(sample.workload) for sample in samples):
            raise ValueError(f"a window of {args.trace} at rate x{rate:g} holds no requests")
        entries.append(Entry(f"x{rate:g}", samples, [Run(s) for s in specs]))
    return env, profile, entries


def landscape(entries: list[Entry]) -> list[dict]:
    """Per rate: every controller's goodput and goodput under SLO (arithmetic means over the
    windows: one window where nothing met its SLO must not zero a whole load), the requests
    per second offered, and the best static k under SLO."""
    rows = []
    for entry in entries:
        offered = sum(len(s.workload) / s.workload.duration_s for s in entry.samples)
        row = {
            "rate_scale": float(entry.label[1:]),
            "requests_per_s": offered / len(entry.samples),
            "under_slo": {r.spec.name: r.mean("goodput_under_slo_tps") for r in entry.runs},
            "goodput": {r.spec.name: r.mean("goodput_tps") for r in entry.runs},
        }
        statics = {n: v for n, v in row["under_slo"].items() if n.startswith("static:")}
        row["best_static"] = max(statics, key=statics.get)
        rows.append(row)
    return rows


def format_landscape(rows: list[dict], args: argparse.Namespace) -> str:
    """The landscape as a table: goodput under SLO per controller and rate, best k starred."""
    names = list(rows[0]["under_slo"])
    head = f"{'rate':>6} {'req/s':>7} " + " ".join(f"{n:>10}" for n in names) + "  best k"
    lines = [f"goodput under SLO, tok/s, mean over windows ({args.clock} clock)", head]
    lines.append("-" * len(head))
    for row in rows:
        cells = []
        for name in names:
            value = f"{row['under_slo'][name]:.0f}" + ("*" if name == row["best_static"] else " ")
            cells.append(f"{value:>10}")
        best = row["best_static"].split(":")[1]
        lines.append(
            f"x{row['rate_scale']:<5g} {row['requests_per_s']:7.1f} "
            + " ".join(cells)
            + f"  {best}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], args: argparse.Namespace, profile: str, path: Path) -> None:
    """Goodput under SLO against offered load, one line per controller."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    load = [row["requests_per_s"] for row in rows]
    for name in rows[0]["under_slo"]:
        style = "--" if not name.startswith("static:") else "-o"
        ax.plot(load, [row["under_slo"][name] for row in rows], style, label=name, lw=1.2)
    ax.set_xlabel("offered load (requests/s)")
    ax.set_ylabel("goodput under SLO (tok/s)")
    ax.set_title(f"{args.trace}: {profile}, {args.clock} clock", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
