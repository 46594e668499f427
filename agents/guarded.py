"""The controller serving runs: an exported PPO policy that hands over to a fallback when unsure.

The policy decides only when it can be trusted with the step. The fallback (normally the
analytic `GoodputController`) decides instead, and the reason is counted, when:

- the artifact could not be loaded or was made for other features or k_max (every step;
  reason `load:artifact_missing`, `load:artifact_corrupt` or `load:artifact_mismatch`);
- the observation holds NaN or infinity (`obs_nonfinite`);
- a feature lies more than `range_margin` outside the range seen in training
  (`obs_out_of_range`): the policy never learned what to do there;
- the policy's inference raises (`inference_error`);
- SLO attainment over the last `slo_window` finished requests is below `min_attainment` and
  the fallback would choose another k (`slo_guard`).

`decide` never raises because of the policy, its artifact or the observation.

A residual policy (see `agents.policy`) offsets the fallback's k: the fallback is then also
its base, and it decides on every step either way.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.controller import Controller, Decision
from agents.features import Observation
from agents.policy import (
    ARTIFACT_CORRUPT,
    NumpyPolicy,
    PolicyError,
    is_residual,
    load_policy,
    residual_k,
)
from agents.records import StepRecord

LOGGER_NAME = "turbospec.guard"

OBS_NONFINITE = "obs_nonfinite"
OBS_OUT_OF_RANGE = "obs_out_of_range"
INFERENCE_ERROR = "inference_error"
SLO_GUARD = "slo_guard"
RECOVERED = "recovered"
"""What `on_switch` receives when the policy takes over again."""

POLICY = "ppo"
FALLBACK = "fallback"


class GuardedController:
    """Decides with an exported PPO policy, switching to `fallback` whenever a guard trips.

    Bookkeeping, for logs and metrics:

    - `decisions`: every `decide` call; `fallback_decisions`: those the fallback made.
    - `counts`: fallback decisions per reason (they sum to `fallback_decisions`). A step
      where the SLO guard is on but the fallback chooses the policy's k is not counted.
    - `active` ("ppo" or "fallback") and `last_reason` (of the latest fallback decision).

    The counters are cumulative: `reset()` leaves them, like any monitoring counter. A
    change of source, or of the reason for falling back, is logged once on logger
    "turbospec.guard" and passed to `on_switch` (the reason, or "recovered" when the
    policy takes over again); steady states log nothing.
    """

    name = "guarded-ppo"

    def __init__(
        self,
        policy_path: Path | str,
        fallback: Controller,
        *,
        k_max: int,
        schema_version: int,
        feature_names: Sequence[str],
        ttft_slo_s: float,
        tpot_slo_s: float,
        slo_window: int = 64,
        min_attainment: float = 0.5,
        range_margin: float = 0.5,
        logger: logging.Logger | None = None,
        on_switch: Callable[[str], None] | None = None,
    ) -> None:
        """Load the policy at `policy_path`; on any failure, log it and use `fallback` only.

        `range_margin` is in feature units (the features are normalised to ranges of about
        1). The SLO guard engages only once `slo_window` requests have finished. Raises
        ValueError only for invalid settings, never for the artifact.
        """
        if slo_window < 1 or not 0.0 <= min_attainment <= 1.0 or range_margin < 0:
            raise ValueError(
                f"need slo_window >= 1, 0 <= min_attainment <= 1 and range_margin >= 0, "
                f"got {slo_window}, {min_attainment}, {range_margin}"
            )
        if not (ttft_slo_s > 0 and tpot_slo_s > 0):
            raise ValueError(f"SLOs must be > 0, got {ttft_slo_s}, {tpot_slo_s}")
        self.fallback = fallback
        self.k_max = k_max
        self.ttft_slo_s = ttft_slo_s
        self.tpot_slo_s = tpot_slo_s
        self.slo_window = slo_window
        self.min_attainment = min_attainment
        self.range_margin = range_margin
        self.logger = logger if logger is not None else logging.getLogger(LOGGER_NAME)
        self.on_switch = on_switch
        """Called with the reason on every logged switch, e.g. to export a metric."""

        self.decisions = 0
        self.fallback_decisions = 0
        self.counts: dict[str, int] = {}
        self.active = POLICY
        self.last_reason: str | None = None
        self._inference_error_logged = False
        self._slo_met: deque[bool] = deque(maxlen=slo_window)
        self._slo_hits = 0
        self._slo_low = False

        self.policy: NumpyPolicy | None = None
        self.metadata: dict[str, Any] | None = None
        self.residual = False
        """Whether the loaded policy offsets the fallback's k rather than choosing k."""
        self._offset_max = 0
        self._load_reason = ""
        try:
            self.policy, self.metadata = load_policy(
                policy_path, schema_version=schema_version, feature_names=feature_names, k_max=k_max
            )
        except PolicyError as e:
            self._load_failed(e.reason, str(e))
        except Exception as e:
            # load_policy maps every artifact problem to PolicyError; anything else is a bug
            # in loading, which must not take serving down either.
            self.logger.exception("loading policy %s failed unexpectedly", policy_path)
            self._load_failed(ARTIFACT_CORRUPT, repr(e))
        if self.policy is not None:
            self.residual = is_residual(self.metadata)
            self._offset_max = self.metadata.get("offset_max", 0)
            obs_range = self.metadata["obs_range"]
            low = np.asarray(obs_range["low"], dtype=np.float64)
            high = np.asarray(obs_range["high"], dtype=np.float64)
            # In range iff |x - center| <= half, one comparison per feature that NaN fails.
            self._center = ((low + high) / 2).astype(np.float32)
            self._half = ((high - low) / 2 + range_margin).astype(np.float32)
            self._deviation = np.empty(len(low), np.float32)
            self._in_range = np.empty(len(low), bool)

    def _load_failed(self, reason: str, detail: str) -> None:
        self._load_reason = f"load:{reason}"
        self._switch(FALLBACK, self._load_reason, detail)

    def reset(self) -> None:
        """Reset both controllers and forget the SLO history; the counters are kept."""
        self.fallback.reset()
        self._slo_met.clear()
        self._slo_hits = 0
        self._slo_low = False

    def decide(self, obs: Observation) -> Decision:
        """The policy's k, or the fallback's when a guard trips (see the module docstring)."""
        self.decisions += 1
        policy = self.policy
        if policy is None:
            return self._use_fallback(obs, self._load_reason)
        reason = None
        try:
            vector = obs.vector
            deviation, in_range = self._deviation, self._in_range
            np.subtract(vector, self._center, out=deviation)
            np.abs(deviation, out=deviation)
            np.less_equal(deviation, self._half, out=in_range)
            if not in_range.all():
                finite = np.isfinite(vector).all()
                reason = OBS_OUT_OF_RANGE if finite else OBS_NONFINITE
            else:
                k = policy.act(vector)
                if self.residual:
                    base = self.fallback.decide(obs)
                    k = residual_k(base.k, k, self._offset_max, self.k_max)
                elif not 0 <= k <= self.k_max:
                    raise PolicyError(f"policy chose k={k!r} outside 0..{self.k_max}")
        except Exception:
            # A wrongly shaped vector fails here too, in the range check or the matmul.
            if not self._inference_error_logged:
                self._inference_error_logged = True
                self.logger.exception("policy inference failed (logged once)")
            reason = INFERENCE_ERROR
        if reason is not None:
            return self._use_fallback(obs, reason)
        if self._slo_low:
            decision = base if self.residual else self.fallback.decide(obs)
            if decision.k != k:
                return self._record_fallback(decision, SLO_GUARD)
            # Agreement changes nothing, so a guard engaged for a while does not flap.
            return Decision(k)
        if self.active != POLICY:
            self._switch(POLICY, RECOVERED)
        return Decision(k)

    def observe(self, record: StepRecord) -> None:
        """Pass the step to the fallback and fold its finished requests into SLO attainment."""
        self.fallback.observe(record)
        if not record.finished:
            return
        met = self._slo_met
        for done in record.finished:
            hit = done.ttft <= self.ttft_slo_s and done.tpot <= self.tpot_slo_s
            if len(met) == self.slo_window:
                self._slo_hits -= met[0]
            met.append(hit)
            self._slo_hits += hit
        self._slo_low = (
            len(met) == self.slo_window and self._slo_hits < self.min_attainment * self.slo_window
        )

    @property
    def slo_attainment(self) -> float:
        """Fraction of the last `slo_window` (or fewer) finished requests that met both SLOs."""
        return self._slo_hits / len(self._slo_met) if self._slo_met else math.nan

    def _use_fallback(self, obs: Observation, reason: str) -> Decision:
        return self._record_fallback(self.fallback.decide(obs), reason)

    def _record_fallback(self, decision: Decision, reason: str) -> Decision:
        self.fallback_decisions += 1
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if self.active != FALLBACK or self.last_reason != reason:
            self._switch(FALLBACK, reason)
        return decision

    def _switch(self, source: str, reason: str, detail: str = "") -> None:
        if source == FALLBACK:
            self.last_reason = reason
            self.logger.warning(
                "speculation control: fallback %s decides (%s)%s",
                self.fallback.name,
                reason,
                f": {detail}" if detail else "",
            )
        else:
            self.logger.info(
                "speculation control: policy decides again (fallback %s was in for %s)",
                self.fallback.name,
                self.last_reason,
            )
        self.active = source
        if self.on_switch is not None:
            try:
                self.on_switch(reason)
            except Exception:
                self.logger.exception("on_switch listener failed")
