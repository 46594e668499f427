"""What the server's engine-core process needs to build its controller, carried in vLLM's config.

vLLM runs the scheduler in the engine-core process, which the API server starts. The launcher
puts these settings in `--additional-config` under the key "turbospec"; `ServingScheduler`
reads them back from `vllm_config.additional_config` when vLLM builds it there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from agents.slo import SLO

CONFIG_KEY = "turbospec"

# The SLOs the shipped policy was trained under: the guard's SLO check and the features'
# slack terms are measured against them.
DEFAULT_TTFT_SLO_S = SLO.ttft_s
DEFAULT_TPOT_SLO_S = SLO.tpot_s


@dataclass(frozen=True)
class ControllerSettings:
    """The controller the server runs and what it needs, as JSON-able values."""

    controller: str
    """A controller name (agents.registry): guarded:DIR, goodput, static:K, nospec, ..."""
    profile: str = ""
    """The engine's step-time profile (JSON), needed by goodput and the guard's fallback."""
    ttft_slo_s: float = DEFAULT_TTFT_SLO_S
    """Time-to-first-token objective, seconds."""
    tpot_slo_s: float = DEFAULT_TPOT_SLO_S
    """Time-per-output-token objective, seconds."""

    def __post_init__(self) -> None:
        if not isinstance(self.controller, str) or not self.controller.strip():
            raise ValueError(f"{CONFIG_KEY}.controller must be a controller name")
        if not isinstance(self.profile, str):
            raise ValueError(f"{CONFIG_KEY}.profile must be a path, got {self.profile!r}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{CONFIG_KEY}.{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{CONFIG_KEY}.{name} must be finite and > 0, got {value}")

    def to_additional_config(self) -> dict[str, Any]:
        """The entry to merge into vLLM's additional_config."""
        return {CONFIG_KEY: asdict(self)}

    @classmethod
    def from_additional_config(cls, additional_config: Any) -> ControllerSettings | None:
        """The settings in vLLM's additional_config, or None if it has none.

        Raises ValueError naming the key when the entry is malformed.
        """
        if not isinstance(additional_config, dict) or CONFIG_KEY not in additional_config:
            return None
        entry = additional_config[CONFIG_KEY]
        if not isinstance(entry, dict):
            raise ValueError(f"additional_config[{CONFIG_KEY!r}] must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(
                f"additional_config[{CONFIG_KEY!r}] has unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        if "controller" not in entry:
            raise ValueError(f"additional_config[{CONFIG_KEY!r}] lacks 'controller'")
        return cls(**entry)
