"""Draft-slot confidence: ngram slot features from token ids, the calibrator's fit, online
refinement and files, and the metrics that judge it (pure logic)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agents.confidence import SLOT_FEATURES, shipped_calibrator
from agents.confidence.calibrator import FORMAT, Calibrator, CalibratorError, expected_accepted
from agents.confidence.metrics import auc, calibration_error
from agents.confidence.ngram import FEATURES, MATCH_CAP, slot_features


def test_ngram_features_measure_the_match_and_how_often_it_continued():
    # The suffix 1 2 3 occurred twice before: once followed by 4 5, once by 4 6.
    tokens = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 6, 1, 2, 3], dtype=np.int32)
    found = slot_features(tokens, np.array([4, 5, 1, 2]), 2, 4, 4)
    assert found.shape == (4, len(FEATURES)) and SLOT_FEATURES["ngram"] == FEATURES
    assert found[:, 0] == pytest.approx(np.log1p(3))  # the longest earlier match: 3 tokens
    assert found[:, 1] == pytest.approx(np.log1p(2))  # two earlier occurrences
    assert found[:, 2] == pytest.approx([1.0, 0.5, 0.5, 0.5])  # both had 4; one had 4 5 ...
    # A shorter proposal leaves its last rows zero; no proposal, all zero.
    short = slot_features(tokens, np.array([4]), 2, 4, 4)
    assert short[0, 2] == 1.0 and not short[1:].any()
    assert not slot_features(tokens, np.array([], dtype=np.int32), 2, 4, 4).any()
    # A repeated passage matches far past prompt_lookup_max, up to the cap.
    passage = np.tile(np.arange(100, dtype=np.int32), 2)
    assert slot_features(passage, passage[:4], 2, 4, 4)[0, 0] == pytest.approx(np.log1p(MATCH_CAP))


def synthetic_slots(n: int, weights, intercepts, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(weights)))
    slot = rng.integers(0, len(intercepts), n)
    p = 1 / (1 + np.exp(-(x @ np.asarray(weights) + np.asarray(intercepts)[slot])))
    return x, slot, (rng.random(n) < p).astype(float)


def test_the_fit_recovers_the_model_and_is_calibrated():
    weights, intercepts = [1.5, -0.7], [0.8, 0.3, -0.2, -0.6]
    x, slot, label = synthetic_slots(40_000, weights, intercepts)
    fitted = Calibrator.fit("ngram", ("a", "b"), x, slot, label, 4)
    # The features' own slopes, and nothing on their squares and product.
    assert fitted.weights[:2] == pytest.approx(weights, abs=0.06)
    assert fitted.weights[2:] == pytest.approx([0.0, 0.0, 0.0], abs=0.06)
    assert fitted.intercepts == pytest.approx(intercepts, abs=0.1)
    prob = fitted.slot_probabilities(x, slot)
    assert calibration_error(prob, label) < 0.02
    assert auc(prob, label) > 0.75
    # Survival is the running product; expected accepted drafts its running sum.
    rows = np.zeros((4, 2))
    survival = fitted.survival(rows)
    assert survival == pytest.approx(np.cumprod(fitted.probabilities(rows)))
    assert expected_accepted(survival)[-1] == pytest.approx(survival.sum())


def test_online_refinement_moves_toward_what_verification_shows():
    # Start from a calibrator that trusts every draft; the target accepts one in five.
    optimist = Calibrator("ngram", ("a",), [0.0, 0.0], [2.0, 2.0], refit_every=64)
    start = optimist.probabilities(np.zeros((2, 1)))[0]
    rng = np.random.default_rng(1)
    for _ in range(400):
        accepted = int(rng.random() < 0.2)
        optimist.observe(np.zeros((2, 1)), verified=2, accepted=accepted)
    end = optimist.probabilities(np.zeros((2, 1)))[0]
    assert start > 0.85 and end < 0.45
    # Without refinement nothing moves.
    fixed = Calibrator("ngram", ("a",), [0.0, 0.0], [2.0, 2.0], refit_every=0)
    fixed.observe(np.zeros((2, 1)), verified=2, accepted=0)
    assert fixed.intercepts.tolist() == [2.0, 2.0]


def test_files_round_trip_and_bad_ones_are_refused(tmp_path):
    weights = [0.5, 0.6, 5.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.0]  # features, squares, products
    calibrator = Calibrator("ngram", FEATURES, weights, [-6, -5.5, -5.3, -5.1])
    path = calibrator.save(tmp_path / "ngram.json", command="test")
    loaded = Calibrator.load(path, method="ngram", k_max=4)
    assert loaded.weights.tolist() == weights and loaded.k_max == 4
    assert Calibrator.load(path, method="ngram", k_max=2).k_max == 2
    with pytest.raises(CalibratorError, match="scores 4 draft positions, the engine drafts 6"):
        Calibrator.load(path, method="ngram", k_max=6)
    with pytest.raises(CalibratorError, match="scores 'ngram' drafts, not 'draft_model'"):
        Calibrator.load(path, method="draft_model", k_max=4)
    with pytest.raises(CalibratorError, match="no calibrator at"):
        Calibrator.load(tmp_path / "none.json", method="ngram", k_max=4)
    (tmp_path / "bad.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CalibratorError, match=f"is not a {FORMAT} file"):
        Calibrator.load(tmp_path / "bad.json", method="ngram", k_max=4)
    (tmp_path / "cut.json").write_text(json.dumps({"format": FORMAT, "method": "ngram"}))
    with pytest.raises(CalibratorError, match="is malformed"):
        Calibrator.load(tmp_path / "cut.json", method="ngram", k_max=4)
    with pytest.raises(CalibratorError, match=r"2 weights for 3 features \(9 terms\)"):
        Calibrator("ngram", FEATURES, [1.0, 2.0], [0.0])


def test_the_shipped_ngram_calibrator_scores_the_engines_features():
    shipped = shipped_calibrator("ngram", 4)
    assert shipped is not None and shipped.features == SLOT_FEATURES["ngram"]
    # A long, often continued match is worth more than a short, rare one.
    strong = np.array([[np.log1p(30), np.log1p(5), 1.0]] * 4)
    weak = np.array([[np.log1p(2), np.log1p(1), 0.0]] * 4)
    assert (shipped.probabilities(strong) > shipped.probabilities(weak)).all()


def test_auc_and_calibration_error_on_known_cases():
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert np.isnan(auc(np.array([0.5]), np.array([1])))
    assert calibration_error(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1, 0, 0, 0])) == 0.0
    assert calibration_error(np.array([0.95, 0.95]), np.array([0, 0])) == pytest.approx(0.95)
