"""How long one engine step takes: a linear step-time model and the profile files that hold it.

`python -m training.profile` times the engine over a grid of batch sizes, speculation lengths,
context lengths and prefill sizes, fits a `StepTimeModel` to the grid's medians and saves a
`Profile`. Analytic controllers load it with `load_profile` and predict the cost of each k.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

METHODS = ("ngram", "draft_model", "none")
"""Speculation methods a profile can be made for ("none": the engine does not speculate)."""
MIN_STEP_S = 1e-6
"""Floor of every prediction, so goodput ratios never divide by zero."""
COEFFICIENTS = (
    "overhead_s",
    "per_request_s",
    "per_verify_token_s",
    "per_draft_pass_s",
    "per_context_token_s",
    "per_prefill_token_s",
)
"""The model's coefficients, in the order of the features [1, B, B*k, k, B*C, P]."""
_SAMPLE_KEYS = ("batch", "k", "context", "prefill_tokens")


@dataclass(frozen=True, slots=True)
class StepTimeModel:
    """Seconds of one engine step as a linear function of what the step computes.

    With B decoding requests, speculation length k, mean context length C (tokens) and P
    prefill tokens in the step:

        T = overhead + B * per_request + B*k * per_verify_token + k * per_draft_pass
            + B*C * per_context_token + P * per_prefill_token

    Every coefficient is >= 0 and in seconds per unit of its feature.
    """

    overhead_s: float
    """Fixed cost of a step whatever it holds: scheduling, launches, sampling set-up."""
    per_request_s: float
    """Cost of each decoding request: its sampled token and per-request bookkeeping."""
    per_verify_token_s: float
    """Cost of each draft token the target model verifies (B*k of them)."""
    per_draft_pass_s: float
    """Cost of each of the k sequential drafting passes; near 0 for ngram, real for a draft
    model, which runs once per drafted position."""
    per_context_token_s: float
    """Attention cost per token of context read by a decoding request (B*C of them)."""
    per_prefill_token_s: float
    """Cost of each prompt token computed in the step."""
    rel_rmse: float = 0.0
    """Root mean square relative error of the fit on its samples (0 when not fitted)."""

    def __post_init__(self) -> None:
        for name in (*COEFFICIENTS, "rel_rmse"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"StepTimeModel.{name} must be finite and >= 0, got {value!r}")

    def predict(
        self, batch: float, k: float, context: float = 256.0, prefill_tokens: float = 0
    ) -> float:
        """Predicted seconds of a step with `batch` decoding requests drafting `k` tokens."""
        seconds = (
            self.overhead_s
            + batch * (self.per_request_s + k * self.per_verify_token_s)
            + k * self.per_draft_pass_s
            + batch * context * self.per_context_token_s
            + prefill_tokens * self.per_prefill_token_s
        )
        return seconds if seconds > MIN_STEP_S else MIN_STEP_S

    @classmethod
    def fit(cls, samples: Iterable[Mapping[str, float] | Sequence[float]]) -> StepTimeModel:
        """Fit non-negative coefficients to timed steps, minimising squared relative error.

        Each sample is a tuple (batch, k, context, prefill_tokens, seconds) or a dict with
        those keys (`step_time_s` may stand for `seconds`, so a profile's medians fit as is).
        Features the samples do not vary independently (e.g. a grid with one context length)
        cannot be told apart; the fit then credits one of them.
        """
        rows = [_sample_row(sample) for sample in samples]
        if not rows:
            raise ValueError("StepTimeModel.fit needs at least one sample")
        data = np.asarray(rows, dtype=np.float64)
        batch, k, context, prefill, seconds = data.T
        if np.any(seconds <= 0) or not np.all(np.isfinite(data)):
            raise ValueError("step-time samples must be finite with seconds > 0")
        design = np.column_stack(
            [np.ones_like(batch), batch, batch * k, k, batch * context, prefill]
        )
        # Step times span orders of magnitude over the grid: weighting rows by 1/seconds fits
        # relative error, so small batches (where speculation pays most) are fitted as well
        # as large ones.
        weighted = design / seconds[:, None]
        coef = _nnls(weighted, np.ones_like(seconds))
        rel_rmse = float(np.sqrt(np.mean((weighted @ coef - 1.0) ** 2)))
        return cls(*(float(c) for c in coef), rel_rmse=rel_rmse)

    def to_dict(self) -> dict[str, float]:
        """The coefficients and fit error as a JSON-ready dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, float]) -> StepTimeModel:
        """Rebuild a model from `to_dict()` output; raises ValueError naming missing keys."""
        missing = [name for name in COEFFICIENTS if name not in data]
        if missing:
            raise ValueError(f"step-time model lacks {', '.join(missing)}")
        return cls(
            *(float(data[name]) for name in COEFFICIENTS),
            rel_rmse=float(data.get("rel_rmse", 0.0)),
        )


def _sample_row(sample: Mapping[str, float] | Sequence[float]) -> list[float]:
    if isinstance(sample, Mapping):
        seconds_key = "seconds" if "seconds" in sample else "step_time_s"
        missing = [key for key in (*_SAMPLE_KEYS, seconds_key) if key not in sample]
        if missing:
            raise ValueError(f"step-time sample {sample!r} lacks {', '.join(missing)}")
        return [*(float(sample[key]) for key in _SAMPLE_KEYS), float(sample[seconds_key])]
    if len(sample) != 5:
        raise ValueError(
            f"a step-time sample is (batch, k, context, prefill_tokens, seconds), got {sample!r}"
        )
    return [float(x) for x in sample]


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Lawson-Hanson active-set solution of min |a x - b| subject to x >= 0."""
    # Scale columns to unit norm: features run from 1 to B*C ~ 1e5, which would swamp the
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


class ProfileError(ValueError):
    """A profile file is missing, unreadable, or was made for another model or method."""


@dataclass(frozen=True)
class Profile:
    """What `python -m training.profile` measured for one model, method and machine."""

    model: str
    """The model directory as recorded by the profiler, e.g. "checkpoints/lm/target"."""
    model_id: str
    """Content hash of the model's config.json and weights (see `serving.model_id`)."""
    method: str
    """Speculation method profiled: one of `METHODS`."""
    k_max: int
    """Largest speculation length profiled."""
    max_num_seqs: int
    """The engine's limit on running requests while profiling."""
    machine: dict
    """Description of the host (CPU, GPU, library versions) the timings come from."""
    medians: list[dict] = field(repr=False)
    """Grid medians: batch, k, context, prefill_tokens, step_time_s, samples (and acceptance
    where measured)."""
    step_time: StepTimeModel
    """The model fitted to `medians`."""
    acceptance: float
    """Mean acceptance rate measured while profiling, for default schedules."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("k_max", "max_num_seqs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.acceptance <= 1.0:
            raise ValueError(f"acceptance must be in [0, 1], got {self.acceptance!r}")

    def to_dict(self) -> dict:
        """The profile as a JSON-ready dict."""
        return {
            "model": self.model,
            "model_id": self.model_id,
            "method": self.method,
            "k_max": self.k_max,
            "max_num_seqs": self.max_num_seqs,
            "machine": self.machine,
            "acceptance": self.acceptance,
            "step_time": self.step_time.to_dict(),
            "medians": self.medians,
        }

    def save(self, path: str | Path) -> None:
        """Write the profile to `path` as indented JSON, creating its directory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


_PROFILE_FIELDS = ("model", "model_id", "method", "k_max", "max_num_seqs", "machine", "medians")


def load_profile(
    path: str | Path, *, model_id: str | None = None, method: str | None = None
) -> Profile:
    """Read a profile, checking it was made for `model_id` and `method` when given.

    Raises ProfileError naming the file when it is missing, not valid JSON, lacks fields, or
    was made for another model or method.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(
            f"no step-time profile at {path}; make one with `python -m training.profile`"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must hold a JSON object, not {type(data).__name__}")
    missing = [name for name in (*_PROFILE_FIELDS, "step_time", "acceptance") if name not in data]
    if missing:
        raise ProfileError(f"profile {path} lacks field(s) {', '.join(missing)}")
    try:
        profile = Profile(
            **{name: data[name] for name in _PROFILE_FIELDS},
            step_time=StepTimeModel.from_dict(data["step_time"]),
            acceptance=float(data["acceptance"]),
        )
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"profile {path} is malformed: {exc}") from None
    if method is not None and profile.method != method:
        raise ProfileError(f"profile {path} was made for method {profile.method!r}, not {method!r}")
    if model_id is not None and profile.model_id != model_id:
        raise ProfileError(
            f"profile {path} was made for model_id {profile.model_id!r} ({profile.model}), "
            f"not {model_id!r}; re-profile with `python -m training.profile`"
        )
    return profile
