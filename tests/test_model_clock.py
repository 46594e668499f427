"""The model clock on the real engine: replays repeat to the token, each step is priced from
what it computed, drafts are prefix-consistent and counterfactual counts hold."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from agents.cost import LinearCost
from agents.cost.load import load_of
from agents.features import FeatureBuilder, FeatureConfig
from agents.goodput import GoodputController
from agents.paths import LM_DIR
from envs.ledger import SLO
from envs.replayer import WorkloadReplayer
from envs.traces import PromptFactory, ReplayOptions, apply_replay, load_trace

COST = LinearCost(0.004, 2e-4, 1e-4, 5e-4, 1e-6, 1e-4)
TRACE = "synthetic:bursty?rate=12&cv=2&duration=3&input_mean=64&output_mean=32&seed=3"


def workload():
    return apply_replay(
        load_trace(TRACE), ReplayOptions(window_s=3.0, max_input_tokens=200, max_output_tokens=48)
    )


def replay(engine, cost=COST, controller=None, k=None, temperatures=(0.0,)):
    """Every StepRecord of one replay of the test window, and the engine's outputs."""
    prompts = PromptFactory(LM_DIR / "target", seed=0)
    replayer = WorkloadReplayer(engine, prompts, SLO(), temperatures, cost)
    if controller is not None:
        config = FeatureConfig(
            k_max=engine.k_max,
            max_num_seqs=engine.config.max_num_seqs,
            max_num_batched_tokens=engine.config.max_num_batched_tokens,
            ttft_slo_s=1.0,
            tpot_slo_s=0.05,
        )
        engine.attach(controller, FeatureBuilder(config))
    records = []
    try:
        replayer.start(workload(), np.random.default_rng(7))
        while not replayer.finished:
            record, _ = replayer.step(k)
            records.append(record)
    finally:
        engine.attach(None, None)
        engine.cost_model = None
    return records, dict(engine.outputs)


def comparable(records):
    """The records without what may differ between replays: the measured wall and CPU times,
    and the step index, which counts from the engine's start."""
    return [
        dataclasses.replace(r, wall_time=0.0, cpu_time=0.0, step=r.step - records[0].step)
        for r in records
    ]


def test_model_time_replays_repeat_to_the_token(engine):
    # The goodput controller's k depends on every step before, so any drift would compound.
    def controller():
        return GoodputController(COST, engine.k_max, engine.config.max_num_seqs)

    first, outputs = replay(engine, controller=controller())
    second, outputs_again = replay(engine, controller=controller())
    assert len(first) > 20
    assert comparable(first) == comparable(second)
    assert outputs == outputs_again
    assert len({r.k for r in first}) > 1  # the controller did move k


def test_steps_are_priced_from_what_they_computed(engine):
    records, _ = replay(engine, k=2)
    for before, record in itertools.pairwise(records):
        assert record.step_time == COST.seconds(load_of(record.requests))
        assert record.started_at >= before.finished_at  # idle gaps jump to arrivals
    # The engine drafts k_max every step; the chosen k cuts the drafts at verification.
    assert all(r.draft_budget == engine.k_max for r in records)
    decoding = [q for r in records for q in r.requests if q.prefill_tokens == 0]
    assert all(q.drafted <= min(2, q.proposed) for q in decoding)
    assert any(q.proposed > q.drafted for q in decoding)
    # The wall clock was still measured, and differs from the model's price.
    assert all(r.wall_time > 0 for r in records)
    assert any(r.wall_time != r.step_time for r in records)


def test_wall_clock_drafts_at_the_chosen_budget(engine):
    records, _ = replay(engine, cost=None, k=1)
    assert all(r.draft_budget == 1 and r.step_time == r.wall_time for r in records)


def capture_proposals(engine, store):
    """Record every running request's full proposal at every output position it drafts at."""
    scheduler = engine.scheduler
    original = scheduler.control.begin

    def begin(*args):
        for request in scheduler.running:
            if request.spec_token_ids:
                name = scheduler._names.get(request.request_id, request.request_id)
                store[(name, request.num_output_tokens)] = tuple(request.spec_token_ids)
        return original(*args)

    scheduler.control.begin = begin
    return original


@pytest.mark.parametrize("k", [1, 2])
def test_proposals_are_prefix_consistent_and_counterfactuals_hold(engine, k):
    """A k proposal is the first k drafts of the k_max proposal at the same position, so
    what a k_max replay records for k is what a k replay sees."""
    full, short = {}, {}
    original = capture_proposals(engine, full)
    try:
        records_full, outputs = replay(engine, k=engine.k_max)
        engine.scheduler.control.begin = original
        capture_proposals(engine, short)
        records_short, outputs_short = replay(engine, cost=None, k=k)
    finally:
        engine.scheduler.control.begin = original
    assert outputs == outputs_short  # greedy outputs do not depend on k or the clock
    shared = set(full) & set(short)
    assert len(shared) > 10
    for key in shared:
        assert short[key] == full[key][: len(short[key])], key

    # The k_max replay's counterfactual count at k equals what the k replay accepted at the
    # same request and position, wherever it is not censored.
    at_full = {}
    for record in records_full:
        for q in record.requests:
            if q.drafted:
                at_full[(q.request_id, q.output_tokens - q.generated)] = q
    compared = 0
    for record in records_short:
        for q in record.requests:
            seen = at_full.get((q.request_id, q.output_tokens - q.generated))
            if q.drafted and seen is not None and not seen.censored_if(q.drafted):
                assert seen.accepted_if(q.drafted) == q.accepted
                compared += 1
    assert compared > 10
