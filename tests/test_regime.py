"""The regime an evaluation entry ran in: pure arithmetic on hand-made records, and a real
replay on the live engine whose running requests reach the limit and whose share of time
spent verifying rises with k."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.cost import LinearCost
from agents.cost.load import load_of
from agents.paths import LM_DIR
from agents.records import RequestStep
from agents.static import StaticController
from envs.config import feature_config
from envs.ledger import SLO
from envs.replayer import WorkloadReplayer
from envs.traces import PromptFactory, ReplayOptions, apply_replay, load_trace
from tests.factories import decode_step
from training.evaluation.regime import RegimeMeter, slo_binds, weighted_quantile
from training.replays import replay

# 4 ms a step, 0.2 ms a request, 0.1 ms a verified draft (and the rest), as in test_model_clock.
COST = LinearCost(0.004, 2e-4, 1e-4, 5e-4, 1e-6, 1e-4)


def step(running: int, drafted: int, seconds: float, waiting: int = 0):
    requests = [
        RequestStep(f"r{i}", 4, drafted, 0, 1, 0, 10, 0.0, context=100, proposed=4)
        for i in range(running)
    ]
    return dataclasses.replace(decode_step(requests, step_time=seconds), num_waiting=waiting)


def test_the_regime_weighs_steps_by_engine_time():
    meter = RegimeMeter(limit=8, cost=COST)
    meter.update(step(8, 0, 0.3, waiting=4))  # full, a queue of half the limit
    meter.update(step(2, 0, 0.1))
    found = meter.result()
    assert found["running_mean"] == pytest.approx((1.0 * 0.3 + 0.25 * 0.1) / 0.4)
    assert found["half_full"] == pytest.approx(0.75)
    assert found["queue_mean"] == pytest.approx(0.5 * 0.75)
    assert found["running_p90"] == 1.0
    assert found["verify_share"] == 0.0


def test_the_verify_share_is_the_price_of_the_drafts():
    meter = RegimeMeter(limit=8, cost=COST)
    record = step(4, 3, 0.02)
    meter.update(record)
    with_drafts = COST.seconds(_load(record, 3))
    without = COST.seconds(_load(record, 0))
    assert meter.result()["verify_share"] == pytest.approx(1 - without / with_drafts)
    assert 0 < meter.result()["verify_share"] < 1


def _load(record, verified):
    return load_of(record.requests, lambda r: verified)


def test_quantiles_and_the_slo_verdict():
    values = np.array([0.1, 0.5, 0.9])
    assert weighted_quantile(values, np.array([1.0, 1.0, 8.0]), 0.9) == 0.9
    assert weighted_quantile(values, np.array([8.0, 1.0, 1.0]), 0.5) == 0.1
    assert np.isnan(RegimeMeter(8, COST).result()["running_mean"])
    assert slo_binds(0.5) is True and slo_binds(0.95) is False and slo_binds(None) is None


@pytest.mark.engine
def test_a_dense_window_fills_the_engine_and_verifying_takes_more_time_at_larger_k(engine):
    trace = "synthetic:poisson?rate=40&duration=2&input_mean=48&output_mean=40&seed=5"
    options = ReplayOptions(window_s=2.0, max_input_tokens=96, max_output_tokens=48)
    workload = apply_replay(load_trace(trace), options)
    prompts = PromptFactory(LM_DIR / "target", seed=0)
    replayer = WorkloadReplayer(engine, prompts, SLO(), (0.0,), COST)
    features = feature_config(engine.config, SLO())
    found = {}
    try:
        for k in (1, engine.k_max):
            meter = RegimeMeter(engine.config.max_num_seqs, COST)
            replay(replayer, workload, 0, StaticController(k), features, meter)
            found[k] = meter.result()
    finally:
        engine.cost_model = None
    for regime in found.values():
        assert regime["running_p90"] == 1.0  # the limit is reached
        assert regime["half_full"] > 0.5 and regime["queue_mean"] > 0
    assert found[engine.k_max]["verify_share"] > found[1]["verify_share"] > 0
