"""Export a trained SB3 PPO policy as a pickle-free artifact that `agents.policy` runs in numpy.

Only the actor path is written (the `mlp_extractor.policy_net` Linear layers and
`action_net`): the value head and optimiser state are training-only. The layout of the two
files is described in `agents.policy`. After writing, the artifact is loaded back the way
serving loads it and its logits are compared with the torch policy's, so an export that
succeeds is known to reproduce the policy.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.numpy import save_file
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, MlpExtractor

from agents.policy import (
    ABSOLUTE,
    ACTION_MODES,
    METADATA_FILE,
    POLICY_FORMAT,
    RESIDUAL,
    WEIGHTS_FILE,
    action_count,
    load_policy,
)
from serving.config import project_relative

_ACTIVATION_NAMES = {torch.nn.Tanh: "tanh", torch.nn.ReLU: "relu"}
_VERIFY_SAMPLES = 256
_VERIFY_TOLERANCE = 1e-4
"""Largest |numpy - torch| logit difference accepted: float32 sums in another order."""


def config_hash(train_config: Mapping[str, Any]) -> str:
    """First 16 hex digits of the sha256 of `train_config` as canonical JSON.

    Canonical: sorted keys, no whitespace, non-JSON values (paths, enums) as their str().
    """
    text = json.dumps(train_config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def export_policy(
    model: PPO,
    out_dir: Path,
    *,
    feature_names: Sequence[str],
    schema_version: int,
    k_max: int,
    engine: Mapping[str, Any],
    train_config: Mapping[str, Any],
    obs_low: np.ndarray | None = None,
    obs_high: np.ndarray | None = None,
    obs_mean: np.ndarray | None = None,
    obs_var: np.ndarray | None = None,
    obs_clip: float | None = None,
    obs_epsilon: float = 1e-8,
    action_mode: str = ABSOLUTE,
    offset_max: int = 0,
) -> Path:
    """Write `policy.safetensors` and `policy.json` for `model` into `out_dir`; return it.

    `obs_low`/`obs_high` are the per-feature range seen in training (the guard's notion of
    in-distribution); without them the observation space's bounds are used. `obs_mean`,
    `obs_var`, `obs_clip` and `obs_epsilon` are a VecNormalize's `obs_rms.mean`,
    `obs_rms.var`, `clip_obs` and `epsilon` when training normalised observations; give all
    of mean, var and clip or none. `action_mode` is absolute (actions are k = 0..k_max) or
    residual (actions are offsets -offset_max..+offset_max to a base controller's k; see
    `agents.policy`). Paths in `engine` (the models) are recorded relative to the project, so
    the artifact holds no machine's paths. Raises ValueError when the policy is not an
    MlpPolicy over a flat Box with a Discrete action of the mode's size, or the arguments do
    not fit it, and RuntimeError if the written artifact does not reproduce the policy's
    logits.
    """
    if action_mode not in ACTION_MODES:
        raise ValueError(f"action_mode={action_mode!r} must be one of {ACTION_MODES}")
    if action_mode == RESIDUAL and offset_max < 1:
        raise ValueError(f"a residual policy needs offset_max >= 1, got {offset_max}")
    mode = {"action_mode": action_mode}
    if action_mode == RESIDUAL:
        mode["offset_max"] = offset_max
    policy = model.policy
    n = len(feature_names)
    layers = _actor_layers(policy, n, action_count(mode | {"k_max": k_max}))
    activation = _ACTIVATION_NAMES[policy.activation_fn]

    low = policy.observation_space.low if obs_low is None else obs_low
    high = policy.observation_space.high if obs_high is None else obs_high
    low, high = _floats("obs_low", low, n), _floats("obs_high", high, n)
    if not (low <= high).all():
        raise ValueError("obs_low must be <= obs_high for every feature")

    given = [v is not None for v in (obs_mean, obs_var, obs_clip)]
    if any(given) and not all(given):
        raise ValueError("give obs_mean, obs_var and obs_clip together (VecNormalize stats)")
    normalization = None
    if all(given):
        normalization = {
            "mean": _floats("obs_mean", obs_mean, n).tolist(),
            "var": _floats("obs_var", obs_var, n).tolist(),
            "clip": float(obs_clip),
            "epsilon": float(obs_epsilon),
        }

    tensors = {}
    for name, linear in layers:
        tensors[f"{name}.weight"] = _numpy(linear.weight)
        tensors[f"{name}.bias"] = _numpy(linear.bias)
    metadata = {
        "format": POLICY_FORMAT,
        "schema_version": schema_version,
        "feature_names": list(feature_names),
        "k_max": k_max,
        "activation": activation,
        "layers": [name for name, _ in layers],
        "obs_normalization": normalization,
        "obs_range": {"low": low.tolist(), "high": high.tolist()},
        "engine": {
            key: project_relative(value) if isinstance(value, str) else value
            for key, value in engine.items()
        },
        **mode,
        "train_config_hash": config_hash(train_config),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Weights first, metadata last, each renamed into place: a reader never sees a
    # policy.json whose weights are still being written.
    weights_tmp = out_dir / f"{WEIGHTS_FILE}.tmp"
    save_file(tensors, weights_tmp)
    os.replace(weights_tmp, out_dir / WEIGHTS_FILE)
    meta_tmp = out_dir / f"{METADATA_FILE}.tmp"
    meta_tmp.write_text(json.dumps(metadata, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(meta_tmp, out_dir / METADATA_FILE)

    _verify(policy, out_dir, low, high, normalization, schema_version, feature_names, k_max)
    return out_dir


def _actor_layers(
    policy: ActorCriticPolicy, n_features: int, n_actions: int
) -> list[tuple[str, torch.nn.Linear]]:
    """The actor's Linear layers in order, after checking the policy is the supported shape."""
    if type(policy) is not ActorCriticPolicy:
        raise ValueError(
            f"unsupported policy {type(policy).__name__}: only MlpPolicy (ActorCriticPolicy) "
            f"over a flat Box observation is supported"
        )
    obs_space, action_space = policy.observation_space, policy.action_space
    if not isinstance(obs_space, spaces.Box) or obs_space.shape != (n_features,):
        raise ValueError(
            f"observation space {obs_space} is not a Box of shape ({n_features},), "
            f"one entry per feature name"
        )
    if not isinstance(action_space, spaces.Discrete) or (action_space.n, action_space.start) != (
        n_actions,
        0,
    ):
        raise ValueError(
            f"action space {action_space} is not Discrete({n_actions}), one action per k "
            f"(absolute) or per offset (residual)"
        )
    if type(policy.pi_features_extractor) is not FlattenExtractor:
        raise ValueError(
            f"unsupported features extractor {type(policy.pi_features_extractor).__name__}: "
            f"only FlattenExtractor (the MlpPolicy default) has no weights to export"
        )
    if policy.activation_fn not in _ACTIVATION_NAMES:
        raise ValueError(
            f"unsupported activation {policy.activation_fn.__name__}: "
            f"expected one of {[a.__name__ for a in _ACTIVATION_NAMES]}"
        )
    extractor = policy.mlp_extractor
    if type(extractor) is not MlpExtractor:
        raise ValueError(f"unsupported mlp_extractor {type(extractor).__name__}")
    modules = list(extractor.policy_net)
    # MlpExtractor builds policy_net as Linear, activation, Linear, activation, ...
    linears, activations = modules[0::2], modules[1::2]
    if len(linears) != len(activations) or not (
        all(type(m) is torch.nn.Linear for m in linears)
        and all(type(m) is policy.activation_fn for m in activations)
    ):
        raise ValueError(f"unexpected policy_net layout: {[type(m).__name__ for m in modules]}")
    if type(policy.action_net) is not torch.nn.Linear:
        raise ValueError(f"unexpected action_net {type(policy.action_net).__name__}")
    names = [f"mlp_extractor.policy_net.{2 * i}" for i in range(len(linears))]
    return [*zip(names, linears, strict=True), ("action_net", policy.action_net)]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=np.float32)


def _floats(name: str, values: Any, n: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,) or not np.isfinite(array).all():
        raise ValueError(f"{name} must hold {n} finite values, got shape {array.shape}")
    return array


def _verify(
    policy: ActorCriticPolicy,
    out_dir: Path,
    low: np.ndarray,
    high: np.ndarray,
    normalization: dict[str, Any] | None,
    schema_version: int,
    feature_names: Sequence[str],
    k_max: int,
) -> None:
    """Load the artifact as serving does and compare its logits with the torch policy's."""
    loaded, _ = load_policy(
        out_dir, schema_version=schema_version, feature_names=feature_names, k_max=k_max
    )
    rng = np.random.default_rng(0)
    obs = rng.uniform(low, high, size=(_VERIFY_SAMPLES, len(low))).astype(np.float32)
    net_input = obs
    if normalization is not None:
        mean, var = np.asarray(normalization["mean"]), np.asarray(normalization["var"])
        scaled = (obs - mean) / np.sqrt(var + normalization["epsilon"])
        net_input = np.clip(scaled, -normalization["clip"], normalization["clip"])
    with torch.no_grad():
        features = policy.pi_features_extractor(torch.as_tensor(net_input, dtype=torch.float32))
        expected = policy.action_net(policy.mlp_extractor.forward_actor(features)).numpy()
    found = np.stack([loaded.logits(row) for row in obs])
    error = float(np.abs(found - expected).max())
    if error > _VERIFY_TOLERANCE:
        raise RuntimeError(
            f"{out_dir}: exported policy's logits differ from the torch policy's by {error:.3g}"
        )
