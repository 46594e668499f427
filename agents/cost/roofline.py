"""`roofline`: a GPU deployment priced from its datasheet and its models' shapes alone.

The pieces here are shared with `gpu` (agents/cost/gpu.py), which replaces only the pricing of
the target's decoder layers with measured per-operator timings. One step costs

    fixed overhead + decoder layers + LM head + attention + draft model (draft_model only)

Every part but the fixed overhead is priced by the roofline rule: a kernel moves bytes through
HBM and does FLOPs, and takes whichever is longer, bytes / bandwidth or FLOPs / peak. The parts
run one after another, so their times add. What each part moves and computes:

- decoder layers (roofline kind): all their weights, once; 2 FLOPs per weight per token.
- LM head: its weights, once; 2 FLOPs per weight per row of logits. vLLM computes logits at
  every position it samples or verifies: 1 + verified drafts per decoding request, one per
  prefill chunk.
- attention: the KV cache. A decoding request is a chunk of 1 + verified tokens on top of its
  context, a prefill chunk one of prompt tokens on top of its cached prefix; either reads the
  K and V of its context or prefix and of its own tokens (written this step). FLOPs: 4 per
  (query, key) pair, per head and head dimension, per layer (QK^T and PV, one multiply-add
  each), causal within the chunk. Decoding requests and prefill chunks are two kernels, each
  at its own roofline, so a long prefill chunk is compute-bound while decodes stay
  bandwidth-bound.
- draft model (vLLM V1's draft-model proposer): a first pass over every token the target
  computed, which keeps the draft's KV cache in step and runs even when k = 0; then one pass
  per further draft token, one token per decoding request. Each pass reads the draft's
  weights, samples one row of logits per request and reads the draft's KV cache (the few
  tokens drafted in earlier passes of the step are not counted). The passes are sequential:
  max(draft_len, 1) of them whenever the step computes anything.

An ngram engine has no draft model: it proposes by a CPU-side lookup in each request's tokens,
microseconds per request, which is not priced. Every constant comes from the profile's "cost"
section, which names its public source; nothing here is specific to a GPU or a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.cost.load import StepLoad
from agents.cost.model import MIN_STEP_S

PRICED_METHODS = ("ngram", "draft_model", "none")
"""Speculation methods a deployment cost model can be built for."""


def section(params: Any, key: str) -> Mapping[str, Any]:
    """params[key], which must be a mapping; ValueError naming cost.<key> otherwise."""
    if not isinstance(params, Mapping):
        raise ValueError(f"the cost section must be a mapping, got {type(params).__name__}")
    value = params.get(key)
    if not isinstance(value, Mapping):
        raise ValueError(f"cost.{key} is missing or not a mapping of constants")
    return value


def number(values: Mapping[str, Any], path: str, key: str, *, allow_zero: bool = False) -> float:
    """values[key] as a finite float > 0 (>= 0 with allow_zero); ValueError naming
    cost.<path>.<key> otherwise."""
    name = f"cost.{path}.{key}" if path else f"cost.{key}"
    if key not in values:
        raise ValueError(f"{name} is missing")
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def count(values: Mapping[str, Any], path: str, key: str) -> int:
    """values[key] as a whole number >= 1; ValueError naming cost.<path>.<key> otherwise."""
    value = number(values, path, key)
    if value != int(value):
        raise ValueError(f"cost.{path}.{key} must be a whole number, got {values[key]!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class Gpu:
    """The two datasheet numbers a roofline needs."""

    name: str
    """The GPU, as its datasheet names it."""
    memory_bandwidth_gb_s: float
    """HBM bandwidth in GB/s (1e9 bytes per second)."""
    peak_tflops: float
    """Dense (no sparsity) tensor-core peak at the models' dtype, in TFLOPS."""

    def seconds(self, bytes_moved: float, flops: float) -> float:
        """The roofline: a kernel takes the longer of its memory time and its compute time."""
        return max(
            bytes_moved / (self.memory_bandwidth_gb_s * 1e9), flops / (self.peak_tflops * 1e12)
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Gpu:
        """From a profile's cost.gpu section."""
        return cls(
            name=str(params.get("name", "gpu")),
            memory_bandwidth_gb_s=number(params, "gpu", "memory_bandwidth_gb_s"),
            peak_tflops=number(params, "gpu", "peak_tflops"),
        )


@dataclass(frozen=True, slots=True)
class Transformer:
    """The shape of a Llama-family decoder (gated SiLU MLP, RMSNorm, no biases): what its
    weights and KV cache weigh and what its attention computes."""

    name: str
    """The model, e.g. its Hugging Face id."""
    layers: int
    """Decoder layers."""
    hidden: int
    """Hidden size."""
    heads: int
    """Query heads."""
    kv_heads: int
    """Key/value heads (fewer than heads under grouped-query attention)."""
    head_dim: int
    """Dimension of one head."""
    intermediate: int
    """MLP intermediate size."""
    vocab: int
    """Vocabulary size: rows of the embedding and the LM head."""
    tied_embeddings: bool
    """Whether the LM head shares the embedding's weights."""
    dtype_bytes: int
    """Bytes per weight and per KV-cache element (2 for bf16)."""

    @property
    def layer_params(self) -> int:
        """Weights of all decoder layers: attention projections, MLP and the two norms."""
        attention = self.hidden * (self.heads + 2 * self.kv_heads) * self.head_dim
        attention += self.heads * self.head_dim * self.hidden
        return self.layers * (attention + 3 * self.hidden * self.intermediate + 2 * self.hidden)

    @property
    def lm_head_params(self) -> int:
        """Weights of the LM head."""
        return self.vocab * self.hidden

    @property
    def params(self) -> int:
        """All weights: layers, embedding, LM head (unless tied) and the final norm."""
        heads = 1 if self.tied_embeddings else 2
        return self.layer_params + heads * self.lm_head_params + self.hidden

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token holds over all layers (its K and its V)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * self.dtype_bytes

    @property
    def pair_flops(self) -> int:
        """Attention FLOPs of one (query, key) pair over all layers and heads."""
        return 4 * self.layers * self.heads * self.head_dim

    def layers_seconds(self, tokens: float, gpu: Gpu) -> float:
        """Roofline seconds of the decoder layers computing `tokens` tokens."""
        params = self.layer_params
        return gpu.seconds(params * self.dtype_bytes, 2.0 * params * tokens)

    def lm_head_seconds(self, rows: float, gpu: Gpu) -> float:
        """Roofline seconds of the LM head computing `rows` rows of logits."""
        params = self.lm_head_params
        return gpu.seconds(params * self.dtype_bytes, 2.0 * params * rows)

    def attention_seconds(self, gpu: Gpu, chunks: Iterable[tuple[int, int]]) -> float:
        """Roofline seconds of one attention kernel over (new tokens, tokens cached before)
        chunks: their K and V read (cached and new), and causal FLOPs."""
        pairs = np.array(list(chunks), dtype=np.float64).reshape(-1, 2)
        if not len(pairs):
            return 0.0
        new, cached = pairs[:, 0], pairs[:, 1]
        keys_read = float(np.sum(new + cached))
        query_key_pairs = float(np.sum(new * cached + new * (new + 1.0) / 2.0))
        return gpu.seconds(self.kv_bytes_per_token * keys_read, self.pair_flops * query_key_pairs)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], path: str) -> Transformer:
        """From a profile's cost.target or cost.draft section (`path` names it in errors)."""
        tied = params.get("tied_embeddings")
        if not isinstance(tied, bool):
            raise ValueError(f"cost.{path}.tied_embeddings must be true or false, got {tied!r}")
        shape = {
            key: count(params, path, key)
            for key in (
                "layers",
                "hidden",
                "heads",
                "kv_heads",
                "head_dim",
                "intermediate",
                "vocab",
                "dtype_bytes",
            )
        }
        return cls(name=str(params.get("name", path)), tied_embeddings=tied, **shape)


@dataclass(frozen=True, slots=True)
class Deployment:
    """A GPU serving a target model, with a draft model for draft_model engines: prices every
    part of a step but the target's decoder layers, which the cost kinds price their own way."""

    gpu: Gpu
    """The GPU's bandwidth and peak."""
    target: Transformer
    """The target model's shape."""
    step_overhead_s: float
    """Fixed seconds of every step: scheduling, input preparation, output processing."""
    draft: Transformer | None = None
    """The draft model's shape; None when the engine does not run a draft model."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], method: str) -> Deployment:
        """From a profile's cost section, for engines of `method` (the draft section is read
        only for draft_model); raises ValueError naming a missing or bad constant."""
        if method not in PRICED_METHODS:
            raise ValueError(f"method {method!r} is not one of {', '.join(PRICED_METHODS)}")
        return cls(
            gpu=Gpu.from_params(section(params, "gpu")),
            target=Transformer.from_params(section(params, "target"), "target"),
            step_overhead_s=number(params, "", "step_overhead_s", allow_zero=True),
            draft=(
                Transformer.from_params(section(params, "draft"), "draft")
                if method == "draft_model"
                else None
            ),
        )

    def parts(self, load: StepLoad, layers_s: float) -> dict[str, float]:
        """Seconds of each part of a step that computed `load`, given the target's decoder
        layers took `layers_s`: overhead, layers, lm_head, attention and draft."""
        if load.num_tokens == 0:
            # Nothing launched on the GPU: only the scheduler's pass.
            idle = {"layers": 0.0, "lm_head": 0.0, "attention": 0.0, "draft": 0.0}
            return {"overhead": self.step_overhead_s} | idle
        chunks = self._decode_chunks(load)
        rows = load.num_decode + load.verified_tokens + len(load.prefill)
        attention = self.target.attention_seconds(self.gpu, chunks)
        attention += self.target.attention_seconds(self.gpu, load.prefill)
        return {
            "overhead": self.step_overhead_s,
            "layers": layers_s,
            "lm_head": self.target.lm_head_seconds(rows, self.gpu),
            "attention": attention,
            "draft": self._draft_seconds(load, chunks),
        }

    def seconds(self, load: StepLoad, layers_s: float) -> float:
        """Seconds of a step that computed `load`, given its decoder layers took `layers_s`."""
        seconds = sum(self.parts(load, layers_s).values())
        return seconds if seconds > MIN_STEP_S else MIN_STEP_S

    @staticmethod
    def _decode_chunks(load: StepLoad) -> list[tuple[int, int]]:
        """Each decoding request as a chunk: (1 + verified drafts, its context)."""
        return [(1 + v, c) for c, v in zip(load.decode_context, load.verified, strict=True)]

    def _draft_seconds(self, load: StepLoad, chunks: list[tuple[int, int]]) -> float:
        draft = self.draft
        if draft is None:
            return 0.0
        gpu = self.gpu
        # First pass: every token the target computed, one sampled row per request.
        first = draft.layers_seconds(load.num_tokens, gpu)
        first += draft.lm_head_seconds(load.num_decode + len(load.prefill), gpu)
        first += draft.attention_seconds(gpu, chunks) + draft.attention_seconds(gpu, load.prefill)
        later_passes = max(load.draft_len, 1) - 1
        if not later_passes or not load.num_decode:
            return first
        # Later passes: one token per decoding request, on top of the context it now has.
        later = draft.layers_seconds(load.num_decode, gpu)
        later += draft.lm_head_seconds(load.num_decode, gpu)
        later += draft.attention_seconds(gpu, [(1, new + context) for new, context in chunks])
        return first + later_passes * later


class DeploymentCost:
    """What the `gpu` and `roofline` kinds share: a `Deployment` prices the step, the kind
    prices the target's decoder layers (`layers_seconds`)."""

    __slots__ = ()
    deployment: Deployment

    def layers_seconds(self, tokens: int) -> float:
        """Seconds of the target's decoder layers computing `tokens` tokens."""
        raise NotImplementedError

    def parts(self, load: StepLoad) -> dict[str, float]:
        """Seconds of each part of a step that computed `load` (see `Deployment.parts`)."""
        return self.deployment.parts(load, self.layers_seconds(load.num_tokens))

    def seconds(self, load: StepLoad) -> float:
        """Seconds of a step that computed `load` (at least `MIN_STEP_S`)."""
        return self.deployment.seconds(load, self.layers_seconds(load.num_tokens))


@dataclass(frozen=True, slots=True)
class RooflineCost(DeploymentCost):
    """A deployment priced by roofline throughout, for hardware without measured profiles
    (format: a profile's cost section with gpu, target, draft and step_overhead_s)."""

    deployment: Deployment
    """The GPU, models and fixed overhead."""
    kind: str = "roofline"

    def layers_seconds(self, tokens: int) -> float:
        """Seconds of the target's decoder layers computing `tokens` tokens, by roofline."""
        return self.deployment.target.layers_seconds(tokens, self.deployment.gpu)

    @classmethod
    def from_params(cls, params: Mapping[str, Any], method: str) -> RooflineCost:
        """From a profile's cost section, for engines of `method`."""
        return cls(Deployment.from_params(params, method))
