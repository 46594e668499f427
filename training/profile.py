"""Measure the live engine's step time and write its cost profiles (`table` and `fitted`).

    python -m training.profile [--method ngram|draft_model|none] [--steps 12]

Decode cells: for every batch size and prompt length a batch is prefilled, then decoded for
a few steps at every k (the first steps after a change of k are dropped: the drafting budget
takes effect one step late). Prefill cells: a batch decodes at k = 0 while prompts of a given
total length arrive; each such step is timed against the decode-only steps around it, and
the prompts are dropped again so the batch keeps its size. Each cell keeps the median
measured (wall) seconds, the drafts actually verified per request and the mean context read.

Held-out cells, at batch sizes, prompt lengths and prefill sizes the grid does not hold, are
measured the same way and never fitted: both kinds are scored on them (relative RMSE of the
cell medians), and the scores are written into the profiles.

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
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from agents.cost import LinearCost, StepLoad, TableCost
from agents.cost.load import load_of
from agents.cost.profile import PROFILE_DIR, save_profile
from envs.traces import PromptFactory
from serving.config import EngineConfig, project_relative
from serving.live_engine import LiveEngine

SETTLE_STEPS = 2
"""Steps dropped after k changes: their drafts were proposed under the previous budget."""
PREFILL_REPEATS = 5
"""Timed prefill steps per prefill cell."""
GRID = {
    "batches": (1, 2, 4, 8, 16, 32),
    "prompts": (32, 192, 448),
    "prefill_batches": (0, 1, 8, 32),
    "prefill_tokens": (16, 128, 512, 1024, 2048),
}
HELD_OUT = {
    "batches": (3, 6, 12, 24),
    "prompts": (96, 320),
    "prefill_batches": (4, 16),
    "prefill_tokens": (64, 768),
}


class Sampler:
    """Times steps of one engine and keeps each step's load with its measured seconds."""

    def __init__(self, engine: LiveEngine, factory: PromptFactory, steps: int, bar) -> None:
        self.engine = engine
        self.factory = factory
        self.steps = steps
        self.bar = bar
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

    def decode_cells(self, batch: int, prompt: int) -> list[dict]:
        """Every k's decode steps of one batch of `batch` requests with `prompt`-token
        prompts; one cell per k."""
        engine = self.engine
        per_k = self.steps + SETTLE_STEPS
        output = min(per_k * (engine.k_max + 1) ** 2 + 8, engine.config.max_model_len - prompt)
        for _ in range(batch):
            self.add(prompt, output)
        while True:  # prefill the batch first
            record = engine.step(0)
            if record.prefill_tokens == 0 or not engine.has_unfinished():
                break
        cells = []
        for k in range(engine.k_max + 1):
            samples = []
            for step in range(per_k):
                if not engine.has_unfinished():
                    break
                record = engine.step(k)
                self.drafted += record.drafted
                self.accepted += record.accepted
                load = load_of(record.requests)
                if step >= SETTLE_STEPS and load.num_decode == batch and not load.prefill:
                    samples.append((load, record.wall_time))
            if samples:
                cells.append(decode_cell(batch, k, prompt, samples))
            self.bar.update(1)
        engine.reset()
        return cells

    def prefill_cells(self, batch: int, sizes: tuple[int, ...]) -> list[dict]:
        """Steps that compute `size` prompt tokens beside `batch` decoding requests (k = 0),
        each against the median decode-only step around it; one cell per size."""
        engine = self.engine
        longest = engine.config.max_model_len - 8
        for _ in range(batch):
            self.add(128, engine.config.max_model_len - 128)
        while engine.has_unfinished():
            if engine.step(0).prefill_tokens == 0:
                break
        cells = []
        for size in sizes:
            samples = []
            for _ in range(PREFILL_REPEATS):
                base = [engine.step(0).wall_time for _ in range(3)] if batch else [0.0]
                ids = [self.add(length, 4) for length in _chunks(size, longest)]
                record = engine.step(0)
                added = record.wall_time - statistics.median(base)
                samples.append((load_of(record.requests), added, record.wall_time))
                engine.abort(ids)
                while batch == 0 and engine.has_unfinished():
                    engine.step(0)  # let the aborted prompts leave, untimed
            cells.append(prefill_cell(batch, samples))
            self.bar.update(1)
        engine.reset()
        return cells


def _chunks(total: int, longest: int) -> list[int]:
    """Prompt lengths summing to `total`, none longer than `longest`."""
    count = math.ceil(total / longest)
    return [total // count + (1 if i < total % count else 0) for i in range(count)]


def decode_cell(batch: int, k: int, prompt: int, samples: list[tuple[StepLoad, float]]) -> dict:
    """A decode cell: the median seconds, mean drafts verified per request and mean context."""
    return {
        "batch": batch,
        "k": k,
        "context": prompt,
        "verified": statistics.fmean(load.verified_tokens / batch for load, _ in samples),
        "mean_context": statistics.fmean(load.mean_context for load, _ in samples),
        "step_time_s": statistics.median(seconds for _, seconds in samples),
        "samples": len(samples),
        "loads": samples,
    }


def prefill_cell(batch: int, samples: list[tuple[StepLoad, float, float]]) -> dict:
    """A prefill cell: the median seconds prompt tokens added to a decode-only step (for a
    batch of 0, the whole step) at the prompt tokens the steps actually computed, and the
    median whole step."""
    return {
        "batch": batch,
        "prefill_tokens": statistics.median(load.prefill_tokens for load, _, _ in samples),
        "added_s": statistics.median(added for _, added, _ in samples),
        "step_time_s": statistics.median(whole for _, _, whole in samples),
        "samples": len(samples),
        "loads": [(load, whole) for load, _, whole in samples],
        "added": [(load, added) for load, added, _ in samples],
    }


def measure(engine: LiveEngine, grid: dict, steps: int, desc: str) -> tuple[dict, float]:
    """Decode and prefill cells over one grid, and the acceptance rate of its decode steps."""
    batches = [b for b in grid["batches"] if b <= engine.config.max_num_seqs]
    prefill_batches = [b for b in grid["prefill_batches"] if b <= engine.config.max_num_seqs]
    total = len(batches) * len(grid["prompts"]) * (engine.k_max + 1)
    total += len(prefill_batches) * len(grid["prefill_tokens"])
    factory = PromptFactory(engine.config.model, seed=0)
    with tqdm(total=total, desc=desc, unit="cell") as bar:
        sampler = Sampler(engine, factory, steps, bar)
        decode = [c for p in grid["prompts"] for b in batches for c in sampler.decode_cells(b, p)]
        prefill = [
            c for b in prefill_batches for c in sampler.prefill_cells(b, grid["prefill_tokens"])
        ]
    acceptance = sampler.accepted / sampler.drafted if sampler.drafted else 0.0
    return {"decode": decode, "prefill": prefill}, acceptance


def held_out_error(model, cells: dict[str, list[dict]]) -> float:
    """Relative RMSE of a cost model against held-out cells: per cell, the median of its
    predictions for the steps' loads over the median measured step."""
    errors = [
        statistics.median(model.seconds(load) for load, _ in cell["loads"]) / cell["step_time_s"]
        - 1
        for group in cells.values()
        for cell in group
    ]
    return math.sqrt(statistics.fmean(e * e for e in errors))


def strip(cells: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The cells without their per-step loads, as a profile stores them."""
    return {
        kind: [{k: v for k, v in c.items() if k not in ("loads", "added")} for c in group]
        for kind, group in cells.items()
    }


def fit_linear(cells: dict[str, list[dict]]) -> LinearCost:
    """The linear model fitted to every timed step of the grid.

    A prefill step's time is taken as the seconds its prompt added to the decode-only steps
    around it plus the decode part as fitted to the decode steps alone, so the machine's drift
    between cells does not enter the prompt coefficient.
    """
    decode = [(load, seconds) for cell in cells["decode"] for load, seconds in cell["loads"]]
    base = LinearCost.fit(decode)
    prefill = [
        (load, added + (base.seconds(replace(load, prefill=())) if load.num_decode else 0.0))
        for cell in cells["prefill"]
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
    parser.add_argument("--steps", type=int, default=12, help="timed decode steps per cell")
    parser.add_argument("--out-dir", type=Path, default=PROFILE_DIR, help="where to write")
    args = parser.parse_args(argv)

    k_max = 0 if args.method == "none" else args.k_max
    config = EngineConfig(method=args.method, k_max=k_max, max_num_seqs=args.max_num_seqs)
    config.check_models()
    engine = LiveEngine(config)
    engine.warm_up()
    started = time.perf_counter()
    try:
        grid, acceptance = measure(engine, GRID, args.steps, f"profiling {args.method}")
        held, _ = measure(engine, HELD_OUT, args.steps, "held-out cells")
    finally:
        engine.close()
    minutes = (time.perf_counter() - started) / 60

    table = TableCost(**strip(grid))
    fitted = fit_linear(grid)
    errors = {"table": held_out_error(table, held), "fitted": held_out_error(fitted, held)}
    cells = len(held["decode"]) + len(held["prefill"])
    common = {
        "model": project_relative(config.model),
        "model_id": config.model_id(),
        "method": config.method,
        "k_max": config.k_max,
        "max_num_seqs": config.max_num_seqs,
        "acceptance": acceptance,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "held_out_rel_rmse": errors | {"cells": cells},
    }
    source = (
        f"measured on this machine (wall clock) by `python -m training.profile --method "
        f"{args.method}` on {time.strftime('%Y-%m-%d')}, {args.steps} timed steps per decode "
        f"cell, {PREFILL_REPEATS} per prefill cell"
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
    print(
        f"{minutes:.1f} min; held-out relative RMSE over {cells} cells: "
        f"table {errors['table']:.3f}, fitted {errors['fitted']:.3f}"
    )
    print(f"wrote {out}, {out.with_name(out.stem + '-fitted.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
