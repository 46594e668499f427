"""Callbacks of `training.train_ppo`: episode metrics, and evaluation against the goodput
controller on a held-back trace window."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.cost import Profile
from agents.features import SCHEMA_VERSION, feature_names
from agents.registry import parse_controller
from envs.config import EnvConfig
from envs.traces import Trace
from training.export import export_policy
from training.ratio import format_ratio, ratio
from training.replays import Bench
from training.wandb_run import WandbRun

EPISODE_KEYS = (
    "goodput_tps",
    "goodput_under_slo_tps",
    "slo_attainment",
    "ttft_p50_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p99_s",
    "mean_k",
)


class EpisodeMetricsCallback(BaseCallback):
    """Logs every finished episode's metrics, the k chosen per rollout, and the range of
    observations seen (the exported policy's in-distribution range)."""

    def __init__(self, tracker: WandbRun | None) -> None:
        super().__init__()
        self.tracker = tracker
        self.obs_low: np.ndarray | None = None
        self.obs_high: np.ndarray | None = None
        self._actions: list[np.ndarray] = []

    def _on_step(self) -> bool:
        obs = self.locals["new_obs"]
        low, high = obs.min(axis=0), obs.max(axis=0)
        self.obs_low = low if self.obs_low is None else np.minimum(self.obs_low, low)
        self.obs_high = high if self.obs_high is None else np.maximum(self.obs_high, high)
        # The k the engine ran, which differs from the action when actions are offsets.
        self._actions.append(np.array([info["record"].k for info in self.locals["infos"]]))
        for info in self.locals["infos"]:
            metrics = info.get("episode_metrics")
            if metrics:
                for key in EPISODE_KEYS:
                    self.logger.record_mean(f"episode/{key}", metrics[key])
        return True

    def _on_rollout_end(self) -> None:
        if not self._actions:
            return
        actions = np.concatenate(self._actions)
        self._actions.clear()
        self.logger.record("rollout/mean_k", float(actions.mean()))
        if self.tracker is not None:
            self.tracker.histogram("rollout/k", actions, self.num_timesteps)


class CompareCallback(BaseCallback):
    """Every `eval_every` steps, replays the held-back window with the current policy
    (exported, run in numpy inside the scheduler hook, as serving runs it) and with the
    analytic goodput controller, on one evaluation engine; logs the policy's goodput and
    goodput under SLO relative to the controller's and keeps the best model.

    On the model clock one replay each says it all (replays repeat to the token); on the wall
    clock each controller replays the window `eval_repeats` times, the two alternating, and
    the metrics are averaged. The best model is the one with the best ratio of the policy's
    mean goodput under SLO to the controller's in the same evaluation, so a replay the machine
    happened to run fast, which lifts both, does not pick it."""

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        env: EnvConfig,
        workload: Trace,
        profile: Profile,
        metrics: EpisodeMetricsCallback,
        tracker: WandbRun | None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.run_dir = run_dir
        self.env = env
        self.workload = workload
        self.profile = profile
        self.metrics = metrics
        self.tracker = tracker
        self.best: dict[str, float] | None = None
        self._bench: Bench | None = None
        self._last_eval = 0
        self._replays = 0

    def _on_step(self) -> bool:
        every = self.cfg.eval_every
        if every and self.num_timesteps - self._last_eval >= every:
            self.evaluate_now(self.model)
        return True

    def export(self, model, out_dir: Path) -> Path:
        """Export `model` as the pickle-free artifact serving loads."""
        engine = self.env.engine
        return export_policy(
            model,
            out_dir,
            feature_names=feature_names(self.env.feature_window),
            schema_version=SCHEMA_VERSION,
            k_max=engine.k_max,
            engine=engine.as_dict() | {"model_id": engine.model_id()},
            train_config=self.cfg.record(),
            obs_low=self.metrics.obs_low,
            obs_high=self.metrics.obs_high,
            action_mode=self.cfg.action_mode,
            offset_max=self.cfg.residual_offsets,
        )

    def evaluate_now(self, model) -> dict[str, float]:
        """Replay the held-back window with the policy and the goodput controller."""
        self._last_eval = self.num_timesteps
        policy_dir = self.export(model, self.run_dir / "eval_policy")
        k_max = self.env.engine.k_max
        specs = {
            "policy": parse_controller(f"ppo:{policy_dir}", k_max),
            "goodput": parse_controller("goodput", k_max),
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in specs}
        order = list(specs)
        repeats = self.cfg.eval_repeats if self.env.clock == "wall" else 1
        for _ in range(repeats):
            self._replays += 1
            # Alternate who goes first, so drift of the machine's speed hits both alike.
            for name in order if self._replays % 2 else order[::-1]:
                runs[name].append(self._replay(specs[name]))
        policy, goodput = (
            {key: float(np.mean([m[key] for m in runs[name]])) for key in runs[name][0]}
            for name in ("policy", "goodput")
        )
        row = comparison(self.num_timesteps, policy, goodput)
        for key, value in row.items():
            # An undefined ratio is not logged as a number; eval.jsonl says why.
            if key not in ("timesteps", "undefined") and value is not None:
                self.logger.record(f"eval/{key}", value)
        self.logger.dump(self.num_timesteps)
        with (self.run_dir / "eval.jsonl").open("a") as log:
            log.write(json.dumps(row) + "\n")
        if is_better(row, self.best):
            self.best = row
            best_dir = self.run_dir / "best"
            best_dir.mkdir(exist_ok=True)
            model.save(best_dir / "best_model.zip")
            shutil.copytree(policy_dir, best_dir / "policy", dirs_exist_ok=True)
        print(
            f"eval @ {self.num_timesteps}: policy {row['policy_goodput_under_slo_tps']:.0f} "
            f"tok/s under SLO vs goodput controller "
            f"{row['goodput_ctrl_goodput_under_slo_tps']:.0f} "
            f"(x{format_ratio(row['goodput_under_slo_ratio'], 0)}), "
            f"mean k {row['policy_mean_k']:.2f}",
            flush=True,
        )
        return row

    def close(self) -> None:
        """Shut the evaluation engine down."""
        if self._bench is not None:
            self._bench.close()
            self._bench = None

    def _replay(self, spec) -> dict[str, float]:
        if self._bench is None:
            self._bench = Bench(self.env, self.profile)
        return self._bench.run(spec, self.workload, self.cfg.seed).metrics


def comparison(timesteps: int, policy: dict[str, float], goodput: dict[str, float]) -> dict:
    """One evaluation's row: the policy's and the goodput controller's mean metrics and ratios.

    A ratio whose reference, the goodput controller's, is 0 is None, and "undefined" maps
    it to the reason.
    """
    row = {
        "timesteps": timesteps,
        "policy_goodput_tps": policy["goodput_tps"],
        "policy_goodput_under_slo_tps": policy["goodput_under_slo_tps"],
        "policy_slo_attainment": policy["slo_attainment"],
        "policy_mean_k": policy["mean_k"],
        "goodput_ctrl_goodput_tps": goodput["goodput_tps"],
        "goodput_ctrl_goodput_under_slo_tps": goodput["goodput_under_slo_tps"],
    }
    undefined = {}
    for column, key, what in (
        ("goodput_ratio", "goodput_tps", "goodput"),
        ("goodput_under_slo_ratio", "goodput_under_slo_tps", "goodput under SLO"),
    ):
        name = f"the goodput controller's {what}"
        row[column], why = ratio(policy[key], goodput[key], name)
        if why is not None:
            undefined[column] = why
    return row | {"undefined": undefined}


def is_better(row: dict, best: dict | None) -> bool:
    """Whether `row` makes a better model than `best` by goodput under SLO to the controller.

    The first evaluation always does; an undefined ratio never beats a defined one, and a
    defined one beats an undefined one.
    """
    if best is None:
        return True
    new, old = row["goodput_under_slo_ratio"], best["goodput_under_slo_ratio"]
    return new is not None and (old is None or new > old)
