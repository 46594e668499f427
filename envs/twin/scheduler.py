"""vLLM V1's scheduling, as the live engine runs it for our engine configs, in plain Python.

This mirrors `vllm.v1.core.sched.scheduler.Scheduler.schedule()` and `update_from_output()`
(vllm 0.32.0) for the configurations `serving.config.EngineConfig` builds: the synchronous
scheduler, first-come-first-served, chunked prefill on, prefix caching off, one KV-cache
group kind (full attention), no LoRA, encoders or KV connectors. Per step:

1. Running requests first, in order: each asks for its missing tokens (a prompt chunk, or one
   token plus its drafts), capped by the step's token budget (`max_num_scheduled_tokens`),
   by the input budget less the drafting slots a draft model needs per request, by
   `max_model_len` (a request's positions never pass it) and by the long-prefill threshold.
   Its KV blocks are allocated for those tokens plus the draft model's lookahead; when the
   pool runs dry the last running request is preempted (recompute: its blocks are freed, its
   computed tokens and drafts dropped, and it goes back to the front of the queue, to
   recompute its prompt and outputs as one prefill when it is readmitted). If the request
   itself is the one preempted, scheduling stops there.
2. If nothing was preempted, waiting requests in arrival order (preempted ones first), while
   budget, running slots (`max_num_seqs`) and blocks last: a waiting request is admitted only
   if blocks for its whole known sequence fit (vLLM's `scheduler_reserve_full_isl`), and gets
   a chunk of what the budget leaves.
3. After the model ran: rejected drafts roll back the computed tokens; the sampled tokens are
   appended up to the request's output length (vLLM trims a finishing request's tokens);
   finished requests free their blocks.

Where this differs from vLLM, on purpose:

- Blocks are counted, not assigned: a request holds ceil(slots / block_size) blocks per KV
  group and the pool a free count. With prefix caching off, which blocks they are never
  changes what is scheduled.
- No async scheduling, pipeline parallelism, priorities, encoder inputs, KV connectors,
  structured output, Mamba alignment or streaming sessions: our engines use none of them, and
  `serving.limits.read_limits` refuses a live engine whose configuration would need them.
- The CUDA-graph padding of resumed requests to k_max drafts is not modelled: the hook turns
  it off (it declares a dynamic draft schedule), so the live engine never pads either.

What the model computes (the acceptance of drafts, the drafts proposed) and what the hook
records are the engine's business (`envs.twin.engine`); this module is vLLM's bookkeeping.
"""

from __future__ import annotations

from collections import deque

from serving.limits import SchedulingLimits

WAITING, RUNNING, PREEMPTED, FINISHED = range(4)
"""A twin request's status, as vLLM's RequestStatus names them."""


class TwinRequest:
    """One request's scheduling state (vLLM's Request, reduced to the counts that matter).

    Its acceptance comes with it, from its row of the acceptance table: `proposed[p]` and
    `hits[p]` at output position p.
    """

    __slots__ = (
        "arrival_time",
        "blocks",
        "computed",
        "features",
        "hits",
        "max_tokens",
        "num_outputs",
        "prompt_len",
        "proposed",
        "request_id",
        "spec",
        "status",
        "tokens",
    )

    def __init__(
        self,
        request_id: str,
        arrival_time: float,
        prompt_len: int,
        max_tokens: int,
        proposed: list[int],
        hits: list[int],
        tokens: list[int],
        features=None,
    ) -> None:
        self.request_id = request_id
        self.arrival_time = arrival_time
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        self.num_outputs = 0
        """Output tokens so far: the position its next drafts guess."""
        self.computed = 0
        """Tokens in its KV cache (vLLM's num_computed_tokens)."""
        self.spec = 0
        """Drafts it holds for the next step (len(spec_token_ids))."""
        self.blocks = 0
        """KV blocks it holds, per group."""
        self.status = WAITING
        self.proposed = proposed
        self.hits = hits
        self.tokens = tokens
        self.features = features
        """Its proposals' slot features by position (the table's), or None."""

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens."""
        return self.prompt_len + self.num_outputs

    def copy(self) -> TwinRequest:
        """A copy whose state moves on its own (the table's lists are shared: read only)."""
        twin = TwinRequest.__new__(TwinRequest)
        for name in TwinRequest.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin


class TwinScheduler:
    """vLLM's scheduler state and decisions over `TwinRequest`s (see the module)."""

    def __init__(self, limits: SchedulingLimits) -> None:
        self.limits = limits
        self.running: list[TwinRequest] = []
        self.waiting: deque[TwinRequest] = deque()
        self.free_blocks = limits.num_blocks - 1  # vLLM keeps block 0 as its null block
        self.preemptions = 0
        """Requests preempted so far."""

    @property
    def usage(self) -> float:
        """Fraction of the KV cache in use, as vLLM's block pool reports it."""
        return 1.0 - self.free_blocks / (self.limits.num_blocks - 1)

    def fork(self) -> tuple[TwinScheduler, dict[int, TwinRequest]]:
        """A copy of the scheduler's state with copies of its requests, and the copies by the
        originals' ids."""
        copies = {id(r): r.copy() for r in (*self.running, *self.waiting)}
        twin = TwinScheduler(self.limits)
        twin.running = [copies[id(r)] for r in self.running]
        twin.waiting = deque(copies[id(r)] for r in self.waiting)
        twin.free_blocks = self.free_blocks
        return twin, copies

    def add(self, request: TwinRequest) -> None:
        """Queue a new request."""
        self.waiting.append(request)

    def schedule(self) -> list[tuple[TwinRequest, int, int]]:
        """One step's scheduling: (request, tokens scheduled, drafts verified) per scheduled
        request, running ones first. Advances each one's computed tokens by what it got and
        clears its drafts, as vLLM does."""
        lim = self.limits
        token_budget = lim.max_num_scheduled_tokens
        input_budget = lim.max_num_batched_tokens
        slots = lim.draft_slots
        max_len = lim.max_model_len
        threshold = lim.long_prefill_threshold
        if len(self.running) + len(self.waiting) <= 1:
            threshold = 0  # a lone request starves nobody
        scheduled: list[tuple[TwinRequest, int, int]] = []
        preempted = False

        running = self.running
        size, lookahead, groups = lim.block_size, lim.lookahead, lim.kv_groups
        index = 0
        # The hot loop of the twin: plain comparisons instead of min(), and the common case of
        # a request whose blocks already cover its tokens decided without a call.
        while index < len(running) and token_budget > 0:
            if input_budget <= slots:
                break
            request = running[index]
            computed = request.computed
            num_tokens = request.prompt_len + request.num_outputs
            num_new = num_tokens + request.spec - computed
            if 0 < threshold < num_new:
                num_new = threshold
            if num_new > token_budget:
                num_new = token_budget
            if num_new > input_budget - slots:
                num_new = input_budget - slots
            if num_new > max_len - computed - 1:
                num_new = max_len - computed - 1
            if num_new <= 0:
                index += 1
                continue
            need_slots = computed + num_new + lookahead
            if need_slots > max_len:
                need_slots = max_len
            need = -(-need_slots // size) - request.blocks
            if need > 0:
                if need * groups <= self.free_blocks:
                    request.blocks += need
                    self.free_blocks -= need * groups
                else:
                    while not self._allocate(request, num_new, admitting=False):
                        victim = running.pop()
                        self._preempt(victim)
                        preempted = True
                        if victim is request:
                            break
                    if request.status != RUNNING:
                        break
            drafted = 0
            if request.spec:
                drafted = num_new + computed - num_tokens
                if drafted > request.spec:
                    drafted = request.spec
                elif drafted < 0:
                    drafted = 0
                request.spec = 0
            scheduled.append((request, num_new, drafted))
            token_budget -= num_new
            input_budget -= num_new + slots
            index += 1

        if not preempted:
            waiting = self.waiting
            while token_budget > 0 and waiting and input_budget > slots:
                if len(running) >= lim.max_num_active:
                    break
                request = waiting[0]
                num_new = min(request.prompt_len + request.num_outputs, token_budget)
                if 0 < threshold < num_new:
                    num_new = threshold
                num_new = min(num_new, input_budget - slots)
                if not self._allocate(request, num_new, admitting=True):
                    break
                waiting.popleft()
                running.append(request)
                request.status = RUNNING
                scheduled.append((request, num_new, 0))
                token_budget -= num_new
                input_budget -= num_new + slots

        for request, num_new, _ in scheduled:
            request.computed += num_new
        return scheduled

    def update(self, request: TwinRequest, drafted: int, accepted: int, sampled: int) -> bool:
        """Take one scheduled request's output: roll back its rejected drafts and append the
        sampled tokens up to its length; return whether it finished (and free it if so)."""
        if drafted:
            request.computed -= drafted - accepted
        if not sampled:
            return False
        room = request.max_tokens - request.num_outputs
        past_limit = self.limits.max_model_len - request.prompt_len - request.num_outputs
        if past_limit < room:
            room = past_limit
        if sampled < room:
            request.num_outputs += sampled
            return False
        # vLLM appends token by token and stops at the length limit, trimming the rest.
        request.num_outputs += room
        request.status = FINISHED
        self.free_blocks += request.blocks * self.limits.kv_groups
        request.blocks = 0
        return True

    def remove_finished(self) -> None:
        """Drop finished requests from the running list, keeping the others' order."""
        self.running = [r for r in self.running if r.status != FINISHED]

    def abort(self, request: TwinRequest) -> None:
        """Remove a request wherever it is and free its blocks."""
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        self.free_blocks += request.blocks * self.limits.kv_groups
        request.blocks = 0
        request.status = FINISHED

    # --- internals -------------------------------------------------------------------------

    def _allocate(self, request: TwinRequest, num_new: int, *, admitting: bool) -> bool:
        """vLLM's KVCacheManager.allocate_slots for a full-attention model, by counts."""
        lim = self.limits
        size = lim.block_size
        watermark = 0
        if admitting:
            # The watermark guards admissions only, and only when something already runs.
            watermark = lim.watermark_blocks if self.running else 0
            if lim.reserve_full_sequence:
                full = min(request.prompt_len + request.num_outputs, lim.max_model_len)
                need = max(-(-full // size) - request.blocks, 0) * lim.kv_groups
                if need + watermark > self.free_blocks:
                    return False
        slots = min(request.computed + num_new + lim.lookahead, lim.max_model_len)
        need = max(-(-slots // size) - request.blocks, 0)
        if need * lim.kv_groups + watermark > self.free_blocks:
            return False
        request.blocks += need
        self.free_blocks -= need * lim.kv_groups
        return True

    def _preempt(self, request: TwinRequest) -> None:
        """vLLM's recompute preemption: free everything, back to the front of the queue."""
        self.free_blocks += request.blocks * self.limits.kv_groups
        request.blocks = 0
        request.computed = 0
        request.spec = 0
        request.status = PREEMPTED
        self.waiting.appendleft(request)
        self.preemptions += 1
