"""A lookahead oracle on the twin: each step's k chosen by trying every k for a few steps.

The myopic oracle (`agents.oracle.StepOracle`) picks the k with the best tokens per second
for one step. On the twin the whole engine state can be forked, so this oracle tries each k
for `horizon` steps on a fork (the drafts, the budget, KV blocks and the requests' progress
all as the twin would run them) and picks the k with the most tokens per second over them: a
tighter ceiling where a step's choice shapes the next ones (a request that finishes early
frees its slot for the queue). It holds k fixed over the horizon and sees no arrivals during
it; like the myopic oracle it knows the future and is a reference, never a controller.
"""

from __future__ import annotations

from agents.controller import Decision
from agents.features import Observation
from agents.records import StepRecord
from envs.twin.engine import TwinEngine


class LookaheadOracle:
    """Picks each step's k by replaying the next `horizon` steps at every k on a fork."""

    name = "oracle-lookahead"

    def __init__(self, engine: TwinEngine, horizon: int = 4) -> None:
        if horizon < 1:
            raise ValueError(f"horizon={horizon} must be >= 1")
        self.engine = engine
        self.horizon = horizon

    def reset(self) -> None:
        """Nothing to forget: every decision forks the engine afresh."""

    def decide(self, obs: Observation) -> Decision:
        """The k with the most tokens per second over the next `horizon` steps."""
        best_k, best_rate = 0, -1.0
        for k in range(self.engine.k_max + 1):
            fork = self.engine.fork()
            tokens = seconds = 0.0
            for _ in range(self.horizon):
                if not fork.has_unfinished():
                    break
                record = fork.step(k)
                tokens += record.generated
                seconds += record.step_time
            rate = tokens / seconds if seconds else 0.0
            if rate > best_rate:
                best_k, best_rate = k, rate
        return Decision(best_k)

    def observe(self, record: StepRecord) -> None:
        """Nothing to learn."""
