"""How sure a ratio of two controllers' mean results is, from paired replays.

`training.evaluate --repeats R` runs every controller once per repeat, back to back, so
repeat i of one controller and repeat i of another saw the same machine state. The interval
resamples whole repeats (the same indices for both sides), which keeps that pairing, and
takes the percentiles of the resampled ratio of means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RatioInterval:
    """A ratio of means and its percentile bootstrap interval."""

    ratio: float
    """The ratio of the means over all repeats."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval."""


def ratio_interval(
    values: Sequence[float],
    references: Sequence[Sequence[float]],
    *,
    confidence: float = 0.9,
    samples: int = 4000,
    seed: int = 0,
) -> RatioInterval:
    """mean(values) / the best reference's mean, with a paired bootstrap interval.

    `values[i]` and `references[j][i]` come from repeat i. With several references (the
    static k's), each resample divides by the best of them in that resample, as a best
    static k picked after the fact is.
    """
    own = np.asarray(values, dtype=np.float64)
    refs = np.asarray(references, dtype=np.float64)
    if refs.ndim != 2 or refs.shape[1] != own.shape[0]:
        raise ValueError(
            f"references have shape {refs.shape}; need (n, {own.shape[0]}), one value per repeat"
        )
    if own.shape[0] < 2:
        raise ValueError(f"{own.shape[0]} repeat(s): an interval needs at least 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, own.shape[0], size=(samples, own.shape[0]))
    with np.errstate(divide="ignore", invalid="ignore"):  # a reference of 0 gives inf/nan
        ratios = own[picks].mean(axis=1) / refs[:, picks].mean(axis=2).max(axis=0)
        ratio = own.mean() / refs.mean(axis=1).max()
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return RatioInterval(float(ratio), float(low), float(high))
