"""Replaying workloads under controllers, on the wall or the model clock: one `Bench`.

The evaluation, the landscape, the clock-fidelity benchmark and the training-time evaluation
all replay trace windows through live engines with controllers inside the scheduler hook, as
serving runs them. A `Bench` holds what that takes: the speculating engine (and a plain one
for `nospec`, which runs no speculation at all), their replayers on the chosen clock, and the
cost profile the analytic controllers (and, in model time, the clock) use. A twin bench
replays on the engine's twin (`envs.twin`) instead, in model time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agents.controller import Controller
from agents.cost import Profile, load_profile
from agents.features import FeatureBuilder, FeatureConfig
from agents.registry import ControllerContext, ControllerSpec, build_controller
from envs.clock import deployment_limits, engine_profile
from envs.config import EnvConfig
from envs.replayer import WorkloadReplayer
from envs.spec_decode_env import feature_config
from envs.traces import PromptFactory, Trace
from envs.twin.record import TableSource
from envs.twin.replayer import TwinReplayer
from serving.engine import Engine

TIMELINE = ("t", "k", "batch", "queue", "goodput")
"""What a replay's timeline holds per step: end time, k, batch size, queue depth, goodput."""


@dataclass
class Replay:
    """What one replay produced."""

    metrics: dict[str, float]
    """The ledger's metrics (goodput, goodput under SLO, latencies, attainment, mean k)."""
    timeline: dict[str, list[float]]
    """Per step, the `TIMELINE` series."""
    outputs: dict[str, list[int]]
    """Every request's generated tokens."""
    steps: int
    """Engine steps the replay took."""


def replay(
    replayer: WorkloadReplayer,
    workload: Trace,
    seed: int,
    controller: Controller | None = None,
    features: FeatureConfig | None = None,
) -> Replay:
    """One full replay, `controller` choosing k inside the scheduler hook as in serving.

    Without a controller the engine keeps its k (nospec's engine has none to choose).
    """
    engine = replayer.engine
    if controller is not None:
        engine.attach(controller, FeatureBuilder(features))
    timeline: dict[str, list[float]] = {key: [] for key in TIMELINE}
    try:
        replayer.start(workload, np.random.default_rng(seed))
        while not replayer.finished:
            record, _ = replayer.step()
            for key, value in zip(
                TIMELINE,
                (
                    record.finished_at,
                    record.k,
                    record.batch_size,
                    record.num_waiting,
                    record.generated / record.step_time,
                ),
                strict=True,
            ):
                timeline[key].append(value)
    finally:
        if controller is not None:
            engine.attach(None, None)
    return Replay(replayer.ledger.metrics(), timeline, dict(engine.outputs), replayer.steps)


def bench_config(env: EnvConfig) -> tuple[EnvConfig, Profile]:
    """The environment with the limits and SLOs of its profile's deployment (if it prices
    one), and the profile; raises before any engine starts if the profile does not fit."""
    profile = engine_profile(env.profile, env.engine)
    engine, slo = deployment_limits(profile, env.engine, env.slo)
    return replace(env, engine=engine, slo=slo), profile


class Bench:
    """Engines and replayers for replaying workloads under any controller on one clock."""

    def __init__(
        self,
        env: EnvConfig,
        profile: Profile,
        *,
        plain: bool = False,
        twin: TableSource | None = None,
    ) -> None:
        """Build the speculating engine (and, with `plain`, one without speculation) for
        `env`, as `bench_config` returned it, and warm them up.

        With `twin` (or `env.twin`, which records into the default cache), the speculating
        engine is a twin whose tables and limits come from that source, on the model clock;
        `nospec`'s plain engine stays live (the twin does not model it).
        """
        if (twin is not None or env.twin) and env.clock != "model":
            raise ValueError("a twin bench runs the speculating engine on the model clock only")
        self._source = TableSource(env.engine) if twin is None and env.twin else None
        if twin is None:
            twin = self._source
        self.env = env
        self.profile = profile
        self.features = feature_config(env, env.engine)
        acceptance = None
        if not profile.measured:
            # A deployment prices hardware; the acceptance is the model pair's own.
            acceptance = load_profile(env.engine.method, method=env.engine.method).acceptance
        self.context = ControllerContext.from_features(self.features, profile, acceptance)
        prompts = PromptFactory(env.engine.model, weights=env.prompt_styles)
        configs = {True: env.engine}
        if plain:
            configs[False] = replace(env.engine, method="none", k_max=0)
        # Every profile is resolved before any engine starts, so a missing one fails first.
        costs = {
            speculates: None
            if env.clock == "wall"
            else (profile if speculates else engine_profile(env.profile, config)).cost
            for speculates, config in configs.items()
        }
        self.engines: dict[bool, Engine] = {}
        self.replayers: dict[bool, WorkloadReplayer] = {}
        if twin is not None:
            self.engines[True] = engine = twin.twin()
            self.replayers[True] = TwinReplayer(
                engine, twin, prompts, env.slo, env.temperatures, profile.cost
            )
        for speculates, config in configs.items():
            if speculates in self.engines:
                continue
            from serving.live_engine import LiveEngine

            engine = LiveEngine(config)
            engine.warm_up()
            self.engines[speculates] = engine
            self.replayers[speculates] = WorkloadReplayer(
                engine, prompts, env.slo, env.temperatures, costs[speculates]
            )
        self._outputs: dict[Any, dict[str, list[int]]] = {}

    def run(self, spec: ControllerSpec, workload: Trace, seed: int) -> Replay:
        """Replay `workload` with the controller `spec` names (prompts drawn from `seed`)."""
        if not spec.speculates and False not in self.replayers:
            raise ValueError(f"{spec.name} needs the bench built with plain=True")
        context = self.context
        if spec.kind in ("oracle", "oracle-per-request"):
            context = replace(context, outputs=self.outputs(workload, seed))
        controller = build_controller(spec, context)
        result = replay(self.replayers[spec.speculates], workload, seed, controller, self.features)
        if spec.speculates:
            self._outputs.setdefault(_key(workload, seed), result.outputs)
        return result

    def outputs(self, workload: Trace, seed: int) -> dict[str, list[int]]:
        """Every request's greedy output for this workload and seed: from an earlier replay,
        or from a replay at k = 0 now (outputs do not depend on k)."""
        key = _key(workload, seed)
        if key not in self._outputs:
            replayer = self.replayers[True]
            self._outputs[key] = replay(replayer, workload, seed).outputs
        return self._outputs[key]

    def close(self) -> None:
        """Shut the engines down (together: vLLM tears down process-wide state with them)."""
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()
        if self._source is not None:
            self._source.close()


def _key(workload: Trace, seed: int) -> tuple:
    """What identifies a replay's requests and prompts: the same key, the same outputs."""
    return workload.source, workload.requests, seed
