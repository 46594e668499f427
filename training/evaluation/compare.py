"""How controllers compare over an evaluation's samples: the per-trace table, each adaptive
controller's ratios to the references with paired bootstrap intervals, the share of the gap to
the oracle it closes, and the summary over a suite's traces.

A ratio is the geometric mean over samples of the per-sample ratios; a ratio whose reference
did not run or scored 0 is undefined (None, with the reason).
"""

from __future__ import annotations

from training.bootstrap import geometric_mean, ratio_interval
from training.evaluation.runs import Entry, Run
from training.ratio import ratio

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
BASELINES = ("nospec", "static")
"""Kinds of controller the learned and analytic ones are measured against."""
INTERVAL_MIN_SAMPLES = 3
"""Fewer samples give too few distinct resamples for an interval to mean anything."""
CONFIDENCE = 0.9
"""Of the printed intervals."""


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
