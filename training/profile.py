"""Measure the live engine's step time and write its cost profiles (`table` and `fitted`).

    python -m training.profile [--method ngram|draft_model|none] [--steps 24] [--passes 8]

Decode cells: for every batch size and prompt length a batch is prefilled, then decoded for
a few steps at every k (the first steps after a change of k are dropped: the drafting budget
takes effect one step late). Prefill cells: a batch decodes at k = 0 while a prompt of a given
length arrives; each such step is timed against the decode-only steps before it, and the
prompt is dropped again so the batch keeps its size. Each cell keeps the median seconds, the
drafts actually verified per request and the mean context read.

A step is timed by the CPU time of the engine's one thread over the hook's interval (what
the wall clock measures on a core nobody else uses, without the time the thread was
descheduled), and the grid runs in several passes whose samples are pooled, so that the
machine's drift between minutes spreads over every cell instead of biasing some.

Held-out cells, at batch sizes, prompt lengths and prefill sizes the grid does not hold, are
measured the same way, in the same passes, and never fitted: both kinds are scored on them
(relative RMSE of the cell medians), and the cells and scores are written into the profiles.

Writes `checkpoints/profiles/<method>.json` (kind `table`: the cells, interpolated),
`<method>-fitted.json` (kind `fitted`: a linear model fitted to the grid's steps) and a PNG.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from agents.cost import LinearCost, TableCost
from agents.cost.load import load_of
from agents.cost.profile import PROFILE_DIR, save_profile
from envs.traces import PromptFactory
from serving.config import EngineConfig, project_relative
from serving.live_engine import LiveEngine

SETTLE_STEPS = 2
"""Steps dropped after k changes: their drafts were proposed under the previous budget."""
PREFILL_REPEATS = 2
"""Timed prefill steps per prefill cell and pass."""
GRID = {
    "batches": (1, 2, 4, 8, 16, 32),
    "prompts": (32, 192, 448),
    "prefill_batches": (0, 1, 8, 24),
    "prefill_tokens": (16, 128, 384, 768, 1016),
}
HELD_OUT = {
    "batches": (3, 6, 12, 24),
    "prompts": (96, 320),
    "prefill_batches": (4, 16),
    "prefill_tokens": (64, 512),
}

Samples = dict[tuple, list[tuple]]
"""Timed steps by cell: (grid, "decode", batch, k, prompt) -> [(load, seconds)], and
(grid, "prefill", batch, size) -> [(load, added seconds, whole seconds)]."""


class Sampler:
    """Times steps of one engine and keeps each step's load with its seconds."""

    def __init__(self, engine: LiveEngine, steps: int) -> None:
        self.grid = "grid"
        """Which grid the samples being taken belong to."""
        self.engine = engine
        self.factory = PromptFactory(engine.config.model, seed=0)
        self.steps = steps
        self.samples: Samples = defaultdict(list)
        self.drafted = 0
        self.accepted = 0
        self._ids = 0

    def add(self, prompt_tokens: int, output_tokens: int) -> str:
        """Queue one request with a source-code prompt; return its id."""
        rid = f"p{self._ids}"
        self._ids += 1
        prompt = self.factory.make(prompt_tokens, style="source").token_ids
        self.engine.add_request(rid, prompt, output_tokens)
        return rid

    def decode(self, batch: int, prompt: int) -> None:
        """Decode steps at every k of one batch of `batch` requests with `prompt`-token
        prompts."""
        engine = self.engine
        per_k = self.steps + SETTLE_STEPS
        output = min(per_k * (engine.k_max + 1) ** 2 + 8, engine.config.max_model_len - prompt)
        for _ in range(batch):
            self.add(prompt, output)
        while engine.step(0).prefill_tokens and engine.has_unfinished():
            pass  # prefill the batch first
        for k in range(engine.k_max + 1):
            for step in range(per_k):
                if not engine.has_unfinished():
                    break
                record = engine.step(k)
                self.drafted += record.drafted
                self.accepted += record.accepted
                load = load_of(record.requests)
                if step >= SETTLE_STEPS and load.num_decode == batch and not load.prefill:
                    key = (self.grid, "decode", batch, k, prompt)
                    self.samples[key].append((load, record.cpu_time))
        engine.reset()

    def prefill(self, batch: int, sizes: tuple[int, ...]) -> None:
        """Steps that compute a prompt of each size beside `batch` decoding requests (k = 0),
        each against the median of the three decode-only steps before it."""
        engine = self.engine
        for _ in range(batch):
            self.add(128, engine.config.max_model_len - 128)
        while engine.has_unfinished() and engine.step(0).prefill_tokens:
            pass
        for size in sizes:
            for _ in range(PREFILL_REPEATS):
                base = [engine.step(0).cpu_time for _ in range(3)] if batch else [0.0]
                rid = self.add(size, 4)
                record = engine.step(0)
                added = record.cpu_time - statistics.median(base)
                load = load_of(record.requests)
                if load.prefill_tokens == size:  # the prompt was admitted and fit the budget
                    self.samples[(self.grid, "prefill", batch, size)].append(
                        (load, added, record.cpu_time)
                    )
                engine.abort([rid])
        engine.reset()


def measure(engine: LiveEngine, grids: dict[str, dict], steps: int, passes: int) -> Sampler:
    """Every cell of the grids, `passes` times over, `steps` timed decode steps per cell in
    all; the grids' batches interleave within each pass."""
    sampler = Sampler(engine, max(steps // passes, 1))
    runs = []
    for name, grid in grids.items():
        limit = engine.config.max_num_seqs
        runs += [(name, "decode", b, p) for p in grid["prompts"] for b in grid["batches"]]
        runs += [(name, "prefill", b, grid["prefill_tokens"]) for b in grid["prefill_batches"]]
        runs = [run for run in runs if run[2] <= limit]
    runs.sort(key=lambda run: (run[1], run[2]))
    with tqdm(total=passes * len(runs), desc=f"profiling {engine.config.method}") as bar:
        for _ in range(passes):
            for name, kind, batch, arg in runs:
                sampler.grid = name
                (sampler.decode if kind == "decode" else sampler.prefill)(batch, arg)
                bar.update(1)
    return sampler


def cells(samples: Samples, grid: str) -> dict[str, list[dict]]:
    """One grid's cells from pooled samples (with the samples, under "loads")."""
    decode, prefill = [], []
    for key, group in sorted(samples.items()):
        if key[0] != grid:
            continue
        if key[1] == "decode":
            _, _, batch, k, prompt = key
            decode.append(
                {
                    "batch": batch,
                    "k": k,
                    "context": prompt,
                    "verified": statistics.fmean(load.verified_tokens / batch for load, _ in group),
                    "mean_context": statistics.fmean(load.mean_context for load, _ in group),
                    "step_time_s": statistics.median(seconds for _, seconds in group),
                    "samples": len(group),
                    "loads": group,
                }
            )
        else:
            _, _, batch, _ = key
            prefill.append(
                {
                    "batch": batch,
                    "prefill_tokens": statistics.median(load.prefill_tokens for load, *_ in group),
                    "added_s": statistics.median(added for _, added, _ in group),
                    "step_time_s": statistics.median(whole for *_, whole in group),
                    "samples": len(group),
                    "loads": [(load, whole) for load, _, whole in group],
                    "added": [(load, added) for load, added, _ in group],
                }
            )
    return {"decode": decode, "prefill": prefill}


def predicted(model, cell: dict) -> float:
    """A cost model's median prediction for a cell's steps."""
    return statistics.median(model.seconds(load) for load, _ in cell["loads"])


def held_out_error(model, held: dict[str, list[dict]]) -> float:
    """Relative RMSE of a cost model against held-out cells: per cell, the median of its
    predictions for the steps' loads over the median measured step."""
    errors = [predicted(model, c) / c["step_time_s"] - 1 for group in held.values() for c in group]
    return math.sqrt(statistics.fmean(e * e for e in errors))


def strip(grid: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The cells without their per-step loads, as a profile stores them."""
    return {
        kind: [{k: v for k, v in c.items() if k not in ("loads", "added")} for c in group]
        for kind, group in grid.items()
    }


def fit_linear(grid: dict[str, list[dict]]) -> LinearCost:
    """The linear model fitted to every timed step of the grid.

    A prefill step's time is taken as the seconds its prompt added to the decode-only steps
    before it plus the decode part as fitted to the decode steps alone, so the machine's drift
    between cells does not enter the prompt coefficient.
    """
    decode = [(load, seconds) for cell in grid["decode"] for load, seconds in cell["loads"]]
    base = LinearCost.fit(decode)
    prefill = [
        (load, added + (base.seconds(replace(load, prefill=())) if load.num_decode else 0.0))
        for cell in grid["prefill"]
        for load, added in cell["added"]
    ]
    return LinearCost.fit(decode + prefill)


def plot(table: TableCost, title: str, path: Path) -> None:
    """Measured decode step time against batch size, one line per k, at the shortest prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prompt = min(c["context"] for c in table.decode)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in sorted({c["k"] for c in table.decode}):
        rows = [c for c in table.decode if c["k"] == k and c["context"] == prompt]
        ax.plot(
            [c["batch"] for c in rows], [c["step_time_s"] * 1e3 for c in rows], "o-", label=f"k={k}"
        )
    ax.set_xlabel("batch size (decoding requests)")
    ax.set_ylabel("median step time (ms)")
    ax.set_title(f"{title}, prompt {prompt} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model", "none"))
    parser.add_argument("--k-max", type=int, default=EngineConfig.k_max)
    parser.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    parser.add_argument("--steps", type=int, default=24, help="timed decode steps per cell")
    parser.add_argument("--passes", type=int, default=8, help="passes over the grid, pooled")
    parser.add_argument("--out-dir", type=Path, default=PROFILE_DIR, help="where to write")
    args = parser.parse_args(argv)

    k_max = 0 if args.method == "none" else args.k_max
    config = EngineConfig(method=args.method, k_max=k_max, max_num_seqs=args.max_num_seqs)
    config.check_models()
    engine = LiveEngine(config)
    engine.warm_up()
    started = time.perf_counter()
    try:
        measured = measure(engine, {"grid": GRID, "held": HELD_OUT}, args.steps, args.passes)
    finally:
        engine.close()
    minutes = (time.perf_counter() - started) / 60

    grid, held = cells(measured.samples, "grid"), cells(measured.samples, "held")
    table = TableCost(**strip(grid))
    fitted = fit_linear(grid)
    models = {"table": table, "fitted": fitted}
    errors = {kind: held_out_error(model, held) for kind, model in models.items()}
    scored = strip(held)
    for group, stripped in zip(held.values(), scored.values(), strict=True):
        for cell, row in zip(group, stripped, strict=True):
            row["predicted_s"] = {kind: predicted(model, cell) for kind, model in models.items()}
    common = {
        "model": project_relative(config.model),
        "model_id": config.model_id(),
        "method": config.method,
        "k_max": config.k_max,
        "max_num_seqs": config.max_num_seqs,
        "acceptance": measured.accepted / measured.drafted if measured.drafted else 0.0,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "held_out": {"rel_rmse": errors, "cells": scored},
    }
    source = (
        f"measured on this machine by `python -m training.profile --method {args.method}` on "
        f"{time.strftime('%Y-%m-%d')}: CPU time of the engine's thread per step, "
        f"{args.passes} passes pooled, {args.steps} timed steps per decode cell"
    )
    out = args.out_dir / f"{args.method}.json"
    save_profile(out, {"kind": "table", "source": source} | common | {"cost": strip(grid)})
    save_profile(
        args.out_dir / f"{args.method}-fitted.json",
        {"kind": "fitted", "source": source + "; a linear fit to the grid's steps"}
        | common
        | {"cost": fitted.to_params()},
    )
    plot(table, args.method, out.with_suffix(".png"))
    count = sum(len(group) for group in held.values())
    print(
        f"{minutes:.1f} min; held-out relative RMSE over {count} cells: "
        f"table {errors['table']:.3f}, fitted {errors['fitted']:.3f}"
    )
    print(f"wrote {out}, {out.stem}-fitted.json and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
