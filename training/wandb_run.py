"""Weights & Biases for a training run: offline by default, everything SB3 logs goes there too."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.logger import KVWriter


class WandbRun:
    """One W&B run in the run folder, fed by SB3's logger and the training callbacks."""

    def __init__(self, cfg: Any, run_dir: Path, job_type: str = "train") -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb_project,
            mode=cfg.wandb_mode,
            dir=str(run_dir),
            name=run_dir.name,
            job_type=job_type,
            config=dataclasses.asdict(cfg),
        )

    def writer(self) -> KVWriter:
        """An SB3 logger output that forwards every numeric record to this run."""
        return _WandbWriter(self)

    def log(self, values: dict[str, Any], step: int) -> None:
        """Log scalars at an environment-step count."""
        self.run.log(values, step=step)

    def histogram(self, key: str, values: np.ndarray, step: int) -> None:
        """Log a histogram, e.g. of the k chosen in a rollout."""
        self.run.log({key: self._wandb.Histogram(values.tolist())}, step=step)

    def finish(self, policy_dir: Path, summary: dict[str, Any]) -> None:
        """Attach the exported policy as an artifact, record the summary, close the run."""
        artifact = self._wandb.Artifact(f"policy-{self.run.id}", type="model")
        artifact.add_dir(str(policy_dir))
        self.run.log_artifact(artifact)
        self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, dict)})
        self.run.finish()


class _WandbWriter(KVWriter):
    def __init__(self, tracker: WandbRun) -> None:
        self.tracker = tracker

    def write(self, key_values: dict[str, Any], key_excluded: dict, step: int = 0) -> None:
        numbers = {
            k: float(v)
            for k, v in key_values.items()
            if isinstance(v, int | float | np.floating | np.integer)
        }
        if numbers:
            self.tracker.log(numbers, step=step)

    def close(self) -> None:
        """The run is closed by WandbRun.finish."""
