"""Hand-made observations for controller tests."""

from __future__ import annotations

import numpy as np

from agents.features import Observation


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
