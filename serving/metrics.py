"""Prometheus metrics of the speculation controller, served on vLLM's `/metrics`.

The controller runs in vLLM's engine-core process, while `/metrics` is answered by the API
server process. The launcher sets `PROMETHEUS_MULTIPROC_DIR` before either process imports
prometheus_client, so the values written here are collected there (vLLM's own
`get_prometheus_registry` reads that directory). In a single process they land in the
default registry.
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

from agents.records import StepRecord

K_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16)
"""Histogram bounds for k: one bucket per value up to 6 (k_max is 4 by default), then coarser."""


BUDGET_BUCKETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
"""Histogram bounds for a verification budget (draft slots admitted in a step)."""


@functools.cache
def _per_request() -> tuple[Histogram, Histogram]:
    k_per_request = Histogram(
        "turbospec:k_per_request",
        "Speculation length each decoding request was allowed, one observation per request "
        "per engine step (per-request controllers give requests different k).",
        buckets=K_BUCKETS,
    )
    budget = Histogram(
        "turbospec:verification_budget",
        "Draft slots a confidence-ranked controller admitted for verification, per step.",
        buckets=BUDGET_BUCKETS,
    )
    return k_per_request, budget


@functools.cache
def _metrics() -> tuple[Histogram, Counter, Counter, Gauge, Gauge]:
    # Created once per process: prometheus_client refuses to register a name twice.
    k_chosen = Histogram(
        "turbospec:k_chosen",
        "Speculation length k the controller chose, one observation per engine step.",
        buckets=K_BUCKETS,
    )
    switches = Counter(
        "turbospec:controller_switches",
        "Switches of the deciding controller: to the fallback (by reason) or back to the "
        "policy (reason 'recovered').",
        ["reason"],
    )
    fallback_steps = Counter(
        "turbospec:fallback_decisions",
        "Engine steps decided by the fallback controller, by reason.",
        ["reason"],
    )
    info = Gauge(
        "turbospec:controller_info",
        "1 for the configured controller and the source deciding now (policy or fallback).",
        ["controller", "deciding"],
        multiprocess_mode="livemax",
    )
    scheduler = Gauge(
        "turbospec:scheduler_info",
        "1 for the scheduler class the engine runs and how it schedules (sync or async).",
        ["scheduler", "scheduling"],
        multiprocess_mode="livemax",
    )
    return k_chosen, switches, fallback_steps, info, scheduler


class ControllerMetrics:
    """Exports what one engine's controller does (k per step, fallbacks, who decides) and
    which scheduler it runs on."""

    def __init__(self, controller_name: str) -> None:
        """Start exporting for the controller named `controller_name`."""
        self.k_chosen, self.switches, self.fallback_steps, self._info, self._scheduler = _metrics()
        self.k_per_request, self.budget = _per_request()
        self.controller_name = controller_name
        self._deciding: str | None = None
        self._fallback_counts: dict[str, int] = {}

    def set_deciding(self, deciding: str) -> None:
        """Mark `deciding` (e.g. "ppo", "fallback", "goodput") as the source deciding now."""
        if deciding == self._deciding:
            return
        if self._deciding is not None:
            self._info.labels(self.controller_name, self._deciding).set(0)
        self._info.labels(self.controller_name, deciding).set(1)
        self._deciding = deciding

    def set_scheduler(self, scheduler: str, scheduling: str) -> None:
        """Mark the scheduler class the engine runs and how it schedules ("sync" or "async")."""
        self._scheduler.labels(scheduler, scheduling).set(1)

    def switched(self, reason: str) -> None:
        """Count one switch of the deciding controller, for `reason`."""
        self.switches.labels(reason).inc()

    def fallback_counts(self, counts: dict[str, int]) -> None:
        """Bring the fallback-decision counters up to a controller's cumulative `counts`."""
        for reason, total in counts.items():
            new = total - self._fallback_counts.get(reason, 0)
            if new > 0:
                self.fallback_steps.labels(reason).inc(new)
                self._fallback_counts[reason] = total

    def step(self, record: StepRecord, budget: int | None = None) -> None:
        """Observe one engine step's k, each decoding request's k, and the verification
        budget a confidence-ranked controller chose (steps that scheduled nothing skipped)."""
        if not record.batch_size:
            return
        self.k_chosen.observe(record.k)
        for request in record.requests:
            if not request.prefill_tokens:
                self.k_per_request.observe(request.k)
        if budget is not None:
            self.budget.observe(budget)
