"""The engine side of speculation control, written once for the scheduler hook and the twin.

The hook (`serving.scheduler_hook`) runs it around vLLM's scheduler, the twin
(`envs.twin.engine`) around its own; an engine drives one `StepControl` through three calls
per step:

1. `begin(now, running, views, prefill_waiting)`, before scheduling: the step's decision (a
   one-step decision set with `set_next`, which is the environment's action, else the
   attached controller's, which sees the drafts first if it is `DraftAware`, else the last
   one), checked against k_max; then each running request's k (its override, else the global
   k), which the engine cuts that request's drafts to. It returns the step's `Plan`.
2. `price(scheduled, wall_time)`, after scheduling: what each scheduled request computed
   (its prompt tokens, on vLLM's prefill boundary), the `StepLoad` of the step and its
   seconds: the cost model's price on the model clock, the measured wall time otherwise.
3. `record(plan, outcomes, ...)`, after the model's verdict on the step `plan` began: the
   step's `RequestStep`s and `StepRecord`, built by keyword, with first-token times stamped
   at the step's end; then the feature builder, the controller and the listeners are told,
   in that order.

An engine that learns a step's outcomes only after it has begun later steps (vLLM's async
scheduling decides step t+1 before step t's outcomes arrive) holds each step's plan until
its outcomes come and records the steps in the order it began them. The record then names
its own step (`StepRecord.step`, the plan's index) and how many steps were begun after it
before it was recorded (`StepRecord.in_flight`), so a controller knows how stale what it
observes is. The synchronous hook and the twin record every step before beginning the next
(`in_flight` 0).

What stays the engine's own: scheduling, how drafts are held and cut, and how the target's
verdict is learned (vLLM's sampled tokens, or the twin's acceptance table). This is also the
one place a new signal of every request's step is added: a field of `Outcome`, carried into
`RequestStep` by `record`. Nothing here imports vLLM.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from agents.confidence.calibrator import Calibrator
from agents.controller import Controller, Decision, DraftAware, check_k
from agents.cost import CostModel, StepLoad
from agents.features import FeatureBuilder
from agents.records import DraftView, FinishedRequest, RequestStep, StepRecord

StepListener = Callable[[StepRecord], None]


def prefilling(context: int, prompt_len: int, num_tokens: int) -> bool:
    """vLLM's prefill boundary: a request with `context` tokens computed before the step
    prefills (or recomputes after a preemption) until all but its last token are in."""
    return context < prompt_len or context < num_tokens - 1


class Scheduled(NamedTuple):
    """What one scheduled request computes in a step, as the engine counts it."""

    request_id: str
    """The name records give it."""
    num_new: int
    """Tokens scheduled for it."""
    drafted: int
    """Drafts it verifies."""
    context: int
    """Tokens in its KV cache before the step."""
    prompt_len: int
    """Its prompt tokens."""
    num_tokens: int
    """Its prompt plus output tokens before the step."""


class Plan(NamedTuple):
    """One step as `begin` decided it, carried to the step's `record`."""

    step: int
    """The step's index since the engine started (its record's `step`)."""
    k: int
    """The global k of the decision."""
    overrides: Mapping[str, int]
    """The decision's per-request k."""
    ks: tuple[int, ...]
    """Each running request's k, in the order `begin` was given them: the engine cuts that
    request's drafts to it."""
    request_k: Mapping[str, int]
    """The same by request id."""
    offered: Mapping[str, int]
    """Drafts each running request held before the cut."""
    num_arrived: int
    """Requests added to the engine since the step before began."""
    scored: Mapping[str, tuple[Any, tuple[float, ...]]] = {}
    """Per request the calibrator scored before the step: its slot features and the
    confidence of each draft it held (empty where nothing was scored)."""


class Outcome(NamedTuple):
    """What one scheduled request got from a step, as the engine learned it."""

    request_id: str
    drafted: int
    """Drafts it verified."""
    accepted: int
    """Of those, how many the target accepted."""
    generated: int
    """Tokens appended to its output."""
    prefill: int
    """Prompt tokens it computed (`price` says how many)."""
    output_tokens: int
    """Its output length after the step."""
    context: int
    """Tokens in its KV cache before the step."""
    hits: int | None
    """How many of its k_max proposal the target would accept, where known unverified."""
    finished: bool
    """Whether it completed in this step."""
    arrival_time: float
    """When it arrived (for the latency record of a finished request)."""
    prompt_len: int
    """Its prompt tokens."""


class StepControl:
    """One engine's speculation control, step by step (see the module)."""

    def __init__(self, k_max: int) -> None:
        self.k_max = k_max
        self.controller: Controller | None = None
        self.features: FeatureBuilder | None = None
        self.cost_model: CostModel | None = None
        """Prices each step (the model clock), or None for the wall clock."""
        self.listeners: list[StepListener] = []
        self.last_record: StepRecord | None = None
        self.num_steps = 0
        """Steps begun since the engine started: the index of the next one."""
        self._sees_drafts = False
        self._k = k_max
        self._overrides: dict[str, int] = {}
        self._next: Decision | None = None
        self._num_arrived = 0
        self._first_token_at: dict[str, float] = {}
        self.calibrator: Calibrator | None = None
        """Scores each held draft before a step (`agents.confidence`), refined online from
        verification outcomes; None: drafts carry no confidence."""
        self._initial_calibrator: Calibrator | None = None
        self._scored: dict[str, tuple[Any, tuple[float, ...]]] = {}

    # --- what drives it ----------------------------------------------------------------------

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k before every step from `features`' observation."""
        if (controller is None) != (features is None):
            raise ValueError("a controller needs a feature builder, and vice versa")
        self.controller = controller
        self.features = features
        self._sees_drafts = isinstance(controller, DraftAware)

    def set_next(self, k: int, per_request: Mapping[str, int] | None = None) -> None:
        """Use k (and per-request overrides) for the next step only, bypassing the controller;
        raises naming the value outside 0..k_max."""
        overrides = {
            rid: check_k(rk, self.k_max, f"k for request {rid!r}")
            for rid, rk in (per_request or {}).items()
        }
        self._next = Decision(check_k(k, self.k_max), overrides)

    def use_calibrator(self, calibrator: Calibrator | None) -> None:
        """Score drafts with `calibrator` from now on; every reset starts again from it."""
        self._initial_calibrator = calibrator
        self.calibrator = calibrator.copy() if calibrator is not None else None

    def arrived(self) -> None:
        """Count a request added to the engine (a step's `num_arrived`)."""
        self._num_arrived += 1

    def forget(self, request_id: str) -> None:
        """Drop what is held for a request that left the engine."""
        self._first_token_at.pop(request_id, None)
        self._overrides.pop(request_id, None)

    def reset_controller(self) -> None:
        """Reset the attached controller and its feature builder, if any, and the calibrator
        to what it was given (so that every replay starts from the same confidences)."""
        if self.controller is not None:
            self.features.reset()
            self.controller.reset()
        self.use_calibrator(self._initial_calibrator)

    def copy(self) -> StepControl:
        """A copy of the k state and bookkeeping, with no controller or listeners (a fork)."""
        twin = StepControl(self.k_max)
        twin.cost_model = self.cost_model
        twin.num_steps = self.num_steps
        twin._k, twin._overrides = self._k, dict(self._overrides)
        twin._first_token_at = dict(self._first_token_at)
        twin._initial_calibrator = self._initial_calibrator
        twin.calibrator = self.calibrator.copy() if self.calibrator is not None else None
        return twin

    # --- one step ------------------------------------------------------------------------------

    def begin(
        self,
        now: float,
        running: Iterable[tuple[str, int]],
        views: Callable[[], Sequence[DraftView]],
        prefill_waiting: Callable[[], int],
    ) -> Plan:
        """Decide the next step; its plan holds the k of each (request id, drafts held) of
        `running`, in order (`Plan.ks`): the engine cuts each request's drafts to it.
        `views` and `prefill_waiting` are called only for a controller that looks at the
        drafts."""
        decision = self._decide(now, views, prefill_waiting)
        self._k = k = decision.k
        self._overrides = overrides = dict(decision.per_request or {})
        request_k: dict[str, int] = {}
        offered: dict[str, int] = {}
        ks = []
        for rid, held in running:
            request_k[rid] = rk = overrides.get(rid, k)
            offered[rid] = held
            ks.append(rk)
        plan = Plan(
            self.num_steps,
            k,
            overrides,
            tuple(ks),
            request_k,
            offered,
            self._num_arrived,
            self._scored,
        )
        self._scored = {}
        self.num_steps += 1
        self._num_arrived = 0
        return plan

    def draft_budget(self, running: Collection[str]) -> int:
        """The drafts per request to propose for the next step: the largest k any of the
        `running` requests may verify then (each one's cut trims the others)."""
        if not self._overrides:
            return self._k
        return max([self._k, *(k for rid, k in self._overrides.items() if rid in running)])

    def price(self, scheduled: Iterable[Scheduled], wall_time: float) -> tuple[float, list[int]]:
        """The step's seconds, and each scheduled request's prompt tokens computed (0 once it
        decodes): decoding requests verify their drafts against their context; the others
        compute a prompt chunk."""
        contexts: list[int] = []
        verified: list[int] = []
        chunks: list[tuple[int, int]] = []
        prefills: list[int] = []
        for s in scheduled:
            if prefilling(s.context, s.prompt_len, s.num_tokens):
                prefill = s.num_new - s.drafted
                chunks.append((prefill, s.context))
            else:
                prefill = 0
                contexts.append(s.context)
                verified.append(s.drafted)
            prefills.append(prefill)
        if self.cost_model is None:
            return wall_time, prefills
        load = StepLoad(tuple(contexts), tuple(verified), tuple(chunks), max(verified, default=0))
        return self.cost_model.seconds(load), prefills

    def record(
        self,
        plan: Plan,
        outcomes: Iterable[Outcome],
        *,
        started_at: float,
        step_time: float,
        draft_budget: int,
        num_running: int,
        num_waiting: int,
        prefill_tokens_waiting: int,
        oldest_waiting_arrival: float | None,
        kv_cache_usage: float,
        wall_time: float,
        cpu_time: float,
    ) -> StepRecord:
        """The record of the step `plan` began, from each scheduled request's outcome and the
        engine's counts once they are known; the controller, the features and the listeners
        are told of it."""
        finished_at = started_at + step_time
        k, overrides, request_k, offered = plan.k, plan.overrides, plan.request_k, plan.offered
        scored, calibrator = plan.scored, self.calibrator
        first_token = self._first_token_at
        requests: list[RequestStep] = []
        finished: list[FinishedRequest] = []
        decode_tokens = spec_tokens = prefill_tokens = 0
        for o in outcomes:
            rid = o.request_id
            prefill_tokens += o.prefill
            spec_tokens += o.drafted
            decode_tokens += 0 if o.prefill else 1
            if o.generated and rid not in first_token:
                first_token[rid] = finished_at
            first_token_at = first_token.get(rid)
            slots, confidence = scored.get(rid, (None, ()))
            if o.drafted and calibrator is not None and slots is not None:
                calibrator.observe(slots, o.drafted, o.accepted)
            requests.append(
                RequestStep(
                    request_id=rid,
                    k=request_k.get(rid, overrides.get(rid, k)),
                    drafted=o.drafted,
                    accepted=o.accepted,
                    generated=o.generated,
                    prefill_tokens=o.prefill,
                    output_tokens=o.output_tokens,
                    first_token_at=first_token_at,
                    context=o.context,
                    proposed=offered.get(rid, 0),
                    hits=o.hits,
                    confidence=confidence,
                )
            )
            if o.finished:
                finished.append(
                    FinishedRequest(
                        request_id=rid,
                        arrival_at=o.arrival_time,
                        first_token_at=finished_at if first_token_at is None else first_token_at,
                        finished_at=finished_at,
                        prompt_tokens=o.prompt_len,
                        output_tokens=o.output_tokens,
                    )
                )
                self.forget(rid)
        record = StepRecord(
            step=plan.step,
            started_at=started_at,
            step_time=step_time,
            k=k,
            draft_budget=draft_budget,
            batch_size=len(requests),
            num_running=num_running,
            num_waiting=num_waiting,
            num_arrived=plan.num_arrived,
            decode_tokens=decode_tokens,
            spec_tokens=spec_tokens,
            prefill_tokens=prefill_tokens,
            prefill_tokens_waiting=prefill_tokens_waiting,
            oldest_waiting_arrival=oldest_waiting_arrival,
            kv_cache_usage=kv_cache_usage,
            requests=tuple(requests),
            finished=tuple(finished),
            wall_time=wall_time,
            cpu_time=cpu_time,
            in_flight=self.num_steps - plan.step - 1,
        )
        self.last_record = record
        if self.controller is not None:
            self.features.update(record)
            self.controller.observe(record)
        for listener in self.listeners:
            listener(record)
        return record

    # --- internals -----------------------------------------------------------------------------

    def _decide(
        self,
        now: float,
        views: Callable[[], Sequence[DraftView]],
        prefill_waiting: Callable[[], int],
    ) -> Decision:
        if self._next is not None:
            decision, self._next = self._next, None
            return decision
        controller = self.controller
        if controller is not None:
            if self._sees_drafts:
                controller.see_drafts(self._score(views()), prefill_waiting())
            decision = controller.decide(self.features.build(now))
            check_k(decision.k, self.k_max, f"k from controller {controller.name}")
            return decision
        return Decision(self._k, self._overrides)

    def _score(self, views: Sequence[DraftView]) -> Sequence[DraftView]:
        """The views with each held draft's confidence, by the calibrator, in one batch;
        what was scored is kept for the step's record (and the online refinement)."""
        calibrator = self.calibrator
        if calibrator is None:
            return views
        index = [i for i, v in enumerate(views) if v.drafts and v.features is not None]
        if not index:
            return views
        probabilities = calibrator.probabilities(np.stack([views[i].features for i in index]))
        scored = list(views)
        for i, row in zip(index, probabilities.tolist(), strict=True):
            view = views[i]
            confidence = tuple(row[: len(view.drafts)])
            scored[i] = view._replace(confidence=confidence)
            self._scored[view.request_id] = (view.features, confidence)
        return scored
