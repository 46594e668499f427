"""Replay options: which slice of a trace to replay, how fast, and with what lengths."""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, replace
from typing import Any

from envs.traces.request import Trace, TraceRequest


def _finite(value: float, low: float, inclusive: bool = False) -> bool:
    return math.isfinite(value) and (value >= low if inclusive else value > low)


def _count(value: int | None) -> bool:
    return value is None or (isinstance(value, int) and value >= 1)


@dataclass(frozen=True)
class ReplayOptions:
    """How to turn a trace into an episode's workload.

    Order of operations in `apply_replay`:
    1. window: keep requests with window_start_s <= arrival < window_start_s + window_s, in
       the trace's own time (so a speed-up replays the same requests, not more of them);
    2. max_requests: keep the first max_requests of the window;
    3. time: arrival = (arrival - window_start_s) / rate_scale, so times are relative to the
       window start (the idle gap before its first request is kept) and the replay lasts
       window_s / rate_scale seconds;
    4. lengths: max(1, round(length * length_scale)), then clipped to max_*_tokens.
    """

    window_start_s: float = 0.0
    window_s: float | None = None
    rate_scale: float = 1.0
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    length_scale: float = 1.0
    max_requests: int | None = None

    def __post_init__(self) -> None:
        count = "None or an integer >= 1"
        checks = (
            ("window_start_s", _finite(self.window_start_s, 0, True), "finite and >= 0"),
            ("window_s", self.window_s is None or _finite(self.window_s, 0), "None or > 0"),
            ("rate_scale", _finite(self.rate_scale, 0), "finite and > 0"),
            ("length_scale", _finite(self.length_scale, 0), "finite and > 0"),
            ("max_input_tokens", _count(self.max_input_tokens), count),
            ("max_output_tokens", _count(self.max_output_tokens), count),
            ("max_requests", _count(self.max_requests), count),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(
                    f"ReplayOptions.{name} must be {rule}, got {getattr(self, name)!r}"
                )

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict."""
        return asdict(self)


@dataclass(frozen=True)
class ReplayRecord:
    """What `apply_replay` did: the options and how many requests each step affected."""

    options: ReplayOptions
    source_requests: int
    window_requests: int
    requests: int
    clipped_input: int
    clipped_output: int

    def as_dict(self) -> dict[str, Any]:
        """A flat JSON-able record of the options and counts, for an episode's info."""
        record = self.options.as_dict()
        record.update(
            source_requests=self.source_requests,
            window_requests=self.window_requests,
            truncated_by_max_requests=self.window_requests - self.requests,
            requests=self.requests,
            clipped_input=self.clipped_input,
            clipped_output=self.clipped_output,
        )
        return record


def _length(n: int, scale: float, cap: int | None) -> tuple[int, bool]:
    """Scale a length (half up, at least 1) and clip it; also say whether the clip cut it."""
    scaled = max(1, math.floor(n * scale + 0.5))
    if cap is not None and scaled > cap:
        return cap, True
    return scaled, False


def apply_replay(trace: Trace, options: ReplayOptions) -> Trace:
    """Apply replay options to a trace (see ReplayOptions for the order of operations).

    The result records what was applied in `Trace.replay` (and so in `Trace.describe()`).
    A window holding no request gives an empty trace.
    """
    start = options.window_start_s
    lo = bisect_left(trace.requests, start, key=lambda r: r.arrival_s)
    hi = len(trace.requests)
    if options.window_s is not None:
        hi = bisect_left(trace.requests, start + options.window_s, key=lambda r: r.arrival_s)
    window = trace.requests[lo:hi]
    kept = window[: options.max_requests]
    requests = []
    clipped_input = clipped_output = 0
    for r in kept:
        n_in, cut_in = _length(r.input_tokens, options.length_scale, options.max_input_tokens)
        n_out, cut_out = _length(r.output_tokens, options.length_scale, options.max_output_tokens)
        clipped_input += cut_in
        clipped_output += cut_out
        requests.append(TraceRequest((r.arrival_s - start) / options.rate_scale, n_in, n_out))
    record = ReplayRecord(
        options=options,
        source_requests=len(trace),
        window_requests=len(window),
        requests=len(requests),
        clipped_input=clipped_input,
        clipped_output=clipped_output,
    )
    return replace(trace, requests=tuple(requests), replay=record)
