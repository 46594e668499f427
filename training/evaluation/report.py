"""What an evaluation prints and keeps: fixed-width tables, per-sample lines, comparisons with
their intervals, the suite summary, timeline plots, the JSON record and the W&B run."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.evaluation.compare import (
    CONFIDENCE,
    INTERVAL_MIN_SAMPLES,
    comparisons,
    summary,
    table,
)
from training.evaluation.regime import REGIME_KEYS, SLO_BINDS_BELOW, slo_binds
from training.evaluation.runs import Entry
from training.ratio import UNDEFINED, format_ratio


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


def regime(entry: Entry) -> dict:
    """Per controller, the regime means over samples (`training.evaluation.regime`), and
    whether the SLO binds by the plain engine's attainment (None without nospec)."""
    per_controller = {
        run.spec.name: {key: run.mean(key) for key in REGIME_KEYS if key in run.metrics[0]}
        for run in entry.runs
    }
    plain = next((r for r in entry.runs if r.spec.kind == "nospec"), None)
    attainment = plain.mean("slo_attainment") if plain is not None else None
    return {
        "controllers": per_controller,
        "plain_attainment": attainment,
        "slo_binds": slo_binds(attainment),
    }


def format_regime(found: dict, limit: int) -> str:
    """The regime as a table, one row per controller, and whether the SLO binds."""
    rows = found["controllers"]
    width = name_width(list(rows))
    lines = [
        f"regime (engine-time weighted, means over samples; running and queue as shares of the "
        f"{limit}-request limit; verify: share of engine time verifying drafts)",
        f"{'controller':<{width}} {'running':>7} {'p90':>5} {'>=half':>6} {'queue':>6} "
        f"{'verify':>6}",
    ]
    for name, row in rows.items():
        if not row:
            continue
        lines.append(
            f"{name:<{width}} {row['running_mean']:7.2f} {row['running_p90']:5.2f} "
            f"{row['half_full']:6.2f} {row['queue_mean']:6.2f} {row['verify_share']:6.3f}"
        )
    binds = found["slo_binds"]
    if binds is None:
        lines.append("the plain engine did not run: whether the SLO binds is unknown")
    else:
        lines.append(
            f"plain engine SLO attainment {found['plain_attainment']:.3f}: the SLO "
            + ("binds" if binds else "does not bind")
            + f" (below {SLO_BINDS_BELOW:g} it binds)"
        )
    return "\n".join(lines)


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


def report(args: argparse.Namespace, planned: list[Entry], limit: int, error: str | None) -> None:
    """Print the tables of what ran of the `planned` entries (on an engine of `limit` running
    requests) and save them as `args` (the evaluation's command line: --json, --plot,
    --track) ask.

    After a failure (`error`) the runs may hold different numbers of samples: only the
    samples every controller finished are compared.
    """
    entries = []
    for entry in planned:
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
        found_regime = regime(entry)
        print(format_regime(found_regime, limit))
        if len(entry.samples) > 1:
            print(format_samples(entry))
        if found:
            print(format_comparisons(found, len(entry.samples)))
        record["traces"][entry.label] = {
            "rows": rows,
            "comparisons": found,
            "regime": found_regime,
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
