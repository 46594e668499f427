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

This module is the only place that reads vLLM's scheduler internals (pinned: vllm 0.32.0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.outputs import ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus

from agents.controller import Controller, Decision, check_k
from agents.cost import CostModel, StepLoad
from agents.features import FeatureBuilder
from agents.oracle import DraftView
from agents.records import FinishedRequest, RequestStep, StepRecord

StepListener = Callable[[StepRecord], None]


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
        self.cost_model: CostModel | None = None
        self.controller: Controller | None = None
        self.features: FeatureBuilder | None = None
        self.last_record: StepRecord | None = None
        self._listeners: list[StepListener] = []
        self._k = self.k_max
        self._overrides: dict[str, int] = {}
        self._next: Decision | None = None
        self._names: dict[str, str] = {}
        self._first_token_at: dict[str, float] = {}
        self._num_steps = 0
        self._num_arrived = 0
        # Set by schedule(), read by update_from_output() of the same step.
        self._step_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
        self._step_k: dict[str, int] = {}
        self._step_proposed: dict[str, int] = {}
        self._step_before: dict[str, tuple[Request, bool, int, int]] = {}

    # --- control ---------------------------------------------------------------------------

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k before every step from `features`' observation."""
        if (controller is None) != (features is None):
            raise ValueError("a controller needs a feature builder, and vice versa")
        self.controller = controller
        self.features = features

    def use_cost_model(self, cost_model: CostModel | None) -> None:
        """Time steps by `cost_model` (the model clock, drafting k_max every step), or by
        the wall clock when None."""
        self.cost_model = cost_model

    def set_next(self, k: int, per_request: Mapping[str, int] | None = None) -> None:
        """Use k (and per-request overrides) for the next step only, bypassing the controller."""
        checked = check_k(k, self.k_max)
        overrides = {
            rid: check_k(rk, self.k_max, f"k for request {rid!r}")
            for rid, rk in (per_request or {}).items()
        }
        self._next = Decision(checked, overrides)

    def add_listener(self, listener: StepListener) -> None:
        """Call `listener(record)` after every step."""
        self._listeners.append(listener)

    def name_request(self, internal_id: str, name: str) -> None:
        """Report `internal_id` (vLLM's id, with its random suffix) as `name` in records."""
        self._names[internal_id] = name

    # --- vLLM scheduler interface ----------------------------------------------------------

    def add_request(self, request: Request) -> None:
        """Queue a new request and count it as an arrival."""
        super().add_request(request)
        self._num_arrived += 1

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
        self._apply(self._decide(started_at))

        output = super().schedule(*args, **kwargs)

        self._step_start = (t0, c0, started_at)
        self._step_before = {}
        for rid, num_tokens in output.num_scheduled_tokens.items():
            request = self.requests[rid]
            # schedule() already advanced num_computed_tokens by this step's tokens. A request
            # prefills (or recomputes after preemption) until all but its last token are in.
            computed_before = request.num_computed_tokens - num_tokens
            prefilling = computed_before < max(request.num_prompt_tokens, request.num_tokens - 1)
            self._step_before[rid] = (
                request,
                prefilling,
                request.num_output_tokens,
                computed_before,
            )
        if self.k_max > 0:
            output.num_spec_tokens_to_schedule = (
                self.k_max if self.cost_model is not None else self._draft_budget()
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
        record = self._record(scheduler_output, num_sampled)
        self.last_record = record
        if self.controller is not None:
            self.features.update(record)
            self.controller.observe(record)
        for listener in self._listeners:
            listener(record)
        return outputs

    # --- internals -------------------------------------------------------------------------

    def _decide(self, now: float) -> Decision:
        if self._next is not None:
            decision, self._next = self._next, None
            return decision
        if self.controller is not None:
            peek = getattr(self.controller, "peek", None)
            if peek is not None:  # a hindsight reference (agents.oracle) sees the drafts first
                peek(self._draft_views(), self._prefill_waiting())
            decision = self.controller.decide(self.features.build(now))
            check_k(decision.k, self.k_max, f"k from controller {self.controller.name}")
            return decision
        return Decision(self._k, self._overrides)

    def _apply(self, decision: Decision) -> None:
        self._k = decision.k
        self._overrides = dict(decision.per_request or {})
        step_k: dict[str, int] = {}
        proposed: dict[str, int] = {}
        for request in self.running:
            rid = request.request_id
            k = self._overrides.get(self._names.get(rid, rid), self._k)
            step_k[rid] = k
            proposed[rid] = len(request.spec_token_ids)
            if proposed[rid] > k:
                request.spec_token_ids = request.spec_token_ids[:k]
        self._step_k = step_k
        self._step_proposed = proposed

    def _draft_budget(self) -> int:
        # One budget for the whole batch: the largest k any running request may verify next
        # step; next step's truncation trims the others.
        if not self._overrides:
            return self._k
        running = {self._names.get(r.request_id, r.request_id) for r in self.running}
        return max([self._k, *(k for rid, k in self._overrides.items() if rid in running)])

    def _record(self, out: SchedulerOutput, num_sampled: Mapping[str, int]) -> StepRecord:
        t0, c0, started_at = self._step_start
        wall_time = time.perf_counter() - t0
        cpu_time = time.thread_time() - c0
        finished: list[FinishedRequest] = []
        decode_tokens = spec_tokens = prefill_tokens = 0

        # What each request computed comes first: on the model clock the step's end, and so
        # every token time, is priced from it.
        computed = []
        parts: list[tuple[int, int, int]] = []  # what StepLoad.build prices, per request
        for rid, num_tokens in out.num_scheduled_tokens.items():
            request, prefilling, outputs_before, computed_before = self._step_before[rid]
            drafted = len(out.scheduled_spec_decode_tokens.get(rid, ()))
            # vLLM's own count: every sampled token past the first is an accepted draft.
            accepted = max(num_sampled[rid] - 1, 0) if drafted else 0
            prefill = num_tokens - drafted if prefilling else 0
            prefill_tokens += prefill
            spec_tokens += drafted
            decode_tokens += 0 if prefilling else 1
            computed.append(
                (rid, request, drafted, accepted, prefill, outputs_before, computed_before)
            )
            parts.append((prefill, computed_before, drafted))
        if self.cost_model is not None:
            step_time = self.cost_model.seconds(StepLoad.build(parts))
        else:
            step_time = wall_time
        finished_at = started_at + step_time

        requests: list[RequestStep] = []
        for rid, request, drafted, accepted, prefill, outputs_before, context in computed:
            name = self._names.get(rid, rid)
            generated = request.num_output_tokens - outputs_before
            if generated and rid not in self._first_token_at:
                self._first_token_at[rid] = finished_at
            first_token_at = self._first_token_at.get(rid)
            requests.append(
                RequestStep(
                    request_id=name,
                    k=self._step_k.get(rid, self._overrides.get(name, self._k)),
                    drafted=drafted,
                    accepted=accepted,
                    generated=generated,
                    prefill_tokens=prefill,
                    output_tokens=request.num_output_tokens,
                    first_token_at=first_token_at,
                    context=context,
                    proposed=self._step_proposed.get(rid, 0),
                )
            )
            if request.is_finished():
                finished.append(
                    FinishedRequest(
                        request_id=name,
                        arrival_at=request.arrival_time,
                        first_token_at=first_token_at
                        if first_token_at is not None
                        else finished_at,
                        finished_at=finished_at,
                        prompt_tokens=request.num_prompt_tokens,
                        output_tokens=request.num_output_tokens,
                    )
                )
                self._forget(rid)

        num_running, num_waiting = self.get_request_counts()
        waiting_arrivals = [r.arrival_time for r in self.waiting]
        self._num_steps += 1
        record = StepRecord(
            step=self._num_steps - 1,
            started_at=started_at,
            step_time=step_time,
            k=self._k,
            draft_budget=out.num_spec_tokens_to_schedule,
            batch_size=len(out.num_scheduled_tokens),
            num_running=num_running,
            num_waiting=num_waiting,
            num_arrived=self._num_arrived,
            decode_tokens=decode_tokens,
            spec_tokens=spec_tokens,
            prefill_tokens=prefill_tokens,
            prefill_tokens_waiting=self._prefill_waiting(),
            oldest_waiting_arrival=min(waiting_arrivals) if waiting_arrivals else None,
            kv_cache_usage=self.get_kv_cache_usage(),
            requests=tuple(requests),
            finished=tuple(finished),
            wall_time=wall_time,
            cpu_time=cpu_time,
        )
        self._num_arrived = 0
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
        self._first_token_at.pop(rid, None)
        self._overrides.pop(self._names.pop(rid, rid), None)
