"""The latency objectives a request must meet for its tokens to count as goodput under SLO.

The defaults (1 s to the first token, 50 ms per token after it) are the small CPU pair's; a GPU
deployment profile names its own (`agents.cost`). Training, evaluation and serving read them
from here, so the objectives a policy was trained under are the ones it is served under.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SLO:
    """Latency targets a request must meet for its tokens to count as goodput under SLO."""

    ttft_s: float = 1.0
    """Time-to-first-token SLO: seconds from arrival to the first token."""
    tpot_s: float = 0.05
    """Time-per-output-token SLO: mean seconds per output token after the first."""

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"SLO {name}={value!r} must be a number > 0")
