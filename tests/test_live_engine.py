"""The live vLLM engine under per-step speculation control (real engine, ngram and draft_model)."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from agents.records import StepRecord
from envs.config import feature_config
from envs.ledger import SLO
from serving.controller_settings import ControllerSettings
from serving.live_engine import LiveEngine
from serving.serving_scheduler import serving_features

OUTPUT_LENS = (24, 40, 17, 33, 9, 48)


def make_prompts(factory, n: int = 6, prompt_len: int = 40) -> list[list[int]]:
    """n source-code prompts of different lengths."""
    return [factory.make(prompt_len + 7 * i, style="source").token_ids for i in range(n)]


def add_batch(engine: LiveEngine, factory, prefix: str, n: int = 6, prompt_len: int = 40) -> dict:
    """Add n requests; return {request_id: (prompt, output_len)}."""
    return add_prompts(engine, make_prompts(factory, n, prompt_len), prefix)


def add_prompts(engine: LiveEngine, prompts: list[list[int]], prefix: str) -> dict:
    """Add one request per prompt; return {request_id: (prompt, output_len)}."""
    added = {}
    for i, prompt in enumerate(prompts):
        out = OUTPUT_LENS[i % len(OUTPUT_LENS)]
        engine.add_request(f"{prefix}-{i}", prompt, out)
        added[f"{prefix}-{i}"] = (prompt, out)
    return added


def run(engine: LiveEngine, choose_k: Callable[[int], int | None]) -> list[StepRecord]:
    """Step until every request finishes, with k chosen per step index."""
    records = []
    while engine.has_unfinished():
        records.append(engine.step(choose_k(len(records))))
    return records


def test_greedy_outputs_are_identical_under_any_k_schedule(engine, prompt_factory):
    rng = random.Random(7)
    schedules = {
        "k0": lambda _: 0,
        "kmax": lambda _: engine.k_max,
        "random": lambda _: rng.randint(0, engine.k_max),
    }
    prompts = make_prompts(prompt_factory)
    outputs = {}
    drafted = {}
    for name, choose in schedules.items():
        added = add_prompts(engine, prompts, name)
        records = run(engine, choose)
        drafted[name] = sum(r.spec_tokens for r in records)
        outputs[name] = [engine.outputs[rid] for rid in added]
        assert [len(o) for o in outputs[name]] == [out for _, out in added.values()]

    assert drafted["k0"] == 0
    assert drafted["kmax"] > 0 and drafted["random"] > 0
    assert outputs["kmax"] == outputs["k0"]
    assert outputs["random"] == outputs["k0"]


def test_every_request_drafts_at_most_its_k(engine, prompt_factory):
    rng = random.Random(3)
    add_batch(engine, prompt_factory, "r")
    records = []
    while engine.has_unfinished():
        k = rng.randint(0, engine.k_max)
        overrides = {"r-1": rng.randint(0, engine.k_max), "r-4": 0}
        record = engine.step(k, overrides)
        records.append(record)
        for req in record.requests:
            assert req.k == overrides.get(req.request_id, k)
            assert 0 <= req.accepted <= req.drafted <= req.k
        assert record.k == k
    assert sum(r.spec_tokens for r in records) > 0
    assert all(req.drafted == 0 for r in records for req in r.requests if req.request_id == "r-4")


def test_per_request_k_gives_per_request_draft_counts(engine, prompt_factory):
    add_batch(engine, prompt_factory, "p", n=4)
    per_request = {"p-0": 1, "p-1": engine.k_max, "p-2": 0}
    drafted: dict[str, list[int]] = {rid: [] for rid in ("p-0", "p-1", "p-2", "p-3")}
    while engine.has_unfinished():
        record = engine.step(2, per_request)
        # The budget covers the largest k among running requests.
        if any(r.request_id == "p-1" for r in record.requests):
            assert record.draft_budget == engine.k_max
        for req in record.requests:
            drafted[req.request_id].append(req.drafted)
    assert max(drafted["p-0"]) == 1
    assert max(drafted["p-1"]) > 2
    assert max(drafted["p-2"]) == 0
    assert 0 < max(drafted["p-3"]) <= 2


def test_drafting_budget_takes_effect_one_step_later(engine, prompt_factory):
    add_batch(engine, prompt_factory, "b", n=3, prompt_len=30)
    for _ in range(4):  # prefill, then decode without drafts
        record = engine.step(0)
        assert record.draft_budget == 0 and record.spec_tokens == 0

    raised = engine.step(engine.k_max)
    assert raised.draft_budget == engine.k_max
    assert raised.spec_tokens == 0, "drafts verified now were proposed under budget 0"
    after = [engine.step(engine.k_max) for _ in range(3)]
    assert any(r.spec_tokens > 0 for r in after)

    # Truncation, by contrast, acts at once: drafts proposed under k_max are cut to 1.
    lowered = engine.step(1)
    assert all(req.drafted <= 1 for req in lowered.requests)
    assert max(req.drafted for req in after[-1].requests) >= 1


def test_step_records_add_up_to_vllms_own_stats(engine_and_stats, prompt_factory):
    engine, recorder = engine_and_stats
    added = add_batch(engine, prompt_factory, "s")
    records = run(engine, lambda i: engine.k_max if i % 3 else 2)

    vllm_steps = recorder.steps
    assert len(vllm_steps) == len(records)
    ours = [(r.drafted, r.accepted) for r in records]
    theirs = [(s.num_draft_tokens, s.num_accepted_tokens) if s else (0, 0) for s in vllm_steps]
    assert ours == theirs
    assert sum(a for _, a in ours) > 0

    # Every prompt token is prefilled once; every requested output token is generated once.
    assert sum(r.prefill_tokens for r in records) == sum(len(p) for p, _ in added.values())
    assert sum(r.generated for r in records) == sum(out for _, out in added.values())
    finished = {f.request_id: f for r in records for f in r.finished}
    assert set(finished) == set(added)
    for rid, (prompt, out) in added.items():
        done = finished[rid]
        assert (done.prompt_tokens, done.output_tokens) == (len(prompt), out)
        assert done.arrival_at <= done.first_token_at <= done.finished_at
    for record in records:
        assert record.batch_size == len(record.requests)
        assert (
            record.decode_tokens + record.spec_tokens + record.prefill_tokens >= record.batch_size
        )
        assert record.step_time > 0
        assert 0.0 <= record.kv_cache_usage <= 1.0


def test_queue_depth_is_seen_when_requests_exceed_max_num_seqs(engine, prompt_factory):
    max_seqs = engine.config.max_num_seqs
    for i in range(max_seqs + 5):
        prompt = prompt_factory.make(20, style="source").token_ids
        engine.add_request(f"q-{i}", prompt, 12)
    first = engine.step(engine.k_max)
    assert first.num_arrived == max_seqs + 5
    assert first.batch_size == max_seqs
    assert first.num_running == max_seqs
    assert first.num_waiting == 5
    assert first.oldest_waiting_arrival is not None
    assert first.prefill_tokens_waiting == 5 * 20
    records = [first, *run(engine, lambda _: engine.k_max)]
    assert records[-1].num_waiting == 0 and records[-1].oldest_waiting_arrival is None
    assert len(engine.outputs) == max_seqs + 5


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (-1, ValueError, "k=-1 is outside 0..k_max=4"),
        (5, ValueError, "k=5 is outside 0..k_max=4"),
        (1.5, TypeError, "k must be an integer, got 1.5"),
        ("2", TypeError, "got '2'"),
    ],
)
def test_bad_k_is_rejected_and_the_engine_carries_on(engine, prompt_factory, k, error, message):
    add_batch(engine, prompt_factory, "k", n=2)
    before = engine.step(2)
    with pytest.raises(error, match=message):
        engine.step(k)
    with pytest.raises(ValueError, match="k for request 'k-0'=9 is outside 0..k_max=4"):
        engine.step(2, {"k-0": 9})
    after = engine.step(2)
    assert after.step == before.step + 1, "a rejected k must not run a step"
    run(engine, lambda _: 2)
    assert sorted(engine.outputs) == ["k-0", "k-1"]


def test_rejected_requests_never_stop_running_ones(engine, prompt_factory):
    added = add_batch(engine, prompt_factory, "ok", n=2)
    engine.step(engine.k_max)
    limit = engine.config.max_model_len
    good = prompt_factory.make(10, style="source").token_ids
    bad_requests = [
        (("empty", [], 5), "request 'empty': the prompt is empty"),
        (("long", good * 60, 5), f"= 605 exceeds max_model_len={limit}"),
        (("fill", good, limit), f"exceeds max_model_len={limit}"),
        (("vocab", [*good, engine.vocab_size], 5), "token id .* outside the vocabulary"),
        (("neg", [-3, *good], 5), "token id -3 is outside the vocabulary"),
        (("zero", good, 0), "output_tokens=0 must be >= 1"),
        (("ok-0", good, 5), "request_id 'ok-0' is already running"),
    ]
    for (rid, prompt, out), message in bad_requests:
        with pytest.raises(ValueError, match=message):
            engine.add_request(rid, prompt, out)
    run(engine, lambda _: engine.k_max)
    assert sorted(engine.outputs) == sorted(added)
    assert [len(engine.outputs[rid]) for rid in added] == [out for _, out in added.values()]


def test_reset_clears_every_request(engine, prompt_factory):
    add_batch(engine, prompt_factory, "x")
    engine.step(2)
    engine.step(2)
    assert engine.num_unfinished == 6
    engine.reset()
    assert engine.num_unfinished == 0
    assert not engine.has_unfinished()
    assert engine.outputs == {}
    with pytest.raises(RuntimeError, match="no unfinished requests"):
        engine.step(1)


def test_serving_normalises_features_as_training_does(engine):
    # The served controller's features come from vLLM's config, training's from the engine
    # config it was built with: the same normalisers, or a policy sees other inputs in serving.
    settings = ControllerSettings("goodput", ttft_slo_s=0.7, tpot_slo_s=0.04)
    served = serving_features(engine.scheduler, settings)
    assert served == feature_config(engine.config, SLO(ttft_s=0.7, tpot_s=0.04))
