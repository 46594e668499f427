"""Step cost models (fitted, table), step loads, counterfactual counts and profile files,
on synthetic timings with known answers."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from agents.cost import LinearCost, ProfileError, StepLoad, TableCost, load_profile
from agents.cost.fitted import COEFFICIENTS
from agents.cost.load import load_of
from agents.cost.model import MIN_STEP_S
from agents.cost.profile import save_profile
from agents.records import RequestStep

TRUE = LinearCost(
    overhead_s=0.004,
    per_request_s=2e-4,
    per_verify_token_s=1.5e-4,
    per_draft_pass_s=1e-3,
    per_context_token_s=1e-7,
    per_prefill_token_s=5e-5,
)
GRID = list(itertools.product([1, 2, 4, 8, 16], [0, 1, 2, 4], [128, 512], [0, 256]))


def request(rid="r", *, drafted=0, accepted=0, proposed=0, prefill=0, context=100) -> RequestStep:
    return RequestStep(
        request_id=rid,
        k=drafted,
        drafted=drafted,
        accepted=accepted,
        generated=accepted + 1,
        prefill_tokens=prefill,
        output_tokens=10,
        first_token_at=0.0,
        context=context,
        proposed=proposed,
    )


# --- loads -------------------------------------------------------------------------------


def test_uniform_load():
    load = StepLoad.uniform(8, 3, 300, prefill_tokens=100)
    assert load.num_decode == 8 and load.verified_tokens == 24 and load.draft_len == 3
    assert load.prefill_tokens == 100 and load.num_tokens == 8 + 24 + 100
    assert load.mean_context == 300
    assert StepLoad.uniform(0, 3).draft_len == 0


def test_load_of_records_and_counterfactual_k():
    requests = [
        request("a", drafted=2, accepted=1, proposed=4, context=50),
        request("b", drafted=4, accepted=4, proposed=4, context=70),
        request("c", prefill=30, context=10),
    ]
    load = load_of(requests)
    assert load.decode_context == (50, 70) and load.verified == (2, 4)
    assert load.prefill == ((30, 10),) and load.draft_len == 4
    at_one = load_of(requests, verified=lambda r: min(1, r.proposed))
    assert at_one.verified == (1, 1) and at_one.draft_len == 1 and at_one.prefill == load.prefill


def test_load_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="2 decode contexts but 1 verified"):
        StepLoad((10, 20), (1,))


def test_counterfactual_accepted_counts():
    # Verified 2 of 4 proposed drafts, first one accepted: a rejection bounds every k.
    rejected = request(drafted=2, accepted=1, proposed=4)
    assert [rejected.accepted_if(k) for k in range(6)] == [0, 1, 1, 1, 1, 1]
    assert not any(rejected.censored_if(k) for k in range(6))
    # Verified 2, both accepted: exact up to 2, a lower bound beyond (up to the proposal).
    clean = request(drafted=2, accepted=2, proposed=4)
    assert [clean.accepted_if(k) for k in range(6)] == [0, 1, 2, 2, 2, 2]
    assert [clean.censored_if(k) for k in range(6)] == [False] * 3 + [True] * 3
    # Nothing beyond the proposal can be accepted: exact there.
    short = request(drafted=2, accepted=2, proposed=2)
    assert short.accepted_if(4) == 2 and not short.censored_if(4)
    # Where the hits of the whole proposal are known (the twin), nothing is censored.
    known = dataclasses.replace(clean, hits=3)
    assert [known.accepted_if(k) for k in range(6)] == [0, 1, 2, 3, 3, 3]
    assert not any(known.censored_if(k) for k in range(6))


# --- fitted ------------------------------------------------------------------------------


def test_linear_seconds_by_hand():
    # 0.004 + 8*2e-4 + 24*1.5e-4 + 3*1e-3 + 8*300*1e-7 + 100*5e-5
    expected = 0.004 + 0.0016 + 0.0036 + 0.003 + 0.00024 + 0.005
    assert TRUE.seconds(StepLoad.uniform(8, 3, 300, 100)) == pytest.approx(expected, rel=1e-12)
    assert LinearCost(0, 0, 0, 0, 0, 0).seconds(StepLoad.uniform(4, 2)) == MIN_STEP_S


def test_fit_recovers_noiseless_coefficients():
    samples = [(load, TRUE.seconds(load)) for load in (StepLoad.uniform(*g) for g in GRID)]
    fitted = LinearCost.fit(samples)
    for name in COEFFICIENTS:
        assert getattr(fitted, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    assert fitted.rel_rmse < 1e-9


def test_fit_is_nonnegative_least_squares():
    # A negative drafting cost cannot be represented: the fit must find the best model with
    # all coefficients >= 0. Check it against every active set solved by brute force.
    rng = np.random.default_rng(0)
    samples = []
    for b, k, c, p in GRID:
        seconds = 0.01 + 3e-4 * b + 2e-4 * b * k - 1.5e-3 * k + 5e-5 * p
        load = StepLoad.uniform(b, k, c, p)
        samples.append((load, seconds * (1 + 0.01 * rng.standard_normal())))
    fitted = LinearCost.fit(samples)
    coef = np.array([getattr(fitted, name) for name in COEFFICIENTS])
    assert np.all(coef >= 0)
    y = np.array([s for _, s in samples])
    design = np.array([[1, b, b * k, k, b * c, p] for b, k, c, p in GRID]) / y[:, None]

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


def test_fit_and_coefficients_reject_bad_input():
    with pytest.raises(ValueError, match="at least one sample"):
        LinearCost.fit([])
    with pytest.raises(ValueError, match="seconds > 0"):
        LinearCost.fit([(StepLoad.uniform(1, 0), 0.0)])
    with pytest.raises(ValueError, match="per_draft_pass_s"):
        LinearCost(0.01, 0.0, 0.0, -1e-3, 0.0, 0.0)
    with pytest.raises(ValueError, match="per_prefill_token_s"):
        LinearCost.from_params({name: 0.0 for name in COEFFICIENTS[:-1]})


def test_linear_params_round_trip():
    model = LinearCost(0.004, 2e-4, 1.5e-4, 1e-3, 1e-7, 5e-5, rel_rmse=0.03)
    assert LinearCost.from_params(json.loads(json.dumps(model.to_params()))) == model


# --- table -------------------------------------------------------------------------------


def bent(batch: int, verified: float, context: float) -> float:
    """An ngram-like shape: flat in k at small batches, steep at large ones."""
    return 0.004 + 1e-4 * batch + 2e-6 * batch * context + 6e-6 * batch**2 * verified


def table_of(shape, batches=(1, 4, 16, 32), ks=range(5), prompts=(64, 256)) -> TableCost:
    decode = [
        {
            "batch": b,
            "k": k,
            "context": c,
            "verified": k,
            "mean_context": c + 30,
            "step_time_s": shape(b, k, c + 30),
        }
        for b, k, c in itertools.product(batches, ks, prompts)
    ]
    prefill = [{"batch": 0, "prefill_tokens": p, "added_s": 0.004 + 1e-4 * p} for p in (64, 1024)]
    prefill += [
        {"batch": b, "prefill_tokens": p, "added_s": 1e-4 * p} for b in (1, 32) for p in (64, 1024)
    ]
    return TableCost(decode, prefill)


def test_table_is_exact_on_its_cells_and_linear_between():
    table = table_of(bent)
    for b, k, c in [(4, 2, 94), (16, 4, 286), (1, 0, 94), (32, 3, 286)]:
        assert table.seconds(StepLoad.uniform(b, k, c)) == pytest.approx(bent(b, k, c), rel=1e-9)
    # Halfway between two batch sizes, or two verified counts, at grid coordinates otherwise:
    # the mean of the two.
    assert table.seconds(StepLoad.uniform(10, 2, 94)) == pytest.approx(
        (bent(4, 2, 94) + bent(16, 2, 94)) / 2, rel=1e-9
    )
    half = StepLoad((94,) * 4, (1, 1, 2, 2))
    assert table.seconds(half) == pytest.approx((bent(4, 1, 94) + bent(4, 2, 94)) / 2, rel=1e-9)


def test_table_follows_a_bent_shape_the_linear_fit_misses():
    table = table_of(bent)
    samples = [
        (StepLoad.uniform(b, k, c), bent(b, k, c))
        for b, k, c in itertools.product((1, 4, 16, 32), range(5), (94, 286))
    ]
    linear = LinearCost.fit(samples)
    held = [
        (StepLoad.uniform(b, k, c), bent(b, k, c))
        for b, k, c in itertools.product((2, 8, 24), range(5), (150, 200))
    ]

    def rmse(model):
        return np.sqrt(np.mean([(model.seconds(load) / s - 1) ** 2 for load, s in held]))

    assert rmse(table) < 0.05
    assert rmse(linear) > 2 * rmse(table)


def test_table_prices_prompt_chunks():
    table = table_of(bent)
    decode = StepLoad.uniform(1, 0, 64)
    with_prompt = StepLoad(decode.decode_context, decode.verified, ((512, 0),))
    assert table.seconds(with_prompt) - table.seconds(decode) == pytest.approx(512e-4, rel=1e-9)
    assert table.seconds(StepLoad(prefill=((512, 0),))) == pytest.approx(0.004 + 512e-4)


def test_table_rejects_bad_cells():
    with pytest.raises(ValueError, match="at least one decode cell"):
        TableCost([])
    with pytest.raises(ValueError, match="lacks verified"):
        TableCost([{"batch": 1, "k": 0, "context": 1, "mean_context": 1, "step_time_s": 0.1}])


# --- profile files -----------------------------------------------------------------------


def measured(kind="table", **overrides) -> dict:
    cost = table_of(bent).to_params() if kind == "table" else TRUE.to_params()
    data = {
        "kind": kind,
        "source": "synthetic, for tests",
        "model": "checkpoints/lm/target",
        "model_id": "0123456789abcdef",
        "method": "ngram",
        "acceptance": 0.55,
        "cost": cost,
    }
    return data | overrides


@pytest.mark.parametrize("kind", ["table", "fitted"])
def test_profile_round_trip(tmp_path, kind):
    path = tmp_path / "ngram.json"
    save_profile(path, measured(kind))
    profile = load_profile(path, model_id="0123456789abcdef", method="ngram")
    assert profile.kind == kind and profile.name == "ngram" and profile.measured
    assert profile.acceptance == 0.55
    load = StepLoad.uniform(4, 2, 100)
    expected = table_of(bent) if kind == "table" else TRUE
    assert profile.cost.seconds(load) == pytest.approx(expected.seconds(load))


def test_shipped_names_resolve():
    # The measured tables ship for both methods and the plain engine.
    for method in ("ngram", "draft_model", "none"):
        assert load_profile(method, method=method).kind == "table"


def test_missing_profile_names_the_spec(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ProfileError, match="python -m training.profile") as info:
        load_profile(path)
    assert "nope.json" in str(info.value)
    with pytest.raises(ProfileError, match="no profile 'a100-nonsense'"):
        load_profile("a100-nonsense")


def test_profile_for_another_method_or_model(tmp_path):
    path = tmp_path / "ngram.json"
    save_profile(path, measured())
    with pytest.raises(ProfileError, match="made for method 'ngram', not 'draft_model'"):
        load_profile(path, method="draft_model")
    with pytest.raises(ProfileError, match="model_id '0123456789abcdef'.*not 'ffff'"):
        load_profile(path, model_id="ffff")


def test_corrupt_profiles(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(path)
    save_profile(path, measured(kind="spline"))
    with pytest.raises(ProfileError, match="kind 'spline'"):
        load_profile(path)
    data = measured()
    del data["source"]
    save_profile(path, data)
    with pytest.raises(ProfileError, match="lacks field.*source"):
        load_profile(path)
    save_profile(path, measured(cost={"prefill": []}))
    with pytest.raises(ProfileError, match="malformed.*decode cells"):
        load_profile(path)
    save_profile(path, measured(kind="gpu"))
    with pytest.raises(ProfileError, match=r"\(gpu\) lacks field.*deployment"):
        load_profile(path)
