"""The per-step reward: goodput above a reference rate, minus SLO violations, in tokens.

    reward = (generated - rho * step_time - c_ttft * v_ttft - c_tpot * v_tpot) / N

generated: output tokens the step produced; step_time: its seconds; rho: the reference
goodput (tokens/s); v_ttft, v_tpot: the SLO violations the step caused (see `RequestLedger`);
c_ttft, c_tpot: what one violation costs, in tokens; N: a token scale that keeps rewards near
unit size.

The goodput term is the step's goodput above the reference, weighted by its duration:
generated - rho * step_time = step_time * (generated / step_time - rho). Summing raw per-step
rates instead would reward many short steps (k=0) whatever their throughput; summed this way,
an episode's return is (tokens - rho * engine time - violation costs) / N, so for a given
workload it grows exactly as goodput over engine time grows and violations shrink.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.records import StepRecord
from envs.ledger import Violations


@dataclass(frozen=True)
class RewardWeights:
    """The constants of the reward formula."""

    reference_tps: float = 500.0
    """rho: the goodput (tokens/s) a step must beat to earn a positive goodput term."""
    ttft_violation_tokens: float = 64.0
    """c_ttft: the cost of one TTFT violation, in tokens."""
    tpot_violation_tokens: float = 64.0
    """c_tpot: the cost of one TPOT violation, in tokens."""
    token_scale: float = 32.0
    """N: tokens per unit of reward."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reward weight {name}={value!r} must be a finite number >= 0")
        if self.token_scale <= 0:
            raise ValueError(f"reward weight token_scale={self.token_scale} must be > 0")


def step_reward(record: StepRecord, violations: Violations, weights: RewardWeights) -> float:
    """The reward of one engine step (formula in the module docstring)."""
    goodput = record.generated - weights.reference_tps * record.step_time
    penalty = (
        weights.ttft_violation_tokens * violations.ttft
        + weights.tpot_violation_tokens * violations.tpot
    )
    return (goodput - penalty) / weights.token_scale
