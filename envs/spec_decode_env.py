"""`SpecDecode-v0`: choose the speculation length of a live vLLM engine replaying a trace.

One environment step is one engine step. Before it, every trace request whose arrival time
has passed on the episode's virtual clock is added to the engine; the step runs with the
action as k; the clock then advances by the step's measured time, and jumps to the next
arrival whenever the engine is idle. Observations come from the one feature builder in
`agents.features`; the reward is `envs.reward.step_reward`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.features import FeatureBuilder, FeatureConfig, feature_bounds
from envs.config import EnvConfig
from envs.ledger import RequestLedger
from envs.reward import step_reward
from envs.traces import PromptFactory, ReplayOptions, Trace, apply_replay, load_trace
from serving.live_engine import LiveEngine


class SpecDecodeEnv(gym.Env):
    """Pick k for every engine step of a live vLLM engine; reward goodput, punish SLO misses.

    Observation: float32 vector of `agents.features.feature_names(window)`.
    Action: Discrete(k_max + 1), the speculation length of the next engine step.
    Episode: a window of the trace; terminated when all of it has arrived and finished,
    truncated after `max_steps` engine steps. The final step's info holds the episode's
    metrics under "episode_metrics".
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, config: EnvConfig | None = None, engine: LiveEngine | None = None):
        """Load the trace and build the engine (or use `engine`, which the caller owns)."""
        self.config = config or EnvConfig()
        self.trace: Trace = load_trace(self.config.trace, self.config.trace_format)
        if len(self.trace) == 0:
            raise ValueError(f"trace {self.config.trace} has no requests")
        self._owns_engine = engine is None
        self.engine = engine if engine is not None else LiveEngine(self.config.engine)
        if self.engine.k_max < 1:
            raise ValueError("SpecDecode-v0 needs an engine with speculation (k_max >= 1)")
        self.engine.clock = self._clock
        self.prompts = PromptFactory(self.engine.config.model, weights=self.config.prompt_styles)

        engine_config = self.engine.config
        self.features = FeatureBuilder(
            FeatureConfig(
                k_max=engine_config.k_max,
                max_num_seqs=engine_config.max_num_seqs,
                max_num_batched_tokens=engine_config.max_num_batched_tokens,
                ttft_slo_s=self.config.slo.ttft_s,
                tpot_slo_s=self.config.slo.tpot_s,
                window=self.config.feature_window,
            )
        )
        low, high = feature_bounds(self.config.feature_window)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(engine_config.k_max + 1)

        self.ledger = RequestLedger(self.config.slo)
        self._now = 0.0
        self._workload: Trace | None = None
        self._next_arrival = 0
        self._steps = 0
        self._done = True

    # --- Gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Clear the engine, pick the episode's trace window and admit its first arrivals.

        `options` may set "window_start_s" for this episode.
        """
        super().reset(seed=seed)
        self.engine.reset()
        self.features.reset()
        self.ledger = RequestLedger(self.config.slo)
        self._workload = self._pick_window((options or {}).get("window_start_s"))
        self._next_arrival = 0
        self._steps = 0
        self._done = False
        self._now = self._workload.requests[0].arrival_s
        self._admit()
        info = {"replay": self._workload.describe(), "requests": len(self._workload)}
        return self.features.build(self._now).vector, info

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Run one engine step with k = action: (obs, reward, terminated, truncated, info)."""
        if self._done:
            raise RuntimeError("step() after the episode ended: call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside Discrete({self.action_space.n})")
        record = self.engine.step(int(action))
        self._steps += 1
        self._now = record.finished_at
        violations = self.ledger.record(record)
        reward = step_reward(record, violations, self.config.reward)
        self.features.update(record)
        self._admit()

        terminated = self._next_arrival == len(self._workload) and not self.engine.has_unfinished()
        truncated = not terminated and self._steps >= self.config.max_steps
        info: dict[str, Any] = {
            "k": record.k,
            "ttft_violations": violations.ttft,
            "tpot_violations": violations.tpot,
        }
        if terminated or truncated:
            self._done = True
            info["episode_metrics"] = self.ledger.metrics()
        return self.features.build(self._now).vector, reward, terminated, truncated, info

    def close(self) -> None:
        """Free the engine if this environment built it."""
        if self._owns_engine and getattr(self, "engine", None) is not None:
            self.engine.close()
            self.engine = None

    # --- internals -------------------------------------------------------------------------

    def _clock(self) -> float:
        return self._now

    def _pick_window(self, start: float | None) -> Trace:
        config = self.config
        options = ReplayOptions(
            window_s=config.window_s,
            rate_scale=config.rate_scale,
            length_scale=config.length_scale,
            max_input_tokens=config.max_input_tokens,
            max_output_tokens=config.max_output_tokens,
        )
        if start is None:
            start = config.window_start_s
        fixed = start is not None
        latest = max(self.trace.duration_s - config.window_s, 0.0)
        for _ in range(1 if fixed else 20):
            begin = start if fixed else float(self.np_random.uniform(0.0, latest))
            workload = apply_replay(self.trace, replace(options, window_start_s=begin))
            if len(workload):
                return workload
        raise ValueError(
            f"no requests in a {config.window_s} s window of {config.trace}"
            + (f" starting at {start} s" if fixed else "")
        )

    def _admit(self) -> None:
        """Add every request that has arrived; when the engine is idle, jump to the next one."""
        requests = self._workload.requests
        if not self.engine.has_unfinished() and self._next_arrival < len(requests):
            self._now = max(self._now, requests[self._next_arrival].arrival_s)
        temperatures = self.config.temperatures
        while self._next_arrival < len(requests):
            request = requests[self._next_arrival]
            if request.arrival_s > self._now:
                break
            rid = f"req-{self._next_arrival}"
            prompt = self.prompts.make(request.input_tokens, rng=self.np_random)
            temperature = temperatures[int(self.np_random.integers(len(temperatures)))]
            self.engine.add_request(
                rid,
                prompt.token_ids,
                request.output_tokens,
                arrival_time=request.arrival_s,
                temperature=temperature,
                seed=int(self.np_random.integers(2**31)) if temperature > 0 else None,
            )
            self.ledger.arrive(rid, request.arrival_s, request.output_tokens)
            self._next_arrival += 1
