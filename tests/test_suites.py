"""Held-back regions and named suites: windows stay out of training regions and traces."""

from __future__ import annotations

import pytest

from envs.traces import ReplayOptions, apply_replay, load_trace
from training.suites import (
    REGIONS,
    STEADY_LIFETIMES,
    SUITES,
    TraceRegion,
    region_of,
    steady_state_problem,
    suite,
)


def test_windows_spread_over_the_held_back_region():
    region = TraceRegion("t", "synthetic:poisson?rate=1&duration=100", 60.0, 100.0)
    assert region.starts(3, 10.0) == [60.0, 75.0, 90.0]
    assert region.starts(1, 10.0) == [60.0]
    with pytest.raises(ValueError, match="a 50.0 s window does not fit"):
        region.starts(2, 50.0)


def test_windows_overlapping_training_or_past_the_end_are_refused():
    region = REGIONS["azure-conv"]
    with pytest.raises(ValueError, match=r"overlaps its training region \[0, 2700.0\) s"):
        region.check_eval_window(2600.0, 20.0)
    with pytest.raises(ValueError, match="past the end of azure-conv"):
        region.check_eval_window(3590.0, 20.0)
    region.check_eval_window(2700.0, 20.0)


def test_every_suite_entry_fits_its_region():
    for name in SUITES:
        for entry in suite(name).entries:
            starts = entry.starts()
            assert len(starts) == entry.windows
            region = REGIONS[entry.region]
            for start in starts:
                region.check_eval_window(start, entry.window_s)
    with pytest.raises(ValueError, match="unknown suite 'nope'; expected one of cpu, gpu, cpu-st"):
        suite("nope")


def test_synthetic_regions_hold_requests_on_both_sides_of_the_split():
    for region in REGIONS.values():
        if not region.trace.startswith("synthetic:"):
            continue
        trace = load_trace(region.trace)
        arrivals = [r.arrival_s for r in trace.requests]
        assert any(a < region.split_s for a in arrivals)
        assert any(region.split_s <= a < region.end_s for a in arrivals)
        assert region_of(region.trace) is region


def test_known_traces_are_found_by_path():
    region = REGIONS["azure-code"]
    assert region_of(region.trace) is region
    assert region_of("synthetic:poisson?rate=1") is None


def test_windows_move_onto_traffic_when_given_the_arrivals():
    region = TraceRegion("t", "synthetic:poisson?rate=1&duration=100", 60.0, 100.0)
    # Nothing arrives before 80 s: the first two windows move to the first arrival.
    assert region.starts(3, 10.0, [10.0, 80.5, 95.0]) == [80.5, 80.5, 90.0]


def test_steady_suites_hold_steady_state_and_bursts_do_not():
    # Every window of every steady-state suite lasts several request lifetimes at the TPOT
    # objective of its preset; the burst suites' windows of a few seconds do not.
    tpot = {"cpu-steady": 0.05, "a100-steady": 0.03, "h100-steady": 0.03}
    for name, tpot_s in tpot.items():
        chosen = suite(name)
        assert chosen.steady
        for entry in chosen.entries:
            trace = load_trace(REGIONS[entry.region].trace)
            for start in entry.starts([r.arrival_s for r in trace.requests]):
                options = ReplayOptions(
                    window_start_s=start,
                    window_s=entry.window_s,
                    rate_scale=entry.rate_scale,
                    max_input_tokens=384,
                    max_output_tokens=entry.max_output_tokens,
                )
                workload = apply_replay(trace, options)
                assert len(workload) > 900
                assert steady_state_problem(workload, entry.rate_scale, tpot_s) is None
    burst = next(e for e in suite("gpu").entries if e.region == "bursty")
    trace = load_trace(REGIONS["bursty"].trace)
    options = ReplayOptions(window_start_s=burst.starts()[0], window_s=burst.window_s,
                            rate_scale=burst.rate_scale)  # fmt: skip
    problem = steady_state_problem(apply_replay(trace, options), burst.rate_scale, 0.03)
    assert problem is not None
    assert f"fewer than the {STEADY_LIFETIMES:g} a steady state needs" in problem
    assert "a burst that drains" in problem
