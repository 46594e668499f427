"""What an episode of `SpecDecode-v0` replays, on which engine, against which SLOs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agents.features import DEFAULT_WINDOW, FeatureConfig
from envs.clock import check_clock
from envs.ledger import SLO
from envs.reward import RewardWeights
from envs.traces import ReplayOptions
from envs.traces.prompts import DEFAULT_WEIGHTS
from serving.config import EngineConfig

DEFAULT_TRACE = "synthetic:bursty?rate=6&cv=3&duration=600&input_mean=160&output_mean=64&seed=0"
"""A built-in trace: ten minutes of bursty arrivals (gamma gaps, CV 3) at 6 requests/s."""


@dataclass(frozen=True)
class EnvConfig:
    """Options of the environment; every field has a default that runs on the CPU model."""

    trace: str = DEFAULT_TRACE
    """A trace file (Azure/BurstGPT CSV, Mooncake JSONL) or a `synthetic:` spec."""
    trace_format: str | None = None
    """The trace's format (azure, burstgpt, mooncake), or None to detect it."""
    window_s: float = 20.0
    """Seconds of trace time per episode (before rate scaling)."""
    window_start_s: float | None = None
    """Where episodes start in the trace; None draws a start per episode from the seed."""
    latest_start_s: float | None = None
    """Drawn starts lie before this (keeps the trace's tail held back for evaluation)."""
    rate_scale: float = 1.0
    """Speed-up of arrivals (2 replays the window twice as fast)."""
    length_scale: float = 1.0
    """Factor on every request's input and output length, before clipping."""
    max_input_tokens: int = 384
    """Prompt lengths are clipped to this (traces carry prompts far longer than the model)."""
    max_output_tokens: int = 128
    """Output lengths are clipped to this."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """The engine to build (ignored when an engine is passed in)."""
    slo: SLO = field(default_factory=SLO)
    """Latency targets."""
    reward: RewardWeights = field(default_factory=RewardWeights)
    """The reward's constants."""
    max_steps: int = 5000
    """Engine steps after which an episode is truncated."""
    prompt_styles: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    """Mix of prompt styles (source, shuffled, random): sets how predictable requests are."""
    temperatures: tuple[float, ...] = (0.0,)
    """Sampling temperatures drawn uniformly per request (above 0 lowers acceptance)."""
    feature_window: int = DEFAULT_WINDOW
    """Steps of acceptance history in the observation."""
    clock: str = "model"
    """model: a step lasts what the profile's cost model says it computed (replays repeat to
    the token); wall: what this machine measured."""
    profile: str | None = None
    """The cost profile (a path or a name under checkpoints/profiles): the model clock's
    costs and the analytic controllers' predictions. None: the measured table of the
    engine's method."""
    window_pool: int = 0
    """0: every episode draws a fresh window and fresh prompts. n > 0: episodes replay one of
    n windows, each with its own prompt seed, drawn when the environment is first reset (and
    again at every reset given a seed), so the twin records n acceptance tables once and
    reuses them."""
    twin: bool = False
    """Run on the engine's twin (`envs.twin`: vLLM's scheduling in Python, acceptance from
    tables recorded once per workload on the live engine) instead of the live engine. Model
    clock and greedy requests only."""

    def __post_init__(self) -> None:
        check_clock(self.clock)
        if self.reward.baseline != "none" and self.clock != "model":
            raise ValueError(
                f"reward baseline {self.reward.baseline!r} prices the step at another k: it "
                "needs clock='model'"
            )
        if not self.window_s > 0:
            raise ValueError(f"window_s={self.window_s} must be > 0")
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.window_pool < 0:
            raise ValueError(f"window_pool={self.window_pool} must be >= 0")
        longest = self.max_input_tokens + self.max_output_tokens
        if longest > self.engine.max_model_len:
            raise ValueError(
                f"max_input_tokens + max_output_tokens = {longest} exceeds the engine's "
                f"max_model_len={self.engine.max_model_len}"
            )
        if not self.temperatures or any(not 0 <= t <= 2 for t in self.temperatures):
            raise ValueError(f"temperatures={self.temperatures} must be values in 0..2")
        if self.twin and self.clock != "model":
            raise ValueError("the twin runs on the model clock only: clock='model'")
        if self.twin and any(t > 0 for t in self.temperatures):
            raise ValueError(
                f"temperatures={self.temperatures}: the twin replays greedy requests only "
                f"(a sampled request's output and acceptance depend on the k schedule)"
            )

    def replay_options(self, window_start_s: float) -> ReplayOptions:
        """How to cut this config's window out of the trace, starting at window_start_s."""
        return ReplayOptions(
            window_start_s=window_start_s,
            window_s=self.window_s,
            rate_scale=self.rate_scale,
            length_scale=self.length_scale,
            max_input_tokens=self.max_input_tokens,
            max_output_tokens=self.max_output_tokens,
        )

    def features(self) -> FeatureConfig:
        """The feature builder's normalisers for this environment's engine and SLOs."""
        return feature_config(self.engine, self.slo, self.feature_window)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record of every option."""
        return asdict(self)


def feature_config(engine: EngineConfig, slo: SLO, window: int = DEFAULT_WINDOW) -> FeatureConfig:
    """The feature builder's normalisers for `engine` under `slo`: its k_max, running slots
    and token budget (vLLM's max_num_batched_tokens, which serving reads from vLLM's scheduler
    config), and the two objectives. The one place they are built from an engine's config."""
    return FeatureConfig(
        k_max=engine.k_max,
        max_num_seqs=engine.max_num_seqs,
        max_num_batched_tokens=engine.max_num_batched_tokens,
        ttft_slo_s=slo.ttft_s,
        tpot_slo_s=slo.tpot_s,
        window=window,
    )
