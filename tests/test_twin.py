"""The twin against the live engine (ngram and draft_model): acceptance tables hold for a live
replay under a varying k, the twin repeats a live window step by step, tables are cached and
refused for another engine, and `SpecDecodeTwin-v0` runs on the twin."""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import pytest

import envs  # noqa: F401  (registers SpecDecodeTwin-v0)
from agents.adaptive import AdaptiveVerification, ConfidenceGoodput
from agents.confidence import shipped_calibrator
from agents.features import FeatureBuilder, FeatureConfig
from agents.goodput import GoodputController
from agents.oracle import StepOracle
from agents.paths import LM_DIR
from envs.config import EnvConfig
from envs.ledger import SLO
from envs.replayer import WorkloadReplayer, plan_requests
from envs.spec_decode_env import SpecDecodeEnv, SpecDecodeTwinEnv
from envs.traces import PromptFactory, ReplayOptions, apply_replay, load_trace
from envs.twin.engine import TwinEngine
from envs.twin.record import TableSource, record_table, table_key
from envs.twin.replayer import TwinReplayer
from envs.twin.tables import FORMAT_VERSION, AcceptanceTable, TableError
from serving.limits import read_limits
from tests.test_model_clock import COST

TRACE = "synthetic:bursty?rate=12&cv=2&duration=3&input_mean=64&output_mean=32&seed=3"
SEED = 7


def workload():
    return apply_replay(
        load_trace(TRACE), ReplayOptions(window_s=3.0, max_input_tokens=200, max_output_tokens=48)
    )


def prompts():
    return PromptFactory(LM_DIR / "target", seed=0)


def plan():
    return plan_requests(workload(), prompts(), (0.0,), np.random.default_rng(SEED))


@pytest.fixture
def ngram_engine(_engines):
    """The session's ngram engine, for the environment tests: the wiring does not depend on
    the method (and this checkout's draft_model profile is being re-measured)."""
    engine, _ = _engines("ngram")
    engine.reset()
    yield engine
    engine.reset()
    engine.cost_model = None


@pytest.fixture
def table(engine):
    """The test window's acceptance table, recorded on the session's engine."""
    requests = plan()
    return record_table(engine, requests, table_key(engine.config, "test", requests))


def schedule(step: int) -> int:
    """A k schedule that visits every k and changes at every step."""
    return (step * 3 + 1) % 5


def replay(replayer, k=None, controller=None, features=None):
    """Every record of one replay of the test window (k: a function of the step index)."""
    if controller is not None:
        replayer.engine.attach(controller, FeatureBuilder(features))
    records = []
    try:
        replayer.start(workload(), np.random.default_rng(SEED))
        while not replayer.finished:
            record, _ = replayer.step(None if k is None else k(len(records)))
            records.append(record)
    finally:
        replayer.engine.attach(None, None)
        replayer.engine.cost_model = None  # leave the session's engine on the wall clock
    return records


def comparable(records):
    """Records without what differs between engines: wall and CPU time, the step counter,
    and the hits of unverified drafts (which the twin knows from its table)."""
    return [
        dataclasses.replace(
            r,
            wall_time=0.0,
            cpu_time=0.0,
            step=r.step - records[0].step,
            requests=tuple(dataclasses.replace(q, hits=None) for q in r.requests),
        )
        for r in records
    ]


def features_of(engine) -> FeatureConfig:
    return FeatureConfig(
        k_max=engine.k_max,
        max_num_seqs=engine.config.max_num_seqs,
        max_num_batched_tokens=engine.config.max_num_batched_tokens,
        ttft_slo_s=1.0,
        tpot_slo_s=0.05,
    )


def test_tables_give_every_live_steps_proposals_and_acceptance(engine, table):
    rows = table.rows
    live = WorkloadReplayer(engine, prompts(), SLO(), (0.0,), COST)
    records = replay(live, k=schedule)
    checked = 0
    for record in records:
        for q in record.requests:
            if q.prefill_tokens:
                continue
            row = rows[q.request_id]
            position = q.output_tokens - q.generated
            assert q.proposed == row.proposed[position], (q, position)
            assert q.accepted == min(row.hits[position], q.drafted), (q, position)
            checked += 1
    assert checked > 100
    assert {r.k for r in records} == set(range(engine.k_max + 1))
    # The table's outputs are the live outputs (recorded past the end, then cut).
    assert engine.outputs == {rid: row.tokens[: row.output_len] for rid, row in rows.items()}
    assert table.hits.sum() > 0


def test_the_twin_repeats_a_live_window_step_by_step(engine, table):
    twin = TwinEngine(engine.config, read_limits(engine), cost_model=COST)
    twin.load(table)
    live_replayer = WorkloadReplayer(engine, prompts(), SLO(), (0.0,), COST)
    twin_replayer = WorkloadReplayer(twin, prompts(), SLO(), (0.0,), COST)

    live = replay(live_replayer, k=schedule)
    mirrored = replay(twin_replayer, k=schedule)
    assert len(live) > 20
    for a, b in zip(comparable(live), comparable(mirrored), strict=True):
        assert (a.batch_size, a.decode_tokens, a.spec_tokens, a.prefill_tokens) == (
            b.batch_size,
            b.decode_tokens,
            b.spec_tokens,
            b.prefill_tokens,
        ), a.step
        assert [(q.request_id, q.drafted, q.accepted) for q in a.requests] == [
            (q.request_id, q.drafted, q.accepted) for q in b.requests
        ], a.step
        assert a == b
    # The twin also knows what the unverified drafts would hit: its counterfactuals are never
    # censored, and agree with the live engine's wherever those are exact.
    exact = 0
    for a, b in zip(live, mirrored, strict=True):
        for p, q in zip(a.requests, b.requests, strict=True):
            if q.prefill_tokens:
                continue
            for k in range(engine.k_max + 1):
                assert not q.censored_if(k)
                if not p.censored_if(k):
                    assert p.accepted_if(k) == q.accepted_if(k), (p, q, k)
                    exact += 1
    assert exact > 100
    assert live_replayer.ledger.metrics() == twin_replayer.ledger.metrics()
    assert engine.outputs == twin.outputs

    # Controllers inside the engine, the oracle peeking at the drafts, and controllers of the
    # drafts' confidence (scored by the shipped calibrator, refined online): the same again.
    outputs = dict(engine.outputs)
    for make in (
        lambda: GoodputController(COST, engine.k_max, engine.config.max_num_seqs),
        lambda: StepOracle(COST, engine.k_max, outputs, per_request=True),
        lambda: AdaptiveVerification(COST, engine.k_max),
        lambda: ConfidenceGoodput(COST, engine.k_max, engine.config.max_num_seqs),
    ):
        live = replay(live_replayer, controller=make(), features=features_of(engine))
        mirrored = replay(twin_replayer, controller=make(), features=features_of(twin))
        assert comparable(live) == comparable(mirrored)
        assert len({r.k for r in live}) > 1
    confident = [q for r in live for q in r.requests if q.confidence]
    if shipped_calibrator(engine.config.method, engine.k_max) is not None:
        assert len(confident) > 20
        assert all(len(q.confidence) == q.proposed and min(q.confidence) > 0 for q in confident)


def test_the_twin_repeats_the_plain_engine_step_by_step(_engines):
    # nospec replays on the twin too: an engine with no speculation needs no table.
    plain, _ = _engines("none")
    plain.reset()
    twin = TwinEngine(plain.config, read_limits(plain), cost_model=COST)
    live_replayer = WorkloadReplayer(plain, prompts(), SLO(), (0.0,), COST)
    twin_replayer = WorkloadReplayer(twin, prompts(), SLO(), (0.0,), COST)
    live = replay(live_replayer)
    mirrored = replay(twin_replayer)
    assert len(live) > 20 and all(r.spec_tokens == 0 and r.k == 0 for r in live)
    assert max(r.num_running for r in live) >= 4  # batched, not one at a time
    assert comparable(live) == comparable(mirrored)
    assert live_replayer.ledger.metrics() == twin_replayer.ledger.metrics()


def test_tables_are_cached_and_refused_for_another_engine(engine, tmp_path):
    source = TableSource(engine.config, tmp_path, engine=engine)
    first = source.table(plan())
    assert source.recorded == 1
    again = TableSource(engine.config, tmp_path, engine=engine).table(plan())
    assert again.key == first.key and np.array_equal(again.hits, first.hits)
    (path,) = (tmp_path / f"acceptance-v{FORMAT_VERSION}").glob("*.npz")
    method = "draft_model" if engine.config.method == "ngram" else "ngram"
    other = dataclasses.replace(first.key, method=method)
    with pytest.raises(TableError, match="method"):
        AcceptanceTable.load(path, expected=other)
    limits = source.limits()
    assert limits == TableSource(engine.config, tmp_path).limits()  # cached: no engine built
    with pytest.raises(ValueError, match="greedy requests only"):
        source.table(plan_requests(workload(), prompts(), (0.8,), np.random.default_rng(0)))


def test_the_twin_environment_has_the_live_spaces_and_repeats_itself(ngram_engine, tmp_path):
    engine = ngram_engine
    config = EnvConfig(
        trace=TRACE, window_s=3.0, window_start_s=0.0, engine=engine.config, max_steps=500
    )
    source = TableSource(engine.config, tmp_path, engine=engine)
    twin = gymnasium.make("SpecDecodeTwin-v0", config=config, source=source).unwrapped
    live = SpecDecodeEnv(config, engine=engine)
    assert isinstance(twin, SpecDecodeTwinEnv) and isinstance(twin.engine, TwinEngine)
    assert isinstance(twin.replayer, TwinReplayer)
    assert twin.observation_space == live.observation_space
    assert twin.action_space == live.action_space

    def episode(env):
        obs, _ = env.reset(seed=5)
        trail = [obs]
        actions = np.random.default_rng(1)
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(int(actions.integers(5)))
            trail += [obs, reward]
            done = terminated or truncated
        return trail, info["episode_metrics"]

    twin_trail, twin_metrics = episode(twin)
    again, _ = episode(twin)
    assert all(np.array_equal(a, b) for a, b in zip(twin_trail, again, strict=True))
    live_trail, live_metrics = episode(live)
    assert twin_metrics == live_metrics
    assert all(np.array_equal(a, b) for a, b in zip(twin_trail, live_trail, strict=True))
    twin.close()
    live.close()
    with pytest.raises(ValueError, match="greedy requests only"):
        EnvConfig(trace=TRACE, twin=True, temperatures=(0.0, 0.7))


def test_a_window_pool_records_each_windows_table_once(ngram_engine, tmp_path):
    engine = ngram_engine
    config = EnvConfig(trace=TRACE, window_s=2.0, engine=engine.config, window_pool=2)
    source = TableSource(engine.config, tmp_path, engine=engine)
    env = SpecDecodeTwinEnv(config, source=source)
    seen = set()
    for episode in range(5):
        _, info = env.reset(seed=11 if episode == 0 else None)
        seen.add(info["pool_index"])
        env.step(2)
    assert source.recorded == len(seen) <= 2
    env.close()
