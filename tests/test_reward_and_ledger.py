"""The reward formula and the SLO ledger on hand-made StepRecords (exact values)."""

from __future__ import annotations

import math

import pytest

from agents.cost import LinearCost
from agents.cost.load import load_of
from agents.records import FinishedRequest, RequestStep
from envs.ledger import SLO, RequestLedger, Violations
from envs.reward import RewardWeights, RunningReference, counterfactual, step_reward
from tests.factories import decode_step


def req(rid, generated=1, output_tokens=1, first=None, drafted=0, accepted=0, k=2):
    return RequestStep(
        request_id=rid,
        k=k,
        drafted=drafted,
        accepted=accepted,
        generated=generated,
        prefill_tokens=0,
        output_tokens=output_tokens,
        first_token_at=first,
    )


def step(started, seconds, requests=(), finished=(), k=2):
    return decode_step(requests, finished, started_at=started, step_time=seconds, k=k)


def test_reward_is_goodput_above_reference_minus_violation_costs():
    weights = RewardWeights(
        reference_tps=1000, ttft_violation_tokens=50, tpot_violation_tokens=20, token_scale=10
    )
    record = step(0.0, 0.02, [req("a", generated=3), req("b", generated=5)])
    # (8 tokens - 1000 tok/s * 0.02 s) / 10 = -1.2
    assert step_reward(record, Violations(), weights) == pytest.approx(-1.2)
    # minus (50 * 1 + 20 * 2) / 10 = 9
    assert step_reward(record, Violations(ttft=1, tpot=2), weights) == pytest.approx(-10.2)
    fast = step(0.0, 0.004, [req("a", generated=3), req("b", generated=5)])
    assert step_reward(fast, Violations(), weights) == pytest.approx(0.4)


def test_running_reference_follows_the_recent_goodput():
    fixed = RunningReference(RewardWeights(reference_tps=500))
    fixed.update(step(0.0, 0.01, [req("a", generated=20)]))
    assert fixed.tps == 500

    running = RunningReference(RewardWeights(reference_tps=500, reference_steps=4))
    assert running.tps == 500
    running.update(step(0.0, 0.01, [req("a", generated=20)]))
    assert running.tps == pytest.approx(2000)  # the first step sets it
    running.update(step(0.01, 0.03, [req("a", generated=6)]))
    # tokens 0.75 * 20 + 0.25 * 6 = 16.5 over seconds 0.75 * 0.01 + 0.25 * 0.03 = 0.015
    assert running.tps == pytest.approx(1100)
    # A step at the reference rate earns nothing; the same tokens in half the time do.
    record = step(0.04, 0.02, [req("a", generated=22)])
    weights = RewardWeights(reference_steps=4, token_scale=1)
    assert step_reward(record, Violations(), weights, running.tps) == pytest.approx(0.0)
    quick = step(0.04, 0.01, [req("a", generated=22)])
    assert step_reward(quick, Violations(), weights, running.tps) == pytest.approx(11.0)
    running.reset()
    assert running.tps == 500


def test_reward_weights_are_checked():
    with pytest.raises(ValueError, match="reward weight reference_tps=-1"):
        RewardWeights(reference_tps=-1)
    with pytest.raises(ValueError, match="token_scale=0 must be > 0"):
        RewardWeights(token_scale=0)
    with pytest.raises(ValueError, match="reference_steps=2.5 must be an int"):
        RewardWeights(reference_steps=2.5)
    with pytest.raises(ValueError, match="SLO ttft_s=0"):
        SLO(ttft_s=0)


def test_ttft_violation_is_counted_once_in_the_step_that_crosses_the_deadline():
    ledger = RequestLedger(SLO(ttft_s=1.0, tpot_s=0.1))
    ledger.arrive("late", arrival=0.0, output_tokens=3)
    ledger.arrive("soon", arrival=0.5, output_tokens=3)
    assert ledger.record(step(0.0, 0.9)) == Violations(0, 0)
    # The step ending at 1.2 crosses late's deadline (1.0) but not soon's (1.5).
    assert ledger.record(step(0.9, 0.3)) == Violations(ttft=1)
    # soon gets its first token at 1.4, before its deadline: no violation.
    assert ledger.record(step(1.2, 0.2, [req("soon", first=1.4)])) == Violations(0, 0)
    assert ledger.record(step(1.4, 0.5, [req("late", first=1.9)])) == Violations(0, 0)


def test_tpot_violation_when_time_per_token_so_far_crosses_the_slo():
    ledger = RequestLedger(SLO(ttft_s=10.0, tpot_s=0.1))
    ledger.arrive("a", arrival=0.0, output_tokens=10)
    # 3 tokens by t=0.2 after the first at 0.0: 0.1 s per token, not over.
    assert ledger.record(step(0.1, 0.1, [req("a", output_tokens=3, first=0.0)])) == Violations()
    # 4 tokens by t=0.5: 0.5 / 3 = 0.167 > 0.1.
    assert ledger.record(step(0.2, 0.3, [req("a", output_tokens=4, first=0.0)])).tpot == 1
    # Already counted: no second penalty.
    assert ledger.record(step(0.5, 0.5, [req("a", output_tokens=5, first=0.0)])).tpot == 0


def test_episode_metrics():
    ledger = RequestLedger(SLO(ttft_s=1.0, tpot_s=0.1))
    ledger.arrive("ok", arrival=0.0, output_tokens=3)
    ledger.arrive("slow", arrival=0.0, output_tokens=2)
    ok = FinishedRequest("ok", 0.0, 0.5, 0.7, prompt_tokens=4, output_tokens=3)
    slow = FinishedRequest("slow", 0.0, 1.5, 2.0, prompt_tokens=4, output_tokens=2)
    ledger.record(step(0.0, 0.5, [req("ok", 1, 1, 0.5), req("slow", 0, 0)], k=4))
    ledger.record(step(0.5, 0.2, [req("ok", 2, 3, 0.5)], [ok], k=2))
    ledger.record(step(1.0, 0.5, [req("slow", 1, 1, 1.5)], k=0))
    ledger.record(step(1.5, 0.5, [req("slow", 1, 2, 1.5)], [slow], k=0))
    metrics = ledger.metrics()
    busy = 0.5 + 0.2 + 0.5 + 0.5
    assert metrics["busy_s"] == pytest.approx(busy)
    assert metrics["tokens_generated"] == 5
    assert metrics["goodput_tps"] == pytest.approx(5 / busy)
    assert metrics["goodput_under_slo_tps"] == pytest.approx(3 / busy)
    assert metrics["slo_attainment"] == 0.5
    assert metrics["mean_k"] == 1.5
    assert metrics["ttft_p50_s"] == pytest.approx(1.0)
    assert metrics["tpot_p50_s"] == pytest.approx((0.1 + 0.5) / 2)
    assert ledger.num_open == 0 and ledger.num_finished == 2
    assert math.isnan(RequestLedger(SLO()).metrics()["slo_attainment"])


def test_the_counterfactual_step_and_the_goodput_baseline():
    cost = LinearCost(0.01, 0.0, 1e-3, 0.0, 0.0, 0.0)  # 10 ms + 1 ms per verified draft
    requests = [
        RequestStep("a", 3, 3, 3, 4, 0, 10, 0.0, context=50, proposed=4),  # all 3 accepted
        RequestStep("b", 3, 3, 1, 2, 0, 10, 0.0, context=50, proposed=3),  # rejected at 2
        RequestStep("c", 3, 0, 0, 1, 0, 10, 0.0, context=50, proposed=0),  # nothing proposed
    ]
    record = decode_step(requests, started_at=0.0, step_time=cost.seconds(load_of(requests)))
    assert record.step_time == pytest.approx(0.016)
    # At k = 1: a and b each verify 1 and accept it; c verifies nothing.
    assert counterfactual(record, 1, cost) == (2 + 2 + 1, pytest.approx(0.012))
    # At k = 4: a's count is a lower bound (3; its 4th draft was never checked), b is bounded
    # by its rejection, c has nothing to verify.
    assert counterfactual(record, 4, cost) == (4 + 2 + 1, pytest.approx(0.017))
    # At its own k the counterfactual is the step itself.
    assert counterfactual(record, 3, cost) == (record.generated, pytest.approx(record.step_time))
    weights = RewardWeights(reference_tps=100, token_scale=1, baseline="goodput")
    rho = 100
    versus = counterfactual(record, 1, cost)
    expected = (7 - rho * 0.016) - (5 - rho * 0.012)
    assert step_reward(record, Violations(), weights, rho, versus) == pytest.approx(expected)


def test_a_baseline_needs_the_model_clock():
    from envs.config import EnvConfig

    with pytest.raises(ValueError, match="needs clock='model'"):
        EnvConfig(clock="wall", reward=RewardWeights(baseline="goodput"))
    with pytest.raises(ValueError, match="baseline='oracle' must be one of none, goodput"):
        RewardWeights(baseline="oracle")
