"""Replays a trace window through an engine (live, or its twin) on a virtual clock.

Shared by the Gymnasium environment (the action is k) and the evaluation (a controller in
the scheduler hook picks k, as in serving), so both replay requests the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from agents.cost import CostModel
from agents.records import StepRecord
from envs.ledger import SLO, RequestLedger, Violations
from envs.traces import PromptFactory, Trace, TraceRequest
from serving.engine import Engine


class PlannedRequest(NamedTuple):
    """A workload request as a replay adds it to the engine."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    output_tokens: int
    arrival_s: float
    temperature: float
    seed: int | None


def draw_request(
    index: int,
    request: TraceRequest,
    prompts: PromptFactory,
    temperatures: Sequence[float],
    rng: np.random.Generator,
) -> PlannedRequest:
    """The `index`-th request of a workload, its prompt and temperature drawn from rng.

    The one place these draws happen: a replay makes them as requests arrive, and the twin
    makes the same ones ahead of a replay (from a copy of its generator) to find the
    acceptance tables of the prompts the replay will add.
    """
    prompt = prompts.make(request.input_tokens, rng=rng)
    temperature = temperatures[int(rng.integers(len(temperatures)))]
    return PlannedRequest(
        f"req-{index}",
        tuple(prompt.token_ids),
        request.output_tokens,
        request.arrival_s,
        temperature,
        int(rng.integers(2**31)) if temperature > 0 else None,
    )


def requests_key(workload: Trace) -> tuple:
    """What decides the prompts and greedy outputs a replay of `workload` gets (with the
    generator's state): its source and its requests' lengths in order. Arrival times change
    neither, so a workload at another rate scale shares the key."""
    return workload.source, tuple((r.input_tokens, r.output_tokens) for r in workload.requests)


def plan_requests(
    workload: Trace,
    prompts: PromptFactory,
    temperatures: Sequence[float],
    rng: np.random.Generator,
) -> list[PlannedRequest]:
    """Every request a replay of `workload` adds, drawn from rng in the replay's order."""
    return [
        draw_request(i, request, prompts, temperatures, rng)
        for i, request in enumerate(workload.requests)
    ]


class WorkloadReplayer:
    """Feeds a workload's requests to an engine as their arrival times pass.

    The clock advances by each engine step's time, measured (wall clock) or priced by
    `cost_model` (model clock), and jumps to the next arrival whenever the engine is idle;
    arrivals, step starts and token times are all stamped with it (it becomes the engine's
    clock).
    """

    def __init__(
        self,
        engine: Engine,
        prompts: PromptFactory,
        slo: SLO,
        temperatures: Sequence[float] = (0.0,),
        cost_model: CostModel | None = None,
    ) -> None:
        self.engine = engine
        self.cost_model = cost_model
        self.prompts = prompts
        self.slo = slo
        self.temperatures = tuple(temperatures)
        self.ledger = RequestLedger(slo)
        self.now = 0.0
        self.steps = 0
        self._requests: tuple = ()
        self._next = 0
        self._rng = np.random.default_rng(0)

    def start(self, workload: Trace, rng: np.random.Generator) -> None:
        """Clear the engine, make the replay's clock its clock, and begin `workload`.

        Prompts and temperatures are drawn from rng.
        """
        if not len(workload):
            raise ValueError(f"workload {workload.name} has no requests")
        self.engine.clock = self._clock
        self.engine.cost_model = self.cost_model
        self.engine.reset()
        self.ledger = RequestLedger(self.slo)
        self._requests = workload.requests
        self._next = 0
        self._rng = rng
        self.steps = 0
        self.now = self._requests[0].arrival_s
        self._admit()

    @property
    def finished(self) -> bool:
        """Every request has arrived and finished."""
        return self._next == len(self._requests) and not self.engine.has_unfinished()

    def step(
        self, k: int | None = None, per_request: Mapping[str, int] | None = None
    ) -> tuple[StepRecord, Violations]:
        """One engine step (k None: the engine's controller decides); then admit arrivals."""
        record = self.engine.step(k, per_request)
        self.steps += 1
        self.now = record.finished_at
        violations = self.ledger.record(record)
        self._admit()
        return record, violations

    def _clock(self) -> float:
        return self.now

    def _admit(self) -> None:
        requests = self._requests
        if not self.engine.has_unfinished() and self._next < len(requests):
            self.now = max(self.now, requests[self._next].arrival_s)
        while self._next < len(requests) and requests[self._next].arrival_s <= self.now:
            planned = draw_request(
                self._next, requests[self._next], self.prompts, self.temperatures, self._rng
            )
            self.engine.add_request(
                planned.request_id,
                list(planned.prompt_token_ids),
                planned.output_tokens,
                arrival_time=planned.arrival_s,
                temperature=planned.temperature,
                seed=planned.seed,
            )
            self.ledger.arrive(planned.request_id, planned.arrival_s, planned.output_tokens)
            self._next += 1
