"""A server scheduler with a fault injected, for the reliability tests (imported by the server)."""

from __future__ import annotations

from serving.serving_scheduler import ServingScheduler

RAISE_FROM = 40
"""The policy's decision at which inference starts to raise."""


class _FailingPolicy:
    """Acts like the wrapped policy for `RAISE_FROM` decisions, then raises on every call."""

    def __init__(self, policy) -> None:
        self._policy = policy
        self.calls = 0

    def act(self, vector):
        self.calls += 1
        if self.calls > RAISE_FROM:
            raise RuntimeError("injected inference fault")
        return self._policy.act(vector)


class RaisingPolicyScheduler(ServingScheduler):
    """`ServingScheduler` whose loaded policy raises mid-serving."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.controller.policy = _FailingPolicy(self.controller.policy)
