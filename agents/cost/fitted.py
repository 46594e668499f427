"""`fitted`: a linear model of step time, fitted to the profiler's measured steps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

import numpy as np

from agents.cost.load import StepLoad
from agents.cost.model import MIN_STEP_S

COEFFICIENTS = (
    "overhead_s",
    "per_request_s",
    "per_verify_token_s",
    "per_draft_pass_s",
    "per_context_token_s",
    "per_prefill_token_s",
)
"""The coefficients, in the order of the features of `features`."""


def features(load: StepLoad) -> tuple[float, float, float, float, float, float]:
    """[1, B, V, D, sum C, P]: decoding requests, verified drafts, draft length, context read
    by the decoding requests, and prompt tokens."""
    return (
        1.0,
        float(load.num_decode),
        float(load.verified_tokens),
        float(load.draft_len),
        float(sum(load.decode_context)),
        float(load.prefill_tokens),
    )


@dataclass(frozen=True, slots=True)
class LinearCost:
    """Seconds of one step as a linear function of what it computed.

        T = overhead + B * per_request + V * per_verify_token + D * per_draft_pass
            + (sum of contexts) * per_context_token + P * per_prefill_token

    with B decoding requests, V verified drafts, D the longest draft (sequential draft
    passes), and P prompt tokens. Every coefficient is >= 0. It cannot bend: measured ngram
    steps are almost flat in k at small batches, which it misses (see `TableCost`).
    """

    overhead_s: float
    """Fixed cost of a step whatever it holds: scheduling, launches, sampling set-up."""
    per_request_s: float
    """Cost of each decoding request: its sampled token and bookkeeping."""
    per_verify_token_s: float
    """Cost of each draft token the target verifies."""
    per_draft_pass_s: float
    """Cost of each sequential drafting pass; near 0 for ngram, real for a draft model."""
    per_context_token_s: float
    """Attention cost per token of context a decoding request reads."""
    per_prefill_token_s: float
    """Cost of each prompt token computed."""
    rel_rmse: float = 0.0
    """Root mean square relative error of the fit on its own samples (0 when not fitted)."""
    kind: str = "fitted"

    def __post_init__(self) -> None:
        for name in (*COEFFICIENTS, "rel_rmse"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"LinearCost.{name} must be finite and >= 0, got {value!r}")

    def seconds(self, load: StepLoad) -> float:
        """Predicted seconds of a step that computed `load`."""
        x = features(load)
        seconds = (
            self.overhead_s
            + x[1] * self.per_request_s
            + x[2] * self.per_verify_token_s
            + x[3] * self.per_draft_pass_s
            + x[4] * self.per_context_token_s
            + x[5] * self.per_prefill_token_s
        )
        return seconds if seconds > MIN_STEP_S else MIN_STEP_S

    @classmethod
    def fit(cls, samples: Iterable[tuple[StepLoad, float]]) -> LinearCost:
        """Non-negative coefficients minimising the squared relative error over
        (load, seconds) samples."""
        pairs = list(samples)
        if not pairs:
            raise ValueError("LinearCost.fit needs at least one sample")
        design = np.array([features(load) for load, _ in pairs], dtype=np.float64)
        seconds = np.array([s for _, s in pairs], dtype=np.float64)
        if np.any(~np.isfinite(seconds)) or np.any(seconds <= 0):
            raise ValueError("step-time samples must be finite with seconds > 0")
        # Step times span orders of magnitude: weighting rows by 1/seconds fits relative
        # error, so small batches (where speculation pays most) count as much as large ones.
        weighted = design / seconds[:, None]
        coef = nnls(weighted, np.ones_like(seconds))
        rel_rmse = float(np.sqrt(np.mean((weighted @ coef - 1.0) ** 2)))
        return cls(*(float(c) for c in coef), rel_rmse=rel_rmse)

    def to_params(self) -> dict[str, float]:
        """The coefficients and fit error, as a profile file stores them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "kind"}

    @classmethod
    def from_params(cls, params: Mapping[str, float]) -> LinearCost:
        """Rebuild from `to_params()`; raises ValueError naming missing coefficients."""
        missing = [name for name in COEFFICIENTS if name not in params]
        if missing:
            raise ValueError(f"fitted cost model lacks {', '.join(missing)}")
        return cls(
            *(float(params[name]) for name in COEFFICIENTS),
            rel_rmse=float(params.get("rel_rmse", 0.0)),
        )


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lawson-Hanson active-set solution of min |a x - b| subject to x >= 0."""
    # Scale columns to unit norm: features run from 1 to sum(C) ~ 1e5, which would swamp the
    # tolerances. All-zero columns (a feature that is 0 in every sample) keep x = 0.
    norms = np.linalg.norm(a, axis=0)
    norms[norms == 0] = 1.0
    a = a / norms
    n = a.shape[1]
    tol = 1e-12 * max(1.0, float(np.abs(a).max()) * float(np.abs(b).max()))
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    for _ in range(3 * n):
        gradient = a.T @ (b - a @ x)
        gradient[passive] = -np.inf
        j = int(np.argmax(gradient))
        if gradient[j] <= tol:
            break
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if np.all(z[passive] > 0):
                x = z
                break
            # Step from x toward z until the first coefficient hits zero, then drop it.
            blocked = passive & (z <= 0)
            step = np.min(x[blocked] / (x[blocked] - z[blocked]))
            x = x + step * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x / norms
