"""Work-arounds for vLLM 0.32.0 behaviour that this project depends on, kept in one place."""

from __future__ import annotations

import functools


def allow_several_engines_per_process() -> None:
    """Let a process build more than one in-process CPU engine (tests, A/B benchmarks).

    On CPU, every engine's worker re-registers vLLM's Triton kernel overrides; the
    registration rescans all loaded modules and, on a second pass, trips over objects whose
    `__dict__` is not a dict. The overrides are process-global and already in place after the
    first engine, so later registrations are skipped.
    """
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    register = platform_cls.register_triton_kernel_overrides  # a classmethod, bound
    if getattr(register, "_once", False):
        return

    @functools.cache
    def register_once() -> None:
        register()

    register_once._once = True
    platform_cls.register_triton_kernel_overrides = staticmethod(register_once)
