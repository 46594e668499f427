"""How well each draft's confidence predicts its acceptance, and what computing it costs.

    python -m benchmarks.confidence --method ngram --suite a100-steady --plot out.png
    python -m benchmarks.confidence --method ngram --cost

On the held-back windows of a steady-state suite (their acceptance tables, recorded on the
live engine or read from the cache), every draft slot the target judged (slot j of a
proposal whose slots before j were accepted) is scored three ways:

- `calibrated`: the shipped calibrator of the method (`checkpoints/calibration/`, fitted on
  the training windows by `training.calibrate`), as the engine scores drafts;
- `history`: the acceptance estimate the per-request controllers use today, each request's
  moving average of accepted over proposed drafts at its earlier positions (weight 0.2, from
  the goodput controller's prior 0.6), the same for every slot;
- `raw`: the method's first feature alone (ngram: the longest earlier match of the suffix;
  draft model: the log-odds of its token).

It prints, per slot position, the samples, the accepted share, and each score's AUC and
expected calibration error (ten equal bins; a score that is not a probability has none), and
the AUC for "at least one draft accepted" (slot 0); `--plot` draws the calibrated
reliability per position. `--cost` times what the live engine computes per step at 256
running requests with 1024-token contexts (the slot features from the token ids, and the
calibration), beside the preset's step time at that batch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.confidence import SLOT_FEATURES, shipped_calibrator
from agents.confidence.metrics import auc, calibration_error, reliability
from agents.confidence.ngram import Contexts
from agents.cost import StepLoad, load_profile
from envs.build import resolve
from envs.replayer import plan_requests
from envs.traces import PromptFactory, apply_replay, load_trace
from envs.twin.record import TableSource
from envs.twin.tables import AcceptanceTable
from training.cli import add_env_flags, read_env_flags
from training.suites import REGIONS, suite

EMA = 0.2
"""Weight of the newest sample in the history estimate (the goodput controller's)."""
PRIOR = 0.6
"""The history estimate before a request has drafted (the goodput controller's prior)."""


def held_back_tables(source: TableSource, env, name: str, seed: int) -> list[AcceptanceTable]:
    """The tables of the suite's windows (one per window: every load of a window shares it)."""
    prompts = PromptFactory(env.engine.model, weights=env.prompt_styles)
    tables, seen = [], set()
    for entry in suite(name).entries:
        key = (entry.region, entry.window_s, entry.max_output_tokens)
        if key in seen:
            continue
        seen.add(key)
        trace = load_trace(REGIONS[entry.region].trace)
        options = replace(env, window_s=entry.window_s, max_output_tokens=entry.max_output_tokens)
        for start in entry.starts([r.arrival_s for r in trace.requests]):
            workload = apply_replay(trace, options.replay_options(start))
            plan = plan_requests(workload, prompts, (0.0,), np.random.default_rng(seed))
            tables.append(source.table(plan, f"{entry.region} window {start} s"))
    return tables


def history_scores(table: AcceptanceTable) -> np.ndarray:
    """Per flat position, the request's moving average of accepted over proposed drafts at
    its earlier positions (what the per-request controllers estimate), before the position."""
    scores = np.empty(len(table.proposed))
    start = 0
    for length in table.output_len.tolist():
        alpha = PRIOR
        for p in range(start, start + length):
            scores[p] = alpha
            if table.proposed[p]:
                alpha += EMA * (table.hits[p] / table.proposed[p] - alpha)
        start += length
    return scores


def evaluate(tables: list[AcceptanceTable], method: str, k_max: int) -> dict:
    """Per slot position: samples, accepted share, and each score's AUC and ECE."""
    calibrator = shipped_calibrator(method, k_max)
    if calibrator is None:
        raise ValueError(f"no calibrator for {method}: run python -m training.calibrate first")
    features, slots, labels, history = [], [], [], []
    for table in tables:
        samples = table.slot_samples()
        features.append(samples.features)
        slots.append(samples.slot)
        labels.append(samples.accepted)
        history.append(history_scores(table)[samples.row])
    x, slot, label = np.concatenate(features), np.concatenate(slots), np.concatenate(labels)
    scores = {
        "calibrated": calibrator.slot_probabilities(x, slot),
        "history": np.concatenate(history),
        "raw": x[:, 0],
    }
    found: dict = {"samples": len(label), "positions": []}
    for j in range(k_max):
        mask = slot == j
        row = {"slot": j, "samples": int(mask.sum()), "accepted": float(label[mask].mean())}
        for name, score in scores.items():
            row[f"{name}_auc"] = auc(score[mask], label[mask])
            if name != "raw":
                row[f"{name}_ece"] = calibration_error(score[mask], label[mask])
        row["reliability"] = reliability(scores["calibrated"][mask], label[mask])
        found["positions"].append(row)
    return found


def format_evaluation(found: dict) -> str:
    """The evaluation as a table, slot 0 first ("at least one draft accepted")."""
    head = (
        f"{'slot':>4} {'samples':>8} {'accepted':>8} {'AUC cal':>8} {'ECE cal':>8} "
        f"{'AUC hist':>8} {'ECE hist':>8} {'AUC raw':>8}"
    )
    lines = [head, "-" * len(head)]
    for row in found["positions"]:
        lines.append(
            f"{row['slot']:>4} {row['samples']:>8} {row['accepted']:8.3f} "
            f"{row['calibrated_auc']:8.3f} {row['calibrated_ece']:8.3f} "
            f"{row['history_auc']:8.3f} {row['history_ece']:8.3f} {row['raw_auc']:8.3f}"
        )
    lines.append(
        "slot j: judged if the drafts before it were accepted; AUC of slot 0 is that of "
        "'at least one draft accepted'"
    )
    return "\n".join(lines)


def plot(found: dict, method: str, path: Path) -> None:
    """The calibrated confidence's reliability, one line per slot position."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    for row in found["positions"]:
        bins = row["reliability"]
        ax.plot(
            [b["predicted"] for b in bins],
            [b["observed"] for b in bins],
            "-o",
            ms=3,
            label=f"slot {row['slot']} (AUC {row['calibrated_auc']:.2f})",
        )
    ax.set_xlabel("calibrated P(accepted | earlier slots accepted)")
    ax.set_ylabel("accepted share")
    ax.set_title(f"{method}: held-back windows", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cost(method: str, k_max: int, profile: str, requests: int = 256, context: int = 1024) -> dict:
    """Per-step seconds of scoring `requests` proposals of contexts of `context` tokens, as the
    live engine does each step (the slot features from the token ids, each request's new
    tokens appended to its row, then the calibration), and the share of the profile's
    shortest step at that batch (no drafts verified)."""
    rng = np.random.default_rng(0)
    # Conversation-like token streams: a vocabulary of 2000 with repeated passages.
    base = rng.integers(0, 2000, context + 1)
    streams = []
    for _ in range(requests):
        tokens = base.copy()
        cut = int(rng.integers(context // 4, context - 16))
        tokens[cut:] = rng.integers(0, 2000, context + 1 - cut)
        streams.append(tokens.tolist())  # the engine holds plain lists of ids
    contexts = Contexts(k_max, 2, 4, width=context + 8)
    calibrator = shipped_calibrator(method, k_max)
    # The first call sees every context whole and compiles; the timed one, a step later,
    # appends one token per request, as an engine step does.
    contexts.score([(f"r{i}", s[:context], s[100:104]) for i, s in enumerate(streams)])
    started = time.perf_counter()
    rows = contexts.score([(f"r{i}", s, s[100:104]) for i, s in enumerate(streams)])
    if calibrator is not None:
        calibrator.probabilities(rows)
    seconds = time.perf_counter() - started
    step = load_profile(profile, method=method).cost.seconds(StepLoad.uniform(requests, 0, context))
    return {"requests": requests, "context": context, "seconds": seconds, "step_s": step}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_env_flags(p, ("method", "k_max", "max_input_tokens"))
    p.add_argument("--suite", default="a100-steady", help="whose held-back windows to score")
    p.add_argument("--seed", type=int, default=0, help="seed of the windows' prompts")
    p.add_argument("--cost", action="store_true", help="time the per-step scoring instead")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        chosen = suite(args.suite)
        # The suite's engine limits: its tables are recorded (and cached) as its runs record them.
        env, _ = resolve(replace(read_env_flags(args), profile=chosen.profile))
        if env.engine.method not in SLOT_FEATURES:
            raise ValueError(f"no slot features for method {env.engine.method}")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    method, k_max = env.engine.method, env.engine.k_max
    if args.cost:
        profiles = [s.profile for s in (suite("a100-steady"), suite("h100-steady"))]
        for profile in profiles:
            found = cost(method, k_max, profile)
            print(
                f"{method}: scoring {found['requests']} proposals of {found['context']}-token "
                f"contexts takes {found['seconds'] * 1e3:.2f} ms a step, "
                f"{found['seconds'] / found['step_s']:.1%} of a {profile} step at that batch "
                f"verifying nothing ({found['step_s'] * 1e3:.1f} ms)"
            )
        return 0
    source = TableSource(env.engine)
    try:
        tables = held_back_tables(source, env, args.suite, args.seed)
    finally:
        source.close()
    found = evaluate(tables, method, k_max)
    print(
        f"{method}: {found['samples']} judged draft slots of {len(tables)} held-back windows "
        f"of {args.suite} (tables recorded on the live engine; {source.recorded} new)"
    )
    print(format_evaluation(found))
    if args.plot:
        plot(found, method, args.plot)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
