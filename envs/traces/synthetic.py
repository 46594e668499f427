"""Seeded synthetic traces: Poisson, bursty (gamma renewal) and linearly ramping arrivals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from envs.traces.request import Trace

COMMON_PARAMS = (
    "duration",
    "input_mean",
    "output_mean",
    "sigma",
    "input_max",
    "output_max",
    "seed",
)
PATTERN_PARAMS = {
    "poisson": ("rate",),
    "bursty": ("rate", "cv"),
    "ramp": ("start_rate", "end_rate", "period"),
}
# Every other parameter must be >= 0.
_POSITIVE = frozenset(
    {"duration", "rate", "cv", "input_mean", "output_mean", "input_max", "output_max"}
)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Rates are requests per second, `duration` is in seconds.

    - poisson: constant `rate`.
    - bursty: gamma-distributed inter-arrival times with mean 1/`rate` and coefficient of
      variation `cv` (> 1: tight bursts separated by long idle gaps; BurstGPT fits this model).
    - ramp: a Poisson process whose rate moves linearly from `start_rate` to `end_rate`,
      over the whole duration, or, with `period` > 0, over every `period` seconds again (a
      sawtooth: load that rises within an episode, the same in every part of the trace).

    Lengths are lognormal with the given means and log-space `sigma`, rounded and clipped
    to [1, max]. Fields that do not belong to the pattern are ignored.
    """

    pattern: str = "poisson"
    duration: float = 60.0
    rate: float = 1.0
    cv: float = 3.0
    start_rate: float = 0.5
    end_rate: float = 4.0
    period: float = 0.0
    input_mean: float = 256.0
    output_mean: float = 128.0
    sigma: float = 0.8
    input_max: int = 4096
    output_max: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in PATTERN_PARAMS:
            raise ValueError(
                f"unknown synthetic pattern {self.pattern!r}; "
                f"expected one of {list(PATTERN_PARAMS)}"
            )
        for name in self.params():
            value = getattr(self, name)
            bound = "> 0" if name in _POSITIVE else ">= 0"
            if not (math.isfinite(value) and (value > 0 if name in _POSITIVE else value >= 0)):
                raise ValueError(f"synthetic parameter {name!r} must be {bound}, got {value!r}")
        if self.pattern == "ramp" and self.start_rate == self.end_rate == 0:
            raise ValueError("synthetic 'start_rate' and 'end_rate' cannot both be 0")
        if self.input_mean > self.input_max or self.output_mean > self.output_max:
            raise ValueError("synthetic 'input_mean'/'output_mean' exceed 'input_max'/'output_max'")

    def params(self) -> tuple[str, ...]:
        """Names of the parameters that apply to this pattern."""
        return PATTERN_PARAMS[self.pattern] + COMMON_PARAMS

    def to_string(self) -> str:
        """The canonical spec string, e.g. "synthetic:poisson?rate=2&duration=60&...".

        `parse_synthetic(spec.to_string())` gives back an equal spec.
        """
        values = asdict(self)
        return f"synthetic:{self.pattern}?" + "&".join(f"{k}={values[k]}" for k in self.params())


def _poisson(rng: np.random.Generator, rate: float, duration: float) -> np.ndarray:
    # Given their count, Poisson arrivals are uniform on [0, duration).
    return np.sort(rng.uniform(0.0, duration, rng.poisson(rate * duration)))


def _ramp(rng: np.random.Generator, r0: float, r1: float, duration: float) -> np.ndarray:
    # Time rescaling: unit-rate arrivals e are mapped through the inverse of the cumulative
    # rate L(t) = r0 t + a t^2 / 2; this root form stays stable when a = (r1 - r0) / T -> 0.
    total = (r0 + r1) / 2 * duration
    e = np.sort(rng.uniform(0.0, total, rng.poisson(total)))
    a = (r1 - r0) / duration
    return 2 * e / (r0 + np.sqrt(np.maximum(r0 * r0 + 2 * a * e, 0.0)))


def _gamma_renewal(rng: np.random.Generator, rate: float, cv: float, duration: float) -> np.ndarray:
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    chunk = int(rate * duration * 1.2) + 64
    arrivals = np.cumsum(rng.gamma(shape, scale, chunk))
    while arrivals[-1] < duration:
        more = np.cumsum(rng.gamma(shape, scale, chunk)) + arrivals[-1]
        arrivals = np.concatenate([arrivals, more])
    return arrivals[arrivals < duration]


def _lengths(rng: np.random.Generator, mean: float, sigma: float, cap: int, n: int) -> np.ndarray:
    # mu is chosen so the unclipped lognormal has the requested mean.
    draws = rng.lognormal(math.log(mean) - sigma * sigma / 2, sigma, n)
    return np.clip(np.floor(draws + 0.5), 1, cap).astype(np.int64)


def synthetic_trace(spec: SyntheticSpec) -> Trace:
    """Generate the trace a spec describes; the same spec always gives the same trace.

    Arrivals and lengths use separate random streams, so changing a length parameter leaves
    the arrival times unchanged. The first arrival is shifted to 0.0 like any loaded trace.
    """
    arrival_rng, length_rng = np.random.default_rng(spec.seed).spawn(2)
    if spec.pattern == "poisson":
        arrivals = _poisson(arrival_rng, spec.rate, spec.duration)
    elif spec.pattern == "bursty":
        arrivals = _gamma_renewal(arrival_rng, spec.rate, spec.cv, spec.duration)
    elif spec.period > 0:
        starts = np.arange(0.0, spec.duration, spec.period)
        arrivals = np.concatenate(
            [
                start + _ramp(arrival_rng, spec.start_rate, spec.end_rate, spec.period)
                for start in starts
            ]
        )
        arrivals = arrivals[arrivals < spec.duration]
    else:
        arrivals = _ramp(arrival_rng, spec.start_rate, spec.end_rate, spec.duration)
    n = len(arrivals)
    inputs = _lengths(length_rng, spec.input_mean, spec.sigma, spec.input_max, n)
    outputs = _lengths(length_rng, spec.output_mean, spec.sigma, spec.output_max, n)
    rows = zip(arrivals.tolist(), inputs.tolist(), outputs.tolist(), strict=True)
    return Trace.from_rows(f"synthetic-{spec.pattern}", spec.to_string(), rows)
