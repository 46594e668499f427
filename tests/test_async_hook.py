"""Scheduler-level tests of the async hook, `AsyncSpecControlScheduler`.

These build the real scheduler class (vLLM's `AsyncScheduler` with the hook mixed in) from a
small `VllmConfig` on the project's target model with ngram speculation (k_max 4) and a
hand-made KV-cache config, the way vLLM's own tests/v1/core build theirs, and feed it
requests and hand-made `ModelRunnerOutput`s step by step, in the order vLLM's engine core
runs an async step: schedule step t+1, then take in step t's output. No model runs: the
sampled tokens are made up, and the drafts exist only as the scheduler's placeholders. vLLM's
CPU platform forces synchronous scheduling, so these are not live-engine tests: they check
what the hook does to vLLM's async scheduler (the drafts scheduled per request, the
placeholders, the cuts, the records and what the controller is given), not what a GPU
engine computes (benchmarks/gpu_check.py is that check).
"""

from __future__ import annotations

import os

import pytest

from agents.controller import Decision
from agents.cost import StepLoad
from agents.features import FeatureBuilder, FeatureConfig, Observation
from agents.paths import LM_DIR
from agents.records import StepRecord
from tests.conftest import TEST_ENGINE

K_MAX = TEST_ENGINE["k_max"]
BLOCK = 16
PROMPT = list(range(10, 30))  # 20 tokens: two KV blocks
TOKEN = 7  # every sampled token; the scheduler never looks at their values


def small_config():
    """A small engine config on the target model, with ngram speculation at k_max."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from vllm.config import (
        CacheConfig,
        ModelConfig,
        SchedulerConfig,
        SpeculativeConfig,
        VllmConfig,
    )

    model = str(LM_DIR / "target")
    config = VllmConfig(
        model_config=ModelConfig(
            model=model,
            tokenizer=model,
            dtype="float32",
            seed=0,
            max_model_len=TEST_ENGINE["max_model_len"],
            skip_tokenizer_init=True,
        ),
        scheduler_config=SchedulerConfig(
            max_num_seqs=TEST_ENGINE["max_num_seqs"],
            max_num_batched_tokens=TEST_ENGINE["max_num_batched_tokens"],
            max_model_len=TEST_ENGINE["max_model_len"],
            is_encoder_decoder=False,
            enable_chunked_prefill=True,
        ),
        cache_config=CacheConfig(block_size=BLOCK, enable_prefix_caching=False),
        speculative_config=SpeculativeConfig(
            method="ngram",
            num_speculative_tokens=K_MAX,
            prompt_lookup_min=2,
            prompt_lookup_max=4,
        ),
    )
    # vLLM's CPU platform turns async scheduling off while it builds the config; a GPU
    # platform leaves it on for the speculation methods that support it.
    config.scheduler_config.async_scheduling = True
    return config


@pytest.fixture(scope="module")
def vllm_config():
    """`small_config()`, built once: the schedulers of these tests only read it."""
    return small_config()


def build(vllm_config, *, num_blocks: int = 200, cls=None):
    """A fresh scheduler of `cls` (default: the async hook) over `num_blocks` KV blocks."""
    import torch
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from serving.async_scheduler_hook import AsyncSpecControlScheduler

    vllm_config.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=1, dtype=torch.float32)
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)],
    )
    return (cls or AsyncSpecControlScheduler)(
        vllm_config=vllm_config,
        kv_cache_config=kv_cache_config,
        structured_output_manager=StructuredOutputManager(vllm_config),
        log_stats=False,
        block_size=BLOCK,
    )


def add(scheduler, rid: str, max_tokens: int = 40, prompt=PROMPT, arrival_time: float = 0.0):
    """Queue a greedy request of `max_tokens` outputs (EOS ignored)."""
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
    scheduler.add_request(Request(rid, list(prompt), params, None, arrival_time=arrival_time))


class Step:
    """One scheduled step and which of its requests sample a token (decided at scheduling)."""

    def __init__(self, scheduler) -> None:
        self.output = scheduler.schedule()
        self.samples = {
            rid: not scheduler.requests[rid].is_prefill_chunk
            for rid in self.output.num_scheduled_tokens
        }

    @property
    def drafts(self) -> dict[str, int]:
        """Drafts scheduled for verification, per request."""
        return {rid: len(d) for rid, d in self.output.scheduled_spec_decode_tokens.items()}

    def runner_output(self, accepted: dict[str, int] | None = None):
        """The model's verdict: each sampling request accepts `accepted[rid]` drafts (all
        of them if not given) and samples one token more."""
        from vllm.v1.outputs import ModelRunnerOutput

        accepted = accepted or {}
        rids = list(self.output.num_scheduled_tokens)
        sampled = []
        for rid in rids:
            drafted = self.drafts.get(rid, 0)
            n = accepted.get(rid, drafted)
            assert n <= drafted
            sampled.append([TOKEN] * (n + 1) if self.samples[rid] else [])
        return ModelRunnerOutput(
            req_ids=rids,
            req_id_to_index={r: i for i, r in enumerate(rids)},
            sampled_token_ids=sampled,
        )

    def finish(self, scheduler, accepted: dict[str, int] | None = None) -> StepRecord:
        """Take in this step's output; return the record the hook made of it."""
        before = scheduler.last_record
        scheduler.update_from_output(self.output, self.runner_output(accepted))
        record = scheduler.last_record
        assert record is not before
        return record


def by_id(record: StepRecord) -> dict:
    return {r.request_id: r for r in record.requests}


class ScriptedController:
    """Returns scripted decisions and keeps every observation and record it gets, in order."""

    name = "scripted"

    def __init__(self, decisions: list[Decision]) -> None:
        self.decisions = list(decisions)
        self.events: list[tuple[str, object]] = []

    def reset(self) -> None:
        self.events.clear()

    def decide(self, obs: Observation) -> Decision:
        self.events.append(("decide", obs))
        return self.decisions.pop(0)

    def observe(self, record: StepRecord) -> None:
        self.events.append(("observe", record))


def features() -> FeatureBuilder:
    return FeatureBuilder(
        FeatureConfig(
            k_max=K_MAX,
            max_num_seqs=TEST_ENGINE["max_num_seqs"],
            max_num_batched_tokens=TEST_ENGINE["max_num_batched_tokens"],
            ttft_slo_s=1.0,
            tpot_slo_s=0.05,
        )
    )


# --- per-step k ----------------------------------------------------------------------------


def test_per_step_k_cuts_the_placeholders_at_once_and_sizes_the_next_ones(vllm_config):
    scheduler = build(vllm_config)
    add(scheduler, "a")
    add(scheduler, "b")

    scheduler.set_next(4)
    prefill = Step(scheduler)
    assert prefill.output.num_scheduled_tokens == {"a": 20, "b": 20} and prefill.drafts == {}
    assert prefill.output.num_spec_tokens_to_schedule == 4
    # vLLM made its placeholders from the budget the hook set: 4 drafts each for the next step.
    assert all(scheduler.requests[r].spec_token_ids == [-1] * 4 for r in "ab")

    scheduler.set_next(2)  # decided before the prefill's output exists
    first = Step(scheduler)
    assert first.drafts == {"a": 2, "b": 2}  # the cut acts on this step
    assert first.output.num_scheduled_tokens == {"a": 3, "b": 3}
    assert first.output.num_spec_tokens_to_schedule == 2
    assert all(scheduler.requests[r].spec_token_ids == [-1] * 2 for r in "ab")

    record = prefill.finish(scheduler)
    assert (record.step, record.in_flight, record.k) == (0, 1, 4)
    assert [(r.prefill_tokens, r.generated, r.drafted) for r in record.requests] == [(20, 1, 0)] * 2

    scheduler.set_next(4)
    second = Step(scheduler)
    # Only 2 placeholders were made for this step: a k above the last budget acts a step late.
    assert second.drafts == {"a": 2, "b": 2}
    assert second.output.num_spec_tokens_to_schedule == 4

    record = first.finish(scheduler, {"a": 2, "b": 0})
    assert (record.step, record.in_flight, record.k, record.draft_budget) == (1, 1, 2, 2)
    a, b = by_id(record)["a"], by_id(record)["b"]
    assert (a.k, a.proposed, a.drafted, a.accepted, a.generated) == (2, 4, 2, 2, 3)
    assert (b.k, b.proposed, b.drafted, b.accepted, b.generated) == (2, 4, 2, 0, 1)
    # The context is what the step's attention read: the prompt and the first output less
    # the token it computes, whatever vLLM counted as computed while the prefill was in flight.
    assert a.context == b.context == 20
    assert (a.output_tokens, b.output_tokens) == (4, 2)

    scheduler.set_next(3)
    third = Step(scheduler)
    assert third.drafts == {"a": 3, "b": 3}
    record = second.finish(scheduler, {"a": 1, "b": 2})
    assert (record.step, record.in_flight) == (2, 1)
    assert {r.request_id: (r.k, r.proposed, r.drafted) for r in record.requests} == {
        "a": (4, 2, 2),
        "b": (4, 2, 2),
    }
    assert (by_id(record)["a"].context, by_id(record)["b"].context) == (23, 21)

    record = third.finish(scheduler)
    assert (record.step, record.in_flight) == (3, 0)  # nothing was scheduled after it
    assert {r.request_id: r.drafted for r in record.requests} == {"a": 3, "b": 3}


def test_the_model_clock_drafts_k_max_and_prices_what_each_step_verified(vllm_config):
    class PerDraft:
        def seconds(self, load: StepLoad) -> float:
            return 1.0 + sum(load.verified) + sum(n for n, _ in load.prefill) / 100

    scheduler = build(vllm_config)
    scheduler.use_cost_model(PerDraft())
    add(scheduler, "a")
    scheduler.set_next(1)
    prefill = Step(scheduler)
    assert prefill.output.num_spec_tokens_to_schedule == K_MAX
    scheduler.set_next(1)
    first = Step(scheduler)
    assert first.drafts == {"a": 1} and first.output.num_spec_tokens_to_schedule == K_MAX
    assert prefill.finish(scheduler).step_time == pytest.approx(1.2)
    record = first.finish(scheduler, {"a": 0})
    assert record.step_time == 2.0  # one draft verified, whatever k_max proposed
    assert by_id(record)["a"].proposed == K_MAX  # the counterfactuals see the k_max proposal


# --- per-request k -------------------------------------------------------------------------


def test_per_request_k_trims_each_request_and_the_budget_covers_the_largest(vllm_config):
    scheduler = build(vllm_config)
    for rid in "abc":
        add(scheduler, rid)
    scheduler.set_next(4)
    prefill = Step(scheduler)

    scheduler.set_next(1, {"a": 3, "c": 0})  # vLLM's own ids: no names registered (serving)
    first = Step(scheduler)
    assert first.drafts == {"a": 3, "b": 1}  # c verifies nothing, so it has no entry
    assert first.output.num_scheduled_tokens == {"a": 4, "b": 2, "c": 1}
    assert first.output.num_spec_tokens_to_schedule == 3  # what a may verify next step

    prefill.finish(scheduler)
    scheduler.set_next(2)
    second = Step(scheduler)
    assert second.drafts == {"a": 2, "b": 2, "c": 2}

    record = first.finish(scheduler, {"a": 1, "b": 1})
    assert record.k == 1
    assert {r.request_id: (r.k, r.drafted, r.accepted) for r in record.requests} == {
        "a": (3, 3, 1),
        "b": (1, 1, 1),
        "c": (0, 0, 0),
    }
    assert record.spec_tokens == 4 and record.draft_budget == 3
    second.finish(scheduler)


def test_names_given_to_requests_carry_their_per_request_k(vllm_config):
    scheduler = build(vllm_config)
    add(scheduler, "internal-a")
    scheduler.name_request("internal-a", "a")
    Step(scheduler)
    scheduler.set_next(1, {"a": 3})
    step = Step(scheduler)
    assert step.drafts == {"internal-a": 3}
    assert step.output.num_spec_tokens_to_schedule == 3


# --- what the controller is given ----------------------------------------------------------


def test_the_controller_decides_each_step_before_the_previous_steps_record_arrives(vllm_config):
    decisions = [Decision(4), Decision(3), Decision(2), Decision(1, {"b": 4})]
    controller = ScriptedController(decisions)
    scheduler = build(vllm_config)
    scheduler.attach(controller, features())
    add(scheduler, "a")
    add(scheduler, "b")

    steps = [Step(scheduler), Step(scheduler)]
    steps.pop(0).finish(scheduler)
    steps.append(Step(scheduler))
    steps.pop(0).finish(scheduler, {"a": 1, "b": 3})
    steps.append(Step(scheduler))
    for step in steps:
        step.finish(scheduler)

    kinds = [kind for kind, _ in controller.events]
    assert kinds == ["decide", "decide", "observe", "decide", "observe", "decide"] + ["observe"] * 2
    observations = [e for kind, e in controller.events if kind == "decide"]
    records = [e for kind, e in controller.events if kind == "observe"]
    assert [(r.step, r.in_flight, r.k) for r in records] == [
        (0, 1, 4),
        (1, 1, 3),
        (2, 1, 2),
        (3, 0, 1),
    ]
    # Deciding step 2, the controller has seen step 0 only (prev_k 4, nothing drafted yet);
    # deciding step 3, it has seen step 1 (k 3, 4 of 6 drafts accepted).
    assert [o.prev_k for o in observations] == [0, 0, 4, 3]
    assert [o.has_acceptance for o in observations] == [False, False, False, True]
    assert by_id(records[1])["a"].accepted == 1 and by_id(records[1])["b"].accepted == 3
    assert {r.request_id: r.k for r in records[3].requests} == {"a": 1, "b": 4}


def test_a_controller_that_looks_at_the_drafts_is_refused_naming_it(vllm_config):
    from serving.scheduler_choice import drafts_refused

    class DraftReader(ScriptedController):
        name = "oracle"

        def see_drafts(self, views, prefill_waiting) -> None:
            raise AssertionError("never called")

    scheduler = build(vllm_config)
    with pytest.raises(ValueError, match="controller 'oracle' looks at each request's draft"):
        scheduler.attach(DraftReader([]), features())
    assert scheduler.controller is None
    assert "--no-async-scheduling" in drafts_refused("oracle")


# --- preemption and abort ------------------------------------------------------------------


def run(scheduler, num_steps: int, k: int = 4) -> tuple[list[Step], list[StepRecord]]:
    """Run `num_steps` async steps at k, every draft accepted: schedule step t+1, then take
    in step t's output, as vLLM's engine core does. Returns the steps and their records."""
    steps, records = [], []
    for _ in range(num_steps):
        scheduler.set_next(k)
        steps.append(Step(scheduler))
        if len(steps) > 1:
            records.append(steps[-2].finish(scheduler))
    records.append(steps[-1].finish(scheduler))
    return steps, records


def test_a_request_preempted_while_its_step_runs_keeps_that_steps_outcome(vllm_config):
    # 6 blocks of 16 tokens, one of them vLLM's null block: each 20-token prompt takes 2,
    # and past 32 tokens each decode needs a third. a gets the last free block and b is
    # preempted; it comes back the step after, recomputed into the two blocks left.
    scheduler = build(vllm_config, num_blocks=6)
    add(scheduler, "a", max_tokens=60)
    add(scheduler, "b", max_tokens=60)
    steps, records = run(scheduler, 8)
    assert [r.step for r in records] == list(range(8))
    p = next(i for i, s in enumerate(steps) if s.output.preempted_req_ids)
    assert steps[p].output.preempted_req_ids == {"b"}
    assert "b" not in steps[p].output.num_scheduled_tokens and "b" not in by_id(records[p])
    # The step b was running when it was preempted still delivered its tokens.
    before = by_id(records[p - 1])["b"]
    assert (before.drafted, before.accepted, before.generated) == (4, 4, 5)
    # Back in, it recomputes its prompt and outputs from an empty cache, drafting nothing.
    back = by_id(records[p + 1])["b"]
    assert back.context == 0 and back.drafted == 0
    assert back.prefill_tokens == len(PROMPT) + before.output_tokens


def test_a_request_aborted_while_its_step_runs_has_no_outcome_and_is_forgotten(vllm_config):
    from vllm.v1.request import RequestStatus

    controller = ScriptedController([Decision(4)] + [Decision(2, {"a": 3})] * 3)
    scheduler = build(vllm_config)
    scheduler.attach(controller, features())
    add(scheduler, "a")
    add(scheduler, "b")
    first = Step(scheduler)
    second = Step(scheduler)
    first.finish(scheduler)
    third = Step(scheduler)
    # vLLM's engine core takes in aborts before the output of the step in flight.
    scheduler.finish_requests("a", RequestStatus.FINISHED_ABORTED)
    record = second.finish(scheduler)
    assert [r.request_id for r in record.requests] == ["b"]
    assert record.finished == ()  # an abort is no completion
    assert record.spec_tokens == 2
    assert scheduler.control.draft_budget({"b"}) == 2  # its override is gone
    record = third.finish(scheduler)
    assert [r.request_id for r in record.requests] == ["b"]
    fourth = Step(scheduler)
    assert list(fourth.output.num_scheduled_tokens) == ["b"]
    fourth.finish(scheduler)


def test_a_finished_request_leaves_its_latency_record_once(vllm_config):
    scheduler = build(vllm_config)
    add(scheduler, "a", max_tokens=8, arrival_time=100.0)
    scheduler.clock = iter(range(1000, 2000)).__next__
    _, records = run(scheduler, 5, k=2)
    finished = [f for r in records for f in r.finished]
    assert [(f.request_id, f.output_tokens, f.arrival_at) for f in finished] == [("a", 8, 100.0)]
    assert sum(r.generated for r in records) == 8


# --- the scheduling the hook runs on -------------------------------------------------------


def test_each_hook_refuses_the_other_kind_of_scheduling(vllm_config):
    from serving.async_scheduler_hook import SYNC_REFUSED
    from serving.scheduler_hook import ASYNC_REFUSED, SpecControlScheduler

    with pytest.raises(ValueError, match="--no-async-scheduling") as refused:
        build(vllm_config, cls=SpecControlScheduler)
    assert str(refused.value) == ASYNC_REFUSED
    sync = small_config()
    sync.scheduler_config.async_scheduling = False
    with pytest.raises(ValueError, match="SpecControlScheduler instead") as refused:
        build(sync)
    assert str(refused.value) == SYNC_REFUSED


def test_outputs_out_of_order_are_refused(vllm_config):
    scheduler = build(vllm_config)
    add(scheduler, "a")
    first, second = Step(scheduler), Step(scheduler)
    with pytest.raises(RuntimeError, match="not the oldest one scheduled"):
        second.finish(scheduler)
    first.finish(scheduler)
    second.finish(scheduler)


# --- the server's scheduler on the async hook ----------------------------------------------


def test_the_servers_async_scheduler_runs_its_controller_and_says_which_scheduler_it_is():
    from prometheus_client import REGISTRY

    from serving.controller_settings import ControllerSettings
    from serving.serving_scheduler import AsyncServingScheduler

    config = small_config()
    config.additional_config = ControllerSettings("static:2").to_additional_config()
    scheduler = build(config, cls=AsyncServingScheduler)
    labels = {"scheduler": "AsyncServingScheduler", "scheduling": "async"}
    assert REGISTRY.get_sample_value("turbospec:scheduler_info", labels) == 1
    add(scheduler, "a")
    prefill = Step(scheduler)
    assert prefill.output.num_spec_tokens_to_schedule == 2
    first = Step(scheduler)
    assert first.drafts == {"a": 2}
    prefill.finish(scheduler)
    assert first.finish(scheduler).k == 2
