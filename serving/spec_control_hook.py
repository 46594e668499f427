"""What both scheduler hooks do around vLLM's V1 scheduler: the adapter to the step-control core.

`SpecControlHook` is mixed in ahead of a vLLM scheduler class: `SpecControlScheduler`
(`serving.scheduler_hook`, on the synchronous `Scheduler`) and `AsyncSpecControlScheduler`
(`serving.async_scheduler_hook`, on `AsyncScheduler`), as vLLM composes its own
`DiffusionAsyncScheduler` (v1/core/sched/diffusion_scheduler.py). Around vLLM's calls it:

1. `schedule()`, before vLLM schedules: begins the step in the core (`StepControl.begin`)
   and cuts each running request's `spec_token_ids` to that request's k. These are the
   drafts the step verifies: real ones on the synchronous scheduler, placeholders under
   async scheduling, whose drafts stay on the worker, which verifies as many of them as
   the scheduler kept (v1/worker/gpu/model_runner.py counts each request's
   `scheduled_spec_decode_tokens`);
2. `_update_after_schedule()`, as vLLM finishes scheduling and before it advances the
   requests: sets `SchedulerOutput.num_spec_tokens_to_schedule`, the drafts per request to
   propose during this step for the next one (`AsyncScheduler` sizes the next step's
   placeholders from it in this very call), and notes what each scheduled request held;
3. `update_from_output()`, after vLLM took in a step's output: records that step
   (`StepControl.record`).

A step waits in `_in_flight` from its scheduling to its output: alone on the synchronous
scheduler, which updates each step before scheduling the next; with the step after it under
async scheduling, whose engine schedules step t+1 before step t's output arrives. Outputs
come back in the order their steps were scheduled (vLLM's batch queue is first in, first
out: v1/engine/core.py, `step_with_batch_queue`), and the hook checks that they do.

A request's context before a step (the tokens its attention read) is vLLM's computed count
when nothing of the request is in flight. With an earlier step still in flight (async
decoding), vLLM counts that step's drafts as computed until their rejections arrive, so the
hook takes the context when the step's output comes, from the tokens delivered by then: the
prompt and the outputs less the last output token, which the step computes. A request
aborted while its step ran, or whose output vLLM discards, is priced (it was computed) but
has no outcome in the record: vLLM delivers it nothing.

This module and the two hooks are the only code that reads vLLM's scheduler internals
(pinned: vllm 0.32.0).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from agents.confidence import shipped_calibrator
from agents.confidence.ngram import Contexts
from agents.controller import Controller
from agents.cost import CostModel
from agents.features import FeatureBuilder
from agents.records import DraftView, StepRecord
from serving.step_control import Outcome, Plan, Scheduled, StepControl, StepListener


class _Held(NamedTuple):
    """One scheduled request as the hook noted it before vLLM advanced it."""

    name: str
    """Its name in records."""
    request: Request
    computed: int
    """vLLM's count of its computed tokens before the step."""
    in_flight: int
    """Its output tokens of earlier steps not yet delivered (async scheduling only)."""


class _Step(NamedTuple):
    """A step scheduled and not yet recorded."""

    output: SchedulerOutput
    plan: Plan
    started_at: float
    """Engine-clock time when its scheduling began."""
    perf_start: float
    cpu_start: float
    held: Mapping[str, _Held]
    """Every request it scheduled, by vLLM's id."""


class SpecControlHook:
    """Speculation length per step and per request around a vLLM V1 scheduler (see the
    module); mixed in ahead of vLLM's `Scheduler` or `AsyncScheduler`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.k_max: int = self.num_spec_tokens
        """The largest k: vLLM's `num_speculative_tokens` (0 without speculation)."""
        if self.k_max > 0:
            # Declare a dynamic schedule, as vLLM's own batch-size table does: this turns off
            # the padding of resumed requests to k_max drafts (a CUDA-graph aid), which would
            # verify more than the chosen k.
            self.dynamic_sd_lookup = [self.k_max] * (self.max_num_running_reqs + 1)
        self.clock: Callable[[], float] = time.time
        """The clock that stamps each step's start (a replay sets a virtual one)."""
        self.control = StepControl(self.k_max)
        """The decisions, cuts, pricing and records (`serving.step_control`)."""
        speculative = self.vllm_config.speculative_config
        self.method: str | None = speculative.method if speculative is not None else None
        """The speculation method (ngram, draft_model, ...), None without speculation."""
        self._contexts = (
            Contexts(self.k_max, speculative.prompt_lookup_min, speculative.prompt_lookup_max)
            if self.method == "ngram" and self.k_max
            else None
        )
        if self.k_max > 0 and self.method is not None:
            self.control.use_calibrator(shipped_calibrator(self.method, self.k_max))
        self.draft_confidence = None
        """Where a draft model's slot features come from (`serving.draft_confidence`, set by
        the in-process `LiveEngine`); None: drafts of a draft model carry no features."""
        self._names: dict[str, str] = {}
        self._in_flight: deque[_Step] = deque()
        # Set by schedule(), taken by _update_after_schedule() in the same call.
        self._beginning: tuple[Plan, float, float, float] | None = None

    # --- control ---------------------------------------------------------------------------

    @property
    def controller(self) -> Controller | None:
        """The attached controller, or None."""
        return self.control.controller

    @property
    def features(self) -> FeatureBuilder | None:
        """The attached controller's feature builder, or None."""
        return self.control.features

    @property
    def cost_model(self) -> CostModel | None:
        """What prices each step on the model clock, or None for the wall clock."""
        return self.control.cost_model

    @property
    def last_record(self) -> StepRecord | None:
        """The record of the last step recorded, or None before any."""
        return self.control.last_record

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k before every step from `features`' observation."""
        self.control.attach(controller, features)

    def use_cost_model(self, cost_model: CostModel | None) -> None:
        """Time steps by `cost_model` (the model clock, drafting k_max every step), or by
        the wall clock when None."""
        self.control.cost_model = cost_model

    def set_next(self, k: int, per_request: Mapping[str, int] | None = None) -> None:
        """Use k (and per-request overrides) for the next step only, bypassing the controller."""
        self.control.set_next(k, per_request)

    def add_listener(self, listener: StepListener) -> None:
        """Call `listener(record)` after every step."""
        self.control.listeners.append(listener)

    def name_request(self, internal_id: str, name: str) -> None:
        """Report `internal_id` (vLLM's id, with its random suffix) as `name` in records."""
        self._names[internal_id] = name

    # --- vLLM scheduler interface ----------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a new request and count it as an arrival."""
        super().add_request(request)
        self.control.arrived()

    def finish_requests(
        self, request_ids: str | Iterable[str] | None, finished_status: RequestStatus
    ) -> list[Request]:
        """Finish requests from outside (aborts) and forget what the hook held for them."""
        finished = super().finish_requests(request_ids, finished_status)
        for request in finished:
            self._forget(request.request_id)
        return finished

    def schedule(self, *args, **kwargs) -> SchedulerOutput:
        """Begin the step and cut each running request's drafts to its k, then let vLLM
        schedule (which sets the drafting budget on its way out, `_update_after_schedule`)."""
        perf_start, cpu_start = time.perf_counter(), time.thread_time()
        started_at = self.clock()
        names = self._names
        running = list(self.running)
        plan = self.control.begin(
            started_at,
            [(names.get(r.request_id, r.request_id), len(r.spec_token_ids)) for r in running],
            self._draft_views,
            self._prefill_waiting,
        )
        for request, k in zip(running, plan.ks, strict=True):
            if len(request.spec_token_ids) > k:
                # A new list, never a cut in place: under async scheduling every request
                # holds the one placeholder list the scheduler shares.
                request.spec_token_ids = request.spec_token_ids[:k]
        self._beginning = (plan, started_at, perf_start, cpu_start)
        return super().schedule(*args, **kwargs)

    def _update_after_schedule(self, scheduler_output: SchedulerOutput) -> None:
        """Set the drafting budget and note the scheduled requests, then let vLLM advance
        them (and, under async scheduling, give them placeholders for the budget)."""
        plan, started_at, perf_start, cpu_start = self._beginning
        self._beginning = None
        names, requests = self._names, self.requests
        held = {}
        for rid in scheduler_output.num_scheduled_tokens:
            request = requests[rid]
            held[rid] = _Held(
                names.get(rid, rid),
                request,
                request.num_computed_tokens,
                request.num_output_placeholders,
            )
        if self.k_max > 0:
            scheduler_output.num_spec_tokens_to_schedule = (
                self.k_max
                if self.cost_model is not None
                else self.control.draft_budget(
                    {names.get(r.request_id, r.request_id) for r in self.running}
                )
            )
        super()._update_after_schedule(scheduler_output)
        self._in_flight.append(
            _Step(scheduler_output, plan, started_at, perf_start, cpu_start, held)
        )

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ):
        """Let vLLM take in a step's output, then record what that step did."""
        if not self._in_flight or self._in_flight[0].output is not scheduler_output:
            raise RuntimeError(
                "update_from_output() got the output of a step that is not the oldest one "
                f"scheduled ({len(self._in_flight)} in flight): vLLM returns outputs in order"
            )
        step = self._in_flight.popleft()
        # Count sampled tokens first: vLLM trims a finishing request's list in place.
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        num_sampled = {
            rid: len(sampled[index[rid]]) if sampled and rid in index else 0
            for rid in scheduler_output.num_scheduled_tokens
        }
        outputs_before = {rid: h.request.num_output_tokens for rid, h in step.held.items()}
        delivered = {rid for rid, h in step.held.items() if self._takes_output(h.request)}
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._record(step, num_sampled, outputs_before, delivered)
        return outputs

    # --- internals -------------------------------------------------------------------------

    def _takes_output(self, request: Request) -> bool:
        """Whether vLLM's update_from_output will give `request` this step's output: not
        when it finished (was aborted) while the step ran, nor when its output went stale
        in a preemption that drops it (v1/core/sched/scheduler.py, update_from_output)."""
        if self.requests.get(request.request_id) is not request or request.is_finished():
            return False
        return not (request.num_stale_output_tokens > 0 and request.drop_stale_output)

    def _record(
        self,
        step: _Step,
        num_sampled: Mapping[str, int],
        outputs_before: Mapping[str, int],
        delivered: set[str],
    ) -> StepRecord:
        wall_time = time.perf_counter() - step.perf_start
        cpu_time = time.thread_time() - step.cpu_start
        out = step.output
        drafts = out.scheduled_spec_decode_tokens
        scheduled = []
        for rid, num_new in out.num_scheduled_tokens.items():
            held = step.held[rid]
            request = held.request
            num_tokens = request.num_prompt_tokens + outputs_before[rid]
            scheduled.append(
                Scheduled(
                    request_id=held.name,
                    num_new=num_new,
                    drafted=len(drafts.get(rid, ())),
                    context=held.computed if not held.in_flight else num_tokens - 1,
                    prompt_len=request.num_prompt_tokens,
                    num_tokens=num_tokens,
                )
            )
        step_time, prefills = self.control.price(scheduled, wall_time)

        outcomes = []
        for rid, s, prefill in zip(out.num_scheduled_tokens, scheduled, prefills, strict=True):
            if rid not in delivered:
                continue
            request = step.held[rid].request
            # vLLM's own count: every sampled token past the first is an accepted draft.
            accepted = max(num_sampled[rid] - 1, 0) if s.drafted else 0
            outcomes.append(
                Outcome(
                    request_id=s.request_id,
                    drafted=s.drafted,
                    accepted=accepted,
                    generated=request.num_output_tokens - outputs_before[rid],
                    prefill=prefill,
                    output_tokens=request.num_output_tokens,
                    context=s.context,
                    hits=None,
                    finished=request.is_finished(),
                    arrival_time=request.arrival_time,
                    prompt_len=s.prompt_len,
                )
            )
        num_running, num_waiting = self.get_request_counts()
        waiting_arrivals = [r.arrival_time for r in self.waiting]
        record = self.control.record(
            step.plan,
            outcomes,
            started_at=step.started_at,
            step_time=step_time,
            draft_budget=out.num_spec_tokens_to_schedule,
            num_running=num_running,
            num_waiting=num_waiting,
            prefill_tokens_waiting=self._prefill_waiting(),
            oldest_waiting_arrival=min(waiting_arrivals) if waiting_arrivals else None,
            kv_cache_usage=self.get_kv_cache_usage(),
            wall_time=wall_time,
            cpu_time=cpu_time,
        )
        for rid, held in step.held.items():
            if held.request.is_finished():
                self._names.pop(rid, None)
                if self._contexts is not None:
                    self._contexts.forget(rid)
        return record

    def _prefill_waiting(self) -> int:
        """Prompt tokens not yet computed, over waiting and partly prefilled requests."""
        waiting = sum(r.num_tokens - r.num_computed_tokens for r in self.waiting)
        return waiting + sum(
            r.num_prompt_tokens - r.num_computed_tokens
            for r in self.running
            if r.num_computed_tokens < r.num_prompt_tokens
        )

    def _draft_views(self) -> list[DraftView]:
        """Every running request past its prompt, with the drafts it holds and their slot
        features (ngram: from its token ids, `agents.confidence.ngram`, all requests in one
        call; a draft model: as its proposer computed them, `serving.draft_confidence`)."""
        decoding = [r for r in self.running if r.num_computed_tokens >= r.num_prompt_tokens]
        features: list = [None] * len(decoding)
        if self._contexts is not None:
            drafting = [i for i, r in enumerate(decoding) if r.spec_token_ids]
            scored = self._contexts.score(
                [
                    (decoding[i].request_id, decoding[i].all_token_ids, decoding[i].spec_token_ids)
                    for i in drafting
                ]
            )
            for i, row in zip(drafting, scored, strict=True):
                features[i] = row
        elif self.draft_confidence is not None:
            features = [
                self.draft_confidence.features(r.request_id) if r.spec_token_ids else None
                for r in decoding
            ]
        return [
            DraftView(
                self._names.get(r.request_id, r.request_id),
                r.num_output_tokens,
                r.num_computed_tokens,
                tuple(r.spec_token_ids),
                f,
            )
            for r, f in zip(decoding, features, strict=True)
        ]

    def _forget(self, rid: str) -> None:
        self.control.forget(self._names.pop(rid, rid))
        if self._contexts is not None:
            self._contexts.forget(rid)
