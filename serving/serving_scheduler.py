"""The schedulers the OpenAI-compatible server runs: a hook plus the controller its settings name.

`ServingScheduler` is the synchronous hook, `AsyncServingScheduler` the async one
(`serving.scheduler_choice` says which the launcher installs). `python -m serving.launch`
installs one with `--scheduler-cls` and puts `ControllerSettings` in `--additional-config`;
vLLM builds the scheduler inside the engine-core process, where `ServedControl` builds the
controller, attaches it and exports its decisions, and which scheduler runs, as Prometheus
metrics. Problems with a policy artifact never stop the server (the guarded controller
falls back); a malformed setting, a missing profile or a controller the async hook cannot
run stops it at start.
"""

from __future__ import annotations

import logging

from agents.adaptive import AdaptiveVerification
from agents.controller import Controller
from agents.cost import load_profile
from agents.features import FeatureBuilder, FeatureConfig
from agents.guarded import FALLBACK, POLICY, GuardedController
from agents.records import StepRecord
from agents.registry import ControllerContext, build_controller, parse_controller
from serving.async_scheduler_hook import AsyncSpecControlScheduler
from serving.controller_settings import CONFIG_KEY, ControllerSettings
from serving.logs import log_to_stderr
from serving.metrics import ControllerMetrics
from serving.scheduler_hook import SpecControlScheduler
from serving.spec_control_hook import SpecControlHook

LOGGER_NAME = "turbospec.serving"


def serving_features(scheduler: SpecControlHook, settings: ControllerSettings) -> FeatureConfig:
    """The feature normalisers a served controller sees, from vLLM's own config: the same as
    training's for the same engine (`envs.config.feature_config`: k_max, running slots and
    the input budget max_num_batched_tokens) under the settings' SLOs."""
    return FeatureConfig(
        k_max=scheduler.k_max,
        max_num_seqs=scheduler.scheduler_config.max_num_seqs,
        max_num_batched_tokens=scheduler.scheduler_config.max_num_batched_tokens,
        ttft_slo_s=settings.ttft_slo_s,
        tpot_slo_s=settings.tpot_slo_s,
    )


class ServedControl:
    """A controller built from vLLM's additional_config, on either hook (mixed in ahead of
    `SpecControlScheduler` or `AsyncSpecControlScheduler`)."""

    scheduling: str
    """How the hook's vLLM scheduler schedules: "sync" or "async" (logged and exported)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        settings = ControllerSettings.from_additional_config(self.vllm_config.additional_config)
        if settings is None:
            raise ValueError(
                f"{type(self).__name__} needs additional_config[{CONFIG_KEY!r}] naming a "
                "controller; start the server with `python -m serving.launch`"
            )
        log_to_stderr()
        self.logger = logging.getLogger(LOGGER_NAME)
        self.settings = settings
        self.metrics = ControllerMetrics(settings.controller)
        self.metrics.set_scheduler(type(self).__name__, self.scheduling)
        controller, features = self._build(settings)
        self.attach(controller, features)
        self._watch(controller)
        self.add_listener(self._export)

    def _build(
        self, settings: ControllerSettings
    ) -> tuple[Controller | None, FeatureBuilder | None]:
        spec = parse_controller(settings.controller, self.k_max)
        if not spec.speculates:
            return None, None
        profile = None
        if spec.needs_profile:
            speculative = self.vllm_config.speculative_config
            method = speculative.method if speculative is not None else None
            profile = load_profile(settings.profile, method=method)
        features = serving_features(self, settings)
        context = ControllerContext.from_features(features, profile)
        return build_controller(spec, context), FeatureBuilder(features)

    def _watch(self, controller: Controller | None) -> None:
        """Log which controller decides and keep the metrics told of every switch."""
        name = controller.name if controller is not None else "nospec"
        self.logger.info(
            "speculation control: %s chooses k in 0..%d at every step (%s, %s scheduling)",
            self.settings.controller,
            self.k_max,
            type(self).__name__,
            self.scheduling,
        )
        if self.scheduling == "async" and isinstance(controller, GuardedController):
            self.logger.warning(
                "speculation control: the policy was trained on observations of the step "
                "just run; under async scheduling they are a step older, so it decides from "
                "inputs unlike its training (see serving.async_scheduler_hook)"
            )
        if not isinstance(controller, GuardedController):
            self.metrics.set_deciding(name)
            return
        if controller.policy is not None:
            meta = controller.metadata
            trained_on = meta.get("engine", {})
            self.logger.info(
                "speculation control: policy loaded from %s (%s, schema v%s, k_max %s, "
                "trained with %s on model %s, config %s); fallback %s",
                self.settings.controller.partition(":")[2],
                "residual" if controller.residual else "absolute",
                meta.get("schema_version"),
                meta.get("k_max"),
                trained_on.get("method"),
                trained_on.get("model_id"),
                meta.get("train_config_hash"),
                controller.fallback.name,
            )
            self.metrics.set_deciding(POLICY)
        else:
            # The load failure was logged by the controller before a listener could hear it.
            self.metrics.switched(controller.last_reason)
            self.metrics.set_deciding(FALLBACK)

        def on_switch(reason: str) -> None:
            self.metrics.switched(reason)
            self.metrics.set_deciding(controller.active)

        controller.on_switch = on_switch

    def _export(self, record: StepRecord) -> None:
        controller = self.controller
        budget = controller.last_budget if isinstance(controller, AdaptiveVerification) else None
        self.metrics.step(record, budget)
        if isinstance(self.controller, GuardedController):
            self.metrics.fallback_counts(self.controller.counts)


class ServingScheduler(ServedControl, SpecControlScheduler):
    """The synchronous hook with a controller built from vLLM's additional_config."""

    scheduling = "sync"


class AsyncServingScheduler(ServedControl, AsyncSpecControlScheduler):
    """The async hook with a controller built from vLLM's additional_config."""

    scheduling = "async"
