"""The suites' picture: ratios to the goodput controller, references inverted."""

from __future__ import annotations

import json

import pytest

from training.suite_figure import main, series


def cell(ratio, low=None, high=None):
    return {"ratio": ratio, "low": low, "high": high, "undefined": None}


RECORD = {
    "args": {"method": "ngram", "profile": None, "clock": "model", "twin": True, "suite": "cpu"},
    "traces": {
        "azure-conv x2": {
            "comparisons": {
                "goodput": {"best_static": cell(0.8, 0.5, 1.0), "nospec": cell(None)},
                "oracle": {"goodput": cell(1.5, 1.2, 1.9), "best_static": cell(1.2)},
                "oracle-per-request": {"goodput": cell(None)},
            },
            "metrics": {
                name: [{"goodput_under_slo_tps": v} for v in values]
                for name, values in {
                    "goodput": (0.0, 100.0),
                    "nospec": (10.0, 30.0),
                    "static:2": (0.0, 125.0),
                    "oracle": (0.0, 150.0),
                    "oracle-per-request": (0.0, 300.0),
                }.items()
            },
        }
    },
}


def test_references_are_drawn_against_the_goodput_controller():
    found = series(RECORD)
    assert found["best static k"]["azure-conv x2"] == pytest.approx((1.25, 1.0, 2.0, True))
    assert found["oracle"]["azure-conv x2"] == (1.5, 1.2, 1.9, True)
    # Where a window scored 0 the geometric mean is undefined: the ratio of means stands in.
    assert found["nospec"]["azure-conv x2"] == (0.4, 0.4, 0.4, False)
    assert found["oracle-per-request"]["azure-conv x2"] == (3.0, 3.0, 3.0, False)
    assert "goodput" not in found


def test_it_writes_the_png_and_refuses_other_json(tmp_path, capsys):
    good, bad = tmp_path / "suite.json", tmp_path / "other.json"
    good.write_text(json.dumps(RECORD))
    bad.write_text(json.dumps({"rows": []}))
    assert main([str(good), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert main([str(bad), "--out", str(tmp_path / "t.png")]) == 2
    assert "other.json is not a training.evaluate --json file (no args, traces)" in (
        capsys.readouterr().err
    )
