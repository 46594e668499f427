"""How sure a ratio of two controllers' mean results is, from paired samples.

`training.evaluate` replays every controller on the same samples: trace windows (the
variance that matters: workloads), and on the wall clock repeats of them, back to back, so
sample i of one controller and sample i of another saw the same requests (and machine
state). The interval resamples whole samples (the same indices for both sides), which keeps
that pairing, and takes the percentiles of the resampled ratio of means. With geometric
means, the ratio of means is the geometric mean of the per-sample ratios, which weighs a
light window's gain as much as a heavy one's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.ratio import ratio as safe_ratio


@dataclass(frozen=True)
class RatioInterval:
    """A ratio of means and its percentile bootstrap interval; None where undefined."""

    ratio: float | None
    """The ratio of the means over all repeats."""
    low: float | None
    """Lower end of the interval."""
    high: float | None
    """Upper end of the interval."""
    undefined: str | None = None
    """Why the ratio or the interval is undefined (a reference missing or 0); else None."""


def ratio_interval(
    values: Sequence[float],
    references: Sequence[Sequence[float]],
    *,
    name: str = "the reference",
    geometric: bool = False,
    confidence: float = 0.9,
    samples: int = 4000,
    seed: int = 0,
) -> RatioInterval:
    """mean(values) / the best reference's mean, with a paired bootstrap interval.

    `values[i]` and `references[j][i]` come from sample i; `geometric` takes geometric means
    (a value of 0 makes its mean 0). With several references (the
    static k's), each resample divides by the best of them in that resample, as a best
    static k picked after the fact is. No references, or a best mean of 0, leave the ratio
    undefined; a best of 0 in some resamples leaves the interval undefined. `name` says what
    the reference is, for the reason.
    """
    own = np.asarray(values, dtype=np.float64)
    if own.shape[0] < 2:
        raise ValueError(f"{own.shape[0]} sample(s): an interval needs at least 2")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must lie in (0, 1)")
    if not len(references):
        return RatioInterval(None, None, None, f"{name} is missing")
    refs = np.asarray(references, dtype=np.float64)
    if refs.ndim != 2 or refs.shape[1] != own.shape[0]:
        raise ValueError(
            f"references have shape {refs.shape}; need (n, {own.shape[0]}), one value per sample"
        )
    mean = geometric_mean if geometric else np.mean
    ratio, undefined = safe_ratio(float(mean(own)), float(mean(refs, axis=1).max()), name)
    if ratio is None:
        return RatioInterval(None, None, None, undefined)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, own.shape[0], size=(samples, own.shape[0]))
    best = mean(refs[:, picks], axis=2).max(axis=0)
    zero = int(np.count_nonzero((best == 0) | ~np.isfinite(best)))
    if zero:
        reason = f"{name} is 0 in {zero} of {samples} resamples"
        return RatioInterval(ratio, None, None, reason)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(mean(own[picks], axis=1) / best, [tail, 100 - tail])
    return RatioInterval(ratio, float(low), float(high))


def geometric_mean(values, axis: int | None = None):
    """exp(mean(log(values))) along `axis` (all of them by default), 0 where a value is 0."""
    with np.errstate(divide="ignore"):
        return np.exp(np.mean(np.log(np.asarray(values, dtype=np.float64)), axis=axis))
