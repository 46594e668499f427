"""SLO capacity by bisection over the rate scale: pure logic on attainment curves."""

from __future__ import annotations

import math

import pytest

from training.evaluation.capacity import ATTAINMENT, find_capacity


def cliff(at: float):
    """Attainment 1 up to the scale `at`, then falling linearly to 0 at twice it."""
    return lambda scale: 1.0 if scale <= at else max(0.0, 1.0 - (scale - at) / at)


@pytest.mark.parametrize("low,high", [(1.0, 8.0), (0.1, 0.2), (20.0, 40.0), (3.0, 3.0)])
def test_the_bisection_finds_the_cliff_from_any_bracket(low, high):
    # The bar of 0.9 is crossed at 1.1 x the cliff's start.
    found = find_capacity(cliff(2.0), low, high)
    assert found.bounded
    assert 2.2 / 1.0101 <= found.scale <= 2.2
    assert all(p.passed == (p.attainment >= ATTAINMENT) for p in found.probes)
    passed = [p.scale for p in found.probes if p.passed]
    failed = [p.scale for p in found.probes if not p.passed]
    assert max(passed) == found.scale and min(failed) > found.scale
    assert min(failed) / found.scale - 1 <= 0.01


def test_a_curve_that_never_passes_or_never_fails_says_so():
    never = find_capacity(lambda scale: 0.5, 1.0, 2.0)
    assert never.scale is None and never.bounded
    always = find_capacity(lambda scale: 1.0, 1.0, 2.0, max_probes=6)
    assert not always.bounded and always.scale == 32.0 and len(always.probes) == 6


def test_nan_attainment_fails_and_a_bad_bracket_is_refused():
    assert not find_capacity(lambda scale: math.nan, 1.0, 2.0).scale
    with pytest.raises(ValueError, match="need 0 < low <= high"):
        find_capacity(cliff(1.0), 2.0, 1.0)
