"""SLO capacity: the highest sustained arrival rate at which at least 90% of requests meet both
their TTFT and TPOT objectives (the goodput DistServe reports, Zhong et al., OSDI 2024).

Goodput under SLO at one load sits on a cliff near the knee, so a controller is judged by the
load it can carry within its SLO. The rate of a fixed set of requests is scaled (their
arrival times divided by the scale), so one acceptance table per window serves every rate:
`find_capacity` brackets the scale where attainment crosses the bar and bisects it in log
space. Attainment falls with load, but not always monotonically near the cliff; the scale
found is one where the bar is met with the next probe above it failing, to the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

ATTAINMENT = 0.9
"""The share of requests that must meet both objectives."""
TOLERANCE = 0.01
"""Bisection stops when the failing scale is within this share of the passing one."""
MAX_PROBES = 30
"""Replays at most per search (bracketing and bisection together)."""


@dataclass(frozen=True)
class Probe:
    """One replay of the search: the scale tried and the attainment it gave."""

    scale: float
    attainment: float

    @property
    def passed(self) -> bool:
        """Whether at least `ATTAINMENT` of the requests met both objectives."""
        return not math.isnan(self.attainment) and self.attainment >= ATTAINMENT


@dataclass(frozen=True)
class Capacity:
    """What a search found."""

    scale: float | None
    """The highest scale that passed with the next probe above it failing; None if even the
    lowest scale tried failed."""
    bounded: bool
    """False if every probe passed (the capacity is at least `scale`, not found)."""
    probes: tuple[Probe, ...]
    """Every replay of the search, in order."""


def find_capacity(
    attainment_at: Callable[[float], float],
    low: float,
    high: float,
    *,
    tolerance: float = TOLERANCE,
    max_probes: int = MAX_PROBES,
    floor: float = 1e-3,
) -> Capacity:
    """Search the scale at which `attainment_at(scale)` falls below the bar, starting from the
    bracket [low, high]: widen it (halving low, doubling high) until low passes and high
    fails, then bisect in log space until high / low - 1 <= tolerance."""
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got {low}, {high}")
    probes: list[Probe] = []

    def probe(scale: float) -> bool:
        found = Probe(scale, float(attainment_at(scale)))
        probes.append(found)
        return found.passed

    high_failed = False
    while not probe(low):
        high, high_failed = low, True
        low /= 2
        if low < floor or len(probes) >= max_probes:
            return Capacity(None, True, tuple(probes))
    if not high_failed:
        high = high if high > low else low * 2
        while probe(high):
            low, high = high, high * 2
            if len(probes) >= max_probes:
                return Capacity(low, False, tuple(probes))
    while high / low - 1 > tolerance and len(probes) < max_probes:
        middle = math.sqrt(low * high)
        if probe(middle):
            low = middle
        else:
            high = middle
    return Capacity(low, True, tuple(probes))
