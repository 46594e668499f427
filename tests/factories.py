"""Hand-made observations and step records for tests of the pure logic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agents.features import Observation
from agents.records import FinishedRequest, RequestStep, StepRecord


def observation(num_running: int, num_waiting: int = 0, **fields) -> Observation:
    """An observation after a step that scheduled `num_running` requests; other fields idle."""
    values = {
        "batch_size": num_running,
        "num_running": num_running,
        "num_waiting": num_waiting,
        "acceptance_ema": 0.5,
        "has_acceptance": False,
        "prev_k": 0,
        "step_time_ema_s": 0.05,
        "ttft_slack": 1.0,
        "tpot_slack": 1.0,
        "arrival_rate": 0.0,
        "kv_cache_usage": 0.0,
        "now": 0.0,
        "vector": np.zeros(1, dtype=np.float32),
        "per_request_acceptance": {},
    }
    return Observation(**(values | fields))


def decode_step(
    requests: Sequence[RequestStep] = (),
    finished: Sequence[FinishedRequest] = (),
    *,
    started_at: float = 0.0,
    step_time: float = 0.02,
    k: int = 2,
) -> StepRecord:
    """A decode step of `requests` (no prefill, no queue); counts derived from the requests."""
    return StepRecord(
        step=0,
        started_at=started_at,
        step_time=step_time,
        k=k,
        draft_budget=k,
        batch_size=len(requests),
        num_running=len(requests),
        num_waiting=0,
        num_arrived=0,
        decode_tokens=len(requests),
        spec_tokens=sum(r.drafted for r in requests),
        prefill_tokens=0,
        prefill_tokens_waiting=0,
        oldest_waiting_arrival=None,
        kv_cache_usage=0.1,
        requests=tuple(requests),
        finished=tuple(finished),
    )
