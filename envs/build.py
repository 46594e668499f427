"""One way to build a replay, for the environment, the evaluation bench and every command.

1. `resolve(env)`, before any engine starts: the cost profile that prices the engine's steps
   (and predicts for the analytic controllers), and the environment with the engine limits
   and SLOs of the deployment a GPU profile names. Everything that can be wrong with the
   profile fails here.
2. `build_replay(env, profile)`: the engine (a live vLLM engine, or its twin when
   `env.twin`) and the workload replayer on the environment's clock.

`plain(env)` is the same environment on an engine with no speculation configured at all (an
engine with speculation at k = 0 still pays for drafting), which is what `nospec` replays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from agents.cost import Profile
from envs.clock import deployment_limits, engine_profile
from envs.config import EnvConfig
from envs.replayer import WorkloadReplayer
from envs.traces import PromptFactory
from envs.twin.engine import TwinEngine
from envs.twin.record import TableSource
from envs.twin.replayer import TwinReplayer
from serving.config import EngineConfig
from serving.engine import Engine

EngineProvider = Callable[[EngineConfig], Engine]
"""Live engines built elsewhere, by config (a test session's shared engines): the replays
use them and leave them open."""


def resolve(env: EnvConfig) -> tuple[EnvConfig, Profile]:
    """The environment with the limits and SLOs of its profile's deployment (if the profile
    prices one), and the profile; raises ProfileError before any engine starts if the
    profile does not fit the engine."""
    profile = engine_profile(env.profile, env.engine)
    engine, slo = deployment_limits(profile, env.engine, env.slo)
    return replace(env, engine=engine, slo=slo), profile


def plain(env: EnvConfig) -> EnvConfig:
    """`env` on an engine without speculation (what `nospec` replays)."""
    return replace(env, engine=replace(env.engine, method="none", k_max=0))


@dataclass
class ReplaySetup:
    """An engine and the replayer that feeds it a workload, with what they were built from."""

    env: EnvConfig
    """The environment, resolved (`resolve`)."""
    profile: Profile
    """The cost profile: the model clock's prices and the analytic controllers' predictions."""
    engine: Engine
    replayer: WorkloadReplayer
    source: TableSource | None
    """Where a twin's acceptance tables and limits come from (None on the live engine)."""
    _owned: list = field(default_factory=list, repr=False)

    @property
    def owns_engine(self) -> bool:
        """Whether `build_replay` built the engine (and `close` frees it)."""
        return any(part is self.engine for part in self._owned)

    def close(self) -> None:
        """Close what `build_replay` built (never an engine or source it was given)."""
        for part in reversed(self._owned):
            part.close()
        self._owned.clear()


def build_replay(
    env: EnvConfig,
    profile: Profile,
    *,
    engine: Engine | None = None,
    source: TableSource | None = None,
    engines: EngineProvider | None = None,
) -> ReplaySetup:
    """The engine and replayer for a resolved `env`.

    `engine`, if given, is used (and stays the caller's): a `TwinEngine` where `env.twin`,
    else a live one. A twin's tables and limits come from `source` (the caller's), else from
    a source on the user's cache that records on a live engine built on a miss. `engines`,
    if given, provides the live engine (or the twin's recording engine) instead of building
    one.
    """
    if engine is not None and isinstance(engine, TwinEngine) != env.twin:
        raise ValueError(f"env.twin={env.twin} but the engine given is a {type(engine).__name__}")
    if source is not None and source.config != env.engine:
        raise ValueError("the table source is for another engine config than the replay's")
    owned: list = []
    if env.twin and source is None:
        source = TableSource(env.engine, engine=engines(env.engine) if engines else None)
        owned.append(source)
    if engine is None:
        if env.twin:
            engine = source.twin()
            owned.append(engine)
        elif engines is not None:
            engine = engines(env.engine)
        else:
            from serving.live_engine import LiveEngine

            engine = LiveEngine(env.engine)
            owned.append(engine)
    prompts = PromptFactory(engine.config.model, weights=env.prompt_styles)
    cost = profile.cost if env.clock == "model" else None
    if env.twin:
        replayer = TwinReplayer(engine, source, prompts, env.slo, env.temperatures, cost)
    else:
        replayer = WorkloadReplayer(engine, prompts, env.slo, env.temperatures, cost)
    return ReplaySetup(env, profile, engine, replayer, source if env.twin else None, owned)
