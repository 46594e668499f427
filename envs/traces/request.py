"""The trace data model: timed requests that carry only lengths, no text."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from operator import itemgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from envs.traces.replay import ReplayRecord


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request: when it arrives (seconds from the trace start) and its token lengths."""

    arrival_s: float
    input_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.arrival_s) and self.arrival_s >= 0):
            raise ValueError(f"arrival_s must be finite and >= 0, got {self.arrival_s!r}")
        if self.input_tokens < 1 or self.output_tokens < 1:
            raise ValueError(
                "input_tokens and output_tokens must be >= 1, "
                f"got {self.input_tokens} and {self.output_tokens}"
            )


@dataclass(frozen=True)
class Trace:
    """A named request trace, sorted by arrival time.

    Loaders and the synthetic generator put the first request at 0.0; a replay window keeps
    the idle gap between the window start and its first request (see `apply_replay`).
    `dropped` counts source rows left out on purpose (BurstGPT's failed requests) and
    `replay` records the replay options applied to produce this trace, if any.
    """

    name: str
    source: str
    requests: tuple[TraceRequest, ...]
    dropped: int = 0
    replay: ReplayRecord | None = None

    def __post_init__(self) -> None:
        arrivals = [r.arrival_s for r in self.requests]
        if any(a > b for a, b in pairwise(arrivals)):
            raise ValueError(f"trace {self.name!r}: requests are not sorted by arrival")

    @classmethod
    def from_rows(
        cls,
        name: str,
        source: str,
        rows: Iterable[tuple[float, int, int]],
        dropped: int = 0,
    ) -> Trace:
        """Build a trace from (arrival, input, output) rows in any order and any time origin.

        Rows are sorted stably by arrival and shifted so the first request arrives at 0.0.
        """
        ordered = sorted(rows, key=itemgetter(0))
        t0 = ordered[0][0] if ordered else 0.0
        requests = tuple(TraceRequest(t - t0, n_in, n_out) for t, n_in, n_out in ordered)
        return cls(name=name, source=source, requests=requests, dropped=dropped)

    @property
    def duration_s(self) -> float:
        """Seconds from the trace start (0.0) to the last arrival; 0.0 for an empty trace."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    def __len__(self) -> int:
        return len(self.requests)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary of the trace and of any replay options applied to it."""
        return {
            "name": self.name,
            "source": self.source,
            "requests": len(self.requests),
            "duration_s": self.duration_s,
            "dropped": self.dropped,
            "replay": None if self.replay is None else self.replay.as_dict(),
        }
