"""`SpecDecode-v0`: choose the speculation length of a live vLLM engine replaying a trace.

One environment step is one engine step. Before it, every trace request whose arrival time
has passed on the episode's virtual clock is added to the engine; the step runs with the
action as k; the clock then advances by the step's time, and jumps to the next arrival
whenever the engine is idle. Observations come from the one feature builder in
`agents.features`; the reward is `envs.reward.step_reward`.

`SpecDecodeTwin-v0` is the same environment on the engine's twin (`envs.twin`): vLLM's
scheduling in Python with acceptance recorded once per workload on the live engine, a hundred
times faster, for training; the live engine stays the judge.

On the model clock (the default) a step's time is the cost profile's price of what it
computed, so an episode repeats to the token for a seed and a k schedule; the engine drafts
k_max every step and the action cuts the drafts at verification, so it acts on the very step
it is chosen for (serving differs: there the drafts a step verifies were proposed under the
budget of the step before). On the wall clock a step lasts what it measured.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.features import FeatureBuilder, Observation, feature_bounds
from agents.goodput import GoodputController
from envs.build import build_replay, resolve
from envs.config import EnvConfig
from envs.reward import RunningReference, counterfactual, step_reward
from envs.traces import Trace, apply_replay, load_trace
from envs.twin.engine import TwinEngine
from envs.twin.record import TableSource
from serving.engine import Engine


class SpecDecodeEnv(gym.Env):
    """Pick k for every engine step of a live vLLM engine; reward goodput, punish SLO misses.

    Observation: float32 vector of `agents.features.feature_names(window)`.
    Action: Discrete(k_max + 1), the speculation length of the next engine step.
    Episode: a window of the trace; terminated when all of it has arrived and finished,
    truncated after `max_steps` engine steps. The final step's info holds the episode's
    metrics under "episode_metrics".
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        config: EnvConfig | None = None,
        engine: Engine | None = None,
        source: TableSource | None = None,
    ):
        """Load the trace and the cost profile, then build the engine (or use `engine`, which
        the caller owns) and its replayer (`envs.build`). A deployment profile (gpu, roofline)
        sets the engine limits and SLOs of the deployment it prices. With `config.twin` the
        engine is a `TwinEngine`, whose acceptance tables and limits come from `source` (the
        caller's), by default from the user's cache, recorded on a live engine on a miss."""
        config = config or EnvConfig()
        if engine is not None:  # its profile must fit the engine given, which keeps its limits
            config, self.profile = resolve(replace(config, engine=engine.config))
            config = replace(config, engine=engine.config)
        else:
            config, self.profile = resolve(config)
        self.config = config
        self.trace: Trace = load_trace(config.trace, config.trace_format)
        if len(self.trace) == 0:
            raise ValueError(f"trace {config.trace} has no requests")
        self._setup = build_replay(config, self.profile, engine=engine, source=source)
        self.engine = self._setup.engine
        self.source = self._setup.source
        """Where a twin's acceptance tables and limits come from (None on the live engine)."""
        self.replayer = self._setup.replayer
        if self.engine.k_max < 1:
            self.close()
            raise ValueError("SpecDecode-v0 needs an engine with speculation (k_max >= 1)")
        self.features = FeatureBuilder(config.features())
        self.reference = RunningReference(self.config.reward)
        # The reward's baseline: the goodput controller, deciding on the same observations.
        self.baseline: GoodputController | None = None
        if self.config.reward.baseline == "goodput":
            engine_config = self.engine.config
            self.baseline = GoodputController(
                self.profile.cost, engine_config.k_max, engine_config.max_num_seqs
            )
        low, high = feature_bounds(self.config.feature_window)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)
        self.action_space = spaces.Discrete(self.engine.k_max + 1)
        self.observation: Observation = self.features.build()
        """The last observation, with its named fields (what analytic controllers read)."""
        self._pool: list[tuple[Trace, int]] = []
        self._done = True
        self._closed = False

    # --- Gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Clear the engine, pick the episode's trace window and admit its first arrivals.

        `options` may set "window_start_s" for this episode (outside any window pool). With
        `config.window_pool` the episode replays one of the pool's windows, each with its own
        prompts. Raises RuntimeError after close().
        """
        self._check_open("reset")
        super().reset(seed=seed)
        start = (options or {}).get("window_start_s")
        info: dict[str, Any] = {}
        if self.config.window_pool and start is None:
            if seed is not None or not self._pool:
                self._pool = [
                    (self._pick_window(None), int(self.np_random.integers(2**31)))
                    for _ in range(self.config.window_pool)
                ]
            index = int(self.np_random.integers(len(self._pool)))
            workload, prompt_seed = self._pool[index]
            self.replayer.start(workload, np.random.default_rng(prompt_seed))
            info["pool_index"] = index
        else:
            workload = self._pick_window(start)
            self.replayer.start(workload, self.np_random)
        self.features.reset()
        self.reference.reset()
        if self.baseline is not None:
            self.baseline.reset()
        self._done = False
        self.observation = self.features.build(self.replayer.now)
        return self.observation.vector, info | {
            "replay": workload.describe(),
            "requests": len(workload),
        }

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Run one engine step with k = action: (obs, reward, terminated, truncated, info)."""
        self._check_open("step")
        if self._done:
            raise RuntimeError("step() after the episode ended: call reset() first")
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside Discrete({self.action_space.n})")
        baseline_k = None
        if self.baseline is not None:
            baseline_k = self.baseline.decide(self.observation).k
        record, violations = self.replayer.step(int(action))
        versus = None
        if baseline_k is not None:
            versus = counterfactual(record, baseline_k, self.profile.cost)
            self.baseline.observe(record)
        reward = step_reward(record, violations, self.config.reward, self.reference.tps, versus)
        self.reference.update(record)
        self.features.update(record)
        self.observation = self.features.build(self.replayer.now)

        terminated = self.replayer.finished
        truncated = not terminated and self.replayer.steps >= self.config.max_steps
        info: dict[str, Any] = {
            "record": record,
            "ttft_violations": violations.ttft,
            "tpot_violations": violations.tpot,
            "baseline_k": baseline_k,
        }
        if terminated or truncated:
            self._done = True
            info["episode_metrics"] = self.replayer.ledger.metrics()
        return self.observation.vector, reward, terminated, truncated, info

    def close(self) -> None:
        """Free the engine if this environment built it; reset() and step() refuse from now on."""
        self._closed = True
        setup = getattr(self, "_setup", None)
        if setup is not None:
            if setup.owns_engine:
                self.engine = None
            setup.close()

    # --- internals -------------------------------------------------------------------------

    def _check_open(self, call: str) -> None:
        # Without this, a closed environment fails inside the freed engine or vLLM, with an
        # error that names neither the environment nor the cause.
        if self._closed:
            name = self.spec.id if self.spec is not None else type(self).__name__
            raise RuntimeError(
                f"{call}() on a closed {name} environment (trace {self.config.trace}): "
                f"make a new environment"
            )

    def _pick_window(self, start: float | None) -> Trace:
        config = self.config
        if start is None:
            start = config.window_start_s
        fixed = start is not None
        latest = max(self.trace.duration_s - config.window_s, 0.0)
        if config.latest_start_s is not None:
            latest = min(latest, config.latest_start_s)
        for _ in range(1 if fixed else 20):
            begin = start if fixed else float(self.np_random.uniform(0.0, latest))
            workload = apply_replay(self.trace, config.replay_options(begin))
            if len(workload):
                return workload
        raise ValueError(
            f"no requests in a {config.window_s} s window of {config.trace}"
            + (f" starting at {start} s" if fixed else "")
        )


class SpecDecodeTwinEnv(SpecDecodeEnv):
    """`SpecDecodeTwin-v0`: `SpecDecode-v0` on the engine's twin (same spaces, model clock)."""

    def __init__(
        self,
        config: EnvConfig | None = None,
        engine: TwinEngine | None = None,
        source: TableSource | None = None,
    ):
        """As `SpecDecodeEnv`, with `twin` set in the config."""
        super().__init__(replace(config or EnvConfig(), twin=True), engine, source)
