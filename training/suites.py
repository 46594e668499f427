"""Trace regions held back from training, and named evaluation suites over them.

Every trace the project trains on is split in time: training draws its episodes from
[0, split_s), and evaluations replay windows from [split_s, end_s), so a policy is never
judged on requests it was trained on. A suite names, for one regime (the small CPU engine,
or a GPU deployment priced in model time), which traces to replay, at which arrival-rate
scales, with how many windows of what length in each held-back region:

    python -m training.evaluate --suite a100-steady --method ngram --twin

Windows are spread evenly over the region. Each suite entry is one table of the evaluation;
the suite's summary is the geometric mean over its entries.

Two kinds of suite. The steady-state ones (`*-steady`) hold the engine at the concurrency its
profile is priced for: each trace's windows are long spans of trace time (a thousand
requests or so) replayed at rate scales placed around the plain engine's SLO capacity
(about 0.5x, 0.9x, 1.2x and 2x, measured with `training.capacity`), every replay lasting
several request lifetimes, so most engine time is spent in steady state; `check_steady`
refuses an entry whose windows cannot. Every load of a trace replays the same requests, so
one acceptance table per window serves all its loads (and the capacity search). The burst
suites (`cpu`, `gpu`) replay short windows, a burst of a few dozen requests that drains: the
regime where verification is nearly free and k can hardly matter; they stay as the record of
the earlier measurements, and `cpu` as the check that a policy does no harm there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.paths import SHARED_TRACES
from envs.traces import Trace

SYNTHETIC_S = 1200.0
"""Length of the synthetic suite traces, seconds."""


@dataclass(frozen=True)
class TraceRegion:
    """A trace and where its training region ends and its held-back region lies."""

    name: str
    """A short label, e.g. "azure-conv"."""
    trace: str
    """A trace file or a `synthetic:` spec."""
    split_s: float
    """Training draws windows from [0, split_s); evaluation from [split_s, end_s)."""
    end_s: float
    """End of the held-back region, seconds of trace time."""

    def __post_init__(self) -> None:
        if not 0 < self.split_s < self.end_s:
            raise ValueError(f"region {self.name}: need 0 < split_s < end_s")

    def starts(self, windows: int, window_s: float, arrivals: Sequence[float] = ()) -> list[float]:
        """`windows` window starts spread evenly over the held-back region; given the trace's
        `arrivals`, each moves on to the first arrival at or after it (real traces have idle
        stretches, and a window without requests measures nothing)."""
        room = self.end_s - self.split_s - window_s
        if room < 0:
            raise ValueError(
                f"region {self.name}: a {window_s} s window does not fit in the held-back "
                f"{self.end_s - self.split_s:.0f} s"
            )
        step = room / (windows - 1) if windows > 1 else 0.0
        starts = [round(self.split_s + i * step, 3) for i in range(windows)]
        if len(arrivals):
            times = np.asarray(arrivals)
            snapped = []
            for start in starts:
                later = times[(times >= start) & (times <= self.split_s + room)]
                snapped.append(round(float(later[0]), 3) if len(later) else start)
            starts = snapped
        return starts

    def check_eval_window(self, start_s: float, window_s: float) -> None:
        """Raise if a window of this trace overlaps its training region or leaves the trace."""
        if start_s < self.split_s:
            raise ValueError(
                f"window at {start_s} s of {self.name} overlaps its training region "
                f"[0, {self.split_s}) s; evaluate from {self.split_s} s on"
            )
        if start_s + window_s > self.end_s:
            raise ValueError(
                f"window [{start_s}, {start_s + window_s}) s lies past the end of "
                f"{self.name} ({self.end_s} s)"
            )


STEADY_LIFETIMES = 3.0
"""A steady-state replay lasts at least this many lifetimes of its mean request."""


def _synthetic(kind: str, duration: float = SYNTHETIC_S, **params: float) -> str:
    fields = "&".join(f"{key}={value:g}" for key, value in params.items())
    lengths = "" if "output_mean" in params else "&input_mean=160&output_mean=96"
    return f"synthetic:{kind}?{fields}&duration={duration:g}{lengths}"


REGIONS: dict[str, TraceRegion] = {
    region.name: region
    for region in (
        TraceRegion(
            "azure-conv", str(SHARED_TRACES / "AzureLLMInferenceTrace_conv.csv"), 2700.0, 3500.0
        ),
        TraceRegion(
            "azure-code", str(SHARED_TRACES / "AzureLLMInferenceTrace_code.csv"), 2700.0, 3430.0
        ),
        TraceRegion("bursty", _synthetic("bursty", rate=4, cv=3, seed=11), 900.0, SYNTHETIC_S),
        TraceRegion(
            "ramp",
            _synthetic("ramp", start_rate=1, end_rate=8, period=30, seed=12),
            900.0,
            SYNTHETIC_S,
        ),
        # Poisson arrivals with conversation-like lengths, over an hour like the Azure traces,
        # at 8 requests/s: a window of 240 s holds about 1900 requests, enough for the H100
        # preset at twice its capacity to last several request lifetimes.
        TraceRegion(
            "poisson",
            _synthetic(
                "poisson", 3600.0, rate=8, input_mean=320, output_mean=200, sigma=0.8, seed=21
            ),
            2700.0,
            3600.0,
        ),
    )
}
"""The traces training and evaluation share, with their splits."""


def region_of(trace: str) -> TraceRegion | None:
    """The region of a trace the project knows (by path or spec), else None."""
    for region in REGIONS.values():
        if trace == region.trace or (
            not trace.startswith("synthetic:")
            and Path(trace).resolve() == Path(region.trace).resolve()
        ):
            return region
    return None


@dataclass(frozen=True)
class SuiteEntry:
    """One trace of a suite, at one load."""

    region: str
    """The name of its `TraceRegion`."""
    rate_scale: float
    """Speed-up of arrivals."""
    windows: int
    """Windows replayed over the held-back region."""
    window_s: float
    """Trace seconds per window."""
    max_output_tokens: int = 128
    """Outputs are clipped to this (steady-state suites keep them long enough to decode for
    a while: Azure's conversation outputs have a median of 129 tokens and a mean of 211)."""

    @property
    def label(self) -> str:
        """How tables name it, e.g. "azure-conv x2"."""
        return f"{self.region} x{self.rate_scale:g}"

    def starts(self, arrivals: Sequence[float] = ()) -> list[float]:
        """The windows' starts in the held-back region (moved onto traffic, given the
        trace's arrivals)."""
        return REGIONS[self.region].starts(self.windows, self.window_s, arrivals)


@dataclass(frozen=True)
class Suite:
    """A named set of entries for one regime."""

    entries: tuple[SuiteEntry, ...]
    profile: str | None = None
    """The cost profile the suite is built for (None: the method's measured table, or any
    profile given on the command line)."""
    steady: bool = False
    """Whether every entry must hold steady state (`check_steady`)."""


def steady_state_problem(workload: Trace, rate_scale: float, tpot_slo_s: float) -> str | None:
    """Why a replay of `workload` cannot hold steady state, or None if it can: it must last
    `STEADY_LIFETIMES` lifetimes of its mean request served at the TPOT objective."""
    if not len(workload):
        return "it holds no requests"
    span = workload.replay.options.window_s if workload.replay is not None else None
    duration = (span / rate_scale) if span else workload.duration_s
    mean_output = float(np.mean([r.output_tokens for r in workload.requests]))
    lifetime = mean_output * tpot_slo_s
    if duration < STEADY_LIFETIMES * lifetime:
        return (
            f"its {duration:.1f} s of arrivals hold {duration / lifetime:.1f} lifetimes of its "
            f"mean request ({mean_output:.0f} output tokens at the TPOT objective of "
            f"{tpot_slo_s * 1e3:g} ms last {lifetime:.1f} s), fewer than the "
            f"{STEADY_LIFETIMES:g} a steady state needs: a burst that drains, not steady load"
        )
    return None


STEADY_WINDOWS = {"azure-conv": 264.0, "poisson": 240.0}
"""Trace seconds of a steady-state window: three fit side by side in each held-back region,
with about 1000 (azure-conv) and 1900 (poisson) requests each."""


def _steady(region: str, scales: Sequence[float]) -> tuple[SuiteEntry, ...]:
    """A trace's steady-state entries: the same three windows of trace time at every scale."""
    return tuple(SuiteEntry(region, scale, 3, STEADY_WINDOWS[region], 256) for scale in scales)


STEADY_SUITES: dict[str, Suite] = {
    # Scales: 0.5x, 0.9x, 1.2x and 2x of the plain engine's SLO capacity on each trace
    # (`python -m training.capacity --suite NAME --controllers nospec`, 2026-12-04): CPU
    # pair 2.8 (azure-conv) and 4.0 (poisson) requests/s; a100-llama3-8b 16.5 and 23.9;
    # h100-llama2-7b 29.2 and 42.0.
    "cpu-steady": Suite(
        _steady("azure-conv", (0.32, 0.58, 0.77, 1.3))
        + _steady("poisson", (0.25, 0.46, 0.61, 1.0)),
        steady=True,
    ),
    "a100-steady": Suite(
        _steady("azure-conv", (1.9, 3.5, 4.6, 7.7)) + _steady("poisson", (1.5, 2.7, 3.6, 6.0)),
        profile="a100-llama3-8b",
        steady=True,
    ),
    "h100-steady": Suite(
        _steady("azure-conv", (3.4, 6.1, 8.1, 13.5)) + _steady("poisson", (2.6, 4.7, 6.3, 10.5)),
        profile="h100-llama2-7b",
        steady=True,
    ),
}
"""The steady-state suites, one per deployment; see `SUITES`."""

SUITES: dict[str, Suite] = {
    # Burst windows of the small CPU engine (32 running requests), its measured profiles.
    "cpu": Suite(
        (
            SuiteEntry("azure-conv", 2.0, 4, 20.0),
            SuiteEntry("azure-code", 2.0, 4, 20.0),
            SuiteEntry("bursty", 1.0, 4, 20.0),
            SuiteEntry("bursty", 2.0, 4, 20.0),
            SuiteEntry("ramp", 1.0, 4, 20.0),
            SuiteEntry("ramp", 2.0, 4, 20.0),
        )
    ),
    # Burst windows priced as a GPU deployment (--profile a100-llama3-8b or h100-llama2-7b).
    "gpu": Suite(
        (
            SuiteEntry("azure-conv", 10.0, 3, 10.0),
            SuiteEntry("azure-code", 10.0, 3, 10.0),
            SuiteEntry("bursty", 8.0, 3, 10.0),
            SuiteEntry("bursty", 16.0, 3, 10.0),
            SuiteEntry("ramp", 8.0, 3, 10.0),
            SuiteEntry("ramp", 16.0, 3, 10.0),
        )
    ),
    # Steady state around the plain engine's SLO capacity, per deployment (scales: 0.5x, 0.9x,
    # 1.2x and 2x of the capacity `training.capacity` measured; docs/experiments.md).
    **STEADY_SUITES,
}
"""Named suites: which traces, at which loads, how many windows."""


def suite(name: str) -> Suite:
    """A named suite; raises naming the known ones."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return SUITES[name]
