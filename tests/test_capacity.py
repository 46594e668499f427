"""SLO capacity by bisection over the rate scale: pure logic on attainment curves."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import TEST_FLAGS
from training.capacity import main
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


@pytest.mark.engine
def test_the_capacity_command_bisects_each_controller_on_the_twin(tmp_path, capsys, live_engines):
    # A small CPU engine and a short dense window: the plain engine's capacity and the
    # goodput controller's, with every probe kept.
    out = tmp_path / "capacity.json"
    status = main(
        [
            "--trace", "synthetic:poisson?rate=20&duration=40&input_mean=64&output_mean=48&seed=3",
            "--windows", "1", "--window-s", "30", "--max-output-tokens", "64",
            "--scales", "0.2,0.6", "--controllers", "nospec,goodput", "--json", str(out),
            *TEST_FLAGS,
        ],
        engines=live_engines,
    )  # fmt: skip
    assert status == 0
    printed = capsys.readouterr().out
    assert "SLO capacity (90% of requests within" in printed and "(twin)" in printed
    record = json.loads(out.read_text())
    (traced,) = record["traces"].values()
    for name in ("nospec", "goodput"):
        (row,) = traced["controllers"][name]
        probes = row["probes"]
        assert row["bounded"] and row["rate"] > 0
        passed = [p["scale"] for p in probes if p["attainment"] >= ATTAINMENT]
        failed = [p["scale"] for p in probes if p["attainment"] < ATTAINMENT]
        assert failed and min(failed) / max(passed) - 1 <= 0.011
        assert row["rate"] == pytest.approx(row["requests"] * max(passed) / 30)
    assert traced["summary"]["goodput"]["vs_nospec"]["ratio"] > 0
