"""Confidence-ranked verification budgets: pure logic on hand-made draft views."""

from __future__ import annotations

import numpy as np
import pytest

from agents.adaptive import AdaptiveVerification, ConfidenceGoodput, admitted, survival_matrix
from agents.cost import LinearCost
from agents.records import DraftView, RequestStep
from tests.factories import decode_step, observation


def view(rid: str, confidence, drafts: int = 4, position: int = 10) -> DraftView:
    return DraftView(rid, position, 100, (7,) * drafts, None, tuple(confidence))


def test_survival_is_the_running_product_and_the_best_slots_are_prefixes():
    views = [view("a", (0.9, 0.9, 0.5, 0.5)), view("b", (0.6, 0.99, 0.99, 0.99))]
    survival = survival_matrix(views, 4)
    assert survival[0] == pytest.approx([0.9, 0.81, 0.405, 0.2025])
    assert survival[1, 1] == pytest.approx(0.6 * 0.99)
    # The best 4 slots: a0 (0.9), a1 (0.81), b0 (0.6), b1 (0.594): prefixes of both.
    assert admitted(survival, 4).tolist() == [2, 2]
    assert admitted(survival, 0).tolist() == [0, 0]
    assert admitted(survival, 8).tolist() == [4, 4]
    # Without confidences (no calibrator) every slot has the prior.
    plain = survival_matrix([DraftView("c", 0, 10, (1, 2))], 4)
    assert plain[0].tolist() == pytest.approx([0.6, 0.36, 0, 0])


def controller(cost, **kwargs) -> AdaptiveVerification:
    return AdaptiveVerification(cost, 4, **kwargs)


def test_cheap_verification_admits_every_likely_slot_and_dear_verification_none():
    views = [view(f"r{i}", (0.95, 0.9, 0.85, 0.8)) for i in range(8)]
    # 10 ms a step, a verified token almost free: every slot pays.
    cheap = controller(LinearCost(0.010, 0.0, 1e-7, 0.0, 0.0, 0.0))
    cheap.see_drafts(views, 0)
    decision = cheap.decide(observation(8))
    assert decision.k == 4 and set(decision.per_request.values()) == {4}
    assert cheap.last_budget == 32
    # A verified token costs as much as a whole step: none pays.
    dear = controller(LinearCost(0.010, 0.0, 0.010, 0.0, 0.0, 0.0))
    dear.see_drafts(views, 0)
    assert dear.decide(observation(8)).k == 0 and dear.last_budget == 0


def test_the_budget_goes_to_the_confident_requests():
    sure = [view(f"s{i}", (0.95, 0.95, 0.95, 0.95)) for i in range(4)]
    doubtful = [view(f"d{i}", (0.2, 0.2, 0.2, 0.2)) for i in range(4)]
    adaptive = controller(LinearCost(0.010, 0.0, 0.0005, 0.0, 0.0, 0.0))
    adaptive.see_drafts(sure + doubtful, 0)
    decision = adaptive.decide(observation(8))
    ks = decision.per_request
    assert min(ks[v.request_id] for v in sure) > max(ks[v.request_id] for v in doubtful)
    assert all(ks[v.request_id] == 0 for v in doubtful)


def test_the_slo_budget_keeps_steps_short_for_requests_near_their_tpot():
    # a and b: sure drafts and time to spare. c and d: drafts that will fail, 10 tokens in at
    # 28 ms a token so far: a step longer than 40 ms pushes them past the 30 ms objective.
    now = 1.0
    sure = [view(r, (0.95,) * 4, position=100) for r in "ab"]
    doubtful = [view(r, (0.01,) * 4, position=10) for r in "cd"]
    first = {"a": 0.0, "b": 0.0, "c": now - 0.26, "d": now - 0.26}
    cost = LinearCost(0.020, 0.0, 0.003, 0.0, 0.0, 0.0)  # 20 ms a step, 3 ms a verified draft
    throughput, slo = controller(cost), controller(cost, slo=(1.0, 0.030))
    for c in (throughput, slo):
        c.observe(decode_step([RequestStep(r, 1, 0, 0, 1, 0, 10, t) for r, t in first.items()]))
        c.see_drafts(sure + doubtful, 0)
    fast = throughput.decide(observation(4, now=now))
    careful = slo.decide(observation(4, now=now))
    # Throughput admits all of a's and b's drafts (44 ms); the SLO budget stops at 3 each
    # (38 ms), which keeps c and d within their objective and gives more tokens within it.
    assert fast.per_request == {"a": 4, "b": 4, "c": 0, "d": 0}
    assert careful.per_request == {"a": 3, "b": 3, "c": 0, "d": 0}
    assert slo.name == "slo-verification" and slo.last_budget == 6


def test_goodput_confidence_gives_each_request_the_slots_worth_verifying():
    cost = LinearCost(0.010, 1e-4, 5e-4, 0.0, 0.0, 0.0)
    chooser = ConfidenceGoodput(cost, 4, 8)
    chooser.see_drafts([view("a", (0.99, 0.99, 0.99, 0.99)), view("b", (0.05, 0.5, 0.5, 0.5))], 0)
    decision = chooser.decide(observation(2))
    assert decision.per_request["a"] == 4 and decision.per_request["b"] == 0
    assert decision.k == 4
    assert np.isfinite(chooser.alpha)
