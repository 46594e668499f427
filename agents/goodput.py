"""The analytic goodput controller: the k with the most predicted tokens per second.

After TurboSpec and SmartSpec (goodput-driven speculation control): estimate the draft
acceptance rate online, predict each k's tokens per step from it and each k's step time from a
step cost model (`agents.cost`, the same profile the model clock prices steps with), and pick
the k with the best ratio.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from agents.controller import Decision
from agents.cost import CostModel, StepLoad
from agents.features import Observation
from agents.records import StepRecord

ALPHA_MAX = 0.999
"""Acceptance rates are clipped to this, keeping E(k) finite and the formula well defined."""


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens one request gains from a step that verifies k drafts at acceptance alpha.

    Drafts are accepted in order, each with probability alpha, up to the first rejection, and
    the step adds one token of its own (the correction or bonus token), so
    E(k) = 1 + alpha + ... + alpha^k = (1 - alpha^(k+1)) / (1 - alpha) (Leviathan et al., 2023).
    """
    if k <= 0:
        return 1.0
    a = 0.0 if alpha < 0.0 else ALPHA_MAX if alpha > ALPHA_MAX else alpha
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def best_k(step_times: Sequence[float], alpha: float, k0_bias: float = 0.0) -> tuple[int, float]:
    """The k maximising one request's tokens per second, E(k) / step_times[k], and that rate.

    `step_times[k]` is the step's predicted seconds at speculation length k (0..len - 1); the
    batch size cancels. k=0's rate is multiplied by 1 + k0_bias when comparing, and ties go to
    the smaller k. The rate returned is the unbiased one.
    """
    choice = 0
    rate = 1.0 / step_times[0]
    best = rate * (1.0 + k0_bias)
    for k in range(1, len(step_times)):
        candidate = expected_tokens(alpha, k) / step_times[k]
        if candidate > best:
            choice, rate, best = k, candidate, candidate
    return choice, rate


class GoodputController:
    """Picks k maximising G(k) = B * E(k) / T(B, k) for the next step's batch size B.

    alpha is an EMA (weight `ema`) of accepted/drafted over steps that drafted, starting from
    `prior`; E(k) is `expected_tokens(alpha, k)` and T the cost model's seconds for B
    requests of the typical `context` verifying k drafts each. G(0) is scaled by 1 + `k0_bias`
    to cover speculation's unmodelled costs, so near ties do not speculate. B is the running
    requests plus the waiting ones that fit.

    Collapse recovery: a step that drafts nothing carries no acceptance evidence, so alpha
    moves toward `prior` by `recovery` (absolute) per such step. A collapsed estimate that
    made the controller choose k=0 therefore reaches the prior within
    ceil(|prior - alpha| / recovery) steps (at most 30 with the defaults); if the step-time
    model favours speculation at the prior for that batch size, k >= 1 is tried again and
    alpha re-measured. `recovery=0` turns this off.

    With `per_request=True`, each request of the last step with its own acceptance EMA
    alpha_r (starting from the global estimate, relaxed in the same way) gets the k_r
    maximising E_r(k) - g * tau * k: g is the predicted tokens per request-second at the
    chosen k and tau the seconds per verified token (the cost model's mean slope over k at
    that batch size), so a draft grows while the expected extra
    token is worth its verification time. Only k_r that differ from the global k are returned.
    """

    name = "goodput"

    def __init__(
        self,
        cost: CostModel,
        k_max: int,
        max_num_seqs: int,
        *,
        context: float = 256.0,
        ema: float = 0.2,
        k0_bias: float = 0.03,
        per_request: bool = False,
        prior: float = 0.6,
        recovery: float = 0.02,
    ) -> None:
        if k_max < 0 or max_num_seqs < 1:
            raise ValueError(f"need k_max >= 0 and max_num_seqs >= 1, got {k_max}, {max_num_seqs}")
        if not 0.0 < ema <= 1.0:
            raise ValueError(f"ema must be in (0, 1], got {ema}")
        if not 0.0 <= prior <= 1.0:
            raise ValueError(f"prior must be in [0, 1], got {prior}")
        if recovery < 0.0 or k0_bias < 0.0:
            raise ValueError(f"recovery and k0_bias must be >= 0, got {recovery}, {k0_bias}")
        self.cost = cost
        self.k_max = k_max
        self.max_num_seqs = max_num_seqs
        self.context = context
        self.ema = ema
        self.k0_bias = k0_bias
        self.per_request = per_request
        self.prior = prior
        self.recovery = recovery
        # Step seconds for every batch size and k, so decide() only indexes and divides.
        self._times = tuple(
            tuple(cost.seconds(StepLoad.uniform(b, k, int(context))) for k in range(k_max + 1))
            for b in range(max_num_seqs + 1)
        )
        # Seconds per verified token at each batch size: the mean slope over k.
        self._verify_s = tuple(
            (times[-1] - times[0]) / (b * k_max) if b and k_max else 0.0
            for b, times in enumerate(self._times)
        )
        # Requests that vanish without finishing (aborts) would otherwise stay forever.
        self._max_tracked = 2 * max_num_seqs
        self.reset()

    @property
    def alpha(self) -> float:
        """The current global acceptance estimate."""
        return self._alpha

    def request_alpha(self, request_id: str) -> float | None:
        """The acceptance estimate of one request, or None if it has not drafted."""
        return self._per_request.get(request_id)

    def reset(self) -> None:
        """Return alpha to the prior and forget every request."""
        self._alpha = self.prior
        self._per_request: dict[str, float] = {}
        # (request id, alpha) of the last step's requests that have an estimate.
        self._running: list[tuple[str, float]] = []

    def decide(self, obs: Observation) -> Decision:
        """Choose the k with the best predicted goodput for the next step's batch size."""
        free = self.max_num_seqs - obs.num_running
        batch = obs.num_running + (obs.num_waiting if obs.num_waiting < free else free)
        batch = 1 if batch < 1 else self.max_num_seqs if batch > self.max_num_seqs else batch
        k, rate = best_k(self._times[batch], self._alpha, self.k0_bias)
        if not self.per_request:
            return Decision(k)
        return Decision(k, self._request_ks(k, rate * self._verify_s[batch]) or None)

    def observe(self, record: StepRecord) -> None:
        """Fold the step's acceptance into alpha (and each request's), dropping finished ones."""
        drafted = accepted = 0
        for r in record.requests:
            drafted += r.drafted
            accepted += r.accepted
        self._alpha = self._update(self._alpha, accepted, drafted)
        if self.per_request:
            self._observe_requests(record)

    def predicted_goodput(self, batch: int, k: int) -> float:
        """Predicted tokens per second of a step with `batch` requests at k (no k0 bias)."""
        seconds = self.cost.seconds(StepLoad.uniform(batch, k, int(self.context)))
        return batch * expected_tokens(self._alpha, k) / seconds

    def _update(self, alpha: float, accepted: int, drafted: int) -> float:
        if drafted:
            return alpha + self.ema * (accepted / drafted - alpha)
        if alpha < self.prior:
            return min(self.prior, alpha + self.recovery)
        return max(self.prior, alpha - self.recovery)

    def _observe_requests(self, record: StepRecord) -> None:
        per_request = self._per_request
        update = self._update
        finished = {f.request_id for f in record.finished} if record.finished else ()
        running = []
        for r in record.requests:
            rid = r.request_id
            if rid in finished:
                continue
            # Pop and reinsert so dict order is least recently seen first, for eviction.
            alpha = per_request.pop(rid, None)
            if alpha is None:
                if not r.drafted:
                    continue
                alpha = self._alpha
            alpha = per_request[rid] = update(alpha, r.accepted, r.drafted)
            running.append((rid, alpha))
        for rid in finished:
            per_request.pop(rid, None)
        while len(per_request) > self._max_tracked:
            del per_request[next(iter(per_request))]
        self._running = running

    def _request_ks(self, k: int, cost: float) -> dict[str, int]:
        # Growing a draft from j-1 to j tokens gains alpha_r^j expected tokens for `cost`
        # tokens' worth of verification time, so a request drafts its j-th token iff
        # alpha_r > cost^(1/j). These thresholds rise with j, so k_r is how many lie below
        # alpha_r: one bisection per request. At cost >= 1 not even a sure token pays.
        cost = min(max(cost, 0.0), 1.0)
        thresholds = [cost ** (1.0 / j) for j in range(1, self.k_max + 1)]
        overrides: dict[str, int] = {}
        for rid, alpha in self._running:
            k_r = bisect_left(thresholds, alpha)
            if k_r != k:
                overrides[rid] = k_r
        return overrides
