"""The controller protocol: what chooses the speculation length k at every engine step."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from agents.features import Observation
from agents.records import DraftView, StepRecord


class Decision(NamedTuple):
    """A controller's choice for the next engine step."""

    k: int
    """The speculation length for every request without an override."""
    per_request: Mapping[str, int] | None = None
    """Optional overrides: request id to its own k."""


@runtime_checkable
class Controller(Protocol):
    """Chooses k for the next engine step from what recent steps did.

    The engine calls `decide` before every step and `observe` once the step's outcomes are
    known, so a controller sees every StepRecord exactly once, in step order. With
    synchronous scheduling that is right after the step, before the next `decide`; under
    vLLM's async scheduling the record of step t comes after the decision for step t+1
    (`StepRecord.in_flight` says how many decisions it trails). Implementations are pure
    Python/numpy: they run inside vLLM's scheduler loop and must not import vLLM or torch.
    """

    name: str
    """A short label for logs, metrics and evaluation tables."""

    def reset(self) -> None:
        """Forget all history, e.g. at the start of an episode or after an engine restart."""
        ...

    def decide(self, obs: Observation) -> Decision:
        """Choose k (0..k_max) for the next engine step, optionally per request."""
        ...

    def observe(self, record: StepRecord) -> None:
        """Take in what the step just run did (acceptance, timing, finished requests)."""
        ...


@runtime_checkable
class DraftAware(Protocol):
    """A controller that also looks at the drafts each request holds before a step.

    The engine calls `see_drafts` right before `decide`, on every step the controller
    decides. The hindsight oracles (`agents.oracle`) are such controllers: with the window's
    known outputs, the drafts tell them each step's acceptance.
    """

    def see_drafts(self, views: Sequence[DraftView], prefill_waiting: int) -> None:
        """Take every decoding request's drafts and the prompt tokens still to compute."""
        ...


def check_k(k: int, k_max: int, what: str = "k") -> int:
    """Return k as an int if it is a whole number in 0..k_max, else raise naming the limit."""
    # numpy integers from a policy's action are fine; bools, floats and strings are not.
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{what} must be an integer, got {k!r}")
    if not 0 <= k <= k_max:
        raise ValueError(f"{what}={k} is outside 0..k_max={k_max}")
    return int(k)
