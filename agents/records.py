"""What one engine step did, as plain data: the contract between the engine and controllers.

The scheduler hook in `serving/` fills these in; the feature builder, the reward and the
controllers in `agents/` read them. Nothing here knows about vLLM.

Times are seconds on the engine's clock: wall time (`time.time()`, the clock vLLM stamps
arrivals with) when serving; when replaying a trace, a virtual clock that advances by each
step's measured seconds (wall clock) or by a cost model's seconds for what the step computed
(model clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


class DraftView(NamedTuple):
    """A decoding request as a controller that looks at the drafts sees it before a step."""

    request_id: str
    position: int
    """Output tokens it has produced: the index its first draft guesses."""
    context: int
    """Tokens in its KV cache."""
    drafts: tuple[int, ...]
    """The drafts it holds for the step (token ids; in model time the k_max proposal)."""
    features: Any = None
    """What the slots of its proposal look like before verification: an array (k_max, F) of
    the method's slot features (`agents.confidence`), or None where the engine has none."""
    confidence: tuple[float, ...] = ()
    """Per held draft j: P(draft j accepted | the drafts before it accepted), by the engine's
    calibrator; empty without one."""


@dataclass(frozen=True, slots=True)
class RequestStep:
    """One scheduled request's part in one engine step."""

    request_id: str
    k: int
    """The speculation length this request was allowed in this step."""
    drafted: int
    """Draft tokens verified for it in this step (at most `k`)."""
    accepted: int
    """Of those, how many the target model accepted."""
    generated: int
    """Tokens appended to its output by this step: accepted + 1, or 0 while it prefills."""
    prefill_tokens: int
    """Prompt tokens it computed in this step (0 once it decodes)."""
    output_tokens: int
    """Its output length after this step."""
    first_token_at: float | None
    """When its first output token came out, or None if none has yet."""
    context: int = 0
    """Tokens in its KV cache before this step (what its attention read)."""
    proposed: int = 0
    """Drafts the proposer had ready for it before they were cut to `k` (in model time the
    engine drafts k_max every step, so this is the k_max proposal)."""
    hits: int | None = None
    """How many of the `proposed` drafts the target would accept, where that is known without
    verifying them: the twin reads it from its acceptance table; the live engine leaves None
    (past the drafts it verified, only a rejection tells)."""
    confidence: tuple[float, ...] = ()
    """Per proposed draft j, what the engine's calibrator gave it before the step:
    P(draft j accepted | the drafts before it accepted); empty where none was computed."""

    def accepted_if(self, k: int) -> int:
        """Drafts it would have had accepted this step had it verified k of them.

        Drafts are prefix-consistent (the first k of a longer proposal are the k proposal),
        so this is exact up to the drafts verified, and beyond them exact where one was
        rejected or `hits` is known; otherwise, where all verified drafts were accepted, it
        is a lower bound (`censored_if`).
        """
        k = min(k, self.proposed)
        if self.hits is not None:
            return min(self.hits, k)
        return min(self.accepted, k) if k <= self.drafted else self.accepted

    def censored_if(self, k: int) -> bool:
        """Whether `accepted_if(k)` is only a lower bound: k goes past the drafts verified,
        all of which were accepted, and `hits` is unknown, so the next ones were never
        checked."""
        return (
            self.hits is None
            and min(k, self.proposed) > self.drafted
            and self.accepted == self.drafted
        )


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    """A request that completed in this step, with its latency record."""

    request_id: str
    arrival_at: float
    first_token_at: float
    finished_at: float
    prompt_tokens: int
    output_tokens: int

    @property
    def ttft(self) -> float:
        """Time to first token, in seconds."""
        return self.first_token_at - self.arrival_at

    @property
    def tpot(self) -> float:
        """Mean time per output token after the first, in seconds (0 for one-token outputs)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.finished_at - self.first_token_at) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class StepRecord:
    """Everything one engine step did, from scheduling to the model's output."""

    step: int
    """Index of the step since the engine started."""
    started_at: float
    """Clock time when scheduling began."""
    step_time: float
    """Seconds of the step on the replay's clock: measured (wall clock) or the cost model's
    price of what it computed (model clock)."""
    k: int
    """The global speculation length used for this step's verification."""
    draft_budget: int
    """Draft tokens per request proposed during this step, verified by the next one."""
    batch_size: int
    """Requests scheduled in this step (decoding and prefilling)."""
    num_running: int
    """Requests holding a running slot after scheduling."""
    num_waiting: int
    """Queue depth: requests waiting for a running slot after scheduling."""
    num_arrived: int
    """Requests added to the engine since the previous step."""
    decode_tokens: int
    """One token per decoding request: the token each verifies or samples from."""
    spec_tokens: int
    """Draft tokens verified in this step, summed over requests."""
    prefill_tokens: int
    """Prompt tokens computed in this step, summed over requests."""
    prefill_tokens_waiting: int
    """Prompt tokens not yet computed, over waiting and partly prefilled requests."""
    oldest_waiting_arrival: float | None
    """Arrival time of the longest-waiting queued request, or None if the queue is empty."""
    kv_cache_usage: float
    """Fraction of the KV cache in use after the step, 0..1."""
    requests: tuple[RequestStep, ...]
    """Per scheduled request: its k, drafted, accepted and generated tokens."""
    finished: tuple[FinishedRequest, ...]
    """Requests that completed in this step."""
    wall_time: float = 0.0
    """Wall seconds from the start of scheduling to the end of the output update, whatever
    the clock (equal to `step_time` on the wall clock)."""
    cpu_time: float = 0.0
    """CPU seconds the engine's thread spent in that interval: the wall time less any time
    the thread was descheduled (the engine runs on one thread)."""
    in_flight: int = 0
    """Steps the engine began after this one before this one's outcomes were known: 0 when
    every step is recorded before the next is scheduled (the synchronous hook, the twin); 1
    under vLLM's async scheduling, where step `step + 1` was decided before this record
    existed, so the next decision is for step `step + in_flight + 1`."""

    @property
    def finished_at(self) -> float:
        """Clock time when the step's output was ready."""
        return self.started_at + self.step_time

    @property
    def drafted(self) -> int:
        """Draft tokens verified in this step over all requests."""
        return sum(r.drafted for r in self.requests)

    @property
    def accepted(self) -> int:
        """Draft tokens accepted in this step over all requests."""
        return sum(r.accepted for r in self.requests)

    @property
    def generated(self) -> int:
        """Output tokens produced by this step over all requests."""
        return sum(r.generated for r in self.requests)

    @property
    def acceptance_rate(self) -> float | None:
        """Accepted over drafted tokens, or None when nothing was drafted."""
        drafted = self.drafted
        return self.accepted / drafted if drafted else None
