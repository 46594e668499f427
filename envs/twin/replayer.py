"""`TwinReplayer`: the workload replayer of a twin, which loads each workload's acceptance
table before replaying it: it draws the replay's prompts ahead (from a copy of the replay's
generator, as the replay will draw them) and asks its `TableSource` for their table."""

from __future__ import annotations

import copy
import json

import numpy as np

from envs.replayer import WorkloadReplayer, plan_requests, requests_key
from envs.traces import Trace
from envs.twin.engine import TwinEngine
from envs.twin.record import TableSource
from envs.twin.tables import RecentTables


class TwinReplayer(WorkloadReplayer):
    """A workload replayer on a twin: loads each workload's acceptance table before it."""

    def __init__(self, engine: TwinEngine, source: TableSource, *args, **kwargs) -> None:
        """`args` and `kwargs` as `WorkloadReplayer` takes them after the engine."""
        super().__init__(engine, *args, **kwargs)
        self.source = source
        self._recent = RecentTables()

    def start(self, workload: Trace, rng: np.random.Generator) -> None:
        """Load the table of the requests this replay will add (drawn ahead from a copy of
        rng, as the replay draws them), then start as the live replayer does."""
        if self.engine.k_max and len(workload):
            # The same requests from the same generator state draw the same prompts: a
            # window replayed again (another controller, a pooled episode) skips the draws.
            state = json.dumps(rng.bit_generator.state, sort_keys=True)
            key = (requests_key(workload), state)
            table = self._recent.get(key)
            if table is None:
                plan = plan_requests(workload, self.prompts, self.temperatures, copy.deepcopy(rng))
                description = json.dumps(workload.describe(), default=str)
                table = self.source.table(plan, description)
                self._recent.put(key, table)
            self.engine.load(table)
        super().start(workload, rng)
