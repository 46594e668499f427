"""The per-step reward: goodput above a reference rate, minus SLO violations, in tokens.

    reward = (generated - rho * step_time - c_ttft * v_ttft - c_tpot * v_tpot) / N

generated: output tokens the step produced; step_time: its seconds; rho: the reference
goodput (tokens/s); v_ttft, v_tpot: the SLO violations the step caused (see `RequestLedger`);
c_ttft, c_tpot: what one violation costs, in tokens; N: a token scale that keeps rewards near
unit size.

rho is either fixed (`reference_tps`) or running (`reference_steps` > 0): the episode's own
goodput over about the last `reference_steps` steps (`RunningReference`). A fixed rho sits
far below what a full batch produces and far above what one request does, so most of a
step's reward says how many requests happened to be running. A running rho moves with the
load, and the reward says whether this step's k beat the recent rate, which is what the
choice of k can change (for a rho equal to the best rate, maximising generated - rho *
step_time is maximising generated / step_time).

The goodput term is the step's goodput above the reference, weighted by its duration:
generated - rho * step_time = step_time * (generated / step_time - rho). Summing raw per-step
rates instead would reward many short steps (k=0) whatever their throughput; summed this way,
an episode's return is (tokens - rho * engine time - violation costs) / N, so for a given
workload it grows exactly as goodput over engine time grows and violations shrink.

With `baseline = "goodput"` the goodput term becomes the step's value relative to what the
goodput controller's k would have made of the same step, from the step's counterfactual
accepted counts (`RequestStep.accepted_if`) and the cost model's price of the step at that
k: (generated - rho * step_time) - (generated' - rho * step_time'). What the arrivals and the
batch contribute is the same on both sides and cancels, so the reward credits the choice of k
alone. In model time the counterfactual is exact wherever the step's verified drafts saw a
rejection, and a lower bound for larger k where all were accepted (the twin's tables make it
exact everywhere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agents.cost import CostModel
from agents.cost.load import load_of
from agents.records import StepRecord
from envs.ledger import Violations

BASELINES = ("none", "goodput")
"""What a step's goodput term is measured against: nothing, or the goodput controller's k."""


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
    reference_steps: int = 0
    """0: rho is reference_tps throughout; N > 0: rho is the episode's goodput over about
    the last N steps (an EMA; reference_tps until the first step)."""
    baseline: str = "none"
    """none: the goodput term as above; goodput: relative to the goodput controller's k on
    the same step (needs the model clock's cost model)."""

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(
                f"reward baseline={self.baseline!r} must be one of {', '.join(BASELINES)}"
            )
        for name, value in vars(self).items():
            if name == "baseline":
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"reward weight {name}={value!r} must be a finite number >= 0")
        if self.token_scale <= 0:
            raise ValueError(f"reward weight token_scale={self.token_scale} must be > 0")
        if not isinstance(self.reference_steps, int):
            raise ValueError(
                f"reward weight reference_steps={self.reference_steps!r} must be an int"
            )


class RunningReference:
    """rho for one episode: fixed, or the goodput of about the last `reference_steps` steps.

    The running rate is an EMA of tokens over an EMA of seconds, so a long step weighs more
    than a short one, as it does in the episode's goodput.
    """

    def __init__(self, weights: RewardWeights) -> None:
        self.weights = weights
        self.reset()

    def reset(self) -> None:
        """Start an episode at the fixed reference."""
        self._tokens = 0.0
        self._seconds = 0.0

    @property
    def tps(self) -> float:
        """The reference goodput for the next step, tokens/s."""
        if self._seconds > 0:
            return self._tokens / self._seconds
        return self.weights.reference_tps

    def update(self, record: StepRecord) -> None:
        """Fold in a finished step (no effect with a fixed reference); the first one sets it."""
        steps = self.weights.reference_steps
        if not steps:
            return
        if self._seconds > 0:
            decay = 1.0 - 1.0 / steps
            self._tokens = decay * self._tokens + (1.0 - decay) * record.generated
            self._seconds = decay * self._seconds + (1.0 - decay) * record.step_time
        else:
            self._tokens, self._seconds = float(record.generated), record.step_time


def counterfactual(record: StepRecord, k: int, cost: CostModel) -> tuple[int, float]:
    """(tokens, seconds) of the step had every decoding request verified k drafts (as many
    as it had proposed), from its counterfactual accepted counts and the cost model.

    A request that finished in the step cannot make more tokens than it did.
    """
    finished = {f.request_id for f in record.finished}
    tokens = 0
    for r in record.requests:
        if r.prefill_tokens:
            tokens += r.generated
        else:
            made = r.accepted_if(k) + 1
            tokens += min(made, r.generated) if r.request_id in finished else made
    seconds = cost.seconds(load_of(record.requests, verified=lambda r: min(k, r.proposed)))
    return tokens, seconds


def step_reward(
    record: StepRecord,
    violations: Violations,
    weights: RewardWeights,
    reference_tps: float | None = None,
    baseline: tuple[int, float] | None = None,
) -> float:
    """The reward of one engine step (formula in the module docstring).

    `reference_tps` is rho (a `RunningReference`'s); None uses `weights.reference_tps`.
    `baseline` is the (tokens, seconds) the step would have had at the baseline's k
    (`counterfactual`), for `weights.baseline = "goodput"`.
    """
    rho = weights.reference_tps if reference_tps is None else reference_tps
    goodput = record.generated - rho * record.step_time
    if baseline is not None:
        tokens, seconds = baseline
        goodput -= tokens - rho * seconds
    penalty = (
        weights.ttft_violation_tokens * violations.ttft
        + weights.tpot_violation_tokens * violations.tpot
    )
    return (goodput - penalty) / weights.token_scale
