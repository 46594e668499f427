"""Controllers by name, as the command line and configs spell them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agents.adaptive import AdaptiveVerification, ConfidenceGoodput
from agents.batch_schedule import BatchScheduleController, default_table
from agents.controller import Controller
from agents.cost import Profile
from agents.features import SCHEMA_VERSION, FeatureConfig, feature_names
from agents.goodput import GoodputController
from agents.guarded import GuardedController
from agents.oracle import StepOracle
from agents.policy import PPOController
from agents.static import StaticController
from agents.streak import StreakController

NAMES_HELP = (
    "nospec, static:K (K = 0..k_max), vllm-schedule, goodput, goodput-per-request, "
    "streak-per-request (each request's k from its own last verification), "
    "adaptive-verification (confidence-ranked draft slots, the budget of best tokens per "
    "second: vLLM's on the step contract), slo-verification (the same, per second of "
    "requests within TPOT), goodput-confidence (goodput's k, each request's from its "
    "drafts' confidence), "
    "ppo:PATH (an exported policy), guarded:PATH (the policy with the goodput fallback), "
    "oracle, oracle-per-request (hindsight references, model time only)"
)
DEFAULT_ACCEPTANCE = 0.6
"""Acceptance assumed where none was measured (the goodput controller's prior too)."""
_PLAIN_NAMES = (
    "nospec",
    "vllm-schedule",
    "goodput",
    "goodput-per-request",
    "streak-per-request",
    "adaptive-verification",
    "slo-verification",
    "goodput-confidence",
    "oracle",
    "oracle-per-request",
)
ORACLES = ("oracle", "oracle-per-request")
"""Hindsight references: they know each step's acceptance in advance (`agents.oracle`)."""


@dataclass(frozen=True)
class ControllerSpec:
    """A parsed controller name."""

    name: str
    """The name as given, e.g. "static:2"."""
    kind: str
    """nospec, static, vllm-schedule, goodput, goodput-per-request, streak-per-request,
    adaptive-verification, slo-verification, goodput-confidence, ppo, guarded, oracle or
    oracle-per-request."""
    k: int = 0
    """The k of a static controller."""
    path: str = ""
    """The exported policy of ppo and guarded."""

    @property
    def needs_profile(self) -> bool:
        """Whether building it needs the engine's step-time profile."""
        # ppo: a residual policy offsets the goodput controller's k.
        return self.kind not in ("nospec", "static")

    @property
    def reads_drafts(self) -> bool:
        """Whether it looks at each request's draft tokens before a step (the oracles),
        which an engine under vLLM's async scheduling cannot show it."""
        return self.kind in ORACLES

    @property
    def speculates(self) -> bool:
        """False for nospec, which runs an engine with no speculation configured at all."""
        return self.kind != "nospec"


@dataclass(frozen=True)
class ControllerContext:
    """What building a controller may need to know about the engine and the features."""

    k_max: int
    max_num_seqs: int
    max_num_batched_tokens: int
    feature_names: Sequence[str]
    ttft_slo_s: float
    tpot_slo_s: float
    profile: Profile | None = None
    """The cost profile analytic controllers predict with (the model clock's, in model time)."""
    acceptance: float = DEFAULT_ACCEPTANCE
    """The acceptance rate vllm-schedule's fixed table is derived at."""
    outputs: Mapping[str, Sequence[int]] | None = None
    """The oracles' hindsight: every request's greedy output in the window being replayed."""

    @classmethod
    def from_features(
        cls,
        features: FeatureConfig,
        profile: Profile | None = None,
        acceptance: float | None = None,
    ) -> ControllerContext:
        """The context of controllers that read observations built with `features`.

        `acceptance` defaults to the one a measured profile recorded (a deployment profile
        prices hardware and records none), else `DEFAULT_ACCEPTANCE`.
        """
        if acceptance is None and profile is not None:
            acceptance = profile.acceptance
        return cls(
            k_max=features.k_max,
            max_num_seqs=features.max_num_seqs,
            max_num_batched_tokens=features.max_num_batched_tokens,
            feature_names=feature_names(features.window),
            ttft_slo_s=features.ttft_slo_s,
            tpot_slo_s=features.tpot_slo_s,
            profile=profile,
            acceptance=DEFAULT_ACCEPTANCE if acceptance is None else acceptance,
        )


def parse_controller(name: str, k_max: int) -> ControllerSpec:
    """Parse one controller name; raise ValueError naming it and the valid names."""
    name = name.strip()
    if name in _PLAIN_NAMES:
        return ControllerSpec(name, name)
    kind, _, value = name.partition(":")
    if kind == "static":
        if not value.isdigit() or not 0 <= int(value) <= k_max:
            raise ValueError(f"controller {name!r}: K must be a whole number in 0..{k_max}")
        return ControllerSpec(name, "static", k=int(value))
    if kind in ("ppo", "guarded"):
        if not value:
            raise ValueError(f"controller {name!r}: give the policy's path, e.g. {kind}:DIR")
        if kind == "ppo" and not Path(value).exists():
            raise ValueError(f"controller {name!r}: no policy at {value}")
        return ControllerSpec(name, kind, path=value)
    raise ValueError(f"unknown controller {name!r}; expected one of: {NAMES_HELP}")


def build_controller(spec: ControllerSpec, context: ControllerContext) -> Controller | None:
    """The controller for a spec (None for nospec, whose engine has no k to choose)."""
    if spec.kind == "nospec":
        return None
    if spec.kind == "static":
        return StaticController(spec.k)
    if spec.kind == "streak-per-request":
        return StreakController(context.k_max)
    profile = context.profile
    if spec.kind == "ppo":
        base = None
        if profile is not None:
            base = GoodputController(profile.cost, context.k_max, context.max_num_seqs)
        return PPOController.load(
            spec.path,
            schema_version=SCHEMA_VERSION,
            feature_names=context.feature_names,
            k_max=context.k_max,
            base=base,
        )
    if profile is None:
        raise ValueError(f"controller {spec.name!r} needs a step-time profile")
    if spec.kind in ORACLES:
        if context.outputs is None:
            raise ValueError(f"controller {spec.name!r} needs the window's outputs (hindsight)")
        return StepOracle(
            profile.cost,
            context.k_max,
            context.outputs,
            per_request=spec.kind == "oracle-per-request",
            max_num_batched_tokens=context.max_num_batched_tokens,
        )
    if spec.kind in ("adaptive-verification", "slo-verification"):
        slo = (context.ttft_slo_s, context.tpot_slo_s) if spec.kind == "slo-verification" else None
        return AdaptiveVerification(profile.cost, context.k_max, slo=slo)
    if spec.kind == "goodput-confidence":
        return ConfidenceGoodput(profile.cost, context.k_max, context.max_num_seqs)
    if spec.kind == "vllm-schedule":
        table = default_table(profile.cost, context.k_max, context.max_num_seqs, context.acceptance)
        return BatchScheduleController(table, context.k_max, context.max_num_seqs)
    goodput = GoodputController(
        profile.cost,
        context.k_max,
        context.max_num_seqs,
        per_request=spec.kind == "goodput-per-request",
    )
    if spec.kind == "guarded":
        return GuardedController(
            spec.path,
            goodput,
            k_max=context.k_max,
            schema_version=SCHEMA_VERSION,
            feature_names=context.feature_names,
            ttft_slo_s=context.ttft_slo_s,
            tpot_slo_s=context.tpot_slo_s,
        )
    goodput.name = spec.name
    return goodput
