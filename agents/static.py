"""The simplest controller: the same k at every step."""

from __future__ import annotations

from agents.controller import Decision
from agents.features import Observation
from agents.records import StepRecord


class StaticController:
    """Always chooses the same speculation length, as a vLLM config with a fixed k would."""

    def __init__(self, k: int) -> None:
        if k < 0:
            raise ValueError(f"static k must be >= 0, got {k}")
        self.k = k
        self.name = f"static:{k}"

    def reset(self) -> None:
        """Nothing to forget."""

    def decide(self, obs: Observation) -> Decision:
        """Return the fixed k, whatever the observation."""
        return Decision(self.k)

    def observe(self, record: StepRecord) -> None:
        """A static controller learns nothing."""
