"""`Engine`: what the replayer, the environment and the evaluation bench need of an engine.

Two implementations: `serving.live_engine.LiveEngine` (vLLM, in process) and
`envs.twin.engine.TwinEngine` (vLLM's scheduling in Python, acceptance from recorded tables,
model clock only). Everything above them is typed on this protocol. Nothing here imports vLLM.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from agents.controller import Controller
from agents.cost import CostModel
from agents.features import FeatureBuilder
from agents.records import StepRecord
from serving.config import EngineConfig


class Engine(Protocol):
    """An engine stepped one engine step at a time, whose speculation length is set per step."""

    config: EngineConfig
    """What the engine was built with: models, method, k_max and batch limits."""

    outputs: dict[str, list[int]]
    """Generated token ids of every finished request, by request id."""

    clock: Callable[[], float]
    """The clock that stamps arrivals, steps and token times (a replay sets its own)."""

    cost_model: CostModel | None
    """What prices each step on the model clock, or None for the wall clock."""

    @property
    def k_max(self) -> int:
        """The largest k this engine accepts (0 when no speculation is configured)."""
        ...

    @property
    def num_unfinished(self) -> int:
        """Requests added and not yet finished (running or waiting)."""
        ...

    def has_unfinished(self) -> bool:
        """Whether any request is still running or waiting."""
        ...

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        output_tokens: int,
        *,
        arrival_time: float | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Queue a request that generates exactly `output_tokens` tokens after its prompt;
        raise ValueError, with the requests already running unharmed, for one it cannot run."""
        ...

    def step(
        self, k: int | None = None, per_request: Mapping[str, int] | None = None
    ) -> StepRecord:
        """Run one engine step and return what it did: with k (and per-request overrides)
        for this step only, or else as the attached controller chooses, or the last k."""
        ...

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k at every step `step()` is called without one."""
        ...

    def abort(self, request_ids: Sequence[str]) -> None:
        """Drop the given requests, wherever they are; the others keep running."""
        ...

    def reset(self) -> None:
        """Abort every unfinished request and forget all outputs; the engine stays built."""
        ...

    def warm_up(self, batch_size: int = 4, steps_per_k: int = 3) -> None:
        """Pay every first-use cost (compilation, allocation) before anything is measured."""
        ...

    def close(self) -> None:
        """Free the engine; nothing may be called on it afterwards."""
        ...
