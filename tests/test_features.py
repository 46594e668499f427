"""The feature builder on hand-made StepRecords, against values worked out by hand."""

from __future__ import annotations

import math
import re
from dataclasses import fields

import numpy as np
import pytest

from agents.features import (
    FEATURE_NAMES,
    SCHEMA_VERSION,
    FeatureBuilder,
    FeatureConfig,
    Observation,
    feature_bounds,
    feature_names,
)
from agents.records import FinishedRequest, RequestStep, StepRecord

# Normalisers chosen so hand-worked values are simple: peak goodput = 8 * 5 / 0.05 = 800 tok/s.
CONFIG = FeatureConfig(
    k_max=4,
    max_num_seqs=8,
    max_num_batched_tokens=512,
    ttft_slo_s=2.0,
    tpot_slo_s=0.1,
    window=4,
    ema_alpha=0.2,
    ref_step_time_s=0.05,
)
NAMES = feature_names(CONFIG.window)


def req(
    request_id: str = "r0",
    *,
    k: int = 4,
    drafted: int = 0,
    accepted: int = 0,
    prefill_tokens: int = 0,
    output_tokens: int = 1,
    first_token_at: float | None = None,
) -> RequestStep:
    """A request's part in a step; it decodes (generates accepted + 1) unless it prefills."""
    generated = 0 if prefill_tokens else accepted + 1
    return RequestStep(
        request_id=request_id,
        k=k,
        drafted=drafted,
        accepted=accepted,
        generated=generated,
        prefill_tokens=prefill_tokens,
        output_tokens=output_tokens,
        first_token_at=first_token_at,
    )


def finished(request_id: str) -> FinishedRequest:
    """A finished-request record; only its id matters to the builder."""
    return FinishedRequest(
        request_id=request_id,
        arrival_at=0.0,
        first_token_at=1.0,
        finished_at=2.0,
        prompt_tokens=10,
        output_tokens=5,
    )


def record(
    *,
    step: int = 0,
    started_at: float = 9.95,
    step_time: float = 0.05,
    k: int = 4,
    batch_size: int = 0,
    num_running: int = 0,
    num_waiting: int = 0,
    num_arrived: int = 0,
    decode_tokens: int = 0,
    spec_tokens: int = 0,
    prefill_tokens: int = 0,
    prefill_tokens_waiting: int = 0,
    oldest_waiting_arrival: float | None = None,
    kv_cache_usage: float = 0.0,
    requests: tuple[RequestStep, ...] = (),
    finished: tuple[FinishedRequest, ...] = (),
) -> StepRecord:
    """A StepRecord with quiet defaults; by default it ends at t = 10."""
    return StepRecord(
        step=step,
        started_at=started_at,
        step_time=step_time,
        k=k,
        draft_budget=k,
        batch_size=batch_size,
        num_running=num_running,
        num_waiting=num_waiting,
        num_arrived=num_arrived,
        decode_tokens=decode_tokens,
        spec_tokens=spec_tokens,
        prefill_tokens=prefill_tokens,
        prefill_tokens_waiting=prefill_tokens_waiting,
        oldest_waiting_arrival=oldest_waiting_arrival,
        kv_cache_usage=kv_cache_usage,
        requests=requests,
        finished=finished,
    )


def feat(obs: Observation, name: str) -> float:
    """One entry of the vector, by name."""
    return float(obs.vector[NAMES.index(name)])


def built(*records: StepRecord, now: float | None = None) -> Observation:
    """Fold the records into a fresh builder and build."""
    builder = FeatureBuilder(CONFIG)
    for r in records:
        builder.update(r)
    return builder.build(now)


def scalars(obs: Observation) -> dict[str, object]:
    """Every field but the vector, for comparing observations."""
    return {f.name: getattr(obs, f.name) for f in fields(obs) if f.name != "vector"}


def assert_well_formed(obs: Observation) -> None:
    """The vector is float32, laid out as NAMES, finite and inside the documented bounds."""
    low, high = feature_bounds(CONFIG.window)
    assert obs.vector.dtype == np.float32
    assert obs.vector.shape == (len(NAMES),)
    assert np.all(np.isfinite(obs.vector))
    assert np.all(obs.vector >= low)
    assert np.all(obs.vector <= high)


def test_schema() -> None:
    assert SCHEMA_VERSION == 1
    assert len(FEATURE_NAMES) == 3 + 8 + 13
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_NAMES[3:11] == tuple(f"acceptance_{i}" for i in range(8))
    assert len(NAMES) == 3 + 4 + 13
    low, high = feature_bounds()
    assert low.shape == high.shape == (len(FEATURE_NAMES),)
    assert low[FEATURE_NAMES.index("ttft_slack")] == -1.0
    assert high[FEATURE_NAMES.index("queue_depth")] == 4.0


def test_idle_observation() -> None:
    obs = FeatureBuilder(CONFIG).build()
    assert_well_formed(obs)
    assert (obs.batch_size, obs.num_running, obs.num_waiting, obs.prev_k) == (0, 0, 0, 0)
    assert obs.acceptance_ema == 0.5
    assert not obs.has_acceptance
    assert obs.step_time_ema_s == 0.05
    assert (obs.ttft_slack, obs.tpot_slack) == (1.0, 1.0)
    assert (obs.arrival_rate, obs.kv_cache_usage, obs.now) == (0.0, 0.0, 0.0)
    assert obs.per_request_acceptance == {}
    expected = {f"acceptance_{i}": 0.5 for i in range(4)}
    expected.update(acceptance_ema=0.5, ttft_slack=1.0, tpot_slack=1.0, step_time=1.0)
    assert obs.vector.tolist() == [expected.get(name, 0.0) for name in NAMES]


def test_default_window_matches_feature_names() -> None:
    config = FeatureConfig(
        k_max=4, max_num_seqs=8, max_num_batched_tokens=512, ttft_slo_s=2.0, tpot_slo_s=0.1
    )
    builder = FeatureBuilder(config)
    assert builder.names == FEATURE_NAMES
    assert builder.build().vector.shape == (len(FEATURE_NAMES),)


def test_batch_running_and_queue() -> None:
    obs = built(record(batch_size=4, num_running=6, num_waiting=4))
    assert (obs.batch_size, obs.num_running, obs.num_waiting) == (4, 6, 4)
    assert feat(obs, "batch_frac") == 0.5
    assert feat(obs, "running_frac") == 0.75
    assert feat(obs, "queue_depth") == 0.5


def test_queue_depth_clips_at_four() -> None:
    obs = built(record(num_waiting=100))
    assert obs.num_waiting == 100
    assert feat(obs, "queue_depth") == 4.0


def test_acceptance_window_and_ema() -> None:
    # Rates 2/4 = 0.5 then 4/4 = 1.0, then a step that drafts nothing.
    steps = (
        record(requests=(req(drafted=4, accepted=2),)),
        record(requests=(req(drafted=4, accepted=4),)),
        record(k=0, requests=(req(k=0),)),
    )
    obs = built(*steps)
    # The first rate sets the EMA; then 0.5 + 0.2 * (1.0 - 0.5) = 0.6, carried by the idle step.
    assert obs.acceptance_ema == pytest.approx(0.6)
    assert obs.has_acceptance
    window = [feat(obs, f"acceptance_{i}") for i in range(4)]
    assert window == pytest.approx([0.6, 1.0, 0.5, 0.5])
    assert feat(obs, "acceptance_ema") == pytest.approx(0.6)
    assert feat(obs, "acceptance_seen") == 1.0


def test_acceptance_pools_drafts_over_requests() -> None:
    obs = built(record(requests=(req("a", drafted=4, accepted=3), req("b", drafted=2, accepted=0))))
    assert obs.acceptance_ema == pytest.approx(3 / 6)


def test_steps_without_drafts_keep_the_prior() -> None:
    obs = built(record(requests=(req(k=0),)), record(requests=(req(k=0),)))
    assert obs.acceptance_ema == 0.5
    assert not obs.has_acceptance
    assert feat(obs, "acceptance_seen") == 0.0
    assert [feat(obs, f"acceptance_{i}") for i in range(4)] == [0.5] * 4


def test_accepted_per_decoding_request() -> None:
    first = record(
        requests=(
            req("a", drafted=4, accepted=2),
            req("b", drafted=4, accepted=0),
            req("c", prefill_tokens=100),  # prefilling: not a decoding request
        )
    )
    second = record(requests=(req("a", drafted=4, accepted=3), req("b", drafted=4, accepted=3)))
    prefill_only = record(requests=(req("d", prefill_tokens=50),))
    # Mean accepted: 2 / 2 = 1, then 6 / 2 = 3 -> EMA 1 + 0.2 * (3 - 1) = 1.4; over k_max 4.
    assert feat(built(first), "accepted_per_request") == pytest.approx(1 / 4)
    assert feat(built(first, second), "accepted_per_request") == pytest.approx(1.4 / 4)
    assert feat(built(first, second, prefill_only), "accepted_per_request") == pytest.approx(
        1.4 / 4
    )


def test_token_features() -> None:
    obs = built(
        record(decode_tokens=4, spec_tokens=12, prefill_tokens=240, prefill_tokens_waiting=1024)
    )
    assert feat(obs, "token_load") == (4 + 12 + 240) / 512
    assert feat(obs, "spec_token_frac") == pytest.approx(12 / 512)
    assert feat(obs, "prefill_backlog") == 2.0
    assert feat(built(record(prefill_tokens_waiting=4096)), "prefill_backlog") == 4.0


def test_kv_cache_usage() -> None:
    obs = built(record(kv_cache_usage=0.25))
    assert obs.kv_cache_usage == 0.25
    assert feat(obs, "kv_cache_usage") == 0.25


def test_now_defaults_to_end_of_last_step() -> None:
    assert built(record(started_at=9.5, step_time=0.5)).now == 10.0
    assert built(record(), now=12.0).now == 12.0


def test_ttft_slack() -> None:
    # The record ends at t = 10; the oldest queued request arrived at t = 9 (1 s of a 2 s SLO).
    waiting = record(num_waiting=1, oldest_waiting_arrival=9.0)
    assert built(waiting).ttft_slack == pytest.approx(0.5)
    assert feat(built(waiting), "ttft_slack") == pytest.approx(0.5)
    # Later clocks eat the slack: at t = 11 it is gone, far past it clips at -1.
    assert built(waiting, now=11.0).ttft_slack == pytest.approx(0.0)
    far_past = built(waiting, now=15.0)
    assert far_past.ttft_slack == -1.0
    assert feat(far_past, "ttft_slack") == -1.0
    assert built(record()).ttft_slack == 1.0


def test_tpot_slack_takes_the_tightest_running_request() -> None:
    # End t = 10. "a": (10 - 9) / (21 - 1) = 0.05 s/token -> (0.1 - 0.05) / 0.1 = 0.5.
    # "b": (10 - 8) / (26 - 1) = 0.08 -> 0.2. "c" has one token, so no TPOT yet.
    requests = (
        req("a", output_tokens=21, first_token_at=9.0),
        req("b", output_tokens=26, first_token_at=8.0),
        req("c", output_tokens=1, first_token_at=9.9),
    )
    obs = built(record(requests=requests))
    assert obs.tpot_slack == pytest.approx(0.2)
    assert feat(obs, "tpot_slack") == pytest.approx(0.2)


def test_tpot_slack_ignores_finished_requests_and_clips() -> None:
    # "slow": (10 - 4) / (21 - 1) = 0.3 -> (0.1 - 0.3) / 0.1 = -2, clipped to -1.
    slow = req("slow", output_tokens=21, first_token_at=4.0)
    assert built(record(requests=(slow,))).tpot_slack == -1.0
    done = built(record(requests=(slow,), finished=(finished("slow"),)))
    assert done.tpot_slack == 1.0
    assert (
        built(record(requests=(req("new", output_tokens=1, first_token_at=9.9),))).tpot_slack == 1.0
    )


def test_arrival_rate_uses_time_since_previous_step() -> None:
    first = record(started_at=0.0, step_time=0.5, num_arrived=2)  # 2 / 0.5 s = 4 req/s
    second = record(started_at=1.5, step_time=0.5, num_arrived=3)  # 3 / (2.0 - 0.5) = 2 req/s
    # The EMA starts at 0: 0.2 * 4 = 0.8, then 0.8 + 0.2 * (2 - 0.8) = 1.04.
    assert built(first).arrival_rate == pytest.approx(0.8)
    obs = built(first, second)
    assert obs.arrival_rate == pytest.approx(1.04)
    assert feat(obs, "arrival_rate") == pytest.approx(math.log1p(1.04) / 5)


def test_prev_k() -> None:
    obs = built(record(k=1), record(k=3))
    assert obs.prev_k == 3
    assert feat(obs, "prev_k") == 0.75


def test_step_time_and_goodput_emas() -> None:
    # 10 tokens in 0.05 s = 200 tok/s, then 20 tokens in 0.1 s = 200 tok/s.
    first = record(step_time=0.05, requests=tuple(req(f"r{i}", accepted=1) for i in range(5)))
    second = record(step_time=0.1, requests=tuple(req(f"r{i}", accepted=3) for i in range(5)))
    obs = built(first, second)
    # Step time: first sets 0.05, then 0.05 + 0.2 * 0.05 = 0.06 -> 0.06 / 0.05 = 1.2.
    assert obs.step_time_ema_s == pytest.approx(0.06)
    assert feat(obs, "step_time") == pytest.approx(1.2)
    # Goodput starts at 0: 0.2 * 200 = 40, then 40 + 0.2 * 160 = 72 tok/s, over 800.
    assert feat(obs, "goodput") == pytest.approx(72 / 800)
    assert feat(built(record(step_time=1.0)), "step_time") == 4.0


def test_per_request_acceptance_tracks_running_requests() -> None:
    builder = FeatureBuilder(CONFIG)
    builder.update(record(requests=(req("a", drafted=4, accepted=2), req("idle", k=0))))
    assert builder.build().per_request_acceptance == {"a": 0.5}
    builder.update(
        record(requests=(req("a", drafted=4, accepted=4), req("b", drafted=4, accepted=2)))
    )
    snapshot = builder.build().per_request_acceptance
    assert snapshot == pytest.approx({"a": 0.6, "b": 0.5})
    builder.update(record(requests=(req("b", drafted=2, accepted=2),), finished=(finished("a"),)))
    assert builder.build().per_request_acceptance == pytest.approx({"b": 0.6})
    # Earlier observations are snapshots, unaffected by later steps.
    assert set(snapshot) == {"a", "b"}


def test_per_request_acceptance_is_bounded() -> None:
    config = FeatureConfig(
        k_max=4, max_num_seqs=1, max_num_batched_tokens=512, ttft_slo_s=2.0, tpot_slo_s=0.1
    )
    builder = FeatureBuilder(config)
    # Requests that never finish (e.g. aborted): only the 2 * max_num_seqs freshest are kept.
    for rid in ("a", "b", "c"):
        builder.update(record(requests=(req(rid, drafted=4, accepted=4),)))
    assert set(builder.build().per_request_acceptance) == {"b", "c"}


def test_reset_returns_to_idle() -> None:
    builder = FeatureBuilder(CONFIG)
    idle = builder.build()
    builder.update(
        record(
            k=2,
            batch_size=3,
            num_running=3,
            num_waiting=2,
            num_arrived=5,
            oldest_waiting_arrival=9.0,
            kv_cache_usage=0.5,
            requests=(req("a", drafted=2, accepted=1, output_tokens=5, first_token_at=9.0),),
        )
    )
    assert not np.array_equal(builder.build().vector, idle.vector)
    builder.reset()
    again = builder.build()
    assert np.array_equal(again.vector, idle.vector)
    assert scalars(again) == scalars(idle)


def test_busy_engine_stays_in_bounds() -> None:
    heavy = record(
        step_time=2.0,
        batch_size=50,
        num_running=50,
        num_waiting=10_000,
        num_arrived=10**9,
        decode_tokens=5000,
        spec_tokens=5000,
        prefill_tokens=5000,
        prefill_tokens_waiting=10**7,
        oldest_waiting_arrival=-100.0,
        kv_cache_usage=1.0,
        k=9,
        requests=tuple(
            req(f"r{i}", k=4, drafted=4, accepted=4, output_tokens=3, first_token_at=0.0)
            for i in range(50)
        ),
    )
    obs = built(heavy, heavy)
    assert_well_formed(obs)
    assert feat(obs, "batch_frac") == 1.0
    assert feat(obs, "tpot_slack") == -1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("k_max", 0),
        ("max_num_seqs", -1),
        ("max_num_batched_tokens", 0),
        ("window", 0),
        ("k_max", 2.5),
        ("ttft_slo_s", -1.0),
        ("tpot_slo_s", 0.0),
        ("tpot_slo_s", math.nan),
        ("ref_step_time_s", math.inf),
        ("ema_alpha", 0.0),
        ("ema_alpha", 1.5),
    ],
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    kwargs: dict[str, object] = {
        "k_max": 4,
        "max_num_seqs": 8,
        "max_num_batched_tokens": 512,
        "ttft_slo_s": 2.0,
        "tpot_slo_s": 0.1,
        field: value,
    }
    with pytest.raises(ValueError, match=rf"FeatureConfig\.{field} .*{re.escape(repr(value))}"):
        FeatureConfig(**kwargs)  # type: ignore[arg-type]
