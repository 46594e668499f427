"""The regime a replay ran in: how full the engine was, how much of its time verification took,
and (from the plain engine) whether the SLO binds.

A result from a regime where k cannot matter (an engine a few requests full, where verifying a
draft costs almost nothing) is no evidence that k does not matter, so every evaluation entry
reports, per controller, engine-time weighted over its replay:

- `running_mean`, `running_p90`: requests holding a running slot, as a share of the engine's
  limit (max_num_seqs): its mean and 90th percentile over engine time;
- `half_full`: the share of engine time with at least half the limit running;
- `queue_mean`: requests waiting for a slot, as a share of the limit;
- `verify_share`: the share of engine time spent verifying drafts, by the cost model: each
  step's price less the price of the same step without its drafts, over all steps' prices.

The steady-state suites (`training.suites`) are built to hold the engine above half full for
most of their engine time at the loads around its capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agents.cost import CostModel
from agents.cost.load import load_of
from agents.records import StepRecord

REGIME_KEYS = ("running_mean", "running_p90", "half_full", "queue_mean", "verify_share")
"""What `RegimeMeter.result` returns, in the order tables print them."""
SLO_BINDS_BELOW = 0.9
"""The plain engine's SLO attainment under which the SLO binds (the SLO capacity's bar)."""


@dataclass
class RegimeMeter:
    """Folds a replay's step records into its regime (see the module)."""

    limit: int
    """The engine's running-request limit (max_num_seqs)."""
    cost: CostModel
    """What prices a step with and without its drafts."""
    _seconds: list[float] = field(default_factory=list)
    _running: list[float] = field(default_factory=list)
    _queue: list[float] = field(default_factory=list)
    _verify_s: float = 0.0
    _priced_s: float = 0.0

    def update(self, record: StepRecord) -> None:
        """Fold in one step."""
        self._seconds.append(record.step_time)
        self._running.append(record.num_running / self.limit)
        self._queue.append(record.num_waiting / self.limit)
        if record.spec_tokens:
            priced = self.cost.seconds(load_of(record.requests))
            self._verify_s += priced - self.cost.seconds(load_of(record.requests, lambda r: 0))
            self._priced_s += priced
        else:
            self._priced_s += self.cost.seconds(load_of(record.requests))

    def result(self) -> dict[str, float]:
        """The regime of the steps folded in so far (NaN before any)."""
        weights = np.asarray(self._seconds)
        total = weights.sum()
        if not len(weights) or total <= 0:
            return dict.fromkeys(REGIME_KEYS, float("nan"))
        running = np.asarray(self._running)
        return {
            "running_mean": float(np.dot(weights, running) / total),
            "running_p90": weighted_quantile(running, weights, 0.9),
            "half_full": float(weights[running >= 0.5].sum() / total),
            "queue_mean": float(np.dot(weights, np.asarray(self._queue)) / total),
            "verify_share": self._verify_s / self._priced_s if self._priced_s else 0.0,
        }


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose cumulative weight reaches the share q of the total."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1]))
    return float(values[order][min(index, len(values) - 1)])


def slo_binds(plain_attainment: float | None) -> bool | None:
    """Whether the SLO binds where the plain engine met it for `plain_attainment` of its
    requests (None where the plain engine did not run)."""
    if plain_attainment is None or np.isnan(plain_attainment):
        return None
    return plain_attainment < SLO_BINDS_BELOW
