"""Exporting SB3 PPO policies and running them in numpy: same actions, no pickle, clear errors."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from agents.cost import LinearCost
from agents.features import SCHEMA_VERSION, feature_bounds, feature_names
from agents.goodput import GoodputController
from agents.paths import PROJECT_ROOT
from agents.policy import (
    ARTIFACT_CORRUPT,
    ARTIFACT_MISMATCH,
    ARTIFACT_MISSING,
    METADATA_FILE,
    WEIGHTS_FILE,
    PolicyError,
    PPOController,
    load_policy,
    residual_k,
)
from agents.records import RequestStep
from agents.static import StaticController
from tests.factories import decode_step, observation
from training.export import config_hash, export_policy

K_MAX = 4
NAMES = feature_names()
LOW, HIGH = feature_bounds()
ENGINE = {"method": "ngram", "model": "target", "model_id": "lm/target"}
TRAIN_CONFIG = {"lr": 3e-4, "n_steps": 2048, "trace": "bursty"}


class SpacesEnv(gymnasium.Env):
    """The speculation environment's spaces with random observations and no reward."""

    def __init__(self, n_actions: int = K_MAX + 1) -> None:
        self.observation_space = gymnasium.spaces.Box(LOW, HIGH, dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(n_actions)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def make_model(n_actions: int = K_MAX + 1, **policy_kwargs) -> PPO:
    return PPO("MlpPolicy", SpacesEnv(n_actions), policy_kwargs=policy_kwargs, seed=0, device="cpu")


def export(model: PPO, out_dir: Path, **kwargs) -> Path:
    return export_policy(
        model,
        out_dir,
        feature_names=NAMES,
        schema_version=SCHEMA_VERSION,
        k_max=K_MAX,
        train_config=TRAIN_CONFIG,
        **{"engine": ENGINE} | kwargs,
    )


def sample_observations(n_inside: int = 400, n_beyond: int = 200) -> np.ndarray:
    """Uniform within the bounds, then up to 3 feature-ranges beyond them on either side."""
    rng = np.random.default_rng(1)
    inside = rng.uniform(LOW, HIGH, size=(n_inside, len(NAMES)))
    width = HIGH - LOW
    beyond = rng.uniform(LOW - 3 * width, HIGH + 3 * width, size=(n_beyond, len(NAMES)))
    return np.concatenate([inside, beyond]).astype(np.float32)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """One exported default policy; tests that damage it work on a copy."""
    return export(make_model(), tmp_path_factory.mktemp("policy"))


@pytest.fixture
def artifact_copy(artifact, tmp_path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "policy"))


@pytest.mark.parametrize(
    "policy_kwargs",
    [
        {},
        {"activation_fn": torch.nn.ReLU},
        {"net_arch": {"pi": [32], "vf": [64, 64]}},
        {"net_arch": {"pi": [], "vf": [64]}, "activation_fn": torch.nn.ReLU},
    ],
    ids=["tanh-64x64", "relu-64x64", "tanh-pi32", "linear-pi"],
)
def test_round_trip_matches_sb3(policy_kwargs, tmp_path):
    model = make_model(**policy_kwargs)
    policy, meta = load_policy(export(model, tmp_path))
    obs = sample_observations()
    expected, _ = model.predict(obs, deterministic=True)
    found = np.array([policy.act(o) for o in obs])
    assert len(set(expected.tolist())) > 1, "a policy choosing one k everywhere tests little"
    np.testing.assert_array_equal(found, expected)
    activation = "relu" if policy_kwargs.get("activation_fn") is torch.nn.ReLU else "tanh"
    assert meta["activation"] == activation


def test_round_trip_with_vecnormalize(tmp_path):
    model = make_model()
    venv = VecNormalize(DummyVecEnv([SpacesEnv]), clip_obs=3.0)
    rng = np.random.default_rng(2)
    venv.obs_rms.mean = rng.uniform(LOW, HIGH).astype(np.float64)
    venv.obs_rms.var = rng.uniform(0.001, 0.5, size=len(NAMES))
    stats = {
        "obs_mean": venv.obs_rms.mean,
        "obs_var": venv.obs_rms.var,
        "obs_clip": venv.clip_obs,
        "obs_epsilon": venv.epsilon,
    }
    policy, meta = load_policy(export(model, tmp_path, **stats))
    obs = sample_observations()
    normalized = venv.normalize_obs(obs)
    # The same formula by hand, so the test does not rest on VecNormalize alone.
    by_hand = np.clip((obs - venv.obs_rms.mean) / np.sqrt(venv.obs_rms.var + venv.epsilon), -3, 3)
    np.testing.assert_allclose(normalized, by_hand, rtol=1e-6)
    assert (np.abs(normalized) == 3.0).any(), "some observations should be clipped"

    expected, _ = model.predict(normalized, deterministic=True)
    found = np.array([policy.act(o) for o in obs])
    assert len(set(expected.tolist())) > 1
    np.testing.assert_array_equal(found, expected)
    norm = meta["obs_normalization"]
    assert norm["clip"] == 3.0 and norm["epsilon"] == venv.epsilon
    np.testing.assert_array_equal(norm["mean"], venv.obs_rms.mean)


def test_metadata(artifact):
    meta = json.loads((artifact / METADATA_FILE).read_text())
    assert meta["format"] == "turbospec-policy/1"
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["feature_names"] == list(NAMES)
    assert meta["k_max"] == K_MAX
    assert meta["activation"] == "tanh"
    assert meta["layers"] == [
        "mlp_extractor.policy_net.0",
        "mlp_extractor.policy_net.2",
        "action_net",
    ]
    assert meta["obs_normalization"] is None
    assert meta["obs_range"] == {"low": LOW.tolist(), "high": HIGH.tolist()}
    assert meta["engine"] == ENGINE
    assert re.fullmatch(r"[0-9a-f]{16}", meta["train_config_hash"])
    assert meta["train_config_hash"] == config_hash(dict(reversed(TRAIN_CONFIG.items())))
    assert meta["train_config_hash"] != config_hash({**TRAIN_CONFIG, "lr": 1e-4})
    assert datetime.fromisoformat(meta["created"]).utcoffset().total_seconds() == 0

    tensors = load_file(artifact / WEIGHTS_FILE)
    assert {k: v.shape for k, v in tensors.items()} == {
        "mlp_extractor.policy_net.0.weight": (64, len(NAMES)),
        "mlp_extractor.policy_net.0.bias": (64,),
        "mlp_extractor.policy_net.2.weight": (64, 64),
        "mlp_extractor.policy_net.2.bias": (64,),
        "action_net.weight": (K_MAX + 1, 64),
        "action_net.bias": (K_MAX + 1,),
    }
    assert all(v.dtype == np.float32 for v in tensors.values())


def test_model_paths_are_recorded_relative_to_the_project(tmp_path):
    engine = {
        "model": str(PROJECT_ROOT / "checkpoints" / "lm" / "target"),
        "draft_model": str(PROJECT_ROOT / "checkpoints" / "lm" / "draft"),
        "method": "ngram",
        "k_max": K_MAX,
    }
    out = export(make_model(), tmp_path, engine=engine)
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["engine"] == engine | {
        "model": "checkpoints/lm/target",
        "draft_model": "checkpoints/lm/draft",
    }


def test_training_range_is_recorded(tmp_path):
    low, high = LOW + 0.1, HIGH - 0.1
    _, meta = load_policy(export(make_model(), tmp_path, obs_low=low, obs_high=high))
    np.testing.assert_allclose(meta["obs_range"]["low"], low, rtol=1e-6)
    np.testing.assert_allclose(meta["obs_range"]["high"], high, rtol=1e-6)


def test_export_rejects_unsupported_policies(tmp_path):
    class BoxActions(SpacesEnv):
        def __init__(self) -> None:
            super().__init__()
            self.action_space = gymnasium.spaces.Box(0.0, 4.0, shape=(1,), dtype=np.float32)

    with pytest.raises(ValueError, match=r"not Discrete\(5\)"):
        export(PPO("MlpPolicy", BoxActions(), device="cpu"), tmp_path)
    with pytest.raises(ValueError, match=r"not Discrete\(4\)"):
        export_policy(
            make_model(),
            tmp_path,
            feature_names=NAMES,
            schema_version=1,
            k_max=3,
            engine={},
            train_config={},
        )
    with pytest.raises(ValueError, match="not a Box of shape"):
        export_policy(
            make_model(),
            tmp_path,
            feature_names=NAMES[:-1],
            schema_version=1,
            k_max=K_MAX,
            engine={},
            train_config={},
        )
    with pytest.raises(ValueError, match="activation"):
        export(make_model(activation_fn=torch.nn.GELU), tmp_path)
    with pytest.raises(ValueError, match="together"):
        export(make_model(), tmp_path, obs_mean=np.zeros(len(NAMES)))
    assert not (tmp_path / METADATA_FILE).exists()


def test_numpy_policy_accepts_float64_and_copies_logits(artifact):
    policy, _ = load_policy(artifact)
    x = sample_observations(3, 0)[1]
    assert policy.act(x.astype(np.float64)) == policy.act(x)
    logits = policy.logits(x)
    policy.logits(x + 1)
    np.testing.assert_array_equal(logits, policy.logits(x))
    assert int(logits.argmax()) == policy.act(x)


def test_loading_never_unpickles(artifact, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a policy")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    controller = PPOController.load(
        artifact, schema_version=SCHEMA_VERSION, feature_names=NAMES, k_max=K_MAX
    )
    assert 0 <= controller.policy.act(sample_observations(1, 0)[0]) <= K_MAX


def test_agents_import_neither_torch_nor_vllm(artifact):
    code = (
        "import sys; from agents.guarded import GuardedController; "
        "from agents.policy import load_policy; "
        f"load_policy({str(artifact)!r}); "
        "bad = sorted(m for m in ('torch', 'vllm', 'stable_baselines3') if m in sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def _rewrite_json(key, value):
    def damage(path: Path) -> None:
        meta = json.loads((path / METADATA_FILE).read_text())
        meta[key] = value
        (path / METADATA_FILE).write_text(json.dumps(meta))

    return damage


def _rewrite_tensor(key, make):
    def damage(path: Path) -> None:
        tensors = load_file(path / WEIGHTS_FILE)
        if make is None:
            del tensors[key]
        else:
            tensors[key] = make(tensors[key])
        save_file(tensors, path / WEIGHTS_FILE)

    return damage


def _truncate(path: Path) -> None:
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])


BROKEN = {
    "no-json": (
        lambda p: (p / METADATA_FILE).unlink(),
        ARTIFACT_MISSING,
        r"policy\.json: no such file",
    ),
    "no-weights": (
        lambda p: (p / WEIGHTS_FILE).unlink(),
        ARTIFACT_MISSING,
        r"policy\.safetensors: no such file",
    ),
    "corrupt-json": (
        lambda p: (p / METADATA_FILE).write_text('{"format": "turbospec-policy/1", '),
        ARTIFACT_CORRUPT,
        r"policy\.json: unreadable JSON",
    ),
    "json-not-object": (
        lambda p: (p / METADATA_FILE).write_text("[1, 2]"),
        ARTIFACT_CORRUPT,
        r"policy\.json: expected a JSON object, found list",
    ),
    "truncated-weights": (
        _truncate,
        ARTIFACT_CORRUPT,
        r"policy\.safetensors: unreadable safetensors",
    ),
    "garbage-weights": (
        lambda p: (p / WEIGHTS_FILE).write_bytes(b"\x00" * 3),
        ARTIFACT_CORRUPT,
        r"policy\.safetensors: unreadable safetensors",
    ),
    "wrong-shape": (
        _rewrite_tensor("mlp_extractor.policy_net.2.weight", lambda w: w[:, :32].copy()),
        ARTIFACT_CORRUPT,
        r"policy\.safetensors: layer mlp_extractor\.policy_net\.2: expected weight \(64, 64\) "
        r"and bias \(64,\), found \(64, 32\)",
    ),
    "wrong-action-count": (
        _rewrite_tensor("action_net.bias", lambda b: b[:3].copy()),
        ARTIFACT_CORRUPT,
        r"layer action_net: expected weight \(5, 64\) and bias \(5,\), found \(5, 64\) and \(3,\)",
    ),
    "missing-tensor": (
        _rewrite_tensor("action_net.bias", None),
        ARTIFACT_CORRUPT,
        r"missing \['action_net\.bias'\]",
    ),
    "float64-tensor": (
        _rewrite_tensor("action_net.bias", lambda b: b.astype(np.float64)),
        ARTIFACT_CORRUPT,
        r"action_net\.bias is float64, expected float32",
    ),
    "nan-weight": (
        _rewrite_tensor("action_net.weight", lambda w: np.full_like(w, np.nan)),
        ARTIFACT_CORRUPT,
        r"action_net\.weight holds NaN",
    ),
    "unknown-format": (
        _rewrite_json("format", "turbospec-policy/2"),
        ARTIFACT_MISMATCH,
        r"format mismatch: expected 'turbospec-policy/1', found 'turbospec-policy/2'",
    ),
    "unknown-activation": (
        _rewrite_json("activation", "gelu"),
        ARTIFACT_MISMATCH,
        r"unknown activation 'gelu'",
    ),
    "bad-range": (
        _rewrite_json("obs_range", {"low": [0.0], "high": [1.0]}),
        ARTIFACT_CORRUPT,
        r"obs_range must hold 24 finite low <= high values",
    ),
    "json-k-max-disagrees-with-weights": (
        _rewrite_json("k_max", 3),
        ARTIFACT_CORRUPT,
        r"layer action_net: expected weight \(4, 64\)",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_artifacts_raise_policy_error(case, artifact_copy):
    damage, reason, message = BROKEN[case]
    damage(artifact_copy)
    with pytest.raises(PolicyError, match=message) as raised:
        load_policy(artifact_copy)
    assert raised.value.reason == reason
    assert str(artifact_copy) in str(raised.value)


def test_missing_directory(tmp_path):
    with pytest.raises(PolicyError, match="no such file") as raised:
        load_policy(tmp_path / "nowhere")
    assert raised.value.reason == ARTIFACT_MISSING
    assert "nowhere" in str(raised.value)


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"k_max": 3}, r"k_max mismatch: expected 3, found 4"),
        ({"schema_version": 2}, r"schema_version mismatch: expected 2, found 1"),
        (
            {"feature_names": (*NAMES[:5], "acceptance_x", *NAMES[6:])},
            r"feature_names mismatch: expected 24 names, found 24; "
            r"at index 5 expected 'acceptance_x', found 'acceptance_2'",
        ),
        (
            {"feature_names": feature_names(4)},
            r"feature_names mismatch: expected 20 names, found 24; at index 7 expected",
        ),
        (
            {"feature_names": NAMES[:-1]},
            r"expected 23 names, found 24; found has extra \['goodput'\]",
        ),
    ],
)
def test_expectation_mismatch(expectation, message, artifact):
    with pytest.raises(PolicyError, match=message) as raised:
        load_policy(artifact / METADATA_FILE, **expectation)
    assert raised.value.reason == ARTIFACT_MISMATCH
    assert METADATA_FILE in str(raised.value)


def test_matching_expectations_load(artifact):
    policy, meta = load_policy(
        artifact, schema_version=SCHEMA_VERSION, feature_names=list(NAMES), k_max=K_MAX
    )
    assert (policy.n_features, policy.n_actions) == (len(NAMES), K_MAX + 1)
    assert meta["k_max"] == K_MAX


@pytest.mark.parametrize(
    ("base_k", "action", "offset_max", "expected"),
    [
        (2, 1, 1, 2),  # the middle action keeps the base's k
        (2, 0, 1, 1),
        (2, 2, 1, 3),
        (0, 0, 1, 0),  # clipped at 0
        (4, 2, 1, 4),  # clipped at k_max
        (3, 0, 2, 1),
        (3, 4, 2, 4),
    ],
)
def test_residual_k(base_k, action, offset_max, expected):
    assert residual_k(base_k, action, offset_max, K_MAX) == expected


@pytest.fixture(scope="module")
def residual_model() -> PPO:
    return make_model(n_actions=3)


@pytest.fixture(scope="module")
def residual_artifact(residual_model, tmp_path_factory) -> Path:
    return export(
        residual_model, tmp_path_factory.mktemp("residual"), action_mode="residual", offset_max=1
    )


def test_residual_policy_offsets_its_base(residual_model, residual_artifact):
    meta = json.loads((residual_artifact / METADATA_FILE).read_text())
    assert (meta["action_mode"], meta["offset_max"], meta["k_max"]) == ("residual", 1, K_MAX)
    with pytest.raises(PolicyError, match="base controller") as raised:
        PPOController.load(residual_artifact)
    assert raised.value.reason == ARTIFACT_MISMATCH

    obs = sample_observations()
    offsets, _ = residual_model.predict(obs, deterministic=True)
    assert set(offsets.tolist()) == {0, 1, 2}, "every offset should occur to test them all"
    for base_k in (0, 2, 4):
        controller = PPOController.load(residual_artifact, base=StaticController(base_k))
        found = [controller.decide(observation(2, vector=o)).k for o in obs]
        expected = [min(max(base_k + int(a) - 1, 0), K_MAX) for a in offsets]
        assert found == expected


def test_residual_policy_drives_its_base(residual_artifact):
    base = GoodputController(LinearCost(0.01, 5e-4, 5e-4, 0.0, 0.0, 0.0), K_MAX, 8)
    controller = PPOController.load(residual_artifact, base=base)
    controller.observe(
        decode_step(
            [
                RequestStep(
                    "a",
                    k=4,
                    drafted=4,
                    accepted=0,
                    generated=1,
                    prefill_tokens=0,
                    output_tokens=5,
                    first_token_at=0.0,
                )
            ]
        )
    )
    assert base.alpha < base.prior, "the base learns acceptance from the steps it is given"
    controller.reset()
    assert base.alpha == base.prior


def test_artifact_without_action_mode_is_absolute(artifact_copy):
    meta = json.loads((artifact_copy / METADATA_FILE).read_text())
    assert meta.pop("action_mode") == "absolute"
    (artifact_copy / METADATA_FILE).write_text(json.dumps(meta))
    controller = PPOController.load(artifact_copy)
    assert not controller.residual and controller.base is None
    obs = sample_observations(20, 0)
    found = [controller.decide(observation(2, vector=o)).k for o in obs]
    assert found == [controller.policy.act(o) for o in obs]


@pytest.mark.parametrize(
    ("changes", "reason", "message"),
    [
        ({"action_mode": "sideways"}, ARTIFACT_MISMATCH, "unknown action_mode 'sideways'"),
        ({"offset_max": None}, ARTIFACT_CORRUPT, "needs an integer offset_max >= 1"),
        ({"offset_max": 0}, ARTIFACT_CORRUPT, "needs an integer offset_max >= 1"),
        ({"offset_max": 2}, ARTIFACT_CORRUPT, r"layer action_net: expected weight \(5, 64\)"),
    ],
)
def test_broken_residual_metadata(changes, reason, message, residual_artifact, tmp_path):
    copy = Path(shutil.copytree(residual_artifact, tmp_path / "policy"))
    meta = json.loads((copy / METADATA_FILE).read_text()) | changes
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(PolicyError, match=message) as raised:
        load_policy(copy)
    assert raised.value.reason == reason


def test_export_checks_the_action_mode(residual_model, tmp_path):
    with pytest.raises(ValueError, match="action_mode"):
        export(residual_model, tmp_path, action_mode="relative")
    with pytest.raises(ValueError, match="offset_max >= 1"):
        export(residual_model, tmp_path, action_mode="residual")
    with pytest.raises(ValueError, match=r"not Discrete\(5\)"):
        export(residual_model, tmp_path, action_mode="residual", offset_max=2)
    with pytest.raises(ValueError, match=r"not Discrete\(5\)"):
        export(residual_model, tmp_path)
