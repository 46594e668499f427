"""A vLLM V1 scheduler whose speculation length is chosen at every step, per request.

`SpecControlScheduler` is installed with `EngineArgs(scheduler_cls=SpecControlScheduler)`.
Around vLLM's own `schedule()` and `update_from_output()` it:

1. truncates each running request's draft (`spec_token_ids`) to that request's k before
   scheduling, so the step verifies at most k drafts per request (effective at once);
2. sets `SchedulerOutput.num_spec_tokens_to_schedule`, the drafting budget the model runner
   uses to propose drafts during this step, which the next step verifies (effective one
   step later; vLLM's own dynamic speculative decoding uses the same field);
3. records per request the tokens drafted, accepted and generated, and emits one
   `StepRecord` per step to its listeners.

k comes from, in order: a one-step decision set with `set_next(...)` (the environment's
action), else the attached controller, else the last k used. It must lie in 0..k_max,
where k_max is the engine's `num_speculative_tokens`.

Two clocks. On the wall clock (serving, and replays that check the cost model) a step lasts
what it measured. On the model clock (`use_cost_model`) a step lasts what a cost model says
the step computed, so a replay repeats to the token whatever the machine is doing; the hook
then also sets the drafting budget to k_max at every step and cuts each request's drafts to
its k only at verification. The chosen k thus acts on its own step, and every request's
record holds the k_max proposal's size, from which the accepted count at every other k
follows (`RequestStep.accepted_if`). The cost model charges only what the chosen k
computed. Drafting k_max costs this machine's wall time, not the model clock's.

The hook is built on the synchronous `Scheduler`, which is what vLLM's CPU platform runs. With
async scheduling (vLLM's GPU default for EAGLE, MTP and draft-model speculation) the engine
schedules step t+1 before step t's drafts exist and keeps placeholder drafts in
`spec_token_ids`, so neither the truncation nor the recorded counts would mean what they say
here: the hook refuses that configuration instead (`check_sync_scheduling`).

The control itself (the decision, the cuts, the pricing, the records) is the step-control
core `serving.step_control`, which the twin drives too; this class adapts vLLM's `Request` to
it. This module is the only place that reads vLLM's scheduler internals (pinned: vllm
0.32.0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from agents.controller import Controller
from agents.cost import CostModel
from agents.features import FeatureBuilder
from agents.records import DraftView, StepRecord
from serving.step_control import Outcome, Plan, Scheduled, StepControl, StepListener

ASYNC_REFUSED = (
    "the speculation-control scheduler needs synchronous scheduling, but async scheduling is "
    "on: pass --no-async-scheduling (EngineArgs(async_scheduling=False)). Async scheduling "
    "keeps placeholder drafts one step ahead, which per-step k control does not handle."
)


def check_sync_scheduling(scheduler_config) -> None:
    """Raise ValueError if vLLM's scheduler config asks for async scheduling."""
    if scheduler_config.async_scheduling:
        raise ValueError(ASYNC_REFUSED)


class SpecControlScheduler(Scheduler):
    """vLLM's synchronous V1 scheduler with per-step, per-request speculation length."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_sync_scheduling(self.scheduler_config)
        self.k_max: int = self.num_spec_tokens
        if self.k_max > 0:
            # Declare a dynamic schedule, as vLLM's own batch-size table does: this turns off
            # the padding of resumed requests to k_max drafts (a CUDA-graph aid), which would
            # verify more than the chosen k.
            self.dynamic_sd_lookup = [self.k_max] * (self.max_num_running_reqs + 1)
        self.clock: Callable[[], float] = time.time
        self.control = StepControl(self.k_max)
        """The decisions, cuts, pricing and records (`serving.step_control`)."""
        self._names: dict[str, str] = {}
        # Set by schedule(), read by update_from_output() of the same step.
        self._step_start: tuple[Plan, float, float, float] | None = None
        self._step_before: dict[str, tuple[Request, int, int]] = {}

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
        """The record of the last step, or None before any."""
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
        """Apply this step's k, let vLLM schedule, then set the drafting budget."""
        t0, c0 = time.perf_counter(), time.thread_time()
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
                request.spec_token_ids = request.spec_token_ids[:k]

        output = super().schedule(*args, **kwargs)

        self._step_start = (plan, t0, c0, started_at)
        # schedule() already advanced num_computed_tokens by this step's tokens.
        self._step_before = {
            rid: (
                self.requests[rid],
                self.requests[rid].num_output_tokens,
                self.requests[rid].num_computed_tokens - num_tokens,
            )
            for rid, num_tokens in output.num_scheduled_tokens.items()
        }
        if self.k_max > 0:
            output.num_spec_tokens_to_schedule = (
                self.k_max
                if self.cost_model is not None
                else self.control.draft_budget({names.get(r.request_id) for r in self.running})
            )
        return output

    def update_from_output(
        self, scheduler_output: SchedulerOutput, model_runner_output: ModelRunnerOutput
    ):
        """Let vLLM process the step's output, then record what the step did."""
        # Count sampled tokens first: vLLM trims a finishing request's list in place.
        sampled = model_runner_output.sampled_token_ids
        index = model_runner_output.req_id_to_index
        num_sampled = {
            rid: len(sampled[index[rid]]) if sampled and rid in index else 0
            for rid in scheduler_output.num_scheduled_tokens
        }
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        self._record(scheduler_output, num_sampled)
        return outputs

    # --- internals -------------------------------------------------------------------------

    def _record(self, out: SchedulerOutput, num_sampled: Mapping[str, int]) -> StepRecord:
        plan, t0, c0, started_at = self._step_start
        wall_time = time.perf_counter() - t0
        cpu_time = time.thread_time() - c0
        names = self._names
        drafts = out.scheduled_spec_decode_tokens
        before = [self._step_before[rid] for rid in out.num_scheduled_tokens]
        scheduled = [
            Scheduled(
                request_id=names.get(request.request_id, request.request_id),
                num_new=num_tokens,
                drafted=len(drafts.get(request.request_id, ())),
                context=context,
                prompt_len=request.num_prompt_tokens,
                num_tokens=request.num_prompt_tokens + outputs_before,
            )
            for (request, outputs_before, context), num_tokens in zip(
                before, out.num_scheduled_tokens.values(), strict=True
            )
        ]
        step_time, prefills = self.control.price(scheduled, wall_time)

        outcomes = []
        for s, (request, outputs_before, _), prefill in zip(
            scheduled, before, prefills, strict=True
        ):
            # vLLM's own count: every sampled token past the first is an accepted draft.
            accepted = max(num_sampled[request.request_id] - 1, 0) if s.drafted else 0
            outcomes.append(
                Outcome(
                    request_id=s.request_id,
                    drafted=s.drafted,
                    accepted=accepted,
                    generated=request.num_output_tokens - outputs_before,
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
            plan,
            outcomes,
            started_at=started_at,
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
        for request, _, _ in before:
            if request.is_finished():
                self._names.pop(request.request_id, None)
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
        """Every running request past its prompt, with the drafts it holds."""
        return [
            DraftView(
                self._names.get(r.request_id, r.request_id),
                r.num_output_tokens,
                r.num_computed_tokens,
                tuple(r.spec_token_ids),
            )
            for r in self.running
            if r.num_computed_tokens >= r.num_prompt_tokens
        ]

    def _forget(self, rid: str) -> None:
        self.control.forget(self._names.pop(rid, rid))
