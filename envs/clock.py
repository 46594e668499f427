"""Which clock a replay runs on, and the profile that prices its steps.

`wall`: a step lasts what this machine measured. `model`: it lasts what the profile's cost
model says the step computed, so replays repeat to the token and compare controllers exactly
for that cost model. Analytic controllers read the same profile as the clock, so they are
judged on the costs they were built to predict.
"""

from __future__ import annotations

from dataclasses import replace

from agents.cost import Profile, ProfileError, load_profile
from agents.cost.profile import MEASURED_KINDS, profile_path
from envs.ledger import SLO
from serving.config import EngineConfig

CLOCKS = ("wall", "model")


def check_clock(clock: str) -> str:
    """Return `clock` if it is a known clock, else raise naming it."""
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; expected one of {', '.join(CLOCKS)}")
    return clock


def engine_profile(spec: str | None, engine: EngineConfig) -> Profile:
    """The profile that prices `engine`'s steps: `spec` (a path or a shipped name), or by
    default the measured table of the engine's method.

    A measured profile is checked against the engine's model and method; for an engine of
    another method (the plain engine beside a speculating one) the measured profile of the
    same kind for that method is used. Raises ProfileError before any engine starts.
    """
    engine.check_models()
    name = spec or engine.method
    path = profile_path(name)
    if path.is_file() and engine.method == "none":
        probe = load_profile(path)
        if probe.measured and probe.method != "none":
            name = "none" if probe.kind == "table" else f"none-{probe.kind}"
    return load_profile(name, model_id=engine.model_id(), method=engine.method)


def deployment_limits(profile: Profile, engine: EngineConfig, slo: SLO) -> tuple[EngineConfig, SLO]:
    """The engine limits and SLOs a deployment profile names, over `engine` and `slo`.

    A GPU regime only appears at the batch sizes such a deployment runs, so in model time the
    CPU engine takes its max_num_seqs, token budget and a KV cache that holds them; measured
    profiles change nothing.
    """
    if profile.kind in MEASURED_KINDS:
        return engine, slo
    known = {"max_num_seqs", "max_num_batched_tokens", "kv_cache_gib"}
    unknown = set(profile.engine) - known
    if unknown:
        raise ProfileError(
            f"profile {profile.name} sets unknown engine limit(s) {', '.join(sorted(unknown))}"
        )
    return replace(engine, **profile.engine), replace(slo, **profile.slo)
