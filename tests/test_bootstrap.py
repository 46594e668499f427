"""Paired bootstrap intervals of ratios between controllers (pure logic)."""

from __future__ import annotations

import pytest

from agents.registry import parse_controller
from training.bootstrap import geometric_mean, ratio_interval
from training.evaluation.compare import comparisons
from training.evaluation.report import format_comparisons
from training.evaluation.runs import Run


def test_the_ratio_is_of_means_and_lies_inside_its_interval():
    found = ratio_interval([110, 90, 130, 70], [[100, 80, 120, 60]])
    assert found.ratio == pytest.approx(400 / 360)
    assert found.low <= found.ratio <= found.high


def test_pairing_keeps_a_steady_ratio_tight_under_drift():
    # The machine drifts from repeat to repeat, and both controllers drift with it: the
    # ratio is 1.1 in every repeat, so every resample of whole repeats gives 1.1.
    drift = [400.0, 900.0, 650.0, 300.0, 800.0]
    found = ratio_interval([1.1 * v for v in drift], [drift])
    assert found.low == pytest.approx(1.1) and found.high == pytest.approx(1.1)


def test_unpaired_noise_widens_the_interval():
    steady = ratio_interval([105, 104, 106, 105, 105], [[100, 100, 100, 100, 100]])
    noisy = ratio_interval([150, 60, 130, 80, 105], [[100, 100, 100, 100, 100]])
    assert steady.ratio == pytest.approx(noisy.ratio)
    assert noisy.high - noisy.low > 10 * (steady.high - steady.low)
    assert noisy.low < 1.0 < noisy.high  # 1.05 on average, and not distinguishable from 1


def test_the_best_of_several_references_is_picked_per_resample():
    # Each reference wins in one repeat; a resample of mostly repeat 0 divides by the first.
    found = ratio_interval([100, 100], [[100, 50], [50, 100]], samples=2000)
    assert found.ratio == pytest.approx(100 / 75)
    assert found.low == pytest.approx(1.0)  # resamples of one repeat twice: 100 / 100
    assert found.high == pytest.approx(100 / 75)


@pytest.mark.parametrize(
    ("values", "references", "message"),
    [
        ([1.0, 2.0], [[1.0, 2.0, 3.0]], "one value per sample"),
        ([1.0], [[1.0]], "at least 2"),
    ],
)
def test_mismatched_or_too_few_repeats_are_refused(values, references, message):
    with pytest.raises(ValueError, match=message):
        ratio_interval(values, references)


def _run(name: str, under_slo: list[float]) -> Run:
    return Run(
        parse_controller(name, k_max=4), metrics=[{"goodput_under_slo_tps": v} for v in under_slo]
    )


def test_evaluation_measures_adaptive_controllers_against_every_baseline_that_ran():
    runs = [
        _run("nospec", [50, 60, 70]),
        _run("static:2", [100, 120, 80]),
        _run("static:3", [90, 130, 100]),
        _run("goodput", [95, 110, 90]),
        _run("vllm-schedule", [100, 100, 100]),
    ]
    found = comparisons(runs)
    assert set(found) == {"goodput", "vllm-schedule"}
    assert {"best_static", "nospec"} <= set(found["goodput"])
    assert "goodput" not in found["goodput"]  # not against itself
    schedule = found["vllm-schedule"]
    gm = geometric_mean
    assert schedule["goodput"]["ratio"] == pytest.approx(100 / gm([95, 110, 90]))
    assert schedule["best_static"]["ratio"] == pytest.approx(100 / gm([90, 130, 100]))
    assert schedule["nospec"]["ratio"] == pytest.approx(100 / gm([50, 60, 70]))
    assert schedule["worst_vs_goodput"] == pytest.approx(100 / 110)
    text = format_comparisons(found, count=3)
    line = next(x for x in text.splitlines() if x.startswith("vllm-schedule"))
    best = schedule["best_static"]
    assert f"/ best_static {best['ratio']:.3f} [{best['low']:.3f}, {best['high']:.3f}]" in line


def test_a_zero_or_missing_reference_leaves_the_ratio_undefined_with_the_reason():
    zero = ratio_interval([10, 20, 30], [[0, 0, 0]], name="nospec's goodput under SLO")
    assert (zero.ratio, zero.low, zero.high) == (None, None, None)
    assert zero.undefined == "nospec's goodput under SLO is 0"
    missing = ratio_interval([10, 20, 30], [], name="nospec's goodput under SLO")
    assert (missing.ratio, missing.low, missing.high) == (None, None, None)
    assert missing.undefined == "nospec's goodput under SLO is missing"
    assert ratio_interval([10, 20], [[5, 10]]).undefined is None


def test_a_reference_of_zero_in_some_resamples_leaves_only_the_interval_undefined():
    # The resample of repeat 0 alone divides by 0; the ratio of all repeats is defined.
    found = ratio_interval([10, 20, 30], [[0, 10, 20]], name="the best static k's goodput")
    assert found.ratio == pytest.approx(2.0)
    assert found.low is None and found.high is None
    assert found.undefined.startswith("the best static k's goodput is 0 in ")


def test_intervals_mark_zero_and_missing_references_undefined():
    runs = [
        _run("nospec", [0, 0, 0]),  # no request met its SLO
        _run("goodput", [95, 110, 90]),
        _run("vllm-schedule", [100, 100, 100]),
    ]  # and no static k ran
    found = comparisons(runs)
    schedule = found["vllm-schedule"]
    assert schedule["goodput"]["ratio"] == pytest.approx(100 / geometric_mean([95, 110, 90]))
    assert schedule["nospec"] == {
        "ratio": None,
        "low": None,
        "high": None,
        "undefined": "nospec's goodput under SLO is 0",
    }
    assert schedule["best_static"]["ratio"] is None
    assert (
        schedule["best_static"]["undefined"] == "the best static k's goodput under SLO is missing"
    )
    text = format_comparisons(found, count=3)
    line = next(x for x in text.splitlines() if x.startswith("vllm-schedule"))
    assert "/ nospec n/a" in line and "/ best_static n/a" in line
    # Each reason once, under the lines.
    assert text.splitlines()[-2:] == [
        "n/a: the best static k's goodput under SLO is missing",
        "n/a: nospec's goodput under SLO is 0",
    ]
