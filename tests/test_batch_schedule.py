"""vLLM's batch-size schedule as a controller, and the default table from a step-time model."""

from __future__ import annotations

from itertools import pairwise

import pytest

from agents.batch_schedule import BatchScheduleController, default_table, validate_schedule
from agents.controller import Controller
from agents.cost import LinearCost, StepLoad
from agents.goodput import expected_tokens
from tests.factories import observation

TABLE = [(1, 4, 3), (5, 16, 2), (32, 64, 1)]


@pytest.mark.parametrize(
    ("batch", "k"),
    [(0, 3), (1, 3), (4, 3), (5, 2), (16, 2), (20, 2), (31, 2), (32, 1), (40, 1), (100, 1)],
)
def test_lookup(batch, k):
    # 17..31 is a gap (carries 2); 100 is past the last range and past max_num_seqs.
    controller = BatchScheduleController(TABLE, k_max=4, max_num_seqs=128)
    assert controller.decide(observation(batch)).k == k


def test_k_is_capped_at_k_max():
    controller = BatchScheduleController(TABLE, k_max=2, max_num_seqs=64)
    assert [controller.decide(observation(b)).k for b in (1, 5, 40)] == [2, 2, 1]


def test_matches_vllms_own_lookup():
    # Expected values from vLLM 0.32's build_dynamic_sd_schedule_lookup on the same inputs.
    table = [(1, 2, 5), (4, 6, 0), (9, 9, 3), (10, 12, 1)]
    controller = BatchScheduleController(table, k_max=4, max_num_seqs=16)
    got = [controller.decide(observation(b)).k for b in range(1, 17)]
    assert got == [4, 4, 4, 0, 0, 0, 0, 0, 3, 1, 1, 1, 1, 1, 1, 1]


def test_unsorted_table_is_sorted_as_vllm_does():
    assert validate_schedule([(5, 16, 2), (1, 4, 3)]) == [(1, 4, 3), (5, 16, 2)]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ([], "non-empty"),
        ([(2, 4, 3)], r"\(2, 4, 3\) must start at batch size 1"),
        ([(1, 4, 3), (4, 8, 2)], r"\(1, 4, 3\) and \(4, 8, 2\) overlap"),
        ([(1, 4, 3), (5, 8, -1)], r"entry 1 \(5, 8, -1\) has k < 0"),
        ([(1, 4)], r"entry 0 \(1, 4\) must be \(range_start, range_end, k\)"),
        ([(1, 4, 3, 0)], r"entry 0 \(1, 4, 3, 0\) must be"),
        ([(1, 4, 3), (8, 6, 1)], r"entry 1 \(8, 6, 1\) needs 1 <= range_start <= range_end"),
        ([(1, 4, 2.5)], r"entry 0 \(1, 4, 2.5\) must hold integers"),
    ],
)
def test_bad_tables(table, message):
    with pytest.raises(ValueError, match=message):
        BatchScheduleController(table, k_max=4, max_num_seqs=64)


def test_is_a_controller():
    controller = BatchScheduleController(TABLE, k_max=4, max_num_seqs=64)
    assert isinstance(controller, Controller)
    controller.reset()
    assert controller.decide(observation(1)).k == 3


def test_default_table_shrinks_k_as_batches_grow():
    # T = 0.01 + 0.0005 B + 0.0005 B k: verification gets costlier with batch size.
    model = LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0)
    table = default_table(model, k_max=4, max_num_seqs=64, acceptance=0.7)
    # Checked against the argmax of E(k) / T(B, k) at every range's ends below.
    assert table == [(1, 3, 4), (4, 5, 3), (6, 13, 2), (14, 46, 1), (47, 64, 0)]
    assert table[0][0] == 1
    assert table[-1][1] == 64
    ks = [k for _, _, k in table]
    assert ks == sorted(ks, reverse=True)
    assert len(set(ks)) == len(ks) > 1
    # Contiguous ranges covering 1..64.
    for (_, end, _), (start, _, _) in pairwise(table):
        assert start == end + 1
    # Each range's k is the argmax of E(k) / T(B, k) at its ends.
    for start, end, k in table:
        for batch in (start, end):
            rates = [
                expected_tokens(0.7, j) / model.seconds(StepLoad.uniform(batch, j))
                for j in range(5)
            ]
            assert rates.index(max(rates)) == k
    # And the table drives the controller: valid as vLLM would read it.
    controller = BatchScheduleController(table, k_max=4, max_num_seqs=64)
    assert controller.decide(observation(1)).k == 4
    assert controller.decide(observation(64)).k == ks[-1]
