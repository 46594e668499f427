"""The one feature builder: recent StepRecords in, the policy's observation out.

The Gymnasium environment (training) and the scheduler hook (serving) both fold every
StepRecord into a `FeatureBuilder` and call `build()` before choosing k, so the policy sees
identical features in both. It runs every engine step, so it keeps plain-float running state
and allocates one small array per `build()`.

Feature vector (schema version 1), in order; W is `FeatureConfig.window` (8 by default).
"Last step" means the most recent record folded in. EMAs use `FeatureConfig.ema_alpha`.

=========================  ===============================================  ============  =======
name                       what                                             normalised    range
=========================  ===============================================  ============  =======
batch_frac                 requests scheduled in the last step              / max_seqs    [0, 1]
running_frac               requests holding a running slot                  / max_seqs    [0, 1]
queue_depth                requests waiting for a running slot              / max_seqs    [0, 4]
acceptance_0 .. _{W-1}     per-step accepted/drafted, newest first; a step  as is         [0, 1]
                           that drafted nothing carries the acceptance EMA;
                           slots before W steps hold the prior 0.5
acceptance_ema             EMA of accepted/drafted over steps that drafted  as is         [0, 1]
                           (the first such step sets it; prior 0.5)
acceptance_seen            1 once any step drafted, else 0 (tells the       as is         {0, 1}
                           prior apart from a measured 0.5)
accepted_per_request       EMA of accepted draft tokens per decoding        / k_max       [0, 1]
                           request per step (first sample sets it; 0 before)
token_load                 decode + spec + prefill tokens of the last step  / max_tokens  [0, 1]
spec_token_frac            spec tokens of the last step                     / max_tokens  [0, 1]
prefill_backlog            prompt tokens not yet computed                   / max_tokens  [0, 4]
kv_cache_usage             KV-cache fraction in use after the last step     as is         [0, 1]
ttft_slack                 (ttft_slo - (now - oldest waiting arrival))      / ttft_slo    [-1, 1]
                           of the queue; 1 when nothing waits
tpot_slack                 min over the last step's unfinished requests     / tpot_slo    [-1, 1]
                           with >= 2 output tokens of (tpot_slo - TPOT so
                           far to the step's end); 1 when there are none
arrival_rate               EMA (from 0) of arrivals per second since the    log1p(r) / 5  [0, 2]
                           previous step's end (the first step: its time)
prev_k                     k of the last step                               / k_max       [0, 1]
step_time                  EMA of step time (first step sets it)            / ref_step    [0, 4]
goodput                    EMA (from 0) of generated tokens / step time     / peak        [0, 1]
=========================  ===============================================  ============  =======

max_seqs = max_num_seqs, max_tokens = max_num_batched_tokens, ref_step = ref_step_time_s,
peak = max_num_seqs * (k_max + 1) / ref_step_time_s (every slot accepting every draft at the
reference step time). Arrival rates are log-scaled because they span orders of magnitude
across traces: 1 req/s -> 0.14, 10 -> 0.48, 100 -> 0.92. Every value is clipped to its range.
Before any record, `build()` describes an idle engine: all zeros except the acceptance slots
and EMA (the prior), both slacks (1) and step_time (1, the reference).
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from agents.records import StepRecord

SCHEMA_VERSION = 1
DEFAULT_WINDOW = 8
ACCEPTANCE_PRIOR = 0.5
"""Acceptance rate assumed before any step has drafted."""
ARRIVAL_LOG_SCALE = 5.0
"""Divisor of log1p(arrivals per second) in the arrival_rate feature."""

_HEAD_SPECS = (
    ("batch_frac", 0.0, 1.0),
    ("running_frac", 0.0, 1.0),
    ("queue_depth", 0.0, 4.0),
)
_TAIL_SPECS = (
    ("acceptance_ema", 0.0, 1.0),
    ("acceptance_seen", 0.0, 1.0),
    ("accepted_per_request", 0.0, 1.0),
    ("token_load", 0.0, 1.0),
    ("spec_token_frac", 0.0, 1.0),
    ("prefill_backlog", 0.0, 4.0),
    ("kv_cache_usage", 0.0, 1.0),
    ("ttft_slack", -1.0, 1.0),
    ("tpot_slack", -1.0, 1.0),
    ("arrival_rate", 0.0, 2.0),
    ("prev_k", 0.0, 1.0),
    ("step_time", 0.0, 4.0),
    ("goodput", 0.0, 1.0),
)


def _feature_specs(window: int) -> tuple[tuple[str, float, float], ...]:
    window_specs = tuple((f"acceptance_{i}", 0.0, 1.0) for i in range(window))
    return _HEAD_SPECS + window_specs + _TAIL_SPECS


def feature_names(window: int = DEFAULT_WINDOW) -> tuple[str, ...]:
    """The names of the vector's entries, in order, for an acceptance window of `window`."""
    return tuple(name for name, _, _ in _feature_specs(window))


def feature_bounds(window: int = DEFAULT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds (float32) of every entry, e.g. for a Gymnasium Box space."""
    specs = _feature_specs(window)
    low = np.array([lo for _, lo, _ in specs], dtype=np.float32)
    high = np.array([hi for _, _, hi in specs], dtype=np.float32)
    return low, high


FEATURE_NAMES: tuple[str, ...] = feature_names()
"""The vector's layout with the default window; use `feature_names(window)` for others."""


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """The engine limits and SLOs that normalise the features, and the smoothing settings."""

    k_max: int
    """Largest speculation length a controller may choose."""
    max_num_seqs: int
    """The engine's limit on running requests."""
    max_num_batched_tokens: int
    """The engine's token budget per step."""
    ttft_slo_s: float
    """Time-to-first-token objective, seconds."""
    tpot_slo_s: float
    """Time-per-output-token objective, seconds."""
    window: int = DEFAULT_WINDOW
    """How many recent per-step acceptance rates the vector holds."""
    ema_alpha: float = 0.2
    """Weight of the newest sample in every moving average."""
    ref_step_time_s: float = 0.05
    """A typical step time, seconds: the scale of step_time and goodput."""

    def __post_init__(self) -> None:
        for name in ("k_max", "max_num_seqs", "max_num_batched_tokens", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"FeatureConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("ttft_slo_s", "tpot_slo_s", "ref_step_time_s"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"FeatureConfig.{name} must be finite and > 0, got {value!r}")
        if not (isinstance(self.ema_alpha, numbers.Real) and 0 < self.ema_alpha <= 1):
            raise ValueError(f"FeatureConfig.ema_alpha must be in (0, 1], got {self.ema_alpha!r}")


@dataclass(frozen=True, slots=True)
class Observation:
    """What a controller sees before an engine step: named scalars plus the policy's vector.

    The scalars are raw (counts, seconds, requests per second) except the two slacks, which
    are the clipped fractions of the SLO that also appear in the vector.
    """

    batch_size: int
    """Requests scheduled in the last step."""
    num_running: int
    """Requests holding a running slot after the last step's scheduling."""
    num_waiting: int
    """Requests waiting for a running slot."""
    acceptance_ema: float
    """Moving average of accepted/drafted over steps that drafted (the prior until one has)."""
    has_acceptance: bool
    """Whether any step has drafted, i.e. `acceptance_ema` is measured, not the prior."""
    prev_k: int
    """The k of the last step (0 before any)."""
    step_time_ema_s: float
    """Moving average of step time, seconds (the reference step time before any step)."""
    ttft_slack: float
    """TTFT slack of the oldest queued request as a fraction of the SLO, in [-1, 1]."""
    tpot_slack: float
    """Tightest TPOT slack over the running batch as a fraction of the SLO, in [-1, 1]."""
    arrival_rate: float
    """Moving average of request arrivals per second."""
    kv_cache_usage: float
    """KV-cache fraction in use after the last step."""
    now: float
    """The clock time the observation describes."""
    vector: np.ndarray
    """The policy's input: float32, laid out as `feature_names(config.window)`."""
    per_request_acceptance: Mapping[str, float]
    """Acceptance EMA of each running request that has drafted; others are absent."""


class FeatureBuilder:
    """Folds StepRecords into running state and builds the observation for the next step."""

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.names = feature_names(config.window)
        # Requests that vanish without finishing (aborts) would otherwise stay forever.
        self._max_tracked = 2 * config.max_num_seqs
        self.reset()

    def reset(self) -> None:
        """Forget all history: the next `build()` describes an idle engine."""
        self._last: StepRecord | None = None
        self._last_end = 0.0
        self._window: deque[float] = deque(
            [ACCEPTANCE_PRIOR] * self.config.window, maxlen=self.config.window
        )
        self._acceptance = ACCEPTANCE_PRIOR
        self._has_acceptance = False
        self._accepted_per_req = 0.0
        self._has_accepted_per_req = False
        self._step_time = self.config.ref_step_time_s
        self._has_step_time = False
        self._arrival_rate = 0.0
        self._goodput = 0.0
        self._tpot_slack = 1.0
        self._per_request: dict[str, float] = {}

    def update(self, record: StepRecord) -> None:
        """Fold in one engine step."""
        alpha = self.config.ema_alpha
        tpot_slo = self.config.tpot_slo_s
        end = record.started_at + record.step_time
        finished_ids = {f.request_id for f in record.finished}
        per_request = self._per_request

        drafted = accepted = generated = decoding = 0
        tpot_slack = 1.0
        for r in record.requests:
            drafted += r.drafted
            accepted += r.accepted
            generated += r.generated
            if r.prefill_tokens == 0:
                decoding += 1
            if r.drafted:
                rate = r.accepted / r.drafted
                # Pop and reinsert so dict order is least recently drafted first.
                prev = per_request.pop(r.request_id, None)
                per_request[r.request_id] = rate if prev is None else prev + alpha * (rate - prev)
            if (
                r.output_tokens >= 2
                and r.first_token_at is not None
                and r.request_id not in finished_ids
            ):
                tpot = (end - r.first_token_at) / (r.output_tokens - 1)
                tpot_slack = min(tpot_slack, (tpot_slo - tpot) / tpot_slo)
        for f in record.finished:
            per_request.pop(f.request_id, None)
        while len(per_request) > self._max_tracked:
            del per_request[next(iter(per_request))]
        self._tpot_slack = _clip(tpot_slack, -1.0, 1.0)

        if drafted:
            rate = accepted / drafted
            if self._has_acceptance:
                self._acceptance += alpha * (rate - self._acceptance)
            else:
                self._acceptance = rate
                self._has_acceptance = True
            self._window.appendleft(rate)
        else:
            self._window.appendleft(self._acceptance)

        if decoding:
            per_req = accepted / decoding
            if self._has_accepted_per_req:
                self._accepted_per_req += alpha * (per_req - self._accepted_per_req)
            else:
                self._accepted_per_req = per_req
                self._has_accepted_per_req = True

        if record.step_time > 0:
            if self._has_step_time:
                self._step_time += alpha * (record.step_time - self._step_time)
            else:
                self._step_time = record.step_time
                self._has_step_time = True
            self._goodput += alpha * (generated / record.step_time - self._goodput)
            # Arrivals accumulate while the engine idles between steps, so divide by the time
            # since the previous step ended, not by this step's own duration.
            since = end - self._last_end if self._last is not None else record.step_time
            if since <= 0:
                since = record.step_time
            self._arrival_rate += alpha * (record.num_arrived / since - self._arrival_rate)

        self._last = record
        self._last_end = end

    def build(self, now: float | None = None) -> Observation:
        """The observation before the next step; `now` defaults to the last step's end."""
        cfg = self.config
        last = self._last
        if now is None:
            now = self._last_end
        max_seqs = cfg.max_num_seqs
        max_tokens = cfg.max_num_batched_tokens

        if last is None:
            batch_size = num_running = num_waiting = prev_k = 0
            scheduled_tokens = spec_tokens = prefill_waiting = 0
            kv_cache_usage = 0.0
            ttft_slack = 1.0
        else:
            batch_size = last.batch_size
            num_running = last.num_running
            num_waiting = last.num_waiting
            prev_k = last.k
            scheduled_tokens = last.decode_tokens + last.spec_tokens + last.prefill_tokens
            spec_tokens = last.spec_tokens
            prefill_waiting = last.prefill_tokens_waiting
            kv_cache_usage = last.kv_cache_usage
            if last.oldest_waiting_arrival is None:
                ttft_slack = 1.0
            else:
                waited = now - last.oldest_waiting_arrival
                ttft_slack = _clip((cfg.ttft_slo_s - waited) / cfg.ttft_slo_s, -1.0, 1.0)

        peak_goodput = max_seqs * (cfg.k_max + 1) / cfg.ref_step_time_s
        values = [
            _clip(batch_size / max_seqs, 0.0, 1.0),
            _clip(num_running / max_seqs, 0.0, 1.0),
            _clip(num_waiting / max_seqs, 0.0, 4.0),
            *self._window,
            self._acceptance,
            1.0 if self._has_acceptance else 0.0,
            _clip(self._accepted_per_req / cfg.k_max, 0.0, 1.0),
            _clip(scheduled_tokens / max_tokens, 0.0, 1.0),
            _clip(spec_tokens / max_tokens, 0.0, 1.0),
            _clip(prefill_waiting / max_tokens, 0.0, 4.0),
            _clip(kv_cache_usage, 0.0, 1.0),
            ttft_slack,
            self._tpot_slack,
            _clip(math.log1p(self._arrival_rate) / ARRIVAL_LOG_SCALE, 0.0, 2.0),
            _clip(prev_k / cfg.k_max, 0.0, 1.0),
            _clip(self._step_time / cfg.ref_step_time_s, 0.0, 4.0),
            _clip(self._goodput / peak_goodput, 0.0, 1.0),
        ]
        return Observation(
            batch_size=batch_size,
            num_running=num_running,
            num_waiting=num_waiting,
            acceptance_ema=self._acceptance,
            has_acceptance=self._has_acceptance,
            prev_k=prev_k,
            step_time_ema_s=self._step_time,
            ttft_slack=ttft_slack,
            tpot_slack=self._tpot_slack,
            arrival_rate=self._arrival_rate,
            kv_cache_usage=kv_cache_usage,
            now=now,
            vector=np.array(values, dtype=np.float32),
            per_request_acceptance=dict(self._per_request),
        )
