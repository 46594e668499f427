"""Recording what the twin needs from the live engine, once, and caching it on disk.

- Acceptance tables (`envs.twin.tables`): the live engine replays a workload's requests at
  k = 0 on the model clock, all added at once (arrival times do not change greedy outputs or
  drafts), so every request advances one token per step and visits every output position.
  The hook drafts k_max every step on the model clock, and a `DraftAware` controller sees
  every decoding request's whole proposal before each step; comparing each proposal with the
  request's final output gives `proposed[p]` and `hits[p]` exactly. Each request is run k_max
  tokens past its output length (within max_model_len), so drafts that reach past the end are
  checked against what the target would have produced there, as the live engine checks them.
- Engine limits (`envs.twin.scheduler.SchedulingLimits`): read from a live engine's scheduler, once
  per engine config (KV blocks depend on the models and the cache size).

Both are cached in the user's cache directory (`agents.paths.cache_dir`: outside the work
tree, so they survive between runs and clones on one machine), keyed by content hashes; a
live engine is built only on a miss.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agents.controller import Decision
from agents.cost import StepLoad
from agents.features import FeatureBuilder, Observation
from agents.oracle import accepted
from agents.paths import cache_dir as cache_dir_default
from agents.records import DraftView, StepRecord
from envs.config import feature_config
from envs.ledger import SLO
from envs.replayer import PlannedRequest
from envs.twin.engine import TwinEngine
from envs.twin.tables import (
    FORMAT_VERSION,
    AcceptanceTable,
    RecentTables,
    TableError,
    TableKey,
    requests_digest,
)
from serving.config import EngineConfig
from serving.limits import SchedulingLimits, read_limits

if TYPE_CHECKING:
    from serving.live_engine import LiveEngine


class _ProposalLog:
    """A controller that keeps k at 0 and logs every decoding request's proposal per position.

    Where a position is seen twice (a request the budget skipped keeps its drafts, cut to
    the step's k), the longest proposal is kept: the k_max proposal made at that position.
    """

    name = "proposal-log"

    def __init__(self) -> None:
        self.drafts: dict[tuple[str, int], tuple[int, ...]] = {}
        self.features: dict[tuple[str, int], np.ndarray | None] = {}

    def reset(self) -> None:
        """Keep the log: the recording resets nothing mid-way."""

    def see_drafts(self, views: Sequence[DraftView], prefill_waiting: int) -> None:
        """Log the drafts each decoding request holds before the step, and their features."""
        for view in views:
            key = (view.request_id, view.position)
            held = self.drafts.get(key)
            if held is None or len(view.drafts) > len(held):
                self.drafts[key] = view.drafts
                self.features[key] = view.features

    def decide(self, obs: Observation) -> Decision:
        """k = 0: every request advances one token per step."""
        return Decision(0)

    def observe(self, record: StepRecord) -> None:
        """Nothing to learn."""


class _UnitCost:
    """A constant step price: the recording needs the model clock (k_max drafts every step)
    but not its times."""

    kind = "unit"

    def seconds(self, load: StepLoad) -> float:
        """One millisecond, whatever the step computed."""
        return 1e-3


def table_key(config: EngineConfig, model_id: str, plan: Sequence[PlannedRequest]) -> TableKey:
    """The key of the table of `plan`'s requests on an engine built with `config`."""
    return TableKey(
        model_id=model_id,
        method=config.method,
        k_max=config.k_max,
        ngram=(config.ngram_min, config.ngram_max) if config.method == "ngram" else None,
        max_model_len=config.max_model_len,
        requests=requests_digest(
            [r.request_id for r in plan],
            [r.prompt_token_ids for r in plan],
            [r.output_tokens for r in plan],
        ),
    )


def check_greedy(plan: Sequence[PlannedRequest]) -> None:
    """Raise ValueError if any request samples (temperature > 0)."""
    sampled = [r for r in plan if r.temperature > 0]
    if sampled:
        raise ValueError(
            f"{len(sampled)} of {len(plan)} requests sample at temperature > 0 (first: "
            f"{sampled[0].request_id} at {sampled[0].temperature}): acceptance tables and the "
            f"twin hold for greedy requests only, whose outputs do not depend on the k schedule"
        )


def record_table(
    engine: LiveEngine, plan: Sequence[PlannedRequest], key: TableKey, description: str = ""
) -> AcceptanceTable:
    """Record the acceptance table of `plan`'s requests on a live engine (see the module).

    The engine is reset before and after; whatever it had attached is detached.
    """
    check_greedy(plan)
    if not plan:
        raise ValueError("no requests to record")
    config = engine.config
    log = _ProposalLog()
    features = feature_config(config, SLO())
    now = [0.0]
    clock, cost = engine.clock, engine.cost_model
    try:
        engine.reset()
        engine.clock = lambda: now[0]
        engine.cost_model = _UnitCost()
        engine.attach(log, FeatureBuilder(features))
        for request in plan:
            room = config.max_model_len - len(request.prompt_token_ids)
            engine.add_request(
                request.request_id,
                list(request.prompt_token_ids),
                min(request.output_tokens + engine.k_max, room),
                arrival_time=0.0,
            )
        while engine.has_unfinished():
            now[0] = engine.step().finished_at
        outputs = dict(engine.outputs)
    finally:
        engine.attach(None, None)
        engine.reset()
        engine.cost_model = cost
        engine.clock = clock

    proposed: list[int] = []
    hits: list[int] = []
    width = max((f.shape[1] for f in log.features.values() if f is not None), default=0)
    features = []
    nothing = np.zeros((engine.k_max, width), dtype=np.float32)
    for request in plan:
        output = outputs[request.request_id]
        proposed.append(0)  # position 0: the prefill step verifies nothing
        hits.append(0)
        features.append(nothing)
        for position in range(1, request.output_tokens):
            drafts = log.drafts.get((request.request_id, position))
            if drafts is None:
                raise TableError(
                    f"recording: request {request.request_id} was never seen drafting at "
                    f"output position {position}"
                )
            proposed.append(len(drafts))
            hits.append(accepted(drafts, output, position))
            found = log.features.get((request.request_id, position))
            features.append(nothing if found is None else found)
    return AcceptanceTable(
        key=key,
        request_ids=tuple(r.request_id for r in plan),
        prompt_len=np.array([len(r.prompt_token_ids) for r in plan], dtype=np.int32),
        output_len=np.array([r.output_tokens for r in plan], dtype=np.int32),
        token_len=np.array([len(outputs[r.request_id]) for r in plan], dtype=np.int32),
        prompts=np.array([t for r in plan for t in r.prompt_token_ids], dtype=np.int32),
        tokens=np.array([t for r in plan for t in outputs[r.request_id]], dtype=np.int32),
        proposed=np.array(proposed, dtype=np.int8),
        hits=np.array(hits, dtype=np.int8),
        features=np.stack(features).astype(np.float32),
        description=description,
    )


class TableSource:
    """Tables and limits for twins of one engine config: from the cache, else recorded.

    A live engine is built (or the one given is used) only when something is missing.
    """

    def __init__(
        self,
        config: EngineConfig,
        cache_dir: Path | None = None,
        engine: LiveEngine | None = None,
    ) -> None:
        """`engine`, if given, must be built with `config`; the caller keeps owning it.
        `cache_dir` defaults to the user's cache (`agents.paths.cache_dir`)."""
        if engine is not None and engine.config != config:
            raise ValueError("the recording engine must be built with the twin's config")
        self.config = config
        self.cache_dir = Path(cache_dir) if cache_dir is not None else cache_dir_default()
        self.model_id = config.model_id()
        self._engine = engine
        self._owns_engine = engine is None
        self._recent = RecentTables()
        self.recorded = 0
        """Tables recorded (not found in the cache) by this source."""

    def table(self, plan: Sequence[PlannedRequest], description: str = "") -> AcceptanceTable:
        """The acceptance table of `plan`'s requests: loaded, or recorded and saved."""
        check_greedy(plan)
        key = table_key(self.config, self.model_id, plan)
        table = self._recent.get(key.digest)
        if table is not None:
            return table
        path = self.cache_dir / f"acceptance-v{FORMAT_VERSION}" / f"{key.digest}.npz"
        if path.is_file():
            table = AcceptanceTable.load(path, expected=key)
        else:
            table = record_table(self._live(), plan, key, description)
            table.save(path)
            self.recorded += 1
        self._recent.put(key.digest, table)
        return table

    def limits(self) -> SchedulingLimits:
        """The engine's scheduling limits: cached, or read from a live engine and saved."""
        fields = json.dumps(self.config.as_dict() | {"model_id": self.model_id}, sort_keys=True)
        digest = hashlib.sha256(fields.encode()).hexdigest()[:32]
        path = self.cache_dir / "twin-limits" / f"{digest}.json"
        if path.is_file():
            return SchedulingLimits(**json.loads(path.read_text()))
        limits = read_limits(self._live())
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(limits.as_dict(), indent=1))
        return limits

    def twin(self) -> TwinEngine:
        """A twin of this config's engine."""
        return TwinEngine(self.config, self.limits())

    def close(self) -> None:
        """Shut down the live engine if this source built one."""
        if self._owns_engine and self._engine is not None:
            self._engine.close()
        self._engine = None

    def _live(self) -> LiveEngine:
        if self._engine is None:
            from serving.live_engine import LiveEngine

            self._engine = LiveEngine(self.config)
        return self._engine


__all__ = ["TableSource", "record_table"]
