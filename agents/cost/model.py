"""The one interface every step cost model implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from agents.cost.load import StepLoad

MIN_STEP_S = 1e-6
"""Floor of every step's seconds, so rates never divide by zero."""


@runtime_checkable
class CostModel(Protocol):
    """Says how many seconds an engine step takes from what it computed.

    Implementations are pure numpy and deterministic: the model clock advances by
    `seconds(load)` for every step, and analytic controllers predict each k's cost with it.
    """

    kind: str
    """fitted, table, gpu or roofline: how the numbers were obtained."""

    def seconds(self, load: StepLoad) -> float:
        """Seconds of one engine step that computed `load` (at least `MIN_STEP_S`)."""
        ...
