"""`AsyncSpecControlScheduler`: speculation length per step and per request under async scheduling.

vLLM schedules asynchronously by default on GPUs for EAGLE, MTP, draft-model, ngram_gpu,
DSpark and DFlash speculation (config/vllm.py, `VllmConfig.__post_init__`): the engine
schedules step t+1 while step t runs, before step t's output exists, and keeps placeholder
drafts (-1) in each request's `spec_token_ids` for the drafts the worker proposes during
step t. This hook extends vLLM's `AsyncScheduler`, as vLLM asks of custom schedulers (its
warning in config/scheduler.py, `SchedulerConfig.get_scheduler_cls`), and drives the same
step-control core as the synchronous hook (`serving.scheduler_hook`) through the shared
adapter (`serving.spec_control_hook`).

How k acts:

- per request, at once: before vLLM schedules step t, each running request's placeholders
  are cut to its k, and the worker verifies as many of its drafts as placeholders were kept
  (the placeholder list is as long as the previous step's budget);
- per step, one step later: `num_spec_tokens_to_schedule`, set before
  `_update_after_schedule` creates the placeholders, is the drafts per request the worker
  proposes during step t (the largest k any running request may verify, or k_max on the
  model clock) and the number of placeholders each gets for step t+1. A k above the last
  budget therefore takes effect a step late, as on the synchronous hook's wall clock.

What arrives late: the record of step t is built when vLLM takes in step t's output, which
is after step t+1 was decided and scheduled. The controller is told which step a record is
(`StepRecord.step`) and how many decisions it trails (`StepRecord.in_flight`: 1 here while
steps follow each other, 0 for a step recorded with nothing scheduled after it). The engine
counts in a record (running, waiting, KV-cache use, prompt tokens waiting) are taken then,
after step t+1 was scheduled: as fresh as anything the next decision can know. Its times:
`started_at` when step t's scheduling began, `wall_time` up to the end of its output
update; consecutive steps overlap, so their wall times overlap too, and `cpu_time` includes
the scheduling of step t+1 done meanwhile. Token times are stamped when the output is taken
in, when vLLM emits the tokens.

Which controllers keep their meaning with outcomes one step late:

- `static:K` and `nospec` exactly: they read no outcome.
- `goodput` and `goodput-per-request`: yes. They act on an acceptance estimate that moves
  slowly (an EMA of weight 0.2, about five steps of memory) and on the running and waiting
  counts, which arrive as fresh as on the synchronous hook; the estimate only lacks the
  newest step. A request's own estimate starts with its first record, a step later. vLLM's
  adaptive verification sizes its draft budget from stale values in the same way: from
  draft confidences copied to the CPU during an earlier step
  (v1/worker/gpu/spec_decode/adaptive_verification.py, `_stale_confidences`).
- `vllm-schedule`: yes, with one step more of lag in the batch size it looks up (the last
  record's, which is the step before the one just scheduled); vLLM's own batch-size table
  reads the batch being scheduled.
- `streak-per-request`: no. Its rule sets a request's next k from that request's last
  verification; here the last one known is two steps back, and the step between was set
  from the one before it, so the rule runs as two interleaved chains. It runs, not refused.
- `ppo:` and `guarded:` policies: no guarantee. A policy was trained on observations of the
  step just run; here every feature is a step older (`prev_k` is the k of the step before
  last), inputs it never saw in training. The guard still checks every observation and
  falls back to the goodput controller on bad inputs, errors and the SLO check.
- the oracles (`DraftAware` controllers): cannot work. They read each request's draft
  tokens before the step, and the scheduler holds only placeholders: `attach` refuses
  them, naming the controller.

The model clock (`use_cost_model`) prices each step from what it computed, exactly as on
the synchronous hook, and drafts k_max at every step so the chosen k acts on its own step.
What it cannot give here is a replay: a step is stamped when its scheduling begins, which
is before the previous step's price is known, and nothing in this project steps an async
engine one step at a time (`LiveEngine`, the environment and the benches run the
synchronous hook). Model-time replays and training stay synchronous.

The counterfactuals keep their meaning. A request's `proposed` is the placeholders it held
before the cut: the budget of the step before, which vLLM's GPU proposers always fill
(ngram_gpu fills a slot without a match with the last sampled token:
v1/worker/gpu/spec_decode/ngram/speculator.py), so `RequestStep.accepted_if(k)` is exact up
to the drafts verified and past them after a rejection, and otherwise a lower bound
(`censored_if`), as on the synchronous hook. On the wall clock `proposed` is that budget,
not k_max. The draft tokens themselves stay on the worker.
"""

from __future__ import annotations

from vllm.v1.core.sched.async_scheduler import AsyncScheduler

from agents.controller import Controller, DraftAware
from agents.features import FeatureBuilder
from serving.scheduler_choice import drafts_refused
from serving.spec_control_hook import SpecControlHook

SYNC_REFUSED = (
    "AsyncSpecControlScheduler runs on vLLM's async scheduling, but this engine schedules "
    "synchronously (vLLM's CPU platform always does; --no-async-scheduling asks for it): "
    "install serving.scheduler_hook.SpecControlScheduler instead"
)


def check_async_scheduling(scheduler_config) -> None:
    """Raise ValueError if vLLM's scheduler config does not schedule asynchronously."""
    if not scheduler_config.async_scheduling:
        raise ValueError(SYNC_REFUSED)


class AsyncSpecControlScheduler(SpecControlHook, AsyncScheduler):
    """vLLM's async V1 scheduler with per-step, per-request speculation length."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_async_scheduling(self.scheduler_config)

    def attach(self, controller: Controller | None, features: FeatureBuilder | None) -> None:
        """Let `controller` choose k before every step; raise ValueError, naming it, for a
        controller that looks at the drafts (`DraftAware`), which this scheduler never has."""
        if isinstance(controller, DraftAware):
            raise ValueError(drafts_refused(controller.name))
        super().attach(controller, features)
