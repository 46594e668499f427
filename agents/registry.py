"""Controllers by name, as the command line and configs spell them."""

from __future__ import annotations

from dataclasses import dataclass

from agents.batch_schedule import BatchScheduleController, default_table
from agents.controller import Controller
from agents.goodput import GoodputController
from agents.static import StaticController
from agents.step_time import Profile

NAMES_HELP = "nospec, static:K (K = 0..k_max), vllm-schedule, goodput, goodput-per-request"


@dataclass(frozen=True)
class ControllerSpec:
    """A parsed controller name."""

    name: str
    """The name as given, e.g. "static:2"."""
    kind: str
    """nospec, static, vllm-schedule, goodput or goodput-per-request."""
    k: int = 0
    """The k of a static controller."""

    @property
    def needs_profile(self) -> bool:
        """Whether building it needs the engine's step-time profile."""
        return self.kind in ("vllm-schedule", "goodput", "goodput-per-request")

    @property
    def speculates(self) -> bool:
        """False for nospec, which runs an engine with no speculation configured at all."""
        return self.kind != "nospec"


def parse_controller(name: str, k_max: int) -> ControllerSpec:
    """Parse one controller name; raise ValueError naming it and the valid names."""
    name = name.strip()
    if name in ("nospec", "vllm-schedule", "goodput", "goodput-per-request"):
        return ControllerSpec(name, name)
    if name.startswith("static:"):
        value = name.removeprefix("static:")
        if not value.isdigit() or not 0 <= int(value) <= k_max:
            raise ValueError(f"controller {name!r}: K must be a whole number in 0..{k_max}")
        return ControllerSpec(name, "static", int(value))
    raise ValueError(f"unknown controller {name!r}; expected one of: {NAMES_HELP}")


def build_controller(
    spec: ControllerSpec, k_max: int, max_num_seqs: int, profile: Profile | None
) -> Controller | None:
    """The controller for a spec (None for nospec, whose engine has no k to choose)."""
    if spec.kind == "nospec":
        return None
    if spec.kind == "static":
        return StaticController(spec.k)
    if profile is None:
        raise ValueError(f"controller {spec.name!r} needs a step-time profile")
    if spec.kind == "vllm-schedule":
        table = default_table(profile.step_time, k_max, max_num_seqs, profile.acceptance)
        return BatchScheduleController(table, k_max, max_num_seqs)
    controller = GoodputController(
        profile.step_time, k_max, max_num_seqs, per_request=spec.kind == "goodput-per-request"
    )
    if spec.kind == "goodput-per-request":
        controller.name = spec.name
    return controller
