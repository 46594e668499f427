"""Replaying workloads under controllers, on the wall or the model clock: one `Bench`.

The evaluation, the landscape, the clock-fidelity benchmark and the training-time evaluation
all replay trace windows through live engines with controllers inside the scheduler hook, as
serving runs them. A `Bench` holds what that takes: the speculating engine (and a plain one
for `nospec`, which runs no speculation at all), their replayers on the chosen clock, and the
cost profile the analytic controllers (and, in model time, the clock) use. A twin bench
replays on the engine's twin (`envs.twin`) instead, in model time.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agents.controller import Controller
from agents.cost import Profile, load_profile
from agents.features import FeatureBuilder, FeatureConfig
from agents.registry import ControllerContext, ControllerSpec, build_controller
from envs.build import EngineProvider, ReplaySetup, build_replay, resolve
from envs.build import plain as plain_env
from envs.config import EnvConfig
from envs.replayer import WorkloadReplayer, requests_key
from envs.traces import Trace
from envs.twin.record import TableSource
from serving.engine import Engine
from training.evaluation.regime import RegimeMeter

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
    regime: dict[str, float] = field(default_factory=dict)
    """How full the engine was and how much of its time verification took
    (`training.evaluation.regime`), when a meter was given."""


def replay(
    replayer: WorkloadReplayer,
    workload: Trace,
    seed: int,
    controller: Controller | None = None,
    features: FeatureConfig | None = None,
    meter: RegimeMeter | None = None,
) -> Replay:
    """One full replay, `controller` choosing k inside the scheduler hook as in serving, each
    step folded into `meter` if given.

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
            if meter is not None:
                meter.update(record)
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
    regime = meter.result() if meter is not None else {}
    return Replay(replayer.ledger.metrics(), timeline, dict(engine.outputs), replayer.steps, regime)


class Bench:
    """Engines and replayers for replaying workloads under any controller on one clock."""

    def __init__(
        self,
        env: EnvConfig,
        profile: Profile,
        *,
        plain: bool = False,
        source: TableSource | None = None,
        engines: EngineProvider | None = None,
    ) -> None:
        """Build the speculating engine (and, with `plain`, one without speculation) for
        `env`, as `envs.build.resolve` returned it, and warm them up.

        With `env.twin` both are twins on the model clock: the speculating one's tables and
        limits come from `source` (the caller's; by default the user's cache), the plain
        one needs limits only (read once from a live plain engine, then cached). `engines`
        provides the live engines (a test session's) instead of building them.
        """
        if env.twin and env.clock != "model":
            raise ValueError("a twin bench runs the speculating engine on the model clock only")
        self.env = env
        self.profile = profile
        self.features = env.features()
        acceptance = None
        if not profile.measured:
            # A deployment prices hardware; the acceptance is the model pair's own.
            acceptance = load_profile(env.engine.method, method=env.engine.method).acceptance
        self.context = ControllerContext.from_features(self.features, profile, acceptance)
        # Every profile is resolved before any engine starts, so a missing one fails first.
        plans = {True: (env, profile)}
        if plain:
            plans[False] = resolve(plain_env(env))
        self.setups: dict[bool, ReplaySetup] = {}
        try:
            for speculates, (config, cost_profile) in plans.items():
                setup = build_replay(
                    config, cost_profile, source=source if speculates else None, engines=engines
                )
                self.setups[speculates] = setup
                setup.engine.warm_up()
        except BaseException:
            self.close()
            raise
        self._outputs: dict[Any, dict[str, list[int]]] = {}

    @property
    def engines(self) -> dict[bool, Engine]:
        """The engines by whether they speculate."""
        return {speculates: setup.engine for speculates, setup in self.setups.items()}

    @property
    def replayers(self) -> dict[bool, WorkloadReplayer]:
        """The replayers by whether their engine speculates."""
        return {speculates: setup.replayer for speculates, setup in self.setups.items()}

    def run(self, spec: ControllerSpec, workload: Trace, seed: int) -> Replay:
        """Replay `workload` with the controller `spec` names (prompts drawn from `seed`)."""
        if not spec.speculates and False not in self.setups:
            raise ValueError(f"{spec.name} needs the bench built with plain=True")
        context = self.context
        if spec.kind in ("oracle", "oracle-per-request"):
            context = replace(context, outputs=self.outputs(workload, seed))
        controller = build_controller(spec, context)
        setup = self.setups[spec.speculates]
        meter = RegimeMeter(self.env.engine.max_num_seqs, setup.profile.cost)
        result = replay(setup.replayer, workload, seed, controller, self.features, meter)
        if spec.speculates:
            self._outputs.setdefault(_key(workload, seed), result.outputs)
        return result

    def outputs(self, workload: Trace, seed: int) -> dict[str, list[int]]:
        """Every request's greedy output for this workload and seed: from an earlier replay,
        or from a replay at k = 0 now (outputs do not depend on k)."""
        key = _key(workload, seed)
        if key not in self._outputs:
            replayer = self.setups[True].replayer
            self._outputs[key] = replay(replayer, workload, seed).outputs
        return self._outputs[key]

    def close(self) -> None:
        """Shut the engines down (together: vLLM tears down process-wide state with them)."""
        for setup in self.setups.values():
            setup.close()
        self.setups.clear()


def _key(workload: Trace, seed: int) -> tuple:
    """What identifies a replay's requests and prompts: the same key, the same outputs (at
    any rate scale)."""
    return requests_key(workload), seed
