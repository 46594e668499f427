"""Train a PPO policy that chooses the speculation length of a live vLLM engine.

    python -m training.train_ppo [--config training/configs/ngram_bursty_twin.yaml] \
        [--total-timesteps N] [--env.engine.method draft_model] [--env.reward.baseline goodput]

With no arguments: stable-baselines3 PPO on `SpecDecode-v0`, the built-in bursty trace, the
small model pair with ngram speculation. Every option is a field of `TrainConfig` (a flag,
or a key of the YAML file given with --config); the environment's are nested under `env`
(`EnvConfig`: `--env.trace`, `--env.engine.k-max`, `--env.slo.tpot-s`, or in YAML
`env: {engine: {k_max: 4}}` or `env.engine.k_max: 4`). A run folder `runs/<name>/` holds
config.yaml, command.txt, periodic checkpoints, the best model by evaluation (best/), the
TensorBoard logs (tb/), the W&B run (wandb/, offline unless --wandb-mode online) and the
exported, pickle-free policy (policy/, best/policy/). Every `eval_every` steps the policy and
the analytic goodput controller replay the same held-back trace window and the policy's
goodput and goodput under SLO are logged relative to the controller's. Ctrl-C saves first.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from agents.policy import ACTION_MODES, RESIDUAL
from envs.config import EnvConfig
from serving.config import EngineConfig, project_relative
from training.cli import ConfigError, config_mapping, parse_config

RUNS_DIR = Path("runs")
TRAINED_METHODS = ("ngram", "draft_model")
"""Speculation methods a policy can learn k for (method none has only k = 0)."""
RENAMED = {
    "trace": "env.trace",
    "trace_format": "env.trace_format",
    "window_s": "env.window_s",
    "rate_scale": "env.rate_scale",
    "length_scale": "env.length_scale",
    "max_input_tokens": "env.max_input_tokens",
    "max_output_tokens": "env.max_output_tokens",
    "method": "env.engine.method",
    "k_max": "env.engine.k_max",
    "max_num_seqs": "env.engine.max_num_seqs",
    "max_num_batched_tokens": "env.engine.max_num_batched_tokens",
    "max_model_len": "env.engine.max_model_len",
    "clock": "env.clock",
    "profile": "env.profile",
    "twin": "env.twin",
    "window_pool": "env.window_pool",
    "ttft_slo_s": "env.slo.ttft_s",
    "tpot_slo_s": "env.slo.tpot_s",
    "reference_tps": "env.reward.reference_tps",
    "ttft_violation_tokens": "env.reward.ttft_violation_tokens",
    "tpot_violation_tokens": "env.reward.tpot_violation_tokens",
    "token_scale": "env.reward.token_scale",
    "reference_steps": "env.reward.reference_steps",
    "reward_baseline": "env.reward.baseline",
    "max_episode_steps": "env.max_steps",
}
"""The flat spellings of the environment's options before they were nested under `env`:
flags and YAML keys that still work, with a warning, for one release."""


@dataclass
class TrainConfig:
    """Arguments of `python -m training.train_ppo`."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment of the training episodes (trace, window, engine, SLOs, reward, clock,
    profile, twin): `--env.trace`, `--env.engine.method`, ... Episodes draw their start
    before train_until_s - window_s, so env.window_start_s and env.latest_start_s stay unset;
    the engine's sampling seed is `seed`. The evaluation replays the same environment at the
    held-back window, on the live engine."""
    train_until_s: float = 480.0
    """Training episodes start before this trace time; what follows is held back."""
    eval_trace: str | None = None
    """Trace of the held-back evaluation window; None uses the training trace."""
    eval_window_start_s: float = 540.0
    """Start of the evaluation window in the evaluation trace (after train_until_s)."""
    eval_window_s: float = 30.0
    """Trace seconds of the evaluation window."""
    total_timesteps: int = 20_000
    """Environment steps (engine steps) to train for."""
    n_envs: int = 1
    """Parallel environments, each with its own engine in its own process when > 1."""
    n_steps: int = 512
    """PPO rollout length per environment."""
    batch_size: int = 128
    """PPO minibatch size."""
    n_epochs: int = 10
    """PPO epochs per rollout."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_range: float = 0.2
    """PPO clipping parameter."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layers of the policy and value networks."""
    action_mode: str = RESIDUAL
    """absolute: the action is k; residual: an offset to the goodput controller's k."""
    offset_max: int = 1
    """Residual mode: the offsets are -offset_max..+offset_max (k is clipped to 0..k_max)."""
    offset_zero_bias: float = 2.0
    """Residual mode: initial logit bonus of offset 0, so training starts near the base."""
    seed: int = 0
    """Seed of PPO, the environments, the trace windows and the engine's sampling."""
    device: str = "cpu"
    """Torch device for PPO updates."""
    output_dir: str = "runs"
    """Where run folders are made."""
    run_name: str | None = None
    """Run folder name; None makes one from the method and the time."""
    eval_every: int = 5000
    """Evaluate against the goodput controller every this many steps (0: only at the end)."""
    eval_repeats: int = 2
    """Replays of the held-back window per controller and evaluation, alternating order."""
    checkpoint_every: int = 5000
    """Save a checkpoint every this many steps."""
    export_to: str | None = None
    """Also copy the best exported policy here (e.g. checkpoints/policies/ngram)."""
    resume: str | None = None
    """A checkpoint (.zip) to continue training from."""
    track: bool = True
    """Log to Weights & Biases (--no-track to skip); offline unless wandb_mode says otherwise."""
    wandb_project: str = "turbospec-rl"
    """W&B project; training.evaluate --track logs to the same one."""
    wandb_mode: str = "offline"
    """W&B mode: offline (no server needed; `wandb sync` uploads later), online or disabled."""

    @property
    def residual_offsets(self) -> int:
        """offset_max of a residual policy, 0 for an absolute one (make_env and export take it)."""
        return self.offset_max if self.action_mode == RESIDUAL else 0

    def __post_init__(self) -> None:
        method = self.env.engine.method
        if method not in TRAINED_METHODS:
            raise ValueError(f"env.engine.method={method!r} must be ngram or draft_model")
        for name in ("window_start_s", "latest_start_s"):
            if getattr(self.env, name) is not None:
                raise ValueError(
                    f"env.{name}={getattr(self.env, name)}: training draws each episode's "
                    "start before train_until_s - window_s; set train_until_s instead"
                )
        if self.env.engine.seed not in (EngineConfig.seed, self.seed):
            raise ValueError(
                f"env.engine.seed={self.env.engine.seed}: in training the engine's seed is "
                f"seed={self.seed}; set seed instead"
            )
        if self.eval_window_start_s < self.train_until_s and self.eval_trace is None:
            raise ValueError(
                f"eval_window_start_s={self.eval_window_start_s} lies inside the training "
                f"range (before train_until_s={self.train_until_s})"
            )
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode={self.action_mode!r} must be absolute or residual")
        if self.action_mode == RESIDUAL and self.offset_max < 1:
            raise ValueError(f"offset_max={self.offset_max} must be >= 1 in residual mode")
        for name in (
            "total_timesteps",
            "n_envs",
            "n_steps",
            "batch_size",
            "n_epochs",
            "eval_repeats",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.wandb_mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb_mode={self.wandb_mode!r} must be offline, online or disabled")
        if self.resume is not None and not Path(self.resume).is_file():
            raise ValueError(f"resume checkpoint {self.resume} does not exist")

    def train_env(self) -> EnvConfig:
        """The training episodes' environment: `env`, with starts drawn before
        train_until_s - window_s and the engine seeded with `seed`."""
        return replace(
            self.env,
            latest_start_s=max(self.train_until_s - self.env.window_s, 0.0),
            engine=replace(self.env.engine, seed=self.seed),
        )

    def eval_env(self) -> EnvConfig:
        """The held-back window's environment: the training one at eval_trace (or its trace),
        eval_window_start_s and eval_window_s, on the live engine and a fresh window."""
        return replace(
            self.train_env(),
            trace=self.eval_trace or self.env.trace,
            window_s=self.eval_window_s,
            window_start_s=self.eval_window_start_s,
            latest_start_s=None,
            twin=False,
            window_pool=0,
        )

    def record(self) -> dict[str, Any]:
        """Every value as the run folder's config.yaml holds it, and as `--config` reads it
        back: nested, with the model folders relative to the project (which `EngineConfig`
        resolves back), so that it holds no machine's paths but those given."""
        values = config_mapping(self)
        engine = values["env"]["engine"]
        for key in ("model", "draft_model"):
            engine[key] = project_relative(engine[key])
        return values


def make_env(config, seed: int, offset_max: int = 0, cost=None):
    """A factory for SB3's vector envs: one environment (and its engine) per call.

    With `offset_max` >= 1 the actions are offsets to a goodput controller's k (built from
    `cost`, the engine's cost model), as `ResidualActions` describes.
    """

    def build():
        import gymnasium
        from stable_baselines3.common.monitor import Monitor

        import envs  # noqa: F401  (registers SpecDecode-v0 and SpecDecodeTwin-v0)

        env = gymnasium.make("SpecDecodeTwin-v0" if config.twin else "SpecDecode-v0", config=config)
        if offset_max:
            from agents.goodput import GoodputController
            from envs.residual import ResidualActions

            engine = config.engine
            base = GoodputController(cost, engine.k_max, engine.max_num_seqs)
            env = ResidualActions(env, base, offset_max)
        env = Monitor(env)
        env.reset(seed=seed)
        return env

    return build


def prepare_run(cfg: TrainConfig, argv: list[str]) -> Path:
    """Make the run folder and save the config and the command into it."""
    name = cfg.run_name or f"{cfg.env.engine.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.record(), sort_keys=False))
    command = "python -m training.train_ppo " + " ".join(shlex.quote(a) for a in argv)
    (run_dir / "command.txt").write_text(command + "\n")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(
            TrainConfig, argv, "python -m training.train_ppo", __doc__.split("\n\n")[0], RENAMED
        )
        checks = check_inputs(cfg, cfg.train_env(), cfg.eval_env())
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = prepare_run(cfg, argv)
    print(f"run folder: {run_dir}")
    return train(cfg, run_dir, checks)


def check_inputs(cfg: TrainConfig, train_env, eval_env) -> dict[str, Any]:
    """Everything that can be wrong, checked before any engine starts.

    Returns the environments with the engine limits and SLOs of a deployment profile, the
    held-back workload and the profile.
    """
    from envs.build import resolve
    from envs.traces import apply_replay, load_trace

    train_env, profile = resolve(train_env)
    eval_env, _ = resolve(eval_env)

    trace = load_trace(train_env.trace, train_env.trace_format)
    if trace.duration_s < train_env.window_s:
        raise ValueError(
            f"trace {train_env.trace} lasts {trace.duration_s:.0f} s < window "
            f"{train_env.window_s} s"
        )
    held_back = apply_replay(
        load_trace(eval_env.trace, eval_env.trace_format),
        eval_env.replay_options(cfg.eval_window_start_s),
    )
    if not len(held_back):
        raise ValueError(
            f"the evaluation window ({cfg.eval_window_s} s at {cfg.eval_window_start_s} s) "
            f"of {eval_env.trace} holds no requests"
        )
    return {
        "train_env": train_env,
        "eval_env": eval_env,
        "held_back": held_back,
        "profile": profile,
    }


def train(cfg: TrainConfig, run_dir: Path, checks: dict) -> int:
    """Build the environments, train, evaluate, save and export."""
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    from training.ppo_callbacks import CompareCallback, EpisodeMetricsCallback
    from training.wandb_run import WandbRun

    torch.set_num_threads(1)
    cost = checks["profile"].cost
    factories = [
        make_env(checks["train_env"], cfg.seed + i, cfg.residual_offsets, cost)
        for i in range(cfg.n_envs)
    ]
    vec_env = (
        SubprocVecEnv(factories, start_method="spawn") if cfg.n_envs > 1 else DummyVecEnv(factories)
    )
    tracker = WandbRun(cfg, run_dir) if cfg.track else None
    if cfg.resume:
        model = PPO.load(cfg.resume, env=vec_env, device=cfg.device)
    else:
        model = PPO(
            "MlpPolicy",
            vec_env,
            n_steps=cfg.n_steps,
            batch_size=cfg.batch_size,
            n_epochs=cfg.n_epochs,
            learning_rate=cfg.learning_rate,
            gamma=cfg.gamma,
            gae_lambda=cfg.gae_lambda,
            clip_range=cfg.clip_range,
            ent_coef=cfg.ent_coef,
            policy_kwargs={"net_arch": list(cfg.net_arch)},
            seed=cfg.seed,
            device=cfg.device,
            verbose=0,
        )
        if cfg.residual_offsets:
            # Offsets start near 0: the first rollouts explore around the base controller
            # instead of uniformly, and the deterministic policy starts as the base itself.
            with torch.no_grad():
                model.policy.action_net.bias[cfg.offset_max] += cfg.offset_zero_bias
    # TensorBoard and CSV in the run folder, and W&B when tracking, all from SB3's logger.
    logger = configure(str(run_dir / "tb"), ["tensorboard", "csv"])
    if tracker is not None:
        logger.output_formats.append(tracker.writer())
    model.set_logger(logger)
    metrics = EpisodeMetricsCallback(tracker)
    compare = CompareCallback(
        cfg, run_dir, checks["eval_env"], checks["held_back"], checks["profile"], metrics, tracker
    )
    callbacks = CallbackList(
        [
            CheckpointCallback(
                max(cfg.checkpoint_every // cfg.n_envs, 1),
                str(run_dir / "checkpoints"),
                name_prefix="ppo",
            ),
            metrics,
            compare,
        ]
    )
    # A scheduler's SIGTERM (preemption, timeout) saves like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    interrupted = False
    try:
        model.learn(
            cfg.total_timesteps,
            callback=callbacks,
            progress_bar=True,
            reset_num_timesteps=cfg.resume is None,
        )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: saving the model before exiting")
    elapsed = time.perf_counter() - started
    model.save(run_dir / "final_model.zip")
    final = compare.export(model, run_dir / "policy")
    if not interrupted:
        compare.evaluate_now(model)
    summary = {
        "timesteps": int(model.num_timesteps),
        "train_seconds": round(elapsed, 1),
        "interrupted": interrupted,
        "best": compare.best,
        "final_policy": str(final),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    best_policy = run_dir / "best" / "policy"
    if cfg.export_to and best_policy.is_dir():
        shutil.copytree(best_policy, cfg.export_to, dirs_exist_ok=True)
        print(f"best policy copied to {cfg.export_to}")
    if tracker is not None:
        tracker.finish(best_policy if best_policy.is_dir() else final, summary)
    vec_env.close()
    compare.close()
    print(json.dumps(summary, indent=2))
    return 130 if interrupted else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
