"""vLLM's own dynamic speculation: a fixed table from batch size to k, as a controller.

vLLM 0.32's `speculative_config.num_speculative_tokens_per_batch_size` is a list of inclusive
ranges `[(range_start, range_end, k), ...]`. The ranges must not overlap and the first must
start at 1; batch sizes in a gap keep the k of the range before it, batch sizes past the last
range keep its k, and every k is capped at `num_speculative_tokens`. The engine looks up the
batch size of the step being scheduled to set the drafting budget.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from itertools import pairwise

from agents.controller import Decision
from agents.cost import CostModel, StepLoad
from agents.features import Observation
from agents.goodput import best_k
from agents.records import StepRecord

Schedule = list[tuple[int, int, int]]


def validate_schedule(table: Sequence[Sequence[int]]) -> Schedule:
    """Check a batch-size table as vLLM does and return it sorted by range start.

    Raises ValueError naming the offending entry.
    """
    if isinstance(table, str | bytes) or not isinstance(table, Sequence) or not table:
        raise ValueError(f"a batch-size schedule must be a non-empty list of ranges, got {table!r}")
    parsed: Schedule = []
    for i, entry in enumerate(table):
        if isinstance(entry, str | bytes) or not isinstance(entry, Sequence) or len(entry) != 3:
            raise ValueError(f"schedule entry {i} {entry!r} must be (range_start, range_end, k)")
        try:
            start, end, k = (operator.index(v) for v in entry)
        except TypeError:
            raise ValueError(f"schedule entry {i} {entry!r} must hold integers") from None
        if start < 1 or end < start:
            raise ValueError(f"schedule entry {i} {entry!r} needs 1 <= range_start <= range_end")
        if k < 0:
            raise ValueError(f"schedule entry {i} {entry!r} has k < 0")
        parsed.append((start, end, k))
    # vLLM sorts the ranges before checking them, so order in the config does not matter.
    parsed.sort()
    for before, after in pairwise(parsed):
        if after[0] <= before[1]:
            raise ValueError(f"schedule entries {before} and {after} overlap")
    if parsed[0][0] != 1:
        raise ValueError(
            f"schedule entry {parsed[0]} must start at batch size 1 so every batch has a k"
        )
    return parsed


class BatchScheduleController:
    """Looks k up from the last step's batch size in a vLLM batch-size schedule."""

    name = "vllm-schedule"

    def __init__(self, table: Sequence[Sequence[int]], k_max: int, max_num_seqs: int) -> None:
        if k_max < 1 or max_num_seqs < 1:
            raise ValueError(f"need k_max >= 1 and max_num_seqs >= 1, got {k_max}, {max_num_seqs}")
        self.table = validate_schedule(table)
        self.k_max = k_max
        self.max_num_seqs = max_num_seqs
        # Each batch size takes the k of the last range starting at or before it: that covers
        # the ranges themselves, the gaps after them and the tail past the last one.
        self._lookup = [0] * (max_num_seqs + 1)
        for start, _, k in self.table:
            for batch in range(start, max_num_seqs + 1):
                self._lookup[batch] = min(k, k_max)

    def reset(self) -> None:
        """Nothing to forget: the table is fixed."""

    def decide(self, obs: Observation) -> Decision:
        """Return the table's k for the last step's batch size (clipped to 1..max_num_seqs)."""
        batch = obs.batch_size
        batch = 1 if batch < 1 else self.max_num_seqs if batch > self.max_num_seqs else batch
        return Decision(self._lookup[batch])

    def observe(self, record: StepRecord) -> None:
        """A fixed table learns nothing."""


def default_table(
    cost: CostModel,
    k_max: int,
    max_num_seqs: int,
    acceptance: float,
    context: float = 256.0,
) -> Schedule:
    """The schedule giving each batch size its goodput-maximising k at a fixed acceptance.

    For every batch size B in 1..max_num_seqs, picks the k maximising B * E(k) / T(B, k)
    (ties to the smaller k), then merges consecutive batch sizes with equal k into ranges.
    """
    table: Schedule = []
    for batch in range(1, max_num_seqs + 1):
        times = [cost.seconds(StepLoad.uniform(batch, k, int(context))) for k in range(k_max + 1)]
        k, _ = best_k(times, acceptance)
        if table and table[-1][2] == k:
            table[-1] = (table[-1][0], batch, k)
        else:
            table.append((batch, batch, k))
    return table
