"""Fit the draft-slot calibrator of a speculation method on training windows, and ship it.

    python -m training.calibrate --method ngram --profile a100-llama3-8b

The acceptance tables of windows from the training regions of the steady-state suites'
traces (azure-conv and poisson, before their held-back regions) are recorded on the live
engine (or read from the cache), every judged draft slot is a sample (its features, its
position, whether the target accepted it given the slots before it were), and the logistic
calibrator (`agents.confidence.calibrator`) is fitted to them by IRLS. It is written to
checkpoints/calibration/<method>.json with its provenance, where every engine of that method
loads it. A GPU profile only sets the engine limits the tables are recorded under (256
running requests records a window of a thousand requests several times faster than 32); the
tables, and so the fit, do not depend on them. `benchmarks.confidence` measures the fit on
the held-back windows.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agents.confidence import SLOT_FEATURES
from agents.confidence.calibrator import Calibrator
from agents.confidence.metrics import auc, calibration_error
from agents.paths import CALIBRATION_DIR
from envs.build import resolve
from envs.replayer import plan_requests
from envs.traces import PromptFactory, apply_replay, load_trace
from envs.twin.record import TableSource
from envs.twin.tables import AcceptanceTable
from serving.config import project_relative
from training.cli import add_env_flags, read_env_flags
from training.suites import REGIONS

TRAINING_TRACES = ("azure-conv", "poisson")
"""Whose training regions the calibrator is fitted on (the steady-state suites' traces)."""


def training_tables(
    source: TableSource, env, windows: int, window_s: float, seed: int
) -> list[tuple[str, float, AcceptanceTable]]:
    """The acceptance tables of `windows` windows spread over each training region."""
    prompts = PromptFactory(env.engine.model, weights=env.prompt_styles)
    found = []
    for name in TRAINING_TRACES:
        region = REGIONS[name]
        trace = load_trace(region.trace)
        room = region.split_s - window_s
        for i in range(windows):
            start = round(i * room / max(windows - 1, 1), 3)
            workload = apply_replay(trace, replace(env, window_s=window_s).replay_options(start))
            plan = plan_requests(workload, prompts, (0.0,), np.random.default_rng(seed))
            found.append((name, start, source.table(plan, f"{name} training window {start} s")))
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_env_flags(
        p,
        ("method", "k_max", "profile", "max_input_tokens", "max_output_tokens"),
        defaults={"max_output_tokens": 256},
    )
    p.add_argument("--windows", type=int, default=4, help="windows per training region")
    p.add_argument("--window-s", type=float, default=120.0, help="trace seconds a window")
    p.add_argument("--seed", type=int, default=0, help="seed of the windows' prompts")
    p.add_argument(
        "--out", type=Path, default=None, help="default: checkpoints/calibration/<method>.json"
    )
    args = p.parse_args(argv)
    try:
        env, _ = resolve(read_env_flags(args))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    method = env.engine.method
    out = args.out or CALIBRATION_DIR / f"{method}.json"
    started = time.perf_counter()
    source = TableSource(env.engine)
    try:
        tables = training_tables(source, env, args.windows, args.window_s, args.seed)
    finally:
        source.close()
    elapsed = time.perf_counter() - started
    print(f"{len(tables)} tables ({source.recorded} recorded) in {elapsed:.0f} s")
    samples = [table.slot_samples() for _, _, table in tables]
    x = np.concatenate([s.features for s in samples])
    slot = np.concatenate([s.slot for s in samples])
    label = np.concatenate([s.accepted for s in samples])
    names = SLOT_FEATURES[method]
    if x.shape[1] != len(names):
        print(
            f"error: the tables hold {x.shape[1]} slot features, {method} has {len(names)}: "
            "they were recorded without them",
            file=sys.stderr,
        )
        return 1
    calibrator = Calibrator.fit(method, names, x, slot, label, env.engine.k_max)
    print(report(calibrator, x, slot, label))
    windows = [{"trace": n, "start_s": s, "requests": len(t.request_ids)} for n, s, t in tables]
    command = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    calibrator.save(
        out,
        fitted_on={
            "windows": windows,
            "window_s": args.window_s,
            "slots": len(label),
            "model_id": source.model_id,
        },
        command=f"python -m training.calibrate {command}",
    )
    print(f"calibrator written to {project_relative(out)}")
    return 0


def report(calibrator: Calibrator, x: np.ndarray, slot: np.ndarray, label: np.ndarray) -> str:
    """The fit on its own samples: per position, samples, accepted share, AUC and ECE."""
    prob = calibrator.slot_probabilities(x, slot)
    lines = [f"{len(label)} judged slots, {label.mean():.3f} accepted (on the training windows)"]
    for j in range(calibrator.k_max):
        mask = slot == j
        lines.append(
            f"  slot {j}: {mask.sum():6d} samples, accepted {label[mask].mean():.3f}, "
            f"AUC {auc(prob[mask], label[mask]):.3f}, "
            f"ECE {calibration_error(prob[mask], label[mask]):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
