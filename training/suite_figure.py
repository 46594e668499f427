"""One picture of evaluation suites: per trace, each controller's goodput under SLO over the
goodput controller's, with its 90% interval over windows.

    python -m training.suite_figure runs/suites/cpu-ngram.json runs/suites/a100-ngram.json \\
        --out docs/figures/suite.png

Each file (a `training.evaluate --json` of a suite) is one panel, titled with its method,
cost profile and clock. The best static k (one per trace, chosen after the fact) and the
plain engine are drawn against the goodput controller too, so a bar above 1 beats it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REFERENCES = {"best static k": "best_static", "nospec": "nospec"}
"""References the goodput controller's row is compared with (drawn inverted)."""
KEY = "goodput_under_slo_tps"

Cell = tuple[float, float, float, bool]
"""(ratio, low, high, exact): exact is False for a ratio of means standing in for an
undefined geometric mean (a window where the reference scored 0)."""


def series(record: dict) -> dict[str, dict[str, Cell | None]]:
    """Per series name, per trace label, against the goodput controller: the geometric-mean
    ratio and its interval, else the ratio of means over the windows (no interval), else None
    (did not run, or the goodput controller scored 0 on every window)."""
    found: dict[str, dict] = {}
    for label, trace in record["traces"].items():
        rows, metrics = trace["comparisons"], trace["metrics"]
        means = {name: _mean(values) for name, values in metrics.items()}
        statics = {name: value for name, value in means.items() if name.startswith("static:")}
        base = rows.get("goodput", {})
        for name, ref in REFERENCES.items():
            cell = _inverted(base.get(ref))
            if cell is None:
                other = (
                    max(statics.values(), default=None) if ref == "best_static" else means.get(ref)
                )
                cell = _of_means(other, means.get("goodput"))
            found.setdefault(name, {})[label] = cell
        for name, row in rows.items():
            if "goodput" not in row:  # the goodput controller's own row, among others
                continue
            cell = row["goodput"]
            value = cell["ratio"]
            found.setdefault(name, {})[label] = (
                _of_means(means.get(name), means.get("goodput"))
                if not value
                else (value, cell["low"] or value, cell["high"] or value, True)
            )
    return found


def _mean(samples: list[dict]) -> float:
    return sum(s[KEY] for s in samples) / len(samples)


def _of_means(value: float | None, goodput: float | None) -> Cell | None:
    if value is None or not goodput:
        return None
    return value / goodput, value / goodput, value / goodput, False


def _inverted(cell: dict | None) -> Cell | None:
    """goodput/ref as ref/goodput (the interval's ends swap); None where undefined."""
    if not cell or not cell["ratio"]:
        return None
    low, high = cell["low"] or cell["ratio"], cell["high"] or cell["ratio"]
    return 1 / cell["ratio"], 1 / high, 1 / low, True


def title(record: dict) -> str:
    """What a panel shows: method, profile, clock, engine."""
    args = record["args"]
    profile = args.get("profile") or f"{args['method']} table (measured)"
    where = "on the twin" if args.get("twin") else "live engine"
    suite = args.get("suite") or Path(args["trace"]).name
    return f"{suite} suite: {args['method']}, profile {profile}, {args['clock']} clock, {where}"


def plot(records: list[dict], out: Path, only: list[str] | None = None, log: bool = False) -> None:
    """One bar panel per record (the series in `only`, in that order, if given; a log axis
    with `log`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(records), 1, figsize=(11, 3.6 * len(records)), squeeze=False)
    for ax, record in zip(axes[:, 0], records, strict=True):
        found = series(record)
        if only:
            found = {name: found[name] for name in only if name in found}
        labels = list(record["traces"])
        width = 0.8 / max(len(found), 1)
        x = np.arange(len(labels))
        for i, (name, cells) in enumerate(found.items()):
            values = [cells.get(label) for label in labels]
            heights = [v[0] if v else np.nan for v in values]
            errors = [
                [v[0] - v[1] if v else 0 for v in values],
                [v[2] - v[0] if v else 0 for v in values],
            ]
            bars = ax.bar(x + (i - (len(found) - 1) / 2) * width, heights, width, label=name)
            for bar, value in zip(bars, values, strict=True):
                if value and not value[3]:
                    bar.set_hatch("//")
            ax.errorbar(
                x + (i - (len(found) - 1) / 2) * width,
                heights,
                yerr=errors,
                fmt="none",
                ecolor="black",
                elinewidth=0.8,
            )
        ax.axhline(1.0, color="black", linewidth=0.8)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(x, labels)
        ax.set_ylabel("under SLO / goodput ctrl")
        ax.set_title(title(record), fontsize=10)
    axes[0, 0].legend(fontsize=8, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.12))
    fig.text(
        0.01,
        0.002,
        "bars: geometric mean over windows, 90% paired bootstrap interval; hatched: ratio of "
        "means (a window where the reference scored 0)",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("suites", nargs="+", type=Path, help="training.evaluate --json files")
    p.add_argument("--out", type=Path, required=True, help="the PNG to write")
    p.add_argument(
        "--series",
        default=None,
        help="comma-separated series to draw, in order (controller names, 'best static k', "
        "'nospec'); default: all",
    )
    p.add_argument("--log", action="store_true", help="a logarithmic ratio axis")
    args = p.parse_args(argv)
    records = []
    for path in args.suites:
        try:
            record = json.loads(path.read_text())
            missing = {"traces", "args"} - set(record)
            if missing:
                raise ValueError(f"no {', '.join(sorted(missing))}")
        except (OSError, ValueError) as err:
            print(f"error: {path} is not a training.evaluate --json file ({err})", file=sys.stderr)
            return 2
        records.append(record)
    plot(records, args.out, args.series.split(",") if args.series else None, args.log)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
