"""Trace regions held back from training, and named evaluation suites over them.

Every trace the project trains on is split in time: training draws its episodes from
[0, split_s), and evaluations replay windows from [split_s, end_s), so a policy is never
judged on requests it was trained on. A suite names, for one regime (the small CPU engine,
or a GPU deployment priced in model time), which traces to replay, at which arrival-rate
scales, with how many windows of what length in each held-back region:

    python -m training.evaluate --suite cpu --method ngram

Windows are spread evenly over the region. Each suite entry is one table of the evaluation;
the suite's summary is the geometric mean over its entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.paths import SHARED_TRACES

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


def _synthetic(kind: str, **params: float) -> str:
    fields = "&".join(f"{key}={value:g}" for key, value in params.items())
    return f"synthetic:{kind}?{fields}&duration={SYNTHETIC_S:g}&input_mean=160&output_mean=96"


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

    @property
    def label(self) -> str:
        """How tables name it, e.g. "azure-conv x2"."""
        return f"{self.region} x{self.rate_scale:g}"

    def starts(self, arrivals: Sequence[float] = ()) -> list[float]:
        """The windows' starts in the held-back region (moved onto traffic, given the
        trace's arrivals)."""
        return REGIONS[self.region].starts(self.windows, self.window_s, arrivals)


SUITES: dict[str, tuple[SuiteEntry, ...]] = {
    # The small CPU engine (32 running requests) in model time with its measured profiles.
    "cpu": (
        SuiteEntry("azure-conv", 2.0, 4, 20.0),
        SuiteEntry("azure-code", 2.0, 4, 20.0),
        SuiteEntry("bursty", 1.0, 4, 20.0),
        SuiteEntry("bursty", 2.0, 4, 20.0),
        SuiteEntry("ramp", 1.0, 4, 20.0),
        SuiteEntry("ramp", 2.0, 4, 20.0),
    ),
    # A GPU deployment (e.g. --profile a100-llama3-8b): hundreds of running requests.
    "gpu": (
        SuiteEntry("azure-conv", 10.0, 3, 10.0),
        SuiteEntry("azure-code", 10.0, 3, 10.0),
        SuiteEntry("bursty", 8.0, 3, 10.0),
        SuiteEntry("bursty", 16.0, 3, 10.0),
        SuiteEntry("ramp", 8.0, 3, 10.0),
        SuiteEntry("ramp", 16.0, 3, 10.0),
    ),
}
"""Named suites: which traces, at which loads, how many windows."""


def suite(name: str) -> tuple[SuiteEntry, ...]:
    """The entries of a named suite; raises naming the known ones."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return SUITES[name]
