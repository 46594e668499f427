"""Profile the live engine's step time over batch size x k x context, and fit a model of it.

    python -m training.profile [--method ngram] [--batch-sizes 1,4,8,16,32] [--contexts 64,256]

For every batch size and prompt length, a batch of requests is prefilled, then decoded for a
few steps at every k (the first steps after a change of k are dropped: the drafting budget
takes effect one step late). Every step's time, k, batch size, mean context and prefill
tokens is a sample; the medians per cell and a fitted `StepTimeModel` are written to
`checkpoints/profiles/<method>.json`, with a PNG of step time against batch size, one line per
k. Controllers load the profile; one made for another model or method is refused.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from agents.step_time import Profile, StepTimeModel
from envs.traces import PromptFactory
from serving.config import EngineConfig, default_profile_path, project_relative
from serving.live_engine import LiveEngine

SETTLE_STEPS = 2
"""Steps dropped after k changes: their drafts were proposed under the previous budget."""


def measure(engine: LiveEngine, factory: PromptFactory, batch_sizes, contexts, steps, bar):
    """Run the grid; return every decode and prefill step as a sample dict."""
    samples = []
    for context in contexts:
        for batch in batch_sizes:
            output = (steps + SETTLE_STEPS) * (engine.k_max + 1) * (engine.k_max + 1) + 8
            output = min(output, engine.config.max_model_len - context)
            for i in range(batch):
                prompt = factory.make(context, style="source").token_ids
                engine.add_request(f"p{context}-{batch}-{i}", prompt, output)
            for k in range(engine.k_max + 1):
                for step in range(steps + SETTLE_STEPS):
                    if not engine.has_unfinished():
                        break
                    record = engine.step(k)
                    decoding = [r for r in record.requests if r.prefill_tokens == 0]
                    if record.prefill_tokens == 0 and step < SETTLE_STEPS:
                        continue
                    samples.append(
                        {
                            "batch": len(decoding),
                            "k": k,
                            "context": context,
                            "mean_context": context
                            + statistics.fmean(r.output_tokens for r in decoding)
                            if decoding
                            else 0.0,
                            "prefill_tokens": record.prefill_tokens,
                            "step_time_s": record.step_time,
                            "drafted": record.drafted,
                            "accepted": record.accepted,
                        }
                    )
                bar.update(1)
            engine.reset()
    return samples


def medians(samples: list[dict]) -> list[dict]:
    """Median decode-step time (and acceptance) per (batch, k, context) cell."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for s in samples:
        if s["prefill_tokens"] == 0 and s["batch"] > 0:
            cells[(s["batch"], s["k"], s["context"])].append(s)
    rows = []
    for (batch, k, context), group in sorted(cells.items()):
        drafted = sum(s["drafted"] for s in group)
        rows.append(
            {
                "batch": batch,
                "k": k,
                "context": context,
                "prefill_tokens": 0,
                "step_time_s": statistics.median(s["step_time_s"] for s in group),
                "samples": len(group),
                "acceptance": sum(s["accepted"] for s in group) / drafted if drafted else None,
            }
        )
    return rows


def plot(profile: Profile, path: Path) -> None:
    """Step time against batch size, one line per k, at the shortest context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    context = min(row["context"] for row in profile.medians)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k in range(profile.k_max + 1):
        rows = [r for r in profile.medians if r["k"] == k and r["context"] == context]
        ax.plot(
            [r["batch"] for r in rows], [r["step_time_s"] * 1e3 for r in rows], "o-", label=f"k={k}"
        )
    ax.set_xlabel("batch size (decoding requests)")
    ax.set_ylabel("median step time (ms)")
    ax.set_title(f"{profile.method}, prompt {context} tokens")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="ngram", choices=("ngram", "draft_model"))
    parser.add_argument("--k-max", type=int, default=EngineConfig.k_max)
    parser.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--contexts", default="64,256", help="prompt lengths in tokens")
    parser.add_argument("--steps", type=int, default=8, help="timed decode steps per cell")
    parser.add_argument("--out", type=Path, default=None, help="profile JSON path")
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    if max(batch_sizes) > args.max_num_seqs:
        parser.error(f"batch size {max(batch_sizes)} exceeds --max-num-seqs={args.max_num_seqs}")
    config = EngineConfig(method=args.method, k_max=args.k_max, max_num_seqs=args.max_num_seqs)
    out = args.out or default_profile_path(args.method)
    out.parent.mkdir(parents=True, exist_ok=True)

    engine = LiveEngine(config)
    factory = PromptFactory(config.model, seed=0)
    cells = len(contexts) * len(batch_sizes) * (config.k_max + 1)
    with tqdm(total=cells, desc=f"profiling {args.method}", unit="cell") as bar:
        samples = measure(engine, factory, batch_sizes, contexts, args.steps, bar)
    engine.close()

    fit_samples = [
        (s["batch"], s["k"], s["mean_context"], s["prefill_tokens"], s["step_time_s"])
        for s in samples
    ]
    model = StepTimeModel.fit(fit_samples)
    drafted = sum(s["drafted"] for s in samples)
    profile = Profile(
        model=project_relative(config.model),
        model_id=config.model_id(),
        method=config.method,
        k_max=config.k_max,
        max_num_seqs=config.max_num_seqs,
        machine={
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        medians=medians(samples),
        step_time=model,
        acceptance=sum(s["accepted"] for s in samples) / drafted if drafted else 0.0,
    )
    profile.save(out)
    plot(profile, out.with_suffix(".png"))
    print(f"{len(samples)} steps measured; fit relative RMSE {model.rel_rmse:.3f}")
    print(f"mean acceptance {profile.acceptance:.3f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
