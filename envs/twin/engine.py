"""`TwinEngine`: the live engine's interface over vLLM's scheduling in Python and recorded
acceptance, on the model clock.

It stands where `serving.live_engine.LiveEngine` stands (the replayer, the environment, the
evaluation bench and every controller use it unchanged) and does, step by step, what the
scheduler hook (`serving.scheduler_hook`) does around vLLM on the model clock:

- before a step: the k for the step (from `step(k, ...)`, else the attached controller,
  which first sees the drafts if it is `DraftAware`, else the last k), and each
  running request's k (per-request overrides over the global k), to which its drafts are cut;
- the step: vLLM's scheduling (`envs.twin.scheduler`); the target's verdict on the drafts
  from the acceptance table (min(hits[p], drafts verified) at the request's position p);
  after it, every request that sampled gets the k_max proposal of its new position (as the
  hook drafts k_max every step on the model clock), `proposed[p]` drafts from the table;
- the step's seconds from the cost model, priced from a `StepLoad` built as the hook builds
  it; the same `StepRecord` with every field filled as the hook fills it.

The decision, the cuts, the pricing and the records are the step-control core
(`serving.step_control`) the hook drives too; this class adapts its own requests to it.

Only greedy requests (temperature 0): a sampled request's output and acceptance depend on the
k schedule, so no table holds for it, and `add_request` refuses it. The wall clock is not
modelled: the twin always runs on the model clock. Nothing here imports vLLM or torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from agents.confidence import shipped_calibrator
from agents.controller import Controller
from agents.cost import CostModel
from agents.features import FeatureBuilder
from agents.records import DraftView, StepRecord
from envs.twin.scheduler import TwinRequest, TwinScheduler
from envs.twin.tables import AcceptanceTable, TableError, TableRow
from serving.config import EngineConfig
from serving.limits import SchedulingLimits
from serving.step_control import Outcome, Scheduled, StepControl

NO_MATCH = -1
"""A draft token id that matches no output token (ids are >= 0): what an oracle's view of a
rejected draft holds in place of the proposer's token, which the table does not keep."""


class TwinEngine:
    """vLLM's scheduling with acceptance from a table, behind the live engine's interface."""

    def __init__(
        self,
        config: EngineConfig,
        limits: SchedulingLimits,
        *,
        clock: Callable[[], float] = time.time,
        cost_model: CostModel | None = None,
    ) -> None:
        """A twin of a live engine built with `config`, under the `limits` read from one
        (`record.read_limits`). Load a workload's acceptance table before adding its
        requests (`load`); an engine without speculation (k_max 0) needs none."""
        if limits.k_max != config.k_max or limits.max_model_len != config.max_model_len:
            raise ValueError(
                f"twin limits (k_max {limits.k_max}, max_model_len {limits.max_model_len}) do "
                f"not match the engine config (k_max {config.k_max}, max_model_len "
                f"{config.max_model_len})"
            )
        self.config = config
        self.limits = limits
        self.clock = clock
        """The clock that stamps arrivals, steps and token times."""
        self.control = StepControl(config.k_max)
        """The decisions, cuts, pricing and records (`serving.step_control`)."""
        self.control.cost_model = cost_model
        if config.k_max:
            self.control.use_calibrator(shipped_calibrator(config.method, config.k_max))
        self.outputs: dict[str, list[int]] = {}
        """Generated token ids of every finished request, by request id."""
        self._scheduler = TwinScheduler(limits)
        self._rows: dict[str, TableRow] = {}
        self._requests: dict[str, TwinRequest] = {}

    # --- the live engine's interface -------------------------------------------------------

    @property
    def cost_model(self) -> CostModel | None:
        """What prices each step (the twin runs on the model clock only)."""
        return self.control.cost_model

    @cost_model.setter
    def cost_model(self, cost_model: CostModel | None) -> None:
        self.control.cost_model = cost_model

    @property
    def k_max(self) -> int:
        """The largest k this engine accepts (0 when no speculation is configured)."""
        return self.config.k_max

    @property
    def num_unfinished(self) -> int:
        """Requests added and not yet finished (running or waiting)."""
        return len(self._requests)

    @property
    def preemptions(self) -> int:
        """Requests preempted (to recompute) since the engine was built."""
        return self._scheduler.preemptions

    def has_unfinished(self) -> bool:
        """Whether any request is still running or waiting."""
        return bool(self._requests)

    def load(self, table: AcceptanceTable) -> None:
        """Take a workload's acceptance table: its requests may now be added.

        Raises TableError if it was recorded for another method, k_max, ngram sizes or
        length limit than this engine's (the model is checked where tables are looked up,
        `record.TableSource`).
        """
        config = self.config
        ngram = (config.ngram_min, config.ngram_max) if config.method == "ngram" else None
        wanted = {
            "method": config.method,
            "k_max": config.k_max,
            "ngram": ngram,
            "max_model_len": config.max_model_len,
        }
        differs = [
            f"{name}: engine {value!r}, table {getattr(table.key, name)!r}"
            for name, value in wanted.items()
            if getattr(table.key, name) != value
        ]
        if differs:
            raise TableError(f"acceptance table for another engine ({'; '.join(differs)})")
        self._rows = table.rows

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        output_tokens: int,
        *,
        arrival_time: float | None = None,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> None:
        """Queue a request that generates exactly `output_tokens` tokens after its prompt.

        Raises ValueError for a sampled request (temperature > 0), for a request the loaded
        table does not hold or holds with another prompt or a shorter output, and for what
        the live engine refuses (an empty prompt, a prompt plus output longer than
        max_model_len, a request id already in use).
        """
        del seed  # greedy only: a sampling seed has nothing to act on
        if temperature > 0:
            raise ValueError(
                f"request {request_id!r} samples at temperature {temperature}: the twin "
                f"replays greedy requests only (a sampled request's output and acceptance "
                f"depend on the k schedule, so no acceptance table holds for it)"
            )
        self.config.check_request(request_id, len(prompt_token_ids), output_tokens)
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        if self.k_max:
            row = self._rows.get(request_id)
            if row is None:
                raise TableError(
                    f"request {request_id!r} is not in the loaded acceptance table: load the "
                    f"table of the workload being replayed"
                )
            if row.prompt != tuple(prompt_token_ids) or output_tokens > row.output_len:
                raise TableError(
                    f"request {request_id!r} differs from the acceptance table's (prompt of "
                    f"{len(prompt_token_ids)} tokens, {output_tokens} outputs; table: "
                    f"{len(row.prompt)}, {row.output_len}): the table is another workload's "
                    f"or another prompt seed's"
                )
            proposed, hits, tokens = row.proposed, row.hits, row.tokens
            features = row.features if row.features.shape[2] else None
        else:
            proposed = hits = tokens = []
            features = None
        request = TwinRequest(
            request_id,
            self.clock() if arrival_time is None else arrival_time,
            len(prompt_token_ids),
            output_tokens,
            proposed,
            hits,
            tokens,
            features,
        )
        self._requests[request_id] = request
        self._scheduler.add(request)
        self.control.arrived()

    def step(
        self, k: int | None = None, per_request: Mapping[str, int] | None = None
    ) -> StepRecord:
        """Run one engine step and return what it did.

        With k given, that k (and the per-request overrides) is used for this step; without,
        the attached controller chooses, or the last k carries over.
        """
        if not self._requests:
            raise RuntimeError("step() called with no unfinished requests: add one first")
        if self.cost_model is None:
            raise RuntimeError("the twin runs on the model clock only: set a cost model")
        if k is not None:
            self.control.set_next(k, per_request)
        elif per_request:
            raise ValueError("per_request overrides need a global k as well")
        return self._step()

    def fork(self) -> TwinEngine:
        """A copy of this engine's state that steps on its own from here, with no controller
        and no arrivals: what a lookahead tries each k on (`envs.twin.lookahead`)."""
        now = self.clock()
        twin = TwinEngine(self.config, self.limits, clock=lambda: now)
        twin.control = self.control.copy()
        twin._scheduler, copies = self._scheduler.fork()
        twin._requests = {rid: copies[id(r)] for rid, r in self._requests.items()}
        twin._rows = self._rows
        return twin

    def warm_up(self, batch_size: int = 4, steps_per_k: int = 3) -> None:
        """Nothing to warm up: no step pays a first-use cost in the twin."""

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k at every step `step()` is called without one."""
        self.control.attach(controller, features)

    def abort(self, request_ids: Sequence[str]) -> None:
        """Drop the given requests, wherever they are; others keep running."""
        for rid in request_ids:
            request = self._requests.pop(rid, None)
            if request is not None:
                self._scheduler.abort(request)
                self.control.forget(rid)

    def reset(self) -> None:
        """Abort every unfinished request and forget all outputs (the table stays loaded)."""
        self.abort(list(self._requests))
        self.outputs.clear()
        self.control.reset_controller()

    def close(self) -> None:
        """Nothing to free."""

    def __enter__(self) -> TwinEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- one step, as the hook runs it around vLLM -----------------------------------------

    def _step(self) -> StepRecord:
        t0, c0 = time.perf_counter(), time.thread_time()
        scheduler = self._scheduler
        control = self.control
        started_at = self.clock()
        running = scheduler.running
        plan = control.begin(
            started_at,
            [(r.request_id, r.spec) for r in running],
            self._draft_views,
            self._prefill_waiting,
        )
        for request, k in zip(running, plan.ks, strict=True):
            if request.spec > k:
                request.spec = k

        scheduled = scheduler.schedule()
        computed = [
            Scheduled(
                request.request_id,
                num_new,
                drafted,
                request.computed - num_new,
                request.prompt_len,
                request.prompt_len + request.num_outputs,
            )
            for request, num_new, drafted in scheduled
        ]
        step_time, prefills = control.price(computed, 0.0)

        # The model's verdict from the table, then vLLM's update of each request.
        outcomes: list[Outcome] = []
        propose = self.k_max > 0
        finished = False
        for (request, _, drafted), s, prefill in zip(scheduled, computed, prefills, strict=True):
            position = request.num_outputs
            hits = None
            if request.computed < s.num_tokens:
                sampled = accepted = 0  # a prompt chunk short of the end samples nothing
            elif not propose:
                sampled, accepted = 1, 0  # no speculation: one token, nothing to verify
            else:
                matched = request.hits[position]
                accepted = matched if matched < drafted else drafted
                sampled = 1 + accepted
                if not prefill:
                    hits = matched
            ended = scheduler.update(request, drafted, accepted, sampled)
            if sampled and propose and not ended:
                request.spec = request.proposed[request.num_outputs]
            outcomes.append(
                Outcome(
                    s.request_id,
                    drafted,
                    accepted,
                    request.num_outputs - position,
                    prefill,
                    request.num_outputs,
                    s.context,
                    hits,
                    ended,
                    request.arrival_time,
                    s.prompt_len,
                )
            )
            if ended:
                del self._requests[s.request_id]
                self.outputs[s.request_id] = request.tokens[: request.num_outputs]
                finished = True
        if finished:
            scheduler.remove_finished()

        waiting = scheduler.waiting
        return control.record(
            plan,
            outcomes,
            started_at=started_at,
            step_time=step_time,
            draft_budget=self.k_max,
            num_running=len(scheduler.running),
            num_waiting=len(waiting),
            prefill_tokens_waiting=self._prefill_waiting(),
            oldest_waiting_arrival=min(r.arrival_time for r in waiting) if waiting else None,
            kv_cache_usage=scheduler.usage,
            wall_time=time.perf_counter() - t0,
            cpu_time=time.thread_time() - c0,
        )

    def _prefill_waiting(self) -> int:
        """Prompt tokens not yet computed, over waiting and partly prefilled requests."""
        scheduler = self._scheduler
        waiting = sum(r.prompt_len + r.num_outputs - r.computed for r in scheduler.waiting)
        return waiting + sum(
            r.prompt_len - r.computed for r in scheduler.running if r.computed < r.prompt_len
        )

    def _draft_views(self) -> list[DraftView]:
        """Every running request past its prompt, with drafts that match its output exactly
        as far as the table's hits say (then a token that matches nothing)."""
        views = []
        for r in self._scheduler.running:
            if r.computed < r.prompt_len:
                continue
            p, held = r.num_outputs, r.spec
            drafts: tuple[int, ...] = ()
            if held:
                hit = min(r.hits[p], held)
                drafts = tuple(r.tokens[p : p + hit]) + (NO_MATCH,) * (held - hit)
            features = r.features[p] if held and r.features is not None else None
            views.append(DraftView(r.request_id, p, r.computed, drafts, features))
        return views
