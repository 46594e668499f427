"""Replaying every controller on every sample of an evaluation: the samples, the runs, and the
loop that fills them, each replay's metrics appended to a JSONL file as soon as it finishes."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from agents.registry import ControllerSpec
from envs.traces import Trace
from training.replays import Bench

EVAL_DIR = Path("runs") / "eval"
"""Where the replays' JSONL goes when there is no --json to put it beside."""


@dataclass(frozen=True)
class Sample:
    """One replay of every controller: a window of a trace, and which repeat of it."""

    window_start_s: float
    repeat: int
    workload: Trace = field(repr=False, compare=False)


@dataclass
class Entry:
    """One trace (at one load) of an evaluation: its samples and what each controller did."""

    label: str
    samples: list[Sample]
    runs: list[Run]


@dataclass
class Run:
    """One controller's replays: metrics per sample and the last sample's timeline."""

    spec: ControllerSpec
    metrics: list[dict[str, float]] = field(default_factory=list)
    timeline: dict[str, list[float]] = field(default_factory=dict)

    def mean(self, key: str) -> float:
        """The metric averaged over samples."""
        return statistics.fmean(m[key] for m in self.metrics)

    def values(self, key: str = "goodput_under_slo_tps") -> list[float]:
        """The metric per sample, in sample order."""
        return [m[key] for m in self.metrics]


def evaluate(
    bench: Bench, entries: list[Entry], *, seed: int, rotate: bool, log: Path | None = None
) -> None:
    """Replay every controller on every sample of every entry, adding metrics to the runs.

    With `rotate` (the wall clock) the controllers' order turns from sample to sample, so the
    machine's drift favours none. Each replay's metrics are also appended to `log` (JSONL) as
    soon as it finishes, so a failure in a later replay loses none of them.
    """
    for entry in entries:
        for index, sample in enumerate(entry.samples):
            shift = index % len(entry.runs) if rotate else 0
            for run in entry.runs[shift:] + entry.runs[:shift]:
                started = time.perf_counter()
                result = bench.run(run.spec, sample.workload, seed)
                metrics = (
                    result.metrics
                    | result.regime
                    | {
                        "wall_s": time.perf_counter() - started,
                        "steps": result.steps,
                    }
                )
                run.metrics.append(metrics)
                run.timeline = result.timeline
                if log is not None:
                    line = {
                        "trace": entry.label,
                        "window_start_s": sample.window_start_s,
                        "repeat": sample.repeat,
                        "controller": run.spec.name,
                        "metrics": metrics,
                    }
                    with log.open("a") as out:
                        out.write(json.dumps(line, default=str) + "\n")
                print(
                    f"  {entry.label} window {sample.window_start_s:g} s"
                    + (f" repeat {sample.repeat}" if sample.repeat > 1 else "")
                    + f" {run.spec.name}: goodput {metrics['goodput_tps']:7.0f} tok/s  "
                    f"under SLO {metrics['goodput_under_slo_tps']:7.0f}  "
                    f"({metrics['wall_s']:.1f} s, {result.steps} steps)",
                    flush=True,
                )


def replays_path(json_path: Path | None) -> Path:
    """The JSONL of every replay's metrics: beside the --json file, or a new one in runs/eval/."""
    if json_path is not None:
        return json_path.with_suffix(".replays.jsonl")
    return EVAL_DIR / f"evaluate-{time.strftime('%Y%m%d-%H%M%S')}.replays.jsonl"
