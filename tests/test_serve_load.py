"""`benchmarks.serve_load`'s table (pure logic): ratios to the goodput controller."""

from __future__ import annotations

import json

import pytest

from benchmarks.serve_load import add_ratios, format_rows

OTHER_COLUMNS = ("throughput_tps", "slo_attainment", "failed", "ttft_p50_s", "ttft_p99_s")
OTHER_COLUMNS += ("tpot_p50_s", "tpot_p99_s")


def _row(controller: str, under_slo: float) -> dict:
    row = {"controller": controller, "goodput_under_slo_tps": under_slo}
    return row | dict.fromkeys(OTHER_COLUMNS, 0.0)


def test_ratios_to_the_goodput_controller():
    rows = add_ratios([_row("goodput", 200.0), _row("static:2", 150.0)])
    assert rows[1]["under_slo_vs_goodput"] == pytest.approx(0.75)
    assert rows[1]["undefined"] == {}
    assert format_rows(rows).splitlines()[-1].endswith("0.750")


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([_row("goodput", 0.0), _row("nospec", 10.0)], "goodput under SLO is 0"),
        ([_row("static:2", 10.0), _row("nospec", 10.0)], "goodput under SLO is missing"),
    ],
)
def test_a_zero_or_missing_goodput_controller_gives_undefined_ratios(rows, reason):
    rows = add_ratios(rows)
    assert all(row["under_slo_vs_goodput"] is None for row in rows)
    text = format_rows(rows)
    assert all(line.endswith("n/a") for line in text.splitlines()[2:4])
    assert text.splitlines()[-1] == f"n/a: the goodput controller's {reason}"
    json.dumps(rows, allow_nan=False)
