"""How long a learned controller takes to choose k: it runs before every engine step.

Times `decide` of the unguarded `PPOController`, of the `GuardedController` serving uses
(range check plus policy, SLO guard idle), and of its `GoodputController` fallback alone, each
call timed separately over observations drawn within the feature bounds. Prints median and
p99 in microseconds against the 20 us target for the median.

    python -m benchmarks.decision_time [--policy DIR] [--calls 20000]
    python -m benchmarks.decision_time --verification [--profile a100-llama3-8b]

Without --policy, a freshly initialised SB3 PPO MlpPolicy (default net_arch: two 64-unit tanh
layers) over `feature_names()` with k_max 4 is exported to a temporary directory first
(--offset-max M: a residual one, offsets -M..+M). A residual policy's time includes its base,
the goodput controller.

`--verification` times the confidence-ranked controllers instead (`adaptive-verification`,
`slo-verification`, `goodput-confidence`; each sees the drafts, then decides) at 256 running
requests holding k_max drafts each with random confidences, priced by a GPU preset, beside
that preset's step time at the same batch (the target: at most 2% of it).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agents.cost import LinearCost
from agents.features import (
    SCHEMA_VERSION,
    FeatureBuilder,
    FeatureConfig,
    Observation,
    feature_bounds,
    feature_names,
)
from agents.goodput import GoodputController
from agents.guarded import GuardedController
from agents.policy import PPOController, load_policy

TARGET_US = 20.0
K_MAX = 4
MAX_NUM_SEQS = 64
STEP_TIME = LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0)
"""A plausible step-time model for the fallback; its numbers do not affect the timing."""


def export_fresh_policy(out_dir: Path, config: FeatureConfig, offset_max: int = 0) -> Path:
    """Export an untrained PPO MlpPolicy with the observation and action spaces of `config`.

    With `offset_max` >= 1 the policy is residual: its actions are offsets -M..+M.
    """
    # Imported here: timing an existing artifact should not pay for torch.
    import gymnasium
    from stable_baselines3 import PPO

    from training.export import export_policy

    low, high = feature_bounds(config.window)

    class SpacesOnly(gymnasium.Env):
        """Just the spaces: PPO builds its policy from them without stepping."""

        observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        action_space = gymnasium.spaces.Discrete(
            2 * offset_max + 1 if offset_max else config.k_max + 1
        )

    model = PPO("MlpPolicy", SpacesOnly(), seed=0, device="cpu")
    return export_policy(
        model,
        out_dir,
        feature_names=feature_names(config.window),
        schema_version=SCHEMA_VERSION,
        k_max=config.k_max,
        engine={"method": "none", "model": "untrained"},
        train_config={"benchmark": "decision_time"},
        action_mode="residual" if offset_max else "absolute",
        offset_max=offset_max,
    )


def observations(config: FeatureConfig, obs_range: dict, n: int) -> list[Observation]:
    """`n` idle-engine observations whose vectors are uniform within the training range."""
    base = FeatureBuilder(config).build()
    low, high = np.asarray(obs_range["low"]), np.asarray(obs_range["high"])
    rng = np.random.default_rng(0)
    vectors = rng.uniform(low, high, size=(n, len(low))).astype(np.float32)
    return [dataclasses.replace(base, vector=v) for v in vectors]


def time_calls(decide: Callable[[Observation], object], obs: list[Observation], calls: int):
    """(median, p99) microseconds of `decide`, each call timed alone, after a warm-up."""
    n = len(obs)
    for i in range(min(calls, 2000)):
        decide(obs[i % n])
    clock = time.perf_counter_ns
    samples = []
    for i in range(calls):
        o = obs[i % n]
        started = clock()
        decide(o)
        samples.append(clock() - started)
    samples.sort()
    return statistics.median(samples) / 1e3, samples[int(0.99 * (calls - 1))] / 1e3


def verification_decisions(profile_name: str, running: int, calls: int, method: str) -> None:
    """Median and p99 of see_drafts + decide of the confidence-ranked controllers at
    `running` requests, beside the profile's step time at that batch."""
    from agents.adaptive import AdaptiveVerification, ConfidenceGoodput
    from agents.cost import StepLoad, load_profile
    from agents.records import DraftView

    profile = load_profile(profile_name, method=method)
    rng = np.random.default_rng(0)
    views = [
        DraftView(f"r{i}", 200, 600, (7,) * K_MAX, None, tuple(rng.uniform(0.2, 0.95, K_MAX)))
        for i in range(running)
    ]
    # The shortest step at that batch (no drafts verified): the share is at most this one.
    step = profile.cost.seconds(StepLoad.uniform(running, 0, 600))
    config = FeatureConfig(K_MAX, running, 2048, 0.5, 0.03)
    obs = [dataclasses.replace(FeatureBuilder(config).build(), now=10.0, num_running=running)]
    controllers = (
        AdaptiveVerification(profile.cost, K_MAX),
        AdaptiveVerification(profile.cost, K_MAX, slo=(0.5, 0.03)),
        ConfidenceGoodput(profile.cost, K_MAX, running),
    )
    print(
        f"{running} running requests, {K_MAX} drafts each, {profile_name}: a step at k = "
        f"{K_MAX} takes {step * 1e3:.1f} ms; target: 2% of it, {step * 20:.2f} ms\n"
    )
    print("controller              median ms  p99 ms  share of the step")
    for controller in controllers:

        def decide(o, c=controller):
            c.see_drafts(views, 0)
            return c.decide(o)

        median, p99 = time_calls(decide, obs, calls)
        print(
            f"{controller.name:<22}  {median / 1e3:9.3f}  {p99 / 1e3:6.3f}  "
            f"{median / 1e6 / step:8.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", type=Path, help="an exported policy directory")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--offset-max", type=int, default=0, help="fresh residual policy")
    parser.add_argument(
        "--verification", action="store_true", help="time the confidence-ranked controllers instead"
    )
    parser.add_argument("--profile", default="a100-llama3-8b", help="with --verification")
    parser.add_argument("--running", type=int, default=256, help="with --verification")
    parser.add_argument("--method", default="ngram", help="with --verification")
    args = parser.parse_args()
    if args.verification:
        verification_decisions(args.profile, args.running, min(args.calls, 500), args.method)
        return

    config = FeatureConfig(
        k_max=K_MAX,
        max_num_seqs=MAX_NUM_SEQS,
        max_num_batched_tokens=2048,
        ttft_slo_s=1.0,
        tpot_slo_s=0.1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        policy_dir = args.policy or export_fresh_policy(Path(tmp), config, args.offset_max)
        k_max = load_policy(policy_dir)[1]["k_max"]
        fallback = GoodputController(STEP_TIME, k_max, MAX_NUM_SEQS)
        base = GoodputController(STEP_TIME, k_max, MAX_NUM_SEQS)
        ppo = PPOController.load(policy_dir, base=base)
        guarded = GuardedController(
            policy_dir,
            fallback,
            k_max=k_max,
            schema_version=ppo.metadata["schema_version"],
            feature_names=ppo.metadata["feature_names"],
            ttft_slo_s=config.ttft_slo_s,
            tpot_slo_s=config.tpot_slo_s,
        )
    if guarded.policy is None:
        raise SystemExit(f"the guard could not load {policy_dir}: {guarded.last_reason}")

    obs = observations(config, ppo.metadata["obs_range"], 256)
    policy = ppo.policy
    hidden = [w.shape[1] for w, _ in policy.layers[:-1]]
    print(
        f"policy: {policy.n_features} features, hidden {hidden} {policy.activation}, "
        f"{policy.n_actions} actions, normalisation {'on' if policy.normalization else 'off'}"
    )
    print(f"{args.calls} calls each, target median < {TARGET_US:.0f} us\n")
    print("controller      median us  p99 us")
    for name, controller in (("ppo", ppo), ("guarded-ppo", guarded), ("goodput", fallback)):
        median, p99 = time_calls(controller.decide, obs, args.calls)
        verdict = "" if name == "goodput" else "  ok" if median < TARGET_US else "  OVER TARGET"
        print(f"{name:<14}  {median:9.2f}  {p99:6.2f}{verdict}")
    if guarded.fallback_decisions:
        print(f"\nwarning: the guard fell back {guarded.counts} on in-bounds observations")


if __name__ == "__main__":
    main()
