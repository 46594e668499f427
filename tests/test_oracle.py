"""The hindsight oracles: choices from known acceptance, and exact hindsight on the real
engine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agents.cost import LinearCost, load_profile
from agents.features import FeatureConfig
from agents.oracle import StepOracle, accepted
from agents.records import DraftView
from agents.registry import ControllerContext, build_controller, parse_controller
from tests.factories import observation

# Verification is expensive here: 1 ms per verified token against a 10 ms step.
COST = LinearCost(0.010, 0.0, 1e-3, 0.0, 0.0, 0.0)


def test_accepted_counts_the_leading_matches():
    output = [5, 6, 7, 8, 9]
    assert accepted((6, 7, 1), output, 1) == 2
    assert accepted((1, 7), output, 1) == 0
    assert accepted((8, 9, 10), output, 3) == 2  # the output ends
    assert accepted((), output, 0) == 0


def oracle(per_request=False, outputs=None):
    outputs = outputs or {"a": [1, 2, 3, 4, 5, 6], "b": [1, 2, 3, 4, 5, 6]}
    return StepOracle(COST, 4, outputs, per_request=per_request, max_num_batched_tokens=64)


def test_the_oracle_picks_the_best_rate_for_the_step():
    chooser = oracle()
    # a: all four drafts right; b: none. k=4 gains 4 tokens for 8 verified (18 ms): 6/0.018
    # = 333 tok/s; k=0: 2/0.010 = 200; k=1: 3/0.012 = 250; so k = 4.
    chooser.see_drafts(
        [DraftView("a", 0, 10, (1, 2, 3, 4)), DraftView("b", 0, 10, (9, 9, 9, 9))], 0
    )
    assert chooser.decide(observation(2)).k == 4
    # Both wrong: speculation only costs.
    chooser.see_drafts(
        [DraftView("a", 0, 10, (9, 9, 9, 9)), DraftView("b", 0, 10, (9, 9, 9, 9))], 0
    )
    assert chooser.decide(observation(2)).k == 0


def test_the_per_request_oracle_verifies_only_what_will_be_accepted():
    chooser = oracle(per_request=True)
    chooser.see_drafts(
        [DraftView("a", 0, 10, (1, 2, 3, 9)), DraftView("b", 0, 10, (9, 9, 9, 9))], 0
    )
    decision = chooser.decide(observation(2))
    assert decision.k == 3 and decision.per_request == {"a": 3, "b": 0}


def test_prompt_tokens_waiting_take_the_budget_the_drafts_leave():
    chooser = oracle()
    views = [DraftView("a", 0, 10, (1, 2, 3, 4))]
    assert chooser._load(views, [4]).prefill == ()  # nothing waits
    chooser.see_drafts(views, 100)
    assert chooser._load(views, [4]).prefill_tokens == 64 - 5
    assert chooser._load(views, [0]).prefill_tokens == 64 - 1


def test_oracles_need_the_windows_outputs():
    features = FeatureConfig(
        k_max=4, max_num_seqs=8, max_num_batched_tokens=64, ttft_slo_s=1.0, tpot_slo_s=0.05
    )
    context = ControllerContext.from_features(features, load_profile("ngram-fitted"))
    with pytest.raises(ValueError, match="'oracle' needs the window's outputs"):
        build_controller(parse_controller("oracle", 4), context)
    with_outputs = replace(context, outputs={"a": [1, 2]})
    assert build_controller(parse_controller("oracle-per-request", 4), with_outputs).per_request


def test_the_per_request_oracle_replays_with_exact_hindsight(engine):
    """On the real engine in model time, the per-request oracle verifies only drafts it knows
    will be accepted: every one of them is, and it still speculates."""
    from tests.test_model_clock import replay

    _, outputs = replay(engine, k=0)
    chooser = StepOracle(
        COST,
        engine.k_max,
        outputs,
        per_request=True,
        max_num_batched_tokens=engine.config.max_num_batched_tokens,
    )
    records, outputs_again = replay(engine, controller=chooser)
    assert outputs_again == outputs
    decoding = [q for r in records for q in r.requests if q.prefill_tokens == 0]
    assert sum(q.drafted for q in decoding) > 20
    assert all(q.accepted == q.drafted for q in decoding)
    # The global oracle verifies k drafts for everyone, and its k varies with the step.
    chooser = StepOracle(COST, engine.k_max, outputs, max_num_batched_tokens=1024)
    records, _ = replay(engine, controller=chooser)
    assert len({r.k for r in records}) > 1
