"""The scheduling limits of an engine, as its vLLM scheduler holds them (pinned: vllm 0.32.0).

The twin (`envs.twin`) schedules under the same limits as the live engine it stands for;
`read_limits` reads them off a live engine's scheduler. Reading them needs no vLLM import,
but it reads vLLM's internals, so it lives here, in the only package that does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.live_engine import LiveEngine


@dataclass(frozen=True)
class SchedulingLimits:
    """The limits a live engine's scheduler works under, which the twin schedules under too.

    `read_limits` reads them from a live engine's scheduler once per engine config (KV blocks
    depend on the models and the cache size); the twin caches them beside its tables.
    """

    k_max: int
    """Drafts proposed per request per step (vLLM's num_speculative_tokens)."""
    max_num_seqs: int
    """Running slots (`max_num_running_reqs`)."""
    max_num_active: int
    """Admission limit into running (`max_num_active_reqs`; max_num_seqs unless set)."""
    max_num_scheduled_tokens: int
    """Token budget of a step."""
    max_num_batched_tokens: int
    """Input budget of a step, from which each scheduled request also takes `draft_slots`."""
    draft_slots: int
    """Extra input slots per scheduled request for drafting (1 for a draft model, else 0)."""
    lookahead: int
    """KV slots reserved past a request's scheduled tokens for the drafter (k_max for a
    draft model, else 0)."""
    max_model_len: int
    """Longest prompt plus output."""
    block_size: int
    """Tokens per KV-cache block."""
    num_blocks: int
    """Blocks in the pool, including vLLM's null block (so num_blocks - 1 are usable)."""
    kv_groups: int = 1
    """KV-cache groups: each takes its own blocks from the shared pool for every request."""
    long_prefill_threshold: int = 0
    """vLLM's long_prefill_token_threshold (0: off)."""
    watermark_blocks: int = 0
    """Blocks kept free when admitting waiting requests (vLLM's watermark)."""
    reserve_full_sequence: bool = True
    """Admit a waiting request only if its whole known sequence fits in the free blocks."""

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_scheduled_tokens", "max_model_len", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulingLimits: {name}={getattr(self, name)} must be >= 1")
        if self.num_blocks < 2 or self.kv_groups < 1:
            raise ValueError("SchedulingLimits: need num_blocks >= 2 and kv_groups >= 1")

    def as_dict(self) -> dict:
        """A JSON-able record of every field."""
        return asdict(self)


def read_limits(engine: LiveEngine) -> SchedulingLimits:
    """The scheduling limits of a live engine, as its vLLM scheduler holds them.

    Raises ValueError if the engine's configuration needs scheduling the twin does not model
    (see `envs.twin.scheduler`), or if it runs vLLM's stock scheduler.
    """
    s = engine.scheduler
    if s is None:
        raise ValueError("a plain engine (stock scheduler) is not what the twin models")
    groups = s.kv_cache_config.kv_cache_groups
    unmodelled = {
        "prefix caching": s.cache_config.enable_prefix_caching,
        "chunked prefill off": not s.scheduler_config.enable_chunked_prefill,
        "async scheduling": bool(s.scheduler_config.async_scheduling),
        "a non-FCFS policy": s.policy.name != "FCFS",
        "a KV connector": s.connector is not None,
        "LoRA": s.lora_config is not None,
        "prefill lookahead": s.num_prefill_lookahead > 0,
        "an adaptive long-prefill threshold": bool(s.adaptive_long_prefill_threshold),
        "padded drafts": s.num_spec_tokens > 0 and s.dynamic_sd_lookup is None,
        "KV groups other than full attention of one block size": any(
            type(g.kv_cache_spec).__name__ != "FullAttentionSpec"
            or g.kv_cache_spec.block_size != s.block_size
            for g in groups
        ),
    }
    found = [name for name, present in unmodelled.items() if present]
    if found:
        raise ValueError(f"the twin does not model this engine's {', '.join(found)}")
    spec = s.vllm_config.speculative_config
    return SchedulingLimits(
        k_max=s.num_spec_tokens,
        max_num_seqs=s.max_num_running_reqs,
        max_num_active=s.max_num_active_reqs,
        max_num_scheduled_tokens=s.max_num_scheduled_tokens,
        max_num_batched_tokens=s.scheduler_config.max_num_batched_tokens,
        draft_slots=spec.max_num_new_slots_for_drafting if spec is not None else 0,
        lookahead=s.num_lookahead_tokens,
        max_model_len=s.max_model_len,
        block_size=s.block_size,
        num_blocks=s.kv_cache_manager.block_pool.num_gpu_blocks,
        kv_groups=len(groups),
        long_prefill_threshold=s.scheduler_config.long_prefill_token_threshold,
        watermark_blocks=s.kv_cache_manager.watermark_blocks,
        reserve_full_sequence=bool(s.scheduler_reserve_full_isl),
    )
