"""Work-arounds for vLLM 0.32.0 behaviour that this project depends on, kept in one place."""

from __future__ import annotations

import functools
import sys

UNSCANNABLE = ("llvmlite.binding.ffi",)
"""Modules vLLM's scan for Triton kernels cannot read (see below)."""


def allow_several_engines_per_process() -> None:
    """Let a process build more than one in-process CPU engine (tests, A/B benchmarks), and
    build one after numba was imported.

    On CPU, every engine's worker re-registers vLLM's Triton kernel overrides; the
    registration rescans all loaded modules and, on a second pass, trips over objects whose
    `__dict__` is not a dict. The overrides are process-global and already in place after the
    first engine, so later registrations are skipped. The first pass trips the same way over
    llvmlite's `binding.ffi.lib` (loaded with numba, which the ngram slot features use): it
    answers every attribute, `__dict__` too, with a function wrapper. It holds no Triton
    kernel, so that module is left out of the scan.
    """
    from vllm.platforms import current_platform

    platform_cls = type(current_platform)
    register = platform_cls.register_triton_kernel_overrides  # a classmethod, bound
    if getattr(register, "_once", False):
        return

    @functools.cache
    def register_once() -> None:
        hidden = {name: sys.modules.pop(name) for name in UNSCANNABLE if name in sys.modules}
        try:
            register()
        finally:
            sys.modules.update(hidden)

    register_once._once = True
    platform_cls.register_triton_kernel_overrides = staticmethod(register_once)
