"""The guarded PPO controller: every fallback reason, its bookkeeping, its logs and its listener."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.controller import Controller, Decision
from agents.cost import LinearCost
from agents.features import SCHEMA_VERSION, FeatureBuilder, FeatureConfig, Observation
from agents.goodput import GoodputController
from agents.guarded import (
    INFERENCE_ERROR,
    LOGGER_NAME,
    OBS_NONFINITE,
    OBS_OUT_OF_RANGE,
    RECOVERED,
    SLO_GUARD,
    GuardedController,
)
from agents.policy import WEIGHTS_FILE, load_policy
from agents.records import FinishedRequest, StepRecord
from benchmarks.decision_time import export_fresh_policy

CONFIG = FeatureConfig(
    k_max=4, max_num_seqs=8, max_num_batched_tokens=1024, ttft_slo_s=1.0, tpot_slo_s=0.1
)
NAMES = FeatureBuilder(CONFIG).names
WINDOW = 8


class StubFallback:
    """A fallback that always chooses `k` and remembers what it was told."""

    name = "stub"

    def __init__(self, k: int) -> None:
        self.k = k
        self.decided = 0
        self.observed: list[StepRecord] = []
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def decide(self, obs: Observation) -> Decision:
        self.decided += 1
        return Decision(self.k)

    def observe(self, record: StepRecord) -> None:
        self.observed.append(record)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return export_fresh_policy(tmp_path_factory.mktemp("policy"), CONFIG)


@pytest.fixture(scope="module")
def obs() -> Observation:
    return FeatureBuilder(CONFIG).build()


@pytest.fixture(scope="module")
def policy_k(artifact, obs) -> int:
    """What the exported policy chooses for `obs`."""
    policy, _ = load_policy(artifact)
    return policy.act(obs.vector)


def with_vector(obs: Observation, **changes: float) -> Observation:
    """`obs` with some features (by name) set to other values."""
    vector = obs.vector.copy()
    for name, value in changes.items():
        vector[NAMES.index(name)] = value
    return dataclasses.replace(obs, vector=vector)


def make_guard(path: Path, fallback: Controller, **kwargs) -> tuple[GuardedController, list[str]]:
    """A guard over `path` and the list its on_switch listener appends to."""
    switches: list[str] = []
    guard = GuardedController(
        path,
        fallback,
        k_max=kwargs.pop("k_max", CONFIG.k_max),
        schema_version=SCHEMA_VERSION,
        feature_names=NAMES,
        ttft_slo_s=CONFIG.ttft_slo_s,
        tpot_slo_s=CONFIG.tpot_slo_s,
        slo_window=WINDOW,
        on_switch=switches.append,
        **kwargs,
    )
    return guard, switches


def finished_step(n: int, met: bool, step: int = 0) -> StepRecord:
    """A step in which `n` requests finish, all meeting or all missing the TTFT SLO."""
    ttft = 0.5 if met else 3.0
    done = tuple(
        FinishedRequest(
            request_id=f"r{step}-{i}",
            arrival_at=0.0,
            first_token_at=ttft,
            finished_at=ttft + 0.5,
            prompt_tokens=16,
            output_tokens=11,
        )
        for i in range(n)
    )
    return StepRecord(
        step=step,
        started_at=0.0,
        step_time=0.05,
        k=0,
        draft_budget=0,
        batch_size=0,
        num_running=0,
        num_waiting=0,
        num_arrived=0,
        decode_tokens=0,
        spec_tokens=0,
        prefill_tokens=0,
        prefill_tokens_waiting=0,
        oldest_waiting_arrival=None,
        kv_cache_usage=0.0,
        requests=(),
        finished=done,
    )


def test_healthy_policy_decides_and_counts_nothing(artifact, obs, policy_k):
    fallback = StubFallback((policy_k + 1) % 5)
    guard, switches = make_guard(artifact, fallback)
    assert isinstance(guard, Controller)
    for _ in range(5):
        assert guard.decide(obs) == Decision(policy_k)
    assert (guard.decisions, guard.fallback_decisions, guard.counts) == (5, 0, {})
    assert (guard.active, guard.last_reason, switches) == ("ppo", None, [])
    assert fallback.decided == 0


def _truncate_weights(path: Path) -> None:
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[:100])


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing", "load:artifact_missing"),
        ("corrupt", "load:artifact_corrupt"),
        ("k_max", "load:artifact_mismatch"),
    ],
)
def test_unusable_artifact_falls_back_for_good(case, reason, artifact, obs, tmp_path, caplog):
    path = tmp_path / "policy"
    kwargs = {}
    if case == "corrupt":
        shutil.copytree(artifact, path)
        _truncate_weights(path)
    elif case == "k_max":
        path, kwargs = artifact, {"k_max": 3}
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    guard, switches = make_guard(path, StubFallback(2), **kwargs)
    for _ in range(4):
        assert guard.decide(obs) == Decision(2)
    assert guard.policy is None
    assert (guard.active, guard.last_reason, switches) == ("fallback", reason, [reason])
    assert guard.counts == {reason: 4} and guard.fallback_decisions == 4
    [warning] = caplog.records
    assert warning.levelno == logging.WARNING and reason in warning.getMessage()
    assert str(path) in warning.getMessage()


@pytest.mark.parametrize(
    ("value", "reason"),
    [(np.nan, OBS_NONFINITE), (np.inf, OBS_NONFINITE), (-np.inf, OBS_NONFINITE)],
)
def test_nonfinite_observation(value, reason, artifact, obs, policy_k):
    guard, switches = make_guard(artifact, StubFallback((policy_k + 1) % 5))
    assert guard.decide(with_vector(obs, kv_cache_usage=value)).k == (policy_k + 1) % 5
    assert guard.counts == {reason: 1} and switches == [reason]
    assert guard.decide(obs).k == policy_k
    assert switches == [reason, RECOVERED] and guard.active == "ppo"


def test_out_of_range_observation_beyond_margin(artifact, obs, policy_k):
    fallback_k = (policy_k + 1) % 5
    guard, switches = make_guard(artifact, StubFallback(fallback_k), range_margin=0.5)
    # queue_depth is trained on [0, 4]: 4.4 is within the margin, 4.6 and -0.6 are not.
    assert guard.decide(with_vector(obs, queue_depth=4.4)).k == guard.policy.act(
        with_vector(obs, queue_depth=4.4).vector
    )
    assert guard.counts == {}
    assert guard.decide(with_vector(obs, queue_depth=4.6)).k == fallback_k
    assert guard.decide(with_vector(obs, ttft_slack=-1.6)).k == fallback_k
    assert guard.counts == {OBS_OUT_OF_RANGE: 2} and switches == [OBS_OUT_OF_RANGE]
    assert guard.active == "fallback" and guard.last_reason == OBS_OUT_OF_RANGE


def test_inference_error_falls_back_and_logs_once(artifact, obs, policy_k, caplog):
    guard, switches = make_guard(artifact, StubFallback((policy_k + 1) % 5))

    def broken(vector):
        raise RuntimeError("weights on fire")

    guard.policy.act = broken
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    for _ in range(5):
        assert guard.decide(obs).k == (policy_k + 1) % 5
    assert guard.counts == {INFERENCE_ERROR: 5} and switches == [INFERENCE_ERROR]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "weights on fire" in caplog.text
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_wrongly_shaped_observation_is_an_inference_error(artifact, obs, policy_k):
    guard, _ = make_guard(artifact, StubFallback((policy_k + 1) % 5))
    short = dataclasses.replace(obs, vector=obs.vector[:-1])
    assert guard.decide(short).k == (policy_k + 1) % 5
    assert guard.counts == {INFERENCE_ERROR: 1}


def test_out_of_range_k_from_policy_is_an_inference_error(artifact, obs):
    guard, _ = make_guard(artifact, StubFallback(1))
    guard.policy.act = lambda vector: 7
    assert guard.decide(obs).k == 1
    assert guard.counts == {INFERENCE_ERROR: 1}


def test_slo_guard_switches_when_the_fallback_disagrees(artifact, obs, policy_k):
    fallback_k = (policy_k + 1) % 5
    guard, switches = make_guard(artifact, StubFallback(fallback_k), min_attainment=0.5)
    guard.observe(finished_step(WINDOW - 1, met=False))
    assert guard.decide(obs).k == policy_k, "the guard waits for a full window"

    guard.observe(finished_step(1, met=False))
    assert guard.slo_attainment == 0.0
    assert guard.decide(obs).k == fallback_k
    assert guard.decide(obs).k == fallback_k
    assert guard.counts == {SLO_GUARD: 2} and switches == [SLO_GUARD]

    # Half the window met: attainment 0.5 is not below min_attainment.
    guard.observe(finished_step(WINDOW // 2, met=True, step=1))
    assert guard.slo_attainment == 0.5
    assert guard.decide(obs).k == policy_k
    assert switches == [SLO_GUARD, RECOVERED] and guard.active == "ppo"
    assert guard.counts == {SLO_GUARD: 2} and guard.fallback_decisions == 2


def test_slo_guard_counts_nothing_when_the_fallback_agrees(artifact, obs, policy_k):
    fallback = StubFallback(policy_k)
    guard, switches = make_guard(artifact, fallback)
    guard.observe(finished_step(WINDOW, met=False))
    for _ in range(3):
        assert guard.decide(obs).k == policy_k
    assert fallback.decided == 3, "the fallback is asked while attainment is low"
    assert (guard.counts, guard.fallback_decisions, switches) == ({}, 0, [])
    assert guard.active == "ppo"


def test_observe_and_reset_reach_the_fallback(artifact, obs, policy_k):
    fallback = StubFallback((policy_k + 1) % 5)
    guard, _ = make_guard(artifact, fallback)
    record = finished_step(WINDOW, met=False)
    guard.observe(record)
    assert fallback.observed == [record]
    guard.reset()
    assert fallback.resets == 1
    assert np.isnan(guard.slo_attainment)
    assert guard.decide(obs).k == policy_k, "reset forgets the missed SLOs"


def test_switches_log_once_not_every_step(artifact, obs, caplog):
    guard, _ = make_guard(artifact, StubFallback(0))
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    bad = with_vector(obs, batch_frac=np.nan)
    for _ in range(10):
        guard.decide(bad)
    for _ in range(10):
        guard.decide(obs)
    levels = [r.levelno for r in caplog.records]
    assert levels == [logging.WARNING, logging.INFO]
    assert OBS_NONFINITE in caplog.records[0].getMessage()
    assert all(r.name == LOGGER_NAME for r in caplog.records)


def test_a_failing_listener_does_not_break_decide(artifact, obs):
    def listener(reason: str) -> None:
        raise RuntimeError("metrics down")

    guard, _ = make_guard(artifact, StubFallback(3))
    guard.on_switch = listener
    assert guard.decide(with_vector(obs, batch_frac=np.nan)).k == 3
    assert guard.counts == {OBS_NONFINITE: 1}


def test_goodput_fallback_end_to_end(artifact, obs):
    goodput = GoodputController(LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0), 4, 8)
    guard, _ = make_guard(artifact, goodput)
    expected = goodput.decide(obs)
    assert guard.decide(with_vector(obs, prev_k=np.nan)) == expected
    guard.observe(finished_step(2, met=True))
    guard.reset()
    assert guard.decide(obs).k in range(5)


@pytest.fixture(scope="module")
def residual_artifact(tmp_path_factory) -> Path:
    return export_fresh_policy(tmp_path_factory.mktemp("residual"), CONFIG, offset_max=1)


@pytest.mark.parametrize("fallback_k", [0, 2, 4])
def test_residual_policy_offsets_the_fallbacks_k(residual_artifact, obs, fallback_k):
    policy, meta = load_policy(residual_artifact)
    assert (meta["action_mode"], policy.n_actions) == ("residual", 3)
    offset = policy.act(obs.vector) - 1
    fallback = StubFallback(fallback_k)
    guard, switches = make_guard(residual_artifact, fallback)
    assert guard.residual
    assert guard.decide(obs).k == min(max(fallback_k + offset, 0), 4)
    assert fallback.decided == 1, "the fallback is the residual's base on every step"
    assert (guard.counts, switches) == ({}, [])


def test_residual_policy_under_the_slo_guard(residual_artifact, obs):
    offset = load_policy(residual_artifact)[0].act(obs.vector) - 1
    fallback = StubFallback(2)
    guard, switches = make_guard(residual_artifact, fallback)
    guard.observe(finished_step(WINDOW, met=False))
    assert guard.decide(obs).k == 2
    assert fallback.decided == 1, "the base's decision doubles as the fallback's"
    expected = {SLO_GUARD: 1} if offset else {}
    assert guard.counts == expected and switches == list(expected)
