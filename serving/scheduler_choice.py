"""Which serving scheduler the launcher installs: the async hook where vLLM would schedule
asynchronously, the synchronous hook elsewhere.

vLLM settles async scheduling while it builds the engine's config (config/vllm.py,
`VllmConfig.__post_init__`): on by default, off when the user passes
`--no-async-scheduling`, when the speculation method cannot run with it (only the EAGLE and
MTP types, ngram_gpu, draft_model, dspark and dflash can) or when the speculative config
sets `disable_padded_drafter_batch`; and the platform has the last word: vLLM's CPU
platform always turns it off (platforms/cpu.py, `CpuPlatform.check_and_update_config`).
The launcher makes the same choice before vLLM starts, installs the hook that matches, and
pins the choice in `--async-scheduling` so that the engine and the hook agree; anything else
vLLM finds incompatible with async scheduling (an executor, pipeline parallelism on the V1
model runner) it then reports at start, naming it, and `--no-async-scheduling` serves with
the synchronous hook instead.

The one refusal: a controller that reads each request's draft tokens (the oracles) cannot
run on the async hook, whose scheduler holds only placeholders; asked for async scheduling
it is refused, naming it, and otherwise it gets the synchronous hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, get_args

from agents.registry import ControllerSpec

SYNC_SCHEDULER = "serving.serving_scheduler.ServingScheduler"
ASYNC_SCHEDULER = "serving.serving_scheduler.AsyncServingScheduler"


class SchedulerChoice(NamedTuple):
    """The scheduler the server runs and why."""

    async_scheduling: bool
    """Whether vLLM schedules asynchronously (the launcher pins vLLM's flag to it)."""
    scheduler_cls: str
    """The hook's qualified name, for `--scheduler-cls`."""
    reason: str
    """Why, in a few words, for the log."""

    def describe(self) -> str:
        """The launcher's log line."""
        kind = "async" if self.async_scheduling else "synchronous"
        name = self.scheduler_cls.rpartition(".")[2]
        return f"speculation control: the {kind} scheduling hook {name} ({self.reason})"


def drafts_refused(name: str) -> str:
    """Why the controller `name`, which reads the drafts, cannot run under async scheduling."""
    return (
        f"controller {name!r} looks at each request's draft tokens before every step, but "
        "under async scheduling the scheduler holds only placeholders for them (the drafts "
        "stay on the worker): run it with synchronous scheduling (--no-async-scheduling)"
    )


def async_methods() -> frozenset[str]:
    """The speculation methods vLLM 0.32 schedules asynchronously (config/vllm.py)."""
    from vllm.config.speculative import (
        DFlashModelTypes,
        DSparkModelTypes,
        EagleModelTypes,
        NgramGPUTypes,
    )

    types = (EagleModelTypes, NgramGPUTypes, DSparkModelTypes, DFlashModelTypes)
    return frozenset({"draft_model"}.union(*(get_args(t) for t in types)))


def platform_schedules_async() -> bool:
    """Whether vLLM's current platform leaves async scheduling on: every one but the CPU."""
    from vllm.platforms import current_platform

    return not current_platform.is_cpu()


def choose_scheduler(
    *,
    platform_async: bool,
    requested: bool | None,
    speculative: Mapping[str, Any] | None,
    controller: ControllerSpec,
    methods: frozenset[str],
) -> SchedulerChoice:
    """The serving scheduler for a configuration, as vLLM would schedule it.

    `platform_async` is the platform's answer (`platform_schedules_async()`), `requested`
    the user's `--[no-]async-scheduling` (None: unset), `speculative` the speculative
    config (None: no speculation), `methods` the methods vLLM schedules asynchronously
    (`async_methods()`). Raises ValueError, naming the cause, where async scheduling is
    asked for and cannot be had: a method vLLM schedules synchronously, or a controller
    that reads the drafts.
    """
    if requested is False:
        return SchedulerChoice(False, SYNC_SCHEDULER, "--no-async-scheduling")
    if not platform_async:
        reason = "vLLM's platform here, the CPU, always schedules synchronously"
        if requested:
            reason += "; --async-scheduling has no effect on it"
        return SchedulerChoice(False, SYNC_SCHEDULER, reason)
    method = speculative.get("method") if speculative else None
    blocker = None
    if method is not None and method not in methods:
        blocker = f"vLLM schedules {method} speculation synchronously"
    elif speculative and speculative.get("disable_padded_drafter_batch"):
        blocker = "vLLM schedules synchronously with disable_padded_drafter_batch"
    if blocker is not None:
        if requested:
            raise ValueError(f"--async-scheduling: {blocker}")
        return SchedulerChoice(False, SYNC_SCHEDULER, blocker)
    if controller.reads_drafts:
        if requested:
            raise ValueError(drafts_refused(controller.name))
        return SchedulerChoice(
            False, SYNC_SCHEDULER, f"controller {controller.name} reads the drafts"
        )
    how = "--async-scheduling" if requested else "vLLM's default here"
    what = f"{method} speculation" if method else "no speculation"
    return SchedulerChoice(True, ASYNC_SCHEDULER, f"{how}, {what}")
