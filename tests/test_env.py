"""`SpecDecode-v0` on the live engine: checkers, full episodes, bad input, closing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers SpecDecode-v0)
from agents.cost import LinearCost
from agents.features import feature_names
from agents.goodput import GoodputController
from agents.policy import residual_k
from envs.config import EnvConfig
from envs.residual import ResidualActions
from envs.spec_decode_env import SpecDecodeEnv
from envs.traces import ReplayOptions, apply_replay, load_trace

SHORT_TRACE = "synthetic:poisson?rate=8&duration=3&input_mean=48&output_mean=24&seed=1"


def make_env(engine, **fields) -> SpecDecodeEnv:
    """The registered environment (unwrapped, with its spec) on the session's engine."""
    fields = {"trace": SHORT_TRACE, "window_s": 3.0, "window_start_s": 0.0} | fields
    config = EnvConfig(engine=engine.config, **fields)
    return gymnasium.make("SpecDecode-v0", config=config, engine=engine).unwrapped


def test_gymnasium_and_sb3_checkers_pass(engine):
    env = make_env(engine, max_steps=40)
    # The close check would rebuild the environment from its spec (a second engine); closing
    # is tested on its own below.
    gym_check_env(env, skip_render_check=True, skip_close_check=True)
    sb3_check_env(env, warn=True)


def test_registered_and_made_through_gymnasium(engine):
    env = make_env(engine)
    assert isinstance(env, SpecDecodeEnv)
    assert env.spec.id == "SpecDecode-v0" and env.spec.nondeterministic
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (len(feature_names()),)
    assert env.action_space.n == engine.k_max + 1


def test_an_episode_finishes_every_request_and_reset_clears_the_engine(engine):
    env = make_env(engine)
    workload = apply_replay(
        load_trace(SHORT_TRACE),
        ReplayOptions(window_s=3.0, max_input_tokens=384, max_output_tokens=128),
    )
    obs, info = env.reset(seed=3)
    assert info["requests"] == len(workload) > 5
    rng = np.random.default_rng(0)
    rewards, steps, terminated, truncated = [], 0, False, False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        assert env.observation_space.contains(obs)
        rewards.append(reward)
        steps += 1
    assert terminated and not truncated
    metrics = info["episode_metrics"]
    assert metrics["requests_finished"] == len(workload)
    assert metrics["tokens_generated"] == sum(r.output_tokens for r in workload.requests)
    assert 0.0 <= metrics["slo_attainment"] <= 1.0
    assert metrics["goodput_tps"] > 0
    assert 0 <= metrics["mean_k"] <= engine.k_max
    assert all(np.isfinite(rewards))
    assert not engine.has_unfinished()

    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)

    # A truncated episode leaves requests in the engine; reset clears them.
    short = make_env(engine, max_steps=3)
    short.reset(seed=0)
    for _ in range(3):
        *_, truncated, info = short.step(1)
    assert truncated and "episode_metrics" in info
    assert engine.has_unfinished()
    short.reset(seed=0)
    assert engine.num_unfinished == short.replayer.ledger.num_open


def test_bad_action_is_rejected(engine):
    env = make_env(engine)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 9 is outside Discrete\(5\)"):
        env.step(9)
    with pytest.raises(ValueError, match="action -1"):
        env.step(-1)
    env.step(2)


def test_residual_actions_offset_the_base_controllers_k(engine):
    base = GoodputController(LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0), engine.k_max, 8)
    env = ResidualActions(make_env(engine), base, offset_max=1)
    assert env.action_space.n == 3
    env.reset(seed=0)
    rng = np.random.default_rng(1)
    ks, alphas, terminated = set(), set(), False
    while not terminated:
        action = int(rng.integers(3))
        # The base decides on the observation the step starts from, as in serving.
        expected_base = base.decide(env.unwrapped.observation).k
        *_, terminated, truncated, info = env.step(action)
        assert info["base_k"] == expected_base
        assert info["k"] == residual_k(expected_base, action, 1, engine.k_max)
        assert info["record"].k == info["k"], "the engine ran the offset k"
        ks.add(info["k"])
        alphas.add(base.alpha)
        assert not truncated
    assert len(ks) > 1
    assert alphas - {base.prior}, "the base saw the steps' acceptance"
    env.reset(seed=0)
    while base.alpha == base.prior:
        env.step(1)
    env.reset(seed=0)
    assert base.alpha == base.prior, "reset forgets the base's acceptance"
    with pytest.raises(ValueError, match=r"outside Discrete\(3\)"):
        env.step(3)


def test_bad_env_config():
    with pytest.raises(ValueError, match="max_input_tokens \\+ max_output_tokens = 2048 exceeds"):
        EnvConfig(max_input_tokens=1024, max_output_tokens=1024)
    with pytest.raises(ValueError, match="window_s=0"):
        EnvConfig(window_s=0)


CLOSED_ENV_SCRIPT = """
import re, sys
import gymnasium, pytest
import envs
from envs.config import EnvConfig
from serving.config import EngineConfig
from tests.conftest import TEST_ENGINE

trace = sys.argv[1]
engine = EngineConfig(**TEST_ENGINE)
config = EnvConfig(trace=trace, window_s=3.0, window_start_s=0.0, engine=engine)
env = gymnasium.make("SpecDecode-v0", config=config).unwrapped
env.reset(seed=0)
env.step(1)
env.close()
assert env.engine is None
closed = f"on a closed SpecDecode-v0 environment (trace {trace})"
with pytest.raises(RuntimeError, match=re.escape(f"reset() {closed}")):
    env.reset(seed=0)
with pytest.raises(RuntimeError, match=re.escape(f"step() {closed}")):
    env.step(1)
env.close()  # closing twice is allowed
print("closed environment checked")
"""


@pytest.mark.engine
def test_a_closed_environment_says_so():
    # An environment that built its own engine frees it on close; without the check, reset()
    # would fail deep inside vLLM. Closing an engine tears down vLLM's process-wide state, so
    # this runs in a process of its own, away from the session's engines.
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_ENV_SCRIPT, SHORT_TRACE],
        cwd=root, capture_output=True, text=True, timeout=600,
        env=os.environ | {"VLLM_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "closed environment checked" in done.stdout
