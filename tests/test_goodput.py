"""The analytic goodput controller on hand-made observations and step records."""

from __future__ import annotations

import math

import pytest

from agents.cost import LinearCost
from agents.goodput import ALPHA_MAX, GoodputController, best_k, expected_tokens
from agents.records import FinishedRequest, RequestStep, StepRecord
from tests.factories import decode_step, observation

K_MAX = 4
MAX_SEQS = 64
# T = 0.01 + 0.0005 B + 0.0005 B k: at B=1 a draft token costs 5% of a step, at B=64 it
# costs 0.032 s against a 0.042 s step without speculation.
MODEL = LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0)


def step(*requests: tuple[str, int, int], finished: tuple[str, ...] = ()) -> StepRecord:
    """A decode step; each request is (request_id, drafted, accepted)."""
    parts = tuple(
        RequestStep(
            request_id=rid,
            k=drafted,
            drafted=drafted,
            accepted=accepted,
            generated=accepted + 1,
            prefill_tokens=0,
            output_tokens=10,
            first_token_at=0.0,
        )
        for rid, drafted, accepted in requests
    )
    done = tuple(
        FinishedRequest(
            request_id=rid,
            arrival_at=0.0,
            first_token_at=0.1,
            finished_at=1.0,
            prompt_tokens=10,
            output_tokens=10,
        )
        for rid in finished
    )
    return decode_step(parts, done, k=max((p.k for p in parts), default=0))


def drive(controller: GoodputController, rate: float, steps: int = 60) -> None:
    """Feed steps accepting `rate` of 100 drafts until the EMA has converged."""
    for _ in range(steps):
        controller.observe(step(("r", 100, round(100 * rate))))


def test_expected_tokens():
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert expected_tokens(0.5, 0) == 1.0
    assert expected_tokens(0.0, 3) == 1.0
    # alpha = 1 would divide by zero; it is clipped to ALPHA_MAX, just below k + 1.
    assert expected_tokens(1.0, 3) == pytest.approx((1 - ALPHA_MAX**4) / (1 - ALPHA_MAX))
    assert 3.99 < expected_tokens(1.0, 3) < 4.0


def test_best_k_ties_go_to_smaller_k():
    # Exact in binary: k=0 gives 1 / 0.5 = 2 tokens/s, k=1 gives 1.5 / 0.75 = 2.
    assert best_k([0.5, 0.75], 0.5) == (0, 2.0)
    assert best_k([0.5, 0.7], 0.5)[0] == 1


def test_speculates_fully_when_cheap_and_not_when_costly():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS)
    drive(controller, 0.9)
    assert controller.alpha == pytest.approx(0.9, abs=1e-4)
    # B=1: G(4) = 4.095 / 0.0125 = 327.6 against G(0) = 1.03 / 0.0105 = 98.1.
    assert controller.decide(observation(1)).k == K_MAX

    drive(controller, 0.2)
    # B=64: G(0) = 64 * 1.03 / 0.042 = 1570 against G(1) = 64 * 1.2 / 0.074 = 1038.
    assert controller.decide(observation(MAX_SEQS)).k == 0
    # Waiting requests that fit count toward the batch: 4 running + 60 admitted = 64.
    assert controller.decide(observation(4, num_waiting=100)).k == 0


def test_predicted_goodput():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS, prior=0.5)
    # 2 requests * 1.75 tokens / (0.01 + 0.001 + 0.002) s
    assert controller.predicted_goodput(2, 2) == pytest.approx(2 * 1.75 / 0.013)


def test_k0_bias_tips_a_near_tie_to_zero():
    # At alpha = 0.5, B = 1 and T = 0.01 + tau k with tau = 1.5 / 101 - 0.01:
    # G(0) = 100, G(1) = 1.5 / (0.01 + tau) = 101, G(2) = 1.75 / (0.01 + 2 tau) = 88.8.
    tau = 1.5 / 101 - 0.01
    model = LinearCost(0.01, 0.0, tau, 0.0, 0.0, 0.0)
    unbiased = GoodputController(model, K_MAX, MAX_SEQS, prior=0.5, k0_bias=0.0)
    assert unbiased.predicted_goodput(1, 1) == pytest.approx(101.0)
    assert unbiased.decide(observation(1)).k == 1
    biased = GoodputController(model, K_MAX, MAX_SEQS, prior=0.5)  # k0_bias = 0.03
    assert biased.decide(observation(1)).k == 0


def test_collapsed_acceptance_recovers_within_bound():
    # At B=1 this model speculates only for alpha > 0.5: G(1) = 1.5 / (0.01 + tau) equals
    # 1.03 * G(0) = 1.03 / 0.01 at alpha = 0.5.
    tau = 1.5 * 0.01 / 1.03 - 0.01
    controller = GoodputController(LinearCost(0.01, 0.0, tau, 0.0, 0.0, 0.0), K_MAX, MAX_SEQS)
    for _ in range(11):
        controller.observe(step(("r", 4, 0)))
    low = controller.alpha
    assert low == pytest.approx(0.6 * 0.8**11)  # 0.052
    assert controller.decide(observation(1)).k == 0
    # Each step without drafts moves alpha up by `recovery`, so it is back at the prior (where
    # this model speculates) after at most `bound` steps, and above 0.5 after `needed`.
    bound = math.ceil((controller.prior - low) / controller.recovery)
    needed = math.ceil((0.5 - low) / controller.recovery)
    assert (needed, bound) == (23, 28)
    ks = []
    for _ in range(bound + 1):
        k = controller.decide(observation(1)).k
        ks.append(k)
        if k:
            break
        controller.observe(step(("r", 0, 0)))
    assert ks == [0] * needed + [1]


def test_recovery_also_pulls_optimism_down_and_stops_at_prior():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS, recovery=0.1)
    drive(controller, 0.9)
    for _ in range(10):
        controller.observe(step(("r", 0, 0)))
    assert controller.alpha == controller.prior


def test_per_request_lengths_follow_each_requests_acceptance():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS, per_request=True)
    for _ in range(60):
        controller.observe(step(("good", 20, 19), ("bad", 10, 1)))
    assert controller.request_alpha("good") == pytest.approx(0.95, abs=1e-4)
    assert controller.request_alpha("bad") == pytest.approx(0.1, abs=1e-4)
    decision = controller.decide(observation(2))
    # Global alpha 20/30: at B=2, G(4) = 2.60 / 0.015 = 173 tokens/s per request is the best.
    assert decision.k == K_MAX
    # A draft token is worth g * tau = 173 * 0.0005 = 0.087 tokens: "good" drafts all four
    # (0.95^4 = 0.81), "bad" only the first (0.1 > 0.087 > 0.01).
    assert decision.per_request == {"bad": 1}
    k_good = decision.per_request.get("good", decision.k)
    assert k_good > decision.per_request["bad"]


def test_per_request_state_drops_finished_requests():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS, per_request=True)
    controller.observe(step(("a", 4, 4), ("b", 4, 0)))
    assert controller.request_alpha("b") is not None
    controller.observe(step(("a", 4, 4), ("b", 4, 0), finished=("b",)))
    assert controller.request_alpha("b") is None
    assert controller.request_alpha("a") is not None


def test_per_request_state_is_capped():
    controller = GoodputController(MODEL, K_MAX, max_num_seqs=2, per_request=True)
    for i in range(10):
        controller.observe(step((f"r{i}", 4, 2)))
    # 2 * max_num_seqs are kept, the most recently seen.
    kept = [i for i in range(10) if controller.request_alpha(f"r{i}") is not None]
    assert kept == [6, 7, 8, 9]


def test_reset_restores_prior():
    controller = GoodputController(MODEL, K_MAX, MAX_SEQS, per_request=True, prior=0.7)
    drive(controller, 0.1)
    assert controller.request_alpha("r") is not None
    controller.reset()
    assert controller.alpha == 0.7
    assert controller.request_alpha("r") is None
    assert controller.decide(observation(1)).per_request is None
