"""A vLLM V1 scheduler whose speculation length is chosen at every step, per request.

`SpecControlScheduler` is installed with `EngineArgs(scheduler_cls=SpecControlScheduler)`.
Around vLLM's own `schedule()` and `update_from_output()` it:

1. truncates each running request's draft (`spec_token_ids`) to that request's k before
   scheduling, so the step verifies at most k drafts per request (effective at once);
2. sets `SchedulerOutput.num_spec_tokens_to_schedule`, the drafting budget the model runner
   uses to propose drafts during this step, which the next step verifies (effective one
   step later; vLLM's own dynamic speculative decoding uses the same field);
3. records per request the tokens drafted, accepted and generated, and emits one
   `StepRecord` per step to its listeners.

k comes from, in order: a one-step decision set with `set_next(...)` (the environment's
action), else the attached controller, else the last k used. It must lie in 0..k_max,
where k_max is the engine's `num_speculative_tokens`.

Two clocks. On the wall clock (serving, and replays that check the cost model) a step lasts
what it measured. On the model clock (`use_cost_model`) a step lasts what a cost model says
the step computed, so a replay repeats to the token whatever the machine is doing; the hook
then also sets the drafting budget to k_max at every step and cuts each request's drafts to
its k only at verification. The chosen k thus acts on its own step, and every request's
record holds the k_max proposal's size, from which the accepted count at every other k
follows (`RequestStep.accepted_if`). The cost model charges only what the chosen k
computed. Drafting k_max costs this machine's wall time, not the model clock's.

This hook is built on the synchronous `Scheduler`, which is what vLLM's CPU platform runs.
With async scheduling (vLLM's GPU default for EAGLE, MTP, draft-model and ngram_gpu
speculation) the engine schedules step t+1 before step t's drafts exist and keeps
placeholder drafts in `spec_token_ids`: that engine needs the async hook
(`serving.async_scheduler_hook`), and this one refuses it (`check_sync_scheduling`).

The control itself (the decision, the cuts, the pricing, the records) is the step-control
core `serving.step_control`, which the twin drives too; `serving.spec_control_hook` adapts
vLLM's scheduler to it for this class and for the async hook
(`serving.async_scheduler_hook`).
"""

from __future__ import annotations

from vllm.v1.core.sched.scheduler import Scheduler

from serving.spec_control_hook import SpecControlHook

ASYNC_REFUSED = (
    "SpecControlScheduler runs on vLLM's synchronous scheduling, but async scheduling is on: "
    "install serving.async_scheduler_hook.AsyncSpecControlScheduler for it, or pass "
    "--no-async-scheduling (EngineArgs(async_scheduling=False))"
)


def check_sync_scheduling(scheduler_config) -> None:
    """Raise ValueError if vLLM's scheduler config asks for async scheduling."""
    if scheduler_config.async_scheduling:
        raise ValueError(ASYNC_REFUSED)


class SpecControlScheduler(SpecControlHook, Scheduler):
    """vLLM's synchronous V1 scheduler with per-step, per-request speculation length."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        check_sync_scheduling(self.scheduler_config)
