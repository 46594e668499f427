"""LLM request traces (arrival time, input length, output length) and their replay.

Loaders for the Azure, BurstGPT and Mooncake formats, a seeded synthetic generator, replay
options (window, speed-up, length clipping) and prompt synthesis for the length-only traces.
"""

from envs.traces.errors import TraceFormatError
from envs.traces.loader import detect_format, load_trace
from envs.traces.prompts import Prompt, PromptFactory
from envs.traces.replay import ReplayOptions, ReplayRecord, apply_replay
from envs.traces.request import Trace, TraceRequest
from envs.traces.synthetic import SyntheticSpec, synthetic_trace
from envs.traces.synthetic_spec import parse_synthetic

__all__ = [
    "Prompt",
    "PromptFactory",
    "ReplayOptions",
    "ReplayRecord",
    "SyntheticSpec",
    "Trace",
    "TraceFormatError",
    "TraceRequest",
    "apply_replay",
    "detect_format",
    "load_trace",
    "parse_synthetic",
    "synthetic_trace",
]
