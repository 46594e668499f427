"""The step-time model and profile files, on synthetic timings with known answers."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from agents.step_time import (
    COEFFICIENTS,
    MIN_STEP_S,
    Profile,
    ProfileError,
    StepTimeModel,
    load_profile,
)

TRUE = StepTimeModel(
    overhead_s=0.004,
    per_request_s=2e-4,
    per_verify_token_s=1.5e-4,
    per_draft_pass_s=1e-3,
    per_context_token_s=1e-7,
    per_prefill_token_s=5e-5,
)
GRID = list(itertools.product([1, 2, 4, 8, 16], [0, 1, 2, 4], [128, 512], [0, 256]))


def make_profile(**overrides) -> Profile:
    """A small profile whose medians come from TRUE."""
    medians = [
        {
            "batch": b,
            "k": k,
            "context": c,
            "prefill_tokens": p,
            "step_time_s": TRUE.predict(b, k, c, p),
            "samples": 5,
        }
        for b, k, c, p in GRID[:4]
    ]
    fields = {
        "model": "checkpoints/lm/target",
        "model_id": "0123456789abcdef",
        "method": "ngram",
        "k_max": 4,
        "max_num_seqs": 16,
        "machine": {"cpu": "test", "vllm": "0.32.0"},
        "medians": medians,
        "step_time": TRUE,
        "acceptance": 0.55,
    }
    fields.update(overrides)
    return Profile(**fields)


def test_predict_matches_hand_computation():
    # 0.004 + 8*2e-4 + 8*3*1.5e-4 + 3*1e-3 + 8*300*1e-7 + 100*5e-5
    expected = 0.004 + 0.0016 + 0.0036 + 0.003 + 0.00024 + 0.005
    assert TRUE.predict(8, 3, 300.0, 100) == pytest.approx(expected, rel=1e-12)
    # Defaults: context 256, no prefill.
    assert TRUE.predict(1, 0) == pytest.approx(0.004 + 2e-4 + 256e-7, rel=1e-12)


def test_predict_never_below_floor():
    zero = StepTimeModel(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert zero.predict(4, 2) == MIN_STEP_S


def test_fit_recovers_noiseless_coefficients():
    samples = [(b, k, c, p, TRUE.predict(b, k, c, p)) for b, k, c, p in GRID]
    fitted = StepTimeModel.fit(samples)
    for name in COEFFICIENTS:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    assert fitted.rel_rmse < 1e-9


def test_fit_accepts_dicts_with_step_time_s():
    # A profile's medians name the target step_time_s; they fit without conversion.
    medians = [
        {
            "batch": b,
            "k": k,
            "context": c,
            "prefill_tokens": p,
            "step_time_s": TRUE.predict(b, k, c, p),
        }
        for b, k, c, p in GRID
    ]
    fitted = StepTimeModel.fit(medians)
    assert fitted.per_verify_token_s == pytest.approx(TRUE.per_verify_token_s, rel=1e-6)


def test_fit_is_nonnegative_least_squares():
    # A negative drafting cost cannot be represented: the fit must find the best model with
    # all coefficients >= 0. Check it against every active set solved by brute force.
    rng = np.random.default_rng(0)
    samples = []
    for b, k, c, p in GRID:
        seconds = 0.01 + 3e-4 * b + 2e-4 * b * k - 1.5e-3 * k + 5e-5 * p
        samples.append((b, k, c, p, seconds * (1 + 0.01 * rng.standard_normal())))
    fitted = StepTimeModel.fit(samples)
    coef = np.array([getattr(fitted, name) for name in COEFFICIENTS])
    assert np.all(coef >= 0)

    data = np.array(samples)
    b, k, c, p, y = data.T
    design = np.column_stack([np.ones_like(b), b, b * k, k, b * c, p]) / y[:, None]

    def objective(x):
        return float(np.sum((design @ x - 1.0) ** 2))

    best = np.inf
    for mask in itertools.product([False, True], repeat=len(COEFFICIENTS)):
        cols = np.array(mask)
        if not cols.any():
            continue
        x = np.zeros(len(COEFFICIENTS))
        x[cols] = np.linalg.lstsq(design[:, cols], np.ones_like(y), rcond=None)[0]
        if np.all(x >= 0):
            best = min(best, objective(x))
    assert objective(coef) <= best * (1 + 1e-9)
    assert fitted.rel_rmse == pytest.approx(np.sqrt(objective(coef) / len(y)), rel=1e-9)


def test_fit_rejects_bad_samples():
    with pytest.raises(ValueError, match="at least one sample"):
        StepTimeModel.fit([])
    with pytest.raises(ValueError, match="seconds > 0"):
        StepTimeModel.fit([(1, 0, 256, 0, 0.0)])
    with pytest.raises(ValueError, match="batch, k, context"):
        StepTimeModel.fit([(1, 0, 0.01)])


def test_model_rejects_negative_coefficients():
    with pytest.raises(ValueError, match="per_draft_pass_s"):
        StepTimeModel(0.01, 0.0, 0.0, -1e-3, 0.0, 0.0)


def test_model_dict_round_trip():
    model = StepTimeModel(0.004, 2e-4, 1.5e-4, 1e-3, 1e-7, 5e-5, rel_rmse=0.03)
    assert StepTimeModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    with pytest.raises(ValueError, match="per_prefill_token_s"):
        StepTimeModel.from_dict({name: 0.0 for name in COEFFICIENTS[:-1]})


def test_profile_save_load_round_trip(tmp_path):
    profile = make_profile()
    path = tmp_path / "profiles" / "ngram.json"
    profile.save(path)
    assert load_profile(path) == profile
    assert load_profile(path, model_id="0123456789abcdef", method="ngram") == profile
    assert json.loads(path.read_text())["method"] == "ngram"


def test_missing_profile_says_how_to_make_one(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ProfileError, match="python -m training.profile") as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_profile_for_another_method(tmp_path):
    path = tmp_path / "ngram.json"
    make_profile().save(path)
    with pytest.raises(
        ProfileError, match=f"profile {path} was made for method 'ngram', not 'draft_model'"
    ):
        load_profile(path, method="draft_model")


def test_profile_for_another_model(tmp_path):
    path = tmp_path / "ngram.json"
    make_profile().save(path)
    with pytest.raises(ProfileError, match="model_id '0123456789abcdef'.*not 'ffff'"):
        load_profile(path, model_id="ffff")


def test_corrupt_profiles(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(path)

    data = make_profile().to_dict()
    del data["step_time"]
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="lacks field.*step_time"):
        load_profile(path)

    data = make_profile().to_dict()
    data["method"] = "eagle"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="'eagle'"):
        load_profile(path)
