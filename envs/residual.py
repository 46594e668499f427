"""Residual actions: the agent offsets a base controller's k instead of choosing k itself.

Wraps `SpecDecode-v0` so that action a in 0..2m means k = base_k + (a - m), clipped to
0..k_max, where base_k is what the base controller (the analytic goodput controller) would
choose for the step. The base sees every StepRecord, exactly as it does when it decides alone,
and serving rebuilds the same k with `agents.policy.residual_k`, so an untrained policy that
keeps offset 0 is the base controller, and training only has to learn where to depart from it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.controller import Controller
from agents.policy import residual_k


class ResidualActions(gym.Wrapper):
    """`SpecDecode-v0` with Discrete(2 * offset_max + 1) actions offsetting `base`'s k.

    Each step's info also holds "k" (the k the engine ran) and "base_k".
    """

    def __init__(self, env: gym.Env, base: Controller, offset_max: int) -> None:
        if offset_max < 1:
            raise ValueError(f"offset_max={offset_max} must be >= 1")
        super().__init__(env)
        self.base = base
        self.offset_max = offset_max
        self.k_max = int(env.action_space.n) - 1
        self.action_space = spaces.Discrete(2 * offset_max + 1)

    def reset(self, **kwargs) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the environment and the base controller's history."""
        self.base.reset()
        return self.env.reset(**kwargs)

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Run one engine step at the base's k plus the action's offset."""
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is outside Discrete({self.action_space.n})")
        base_k = self.base.decide(self.env.unwrapped.observation).k
        k = residual_k(base_k, int(action), self.offset_max, self.k_max)
        obs, reward, terminated, truncated, info = self.env.step(k)
        self.base.observe(info["record"])
        info["k"], info["base_k"] = k, base_k
        return obs, reward, terminated, truncated, info
