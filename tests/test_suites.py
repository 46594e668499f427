"""Held-back regions and named suites: windows stay out of training regions and traces."""

from __future__ import annotations

import pytest

from envs.traces import load_trace
from training.suites import REGIONS, SUITES, TraceRegion, region_of, suite


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
        for entry in suite(name):
            starts = entry.starts()
            assert len(starts) == entry.windows
            region = REGIONS[entry.region]
            for start in starts:
                region.check_eval_window(start, entry.window_s)
    with pytest.raises(ValueError, match="unknown suite 'nope'; expected one of cpu, gpu"):
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
