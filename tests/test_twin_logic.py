"""The twin's pure logic, on hand-made tables: vLLM's scheduling rules (budget, slots, KV
blocks, preemption), acceptance from tables, the records, and the table files' checks. No
engine starts here; tests/test_twin.py compares the twin with the live engine."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from agents.cost import LinearCost
from agents.cost.load import load_of
from agents.features import FeatureBuilder, FeatureConfig
from agents.oracle import StepOracle, accepted
from envs.twin.engine import NO_MATCH, TwinEngine
from envs.twin.scheduler import TwinRequest, TwinScheduler
from envs.twin.tables import AcceptanceTable, TableError, TableKey, requests_digest
from serving.config import EngineConfig
from serving.limits import SchedulingLimits

COST = LinearCost(0.004, 2e-4, 1e-4, 5e-4, 1e-6, 1e-4)
CONFIG = EngineConfig(k_max=4, max_num_seqs=8, max_num_batched_tokens=256, max_model_len=512)


def limits(**changes) -> SchedulingLimits:
    base = SchedulingLimits(
        k_max=4,
        max_num_seqs=8,
        max_num_active=8,
        max_num_scheduled_tokens=256,
        max_num_batched_tokens=256,
        draft_slots=0,
        lookahead=0,
        max_model_len=512,
        block_size=16,
        num_blocks=10_000,
    )
    return replace(base, **changes)


def make_table(prompt_lens, output_lens, seed=0, k_max=4, config=CONFIG) -> AcceptanceTable:
    """A table of random acceptance: proposals of 0..k_max, hits a prefix of them."""
    rng = np.random.default_rng(seed)
    ids = tuple(f"req-{i}" for i in range(len(prompt_lens)))
    prompts = [rng.integers(0, 500, n) for n in prompt_lens]
    token_lens = [m + k_max for m in output_lens]
    proposed, hits = [], []
    for m, length in zip(output_lens, token_lens, strict=True):
        p = rng.integers(0, k_max + 1, m)
        p[0] = 0
        h = np.minimum(rng.integers(0, k_max + 1, m), p)
        h = np.minimum(h, length - np.arange(m))
        proposed.append(p)
        hits.append(h)
    key = TableKey(
        model_id="test-model",
        method=config.method,
        k_max=k_max,
        ngram=(config.ngram_min, config.ngram_max),
        max_model_len=config.max_model_len,
        requests=requests_digest(ids, prompts, output_lens),
    )
    return AcceptanceTable(
        key=key,
        request_ids=ids,
        prompt_len=np.array(prompt_lens, dtype=np.int32),
        output_len=np.array(output_lens, dtype=np.int32),
        token_len=np.array(token_lens, dtype=np.int32),
        prompts=np.concatenate(prompts).astype(np.int32),
        tokens=rng.integers(0, 500, sum(token_lens)).astype(np.int32),
        proposed=np.concatenate(proposed).astype(np.int8),
        hits=np.concatenate(hits).astype(np.int8),
        features=rng.random((sum(output_lens), k_max, 3)).astype(np.float32),
    )


def twin(table, lim=None, config=CONFIG) -> tuple[TwinEngine, list[float]]:
    now = [0.0]
    engine = TwinEngine(config, lim or limits(), clock=lambda: now[0], cost_model=COST)
    engine.load(table)
    return engine, now


def add_all(engine, table, arrival=0.0):
    for rid, row in table.rows.items():
        engine.add_request(rid, list(row.prompt), row.output_len, arrival_time=arrival)


def run(engine, now, k=None, schedule=None):
    records = []
    while engine.has_unfinished():
        step_k = schedule(len(records)) if schedule else k
        record = engine.step(step_k)
        now[0] = record.finished_at
        records.append(record)
    return records


# --- scheduling -----------------------------------------------------------------------------


def test_running_requests_go_first_and_prompts_take_what_the_budget_leaves():
    table = make_table([100, 100, 400], [20, 20, 20])
    engine, _ = twin(table)
    add_all(engine, table)
    first = engine.step(2)
    # 256 tokens: the first prompt whole, the second whole, the third gets the 56 left.
    assert [q.prefill_tokens for q in first.requests] == [100, 100, 56]
    assert first.prefill_tokens == 256 and first.num_waiting == 0
    assert first.prefill_tokens_waiting == 400 - 56
    second = engine.step(2)
    # The two decoding requests first (1 token + up to 2 drafts each), then the prompt.
    decoding = second.requests[:2]
    assert all(q.prefill_tokens == 0 and q.generated >= 1 for q in decoding)
    left = 256 - sum(1 + q.drafted for q in decoding)
    assert second.requests[2].prefill_tokens == min(344, left)


def test_running_slots_cap_admissions():
    table = make_table([10] * 5, [5] * 5)
    engine, _ = twin(table, limits(max_num_seqs=3, max_num_active=3))
    add_all(engine, table)
    record = engine.step(0)
    assert record.batch_size == 3 and record.num_running == 3 and record.num_waiting == 2
    assert record.oldest_waiting_arrival == 0.0


def test_max_model_len_caps_verified_drafts():
    scheduler = TwinScheduler(limits(max_model_len=40))
    request = TwinRequest("a", 0.0, 30, 10, [0] * 10, [0] * 10, [0] * 14)
    scheduler.add(request)
    scheduler.schedule()
    scheduler.update(request, 0, 0, 1)
    request.num_outputs, request.computed, request.spec = 8, 37, 4
    ((_, num_new, drafted),) = scheduler.schedule()
    # Positions stop at max_model_len - 1: 40 - 37 - 1 = 2 tokens, one of them a draft.
    assert (num_new, drafted) == (2, 1)


def test_draft_slots_take_input_budget_per_request():
    # A draft model needs one extra input slot per scheduled request.
    table = make_table([60] * 4, [5] * 4)
    engine, _ = twin(table, limits(draft_slots=1, max_num_batched_tokens=184))
    add_all(engine, table)
    record = engine.step(0)
    # 184 input slots: 60 + 1, 60 + 1, then 61 left less 1 slot = 60 for the third.
    assert [q.prefill_tokens for q in record.requests] == [60, 60, 60]


def test_kv_blocks_preempt_the_last_running_request_which_recomputes():
    # 16-token blocks; prompts of 30 tokens take 2 blocks each; 40 outputs need 5 blocks.
    table = make_table([30, 30, 30], [40, 40, 40], seed=3)
    lim = limits(block_size=16, num_blocks=1 + 11)
    engine, now = twin(table, lim)
    add_all(engine, table)
    records = run(engine, now, k=0)
    preempted = [
        r for r in records if any(q.prefill_tokens and q.output_tokens > 1 for q in r.requests)
    ]
    assert preempted, "the pool was sized so that some request has to be preempted"
    # A resumed request recomputes its prompt and outputs as one prefill, keeps its first
    # token time, and produces its next token at the end of it.
    resumed = next(q for r in preempted for q in r.requests if q.prefill_tokens)
    assert resumed.prefill_tokens > 30 and resumed.generated == 1
    assert resumed.first_token_at is not None and resumed.first_token_at < now[0]
    done = {f.request_id: f for r in records for f in r.finished}
    assert sorted(done) == ["req-0", "req-1", "req-2"]
    assert all(f.output_tokens == 40 for f in done.values())
    assert records[-1].kv_cache_usage == 0.0
    assert max(r.kv_cache_usage for r in records) > 0.8


def test_admission_needs_blocks_for_the_whole_known_sequence():
    table = make_table([100, 100], [4, 4])
    lim = limits(block_size=16, num_blocks=1 + 10, max_num_scheduled_tokens=120)
    engine, _ = twin(table, lim)
    add_all(engine, table)
    first = engine.step(0)
    # The first takes 7 blocks for its 100 tokens; the second would need 7 more: not admitted,
    # although a 20-token chunk of it would fit.
    assert first.batch_size == 1 and first.num_waiting == 1


# --- acceptance and records -----------------------------------------------------------------


def test_acceptance_comes_from_the_table_at_each_position():
    table = make_table([20, 40, 60], [30, 30, 30], seed=1)
    rows = table.rows
    engine, now = twin(table)
    add_all(engine, table)
    records = run(engine, now, schedule=lambda step: step % 5)
    seen = 0
    for record in records:
        assert record.step_time == COST.seconds(load_of(record.requests))
        assert record.draft_budget == 4
        for q in record.requests:
            if q.prefill_tokens:
                assert q.drafted == q.accepted == 0
                continue
            row = rows[q.request_id]
            position = q.output_tokens - q.generated
            assert q.proposed == row.proposed[position]
            assert q.drafted == min(q.k, q.proposed)
            assert q.accepted == min(row.hits[position], q.drafted)
            room = row.output_len - position
            assert q.generated == min(q.accepted + 1, room)
            seen += 1
    assert seen > 30
    assert engine.outputs == {rid: row.tokens[: row.output_len] for rid, row in rows.items()}


def test_per_request_k_overrides_the_global_k():
    table = make_table([20, 20], [30, 30], seed=2)
    engine, _ = twin(table)
    add_all(engine, table)
    engine.step(4)
    record = engine.step(4, {"req-1": 1})
    by_id = {q.request_id: q for q in record.requests}
    assert by_id["req-0"].k == 4 and by_id["req-1"].k == 1
    assert by_id["req-1"].drafted <= 1


def test_the_oracle_sees_drafts_that_reproduce_the_tables_hits():
    table = make_table([20, 30, 40, 50], [25, 25, 25, 25], seed=4)
    rows = table.rows
    engine, now = twin(table)
    outputs = {rid: row.tokens[: row.output_len] for rid, row in rows.items()}
    oracle = StepOracle(COST, 4, outputs, max_num_batched_tokens=256)
    checked = []
    original = oracle.see_drafts

    def see_drafts(views, waiting):
        for v in views:
            row = rows[v.request_id]
            if v.drafts:
                assert len(v.drafts) == row.proposed[v.position]
                full = row.tokens  # hits were counted against the output run past its end
                assert accepted(v.drafts, full, v.position) == row.hits[v.position]
                assert NO_MATCH not in v.drafts[: row.hits[v.position]]
                checked.append(v)
        original(views, waiting)

    oracle.see_drafts = see_drafts
    config = FeatureConfig(k_max=4, max_num_seqs=8, max_num_batched_tokens=256,
                           ttft_slo_s=1.0, tpot_slo_s=0.05)  # fmt: skip
    engine.attach(oracle, FeatureBuilder(config))
    add_all(engine, table)
    records = run(engine, now)
    assert len(checked) > 20
    assert len({r.k for r in records}) > 1


def test_sampled_and_unknown_requests_are_refused():
    table = make_table([20], [10])
    engine, _ = twin(table)
    row = table.rows["req-0"]
    with pytest.raises(ValueError, match="greedy requests only"):
        engine.add_request("req-0", list(row.prompt), 10, temperature=0.7)
    with pytest.raises(TableError, match="not in the loaded acceptance table"):
        engine.add_request("req-9", list(row.prompt), 10)
    with pytest.raises(TableError, match="another workload"):
        engine.add_request("req-0", [1, 2, 3], 10)
    with pytest.raises(TableError, match="k_max: engine 2, table 4"):
        TwinEngine(replace(CONFIG, k_max=2), limits(k_max=2)).load(table)
    with pytest.raises(RuntimeError, match="model clock only"):
        _no_cost_step(table)


def _no_cost_step(table):
    engine = TwinEngine(CONFIG, limits())
    engine.load(table)
    add_all(engine, table)
    engine.step(0)


def test_reset_forgets_requests_and_outputs_but_keeps_the_table():
    table = make_table([20, 20], [5, 5])
    engine, now = twin(table)
    add_all(engine, table)
    run(engine, now, k=2)
    assert engine.outputs and not engine.has_unfinished()
    add_all(engine, table)
    engine.step(1)
    engine.reset()
    assert not engine.has_unfinished() and not engine.outputs
    add_all(engine, table)  # the same ids are free again
    assert engine.num_unfinished == 2


def test_the_twin_imports_neither_vllm_nor_torch():
    code = (
        "import sys, envs.twin.engine, envs.twin.record, envs.spec_decode_env;"
        "print(sorted(m for m in ('vllm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- table files ----------------------------------------------------------------------------


def test_tables_round_trip_and_refuse_another_key_or_a_corrupt_file(tmp_path):
    table = make_table([20, 30], [10, 12])
    path = table.save(tmp_path / f"{table.key.digest}.npz")
    loaded = AcceptanceTable.load(path, expected=table.key)
    assert loaded.key == table.key
    for rid, row in table.rows.items():
        again = loaded.rows[rid]
        assert again._replace(features=None) == row._replace(features=None)
        assert np.array_equal(again.features, row.features)
        assert row.features.shape == (row.output_len, 4, 3)

    for field, value in (("model_id", "other"), ("method", "draft_model"), ("k_max", 3)):
        other = replace(table.key, **{field: value})
        with pytest.raises(TableError, match=f"{field}: {value!r} wanted"):
            AcceptanceTable.load(path, expected=other)
    other = replace(table.key, requests="0" * 32)
    with pytest.raises(TableError, match="requests"):
        AcceptanceTable.load(path, expected=other)

    data = bytearray(path.read_bytes())
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(TableError, match="corrupt"):
        AcceptanceTable.load(tmp_path / "cut.npz")
    # Same layout, one hit changed: the stored hash catches it.
    changed = replace(table, hits=table.hits.copy())
    changed.hits[3] = 0 if changed.hits[3] else min(1, changed.proposed[3])
    if np.array_equal(changed.hits, table.hits):
        changed.hits[3], changed.proposed[3] = 1, 1
    changed_path = changed.save(tmp_path / "changed.npz")
    _swap_arrays(changed_path, path, tmp_path / "forged.npz")
    with pytest.raises(TableError, match="corrupt"):
        AcceptanceTable.load(tmp_path / "forged.npz")
    with pytest.raises(TableError, match="no acceptance table"):
        AcceptanceTable.load(tmp_path / "missing.npz")
    # A table of the first format (no slot features) is refused, saying why.
    with np.load(path) as data:
        meta = json.loads(str(data["meta"])) | {"format": 1}
        arrays = {name: data[name] for name in data.files if name not in ("meta", "features")}
    np.savez(tmp_path / "old.npz", meta=np.array(json.dumps(meta)), **arrays)
    with pytest.raises(TableError, match="has format 1, this code reads 2 .* record it again"):
        AcceptanceTable.load(tmp_path / "old.npz")


def _swap_arrays(data_from, meta_from, out):
    """A file with one table's arrays and another's metadata (hashes)."""
    with np.load(data_from) as data, np.load(meta_from) as meta:
        arrays = {name: data[name] for name in data.files if name != "meta"}
        np.savez(out, meta=meta["meta"], **arrays)


# --- the environment on a twin, with made-up tables -----------------------------------------


class MadeUpSource:
    """A table source that makes random acceptance for whatever prompts a replay draws."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.recorded = 0

    def twin(self) -> TwinEngine:
        return TwinEngine(self.config, limits(max_model_len=self.config.max_model_len))

    def table(self, plan, description=""):
        self.recorded += 1
        ids = tuple(r.request_id for r in plan)
        outputs = [r.output_tokens for r in plan]
        digest = requests_digest(ids, [r.prompt_token_ids for r in plan], outputs)
        made = make_table(
            [len(r.prompt_token_ids) for r in plan],
            outputs,
            seed=int(digest[:8], 16),  # the same requests, the same acceptance
            config=self.config,
        )
        prompts = np.array([t for r in plan for t in r.prompt_token_ids], dtype=np.int32)
        return replace(made, prompts=prompts, key=replace(made.key, requests=digest))

    def close(self) -> None:
        pass


ENV_TRACE = "synthetic:poisson?rate=8&duration=6&input_mean=48&output_mean=24&seed=1"


def test_the_twin_environment_runs_and_repeats_on_made_up_tables():
    import gymnasium

    import envs  # noqa: F401  (registers SpecDecodeTwin-v0)
    from envs.config import EnvConfig

    engine_config = EngineConfig(k_max=4, max_num_seqs=8, max_num_batched_tokens=256)
    config = EnvConfig(trace=ENV_TRACE, window_s=3.0, engine=engine_config, window_pool=2)
    source = MadeUpSource(engine_config)
    env = gymnasium.make("SpecDecodeTwin-v0", config=config, source=source).unwrapped
    assert env.action_space.n == 5
    assert not env.spec.nondeterministic

    def episode(seed):
        obs, info = env.reset(seed=seed)
        trail, done, actions = [obs], False, np.random.default_rng(0)
        while not done:
            obs, reward, terminated, truncated, info = env.step(int(actions.integers(5)))
            trail += [obs, reward]
            done = terminated or truncated
        return trail, info["episode_metrics"]

    first, metrics = episode(3)
    again, metrics_again = episode(3)
    assert metrics == metrics_again and metrics["goodput_tps"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    for _ in range(4):
        _, info = env.reset()
        assert info["pool_index"] in (0, 1)
    env.close()


def test_a_fork_moves_on_its_own_and_the_lookahead_oracle_runs_on_forks():
    from envs.twin.lookahead import LookaheadOracle

    table = make_table([30, 50, 70, 90], [40, 40, 40, 40], seed=5)
    engine, now = twin(table)
    add_all(engine, table)
    engine.step(2)
    fork = engine.fork()
    while fork.has_unfinished():
        fork.step(4)
    assert engine.num_unfinished == 4 and not engine.outputs
    undisturbed, _ = twin(table)
    add_all(undisturbed, table)
    undisturbed.step(2)
    assert engine.step(1).requests == undisturbed.step(1).requests

    engine, now = twin(table)
    config = FeatureConfig(k_max=4, max_num_seqs=8, max_num_batched_tokens=256,
                           ttft_slo_s=1.0, tpot_slo_s=0.05)  # fmt: skip
    engine.attach(LookaheadOracle(engine, horizon=3), FeatureBuilder(config))
    add_all(engine, table)
    records = run(engine, now)
    assert len({r.k for r in records}) > 1
    assert sorted(engine.outputs) == sorted(table.request_ids)
