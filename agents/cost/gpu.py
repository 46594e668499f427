"""`gpu`: a named GPU deployment priced from measured per-operator GPU timings.

The target's decoder layers, everything in them but attention itself (norms, QKV and output
projections, rotary embedding, MLP, residual add) plus the token embedding, are priced from a
table of seconds against the tokens the step computes. The presets derive it from Vidur's
public CUDA timings (Agrawal et al., MLSys 2024; `python -m training.gpu_presets`): each
operator's median summed over a layer, times the layers, plus the embedding once. Those
timings are flat while the step is memory-bound and grow linearly once it is compute-bound,
with steps where the GEMM kernels change tiles: the knee where verifying drafts stops being
almost free. Everything else (LM head, attention, draft model, fixed overhead) is priced as in
`agents.cost.roofline`, whose `Deployment` this shares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from agents.cost.roofline import Deployment, DeploymentCost, section
from agents.cost.table import interpolate


@dataclass(frozen=True, slots=True)
class LayerTable:
    """Measured seconds of the target's decoder layers against the tokens they compute.

    Piecewise linear between the points; past the last one, linear at that point's seconds per
    token (the step is compute-bound there, and the slope between two neighbouring points is
    mostly the noise of the GEMMs' tile choices).
    """

    num_tokens: tuple[float, ...]
    """Tokens computed, strictly increasing, from 1."""
    seconds: tuple[float, ...]
    """Seconds of all decoder layers and the embedding at each `num_tokens`."""

    def __post_init__(self) -> None:
        if not self.num_tokens:
            raise ValueError("cost.layers.num_tokens is empty: the table needs points")
        if len(self.seconds) != len(self.num_tokens):
            raise ValueError(
                f"cost.layers has {len(self.num_tokens)} num_tokens but {len(self.seconds)} "
                "seconds; give one of each per point"
            )
        for name, values in (("num_tokens", self.num_tokens), ("seconds", self.seconds)):
            bad = [v for v in values if not (math.isfinite(v) and v > 0)]
            if bad:
                raise ValueError(f"cost.layers.{name} must be finite and > 0, got {bad[0]!r}")
        if self.num_tokens[0] < 1 or any(b <= a for a, b in pairwise(self.num_tokens)):
            raise ValueError("cost.layers.num_tokens must increase strictly from >= 1")

    def at(self, tokens: float) -> float:
        """Seconds of the decoder layers computing `tokens` tokens."""
        if tokens > self.num_tokens[-1]:
            return self.seconds[-1] * tokens / self.num_tokens[-1]
        return interpolate(tokens, self.num_tokens, self.seconds)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> LayerTable:
        """From a profile's cost.layers section: lists "num_tokens" and "seconds"."""
        columns = []
        for name in ("num_tokens", "seconds"):
            values = params.get(name)
            if not isinstance(values, Sequence) or isinstance(values, str):
                raise ValueError(f"cost.layers.{name} is missing or not a list of numbers")
            if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
                raise ValueError(f"cost.layers.{name} must hold only numbers")
            columns.append(tuple(float(v) for v in values))
        return cls(*columns)


@dataclass(frozen=True, slots=True)
class GpuCost(DeploymentCost):
    """A GPU deployment: measured decoder-layer timings, the rest by roofline (format: a
    profile's cost section with gpu, target, draft, step_overhead_s and layers)."""

    deployment: Deployment
    """The GPU, models and fixed overhead."""
    layers: LayerTable
    """Measured seconds of the target's decoder layers against tokens computed."""
    kind: str = "gpu"

    def layers_seconds(self, tokens: int) -> float:
        """Seconds of the target's decoder layers computing `tokens` tokens, from the table."""
        return self.layers.at(tokens)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], method: str) -> GpuCost:
        """From a profile's cost section, for engines of `method`; raises ValueError naming a
        missing or bad constant."""
        deployment = Deployment.from_params(params, method)
        return cls(deployment, LayerTable.from_params(section(params, "layers")))
