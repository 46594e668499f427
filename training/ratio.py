"""A ratio to a reference that may be undefined, because the reference is missing or zero.

Every comparison the commands print (a controller to the best static k, to nospec, to the
goodput controller) is such a ratio. On a slow minute a reference can score 0 (no request
met its SLO), or it did not run at all; the ratio is then undefined, reported as None in
JSON and `n/a` in tables together with the reason, and never a crash that loses the run.
"""

from __future__ import annotations

import math

UNDEFINED = "n/a"
"""How an undefined ratio is printed."""


def ratio(value: float, reference: float | None, name: str) -> tuple[float | None, str | None]:
    """(value / reference, None), or (None, why) when the reference is missing, 0 or not finite.

    `name` says what the reference is, e.g. "nospec's goodput under SLO"; the reason
    starts with it.
    """
    if reference is None:
        return None, f"{name} is missing"
    if reference == 0 or not math.isfinite(reference):
        return None, f"{name} is {reference:g}"
    return value / reference, None


def format_ratio(value: float | None, width: int, digits: int = 3) -> str:
    """The ratio right-aligned in `width` characters, or `n/a` when it is undefined."""
    return f"{UNDEFINED:>{width}}" if value is None else f"{value:{width}.{digits}f}"
