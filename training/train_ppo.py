"""Train a PPO policy that chooses the speculation length of a live vLLM engine.

    python -m training.train_ppo [--config training/configs/ngram.yaml] [--total-timesteps N]

With no arguments: stable-baselines3 PPO on `SpecDecode-v0`, the built-in bursty trace, the
small model pair with ngram speculation. Every option is a field of `TrainConfig` (a flag,
or a key of the YAML file given with --config). A run folder `runs/<name>/` holds
config.yaml, command.txt, periodic checkpoints, the best model by evaluation (best/), the
TensorBoard logs (tb/), the W&B run (wandb/, offline unless --wandb-mode online) and the
exported, pickle-free policy (policy/, best/policy/). Every `eval_every` steps the policy and
the analytic goodput controller replay the same held-back trace window and the policy's
goodput and goodput under SLO are logged relative to the controller's. Ctrl-C saves first.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.policy import ACTION_MODES, RESIDUAL
from envs.config import DEFAULT_TRACE

RUNS_DIR = Path("runs")


@dataclass
class TrainConfig:
    """Arguments of `python -m training.train_ppo`."""

    trace: str = DEFAULT_TRACE
    """Training trace: a file (Azure/BurstGPT CSV, Mooncake JSONL) or a synthetic: spec."""
    trace_format: str | None = None
    """The trace's format (azure, burstgpt, mooncake); None detects it."""
    window_s: float = 20.0
    """Trace seconds per training episode; each episode draws its start."""
    train_until_s: float = 480.0
    """Training episodes start before this trace time; what follows is held back."""
    eval_trace: str | None = None
    """Trace of the held-back evaluation window; None uses the training trace."""
    eval_window_start_s: float = 540.0
    """Start of the evaluation window in the evaluation trace (after train_until_s)."""
    eval_window_s: float = 30.0
    """Trace seconds of the evaluation window."""
    rate_scale: float = 1.0
    """Speed-up of arrivals, for training and evaluation."""
    length_scale: float = 1.0
    """Factor on request lengths before clipping."""
    max_input_tokens: int = 384
    """Prompts are clipped to this many tokens."""
    max_output_tokens: int = 128
    """Outputs are clipped to this many tokens."""
    method: str = "ngram"
    """Speculation method of the engine: ngram or draft_model."""
    k_max: int = 4
    """Largest speculation length; the action space is 0..k_max."""
    max_num_seqs: int = 32
    """Most requests running at once."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step."""
    max_model_len: int = 1024
    """Longest prompt plus output."""
    clock: str = "model"
    """model: a step lasts what the cost profile says it computed (episodes repeat to the
    token); wall: what this machine measured."""
    profile: str | None = None
    """Cost profile (a path or a name under checkpoints/profiles, e.g. a100-llama3-8b): the
    model clock's costs and the goodput controller's. None: the method's measured table. A
    GPU profile sets the engine limits and SLOs of its deployment."""
    twin: bool = False
    """Train on the engine's twin (`SpecDecodeTwin-v0`: vLLM's scheduling in numpy,
    acceptance recorded once per window on the live engine; model clock, greedy requests).
    Evaluations against the goodput controller stay on the live engine."""
    window_pool: int = 0
    """0: every episode a fresh window; n > 0: episodes replay one of n windows drawn once
    per environment (the twin records n acceptance tables, then runs at full speed)."""
    ttft_slo_s: float = 1.0
    """Time-to-first-token SLO, seconds."""
    tpot_slo_s: float = 0.05
    """Time-per-output-token SLO, seconds."""
    reference_tps: float = 500.0
    """Reward: the goodput (tokens/s) a step must beat to earn a positive goodput term."""
    ttft_violation_tokens: float = 64.0
    """Reward: the cost of one TTFT violation, in tokens."""
    tpot_violation_tokens: float = 64.0
    """Reward: the cost of one TPOT violation, in tokens."""
    token_scale: float = 32.0
    """Reward: tokens per unit of reward."""
    reference_steps: int = 0
    """Reward: 0 keeps reference_tps fixed; N > 0 makes it the episode's goodput over about
    the last N steps, so a step is rewarded for beating the recent rate."""
    reward_baseline: str | None = None
    """Reward: None (the goodput term alone), or goodput: a step's goodput relative to what
    the goodput controller's k would have produced on the same step (model clock), so what
    arrivals bring cancels."""
    max_episode_steps: int = 5000
    """Engine steps after which an episode is truncated."""
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
    """Seed of PPO, the environments and the trace windows."""
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
        if self.method not in ("ngram", "draft_model"):
            raise ValueError(f"method={self.method!r} must be ngram or draft_model")
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


def env_config(cfg: TrainConfig, *, evaluation: bool = False):
    """The environment options of training (random windows) or of the held-back window."""
    from envs.config import EnvConfig
    from envs.ledger import SLO
    from envs.reward import RewardWeights
    from serving.config import EngineConfig

    engine = EngineConfig(
        method=cfg.method,
        k_max=cfg.k_max,
        max_num_seqs=cfg.max_num_seqs,
        max_num_batched_tokens=cfg.max_num_batched_tokens,
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
    )
    return EnvConfig(
        trace=(cfg.eval_trace or cfg.trace) if evaluation else cfg.trace,
        trace_format=cfg.trace_format,
        window_s=cfg.eval_window_s if evaluation else cfg.window_s,
        window_start_s=cfg.eval_window_start_s if evaluation else None,
        latest_start_s=None if evaluation else max(cfg.train_until_s - cfg.window_s, 0.0),
        rate_scale=cfg.rate_scale,
        length_scale=cfg.length_scale,
        max_input_tokens=cfg.max_input_tokens,
        max_output_tokens=cfg.max_output_tokens,
        engine=engine,
        slo=SLO(ttft_s=cfg.ttft_slo_s, tpot_s=cfg.tpot_slo_s),
        clock=cfg.clock,
        profile=cfg.profile,
        reward=RewardWeights(
            reference_tps=cfg.reference_tps,
            ttft_violation_tokens=cfg.ttft_violation_tokens,
            tpot_violation_tokens=cfg.tpot_violation_tokens,
            token_scale=cfg.token_scale,
            reference_steps=cfg.reference_steps,
            baseline=cfg.reward_baseline or "none",
        ),
        max_steps=cfg.max_episode_steps,
        twin=cfg.twin and not evaluation,
        window_pool=0 if evaluation else cfg.window_pool,
    )


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
    name = cfg.run_name or f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    values = dataclasses.asdict(cfg) | {"net_arch": list(cfg.net_arch)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    command = "python -m training.train_ppo " + " ".join(shlex.quote(a) for a in argv)
    (run_dir / "command.txt").write_text(command + "\n")
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from training.cli import ConfigError, parse_config

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_config(
            TrainConfig, argv, "python -m training.train_ppo", __doc__.split("\n\n")[0]
        )
        checks = check_inputs(cfg, env_config(cfg), env_config(cfg, evaluation=True))
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
    if trace.duration_s < cfg.window_s:
        raise ValueError(
            f"trace {cfg.trace} lasts {trace.duration_s:.0f} s < window {cfg.window_s} s"
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
