"""A trained PPO policy as plain numpy: the exported artifact, its loader and its controller.

`training.export.export_policy` writes two files into one directory:

- `policy.safetensors`: float32 tensors `<layer>.weight` (out, in) and `<layer>.bias` (out,)
  of the actor path only: the hidden layers of SB3's `mlp_extractor.policy_net`, then
  `action_net`, whose outputs are the logits of k = 0..k_max.
- `policy.json`: what is needed to run and trust them: the format tag, the feature schema
  version and names, k_max, the activation, the layer names in order, the observation
  normalisation (VecNormalize statistics, or null), the per-feature range seen in training,
  the engine it was trained on, a hash of the training config and the creation time, and the
  action mode.

Action modes: `absolute` (the logits are k = 0..k_max) and `residual` (the logits are offsets
-m..+m, `offset_max` = m, added to the k a base controller, normally the analytic goodput
controller, chooses for the same step; the sum is clipped to 0..k_max). A policy.json without
`action_mode` predates residual policies and is absolute.

Loading reads JSON and safetensors only, never pickle, so an artifact cannot run code, and
checks the artifact against what the caller expects (feature schema, names, k_max) before
anything decides with it. This module imports neither torch nor vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from agents.controller import Controller, Decision
from agents.features import Observation
from agents.records import StepRecord

POLICY_FORMAT = "turbospec-policy/1"
"""The format tag of `policy.json`; a loader refuses any other."""
METADATA_FILE = "policy.json"
WEIGHTS_FILE = "policy.safetensors"
ACTIVATIONS = ("tanh", "relu")
"""Hidden-layer activations the numpy forward pass implements."""

ABSOLUTE = "absolute"
"""Action mode: the policy's action is k itself."""
RESIDUAL = "residual"
"""Action mode: the policy's action is an offset to a base controller's k."""
ACTION_MODES = (ABSOLUTE, RESIDUAL)

ARTIFACT_MISSING = "artifact_missing"
"""PolicyError.reason: the directory or one of its files does not exist."""
ARTIFACT_CORRUPT = "artifact_corrupt"
"""PolicyError.reason: a file cannot be parsed or its contents are inconsistent."""
ARTIFACT_MISMATCH = "artifact_mismatch"
"""PolicyError.reason: a valid artifact made for another format, schema, feature list or k."""


class PolicyError(ValueError):
    """An exported policy that cannot be used; `reason` says which kind of problem it is."""

    def __init__(self, message: str, reason: str = ARTIFACT_CORRUPT) -> None:
        super().__init__(message)
        self.reason = reason
        """ARTIFACT_MISSING, ARTIFACT_CORRUPT or ARTIFACT_MISMATCH."""


def residual_k(base_k: int, action: int, offset_max: int, k_max: int) -> int:
    """The k of a residual action: base_k + (action - offset_max), clipped to 0..k_max.

    Actions 0..2 * offset_max are the offsets -offset_max..+offset_max, so the middle action
    keeps the base controller's k.
    """
    k = base_k + action - offset_max
    return 0 if k < 0 else k_max if k > k_max else k


def is_residual(metadata: Mapping[str, Any]) -> bool:
    """Whether an artifact's actions are offsets to a base controller's k (absolute if unset)."""
    return metadata.get("action_mode", ABSOLUTE) == RESIDUAL


def action_count(metadata: Mapping[str, Any]) -> int:
    """The number of logits an artifact's policy has: k_max + 1, or 2 * offset_max + 1."""
    if is_residual(metadata):
        return 2 * metadata["offset_max"] + 1
    return metadata["k_max"] + 1


@dataclass(frozen=True)
class ObsNormalization:
    """Observation statistics as SB3's VecNormalize applies them before the network.

    normalised = clip((obs - mean) / sqrt(var + epsilon), -clip, clip)
    """

    mean: np.ndarray
    """Running mean of every feature."""
    var: np.ndarray
    """Running variance of every feature."""
    clip: float
    """Bound of the normalised values (VecNormalize's clip_obs)."""
    epsilon: float = 1e-8
    """Added to the variance before the square root (VecNormalize's epsilon)."""


class NumpyPolicy:
    """The actor MLP of an SB3 `ActorCriticPolicy` with a Discrete action, in numpy float32.

    `act` is the deterministic action, the argmax of the logits, as
    `model.predict(obs, deterministic=True)` returns it. Every intermediate lives in a buffer
    allocated once, so a call allocates nothing beyond numpy's own call overhead: with 24
    features and two 64-unit tanh layers, `PPOController.decide` took a median 4.6 us (p99
    under 10 us) on the shared 2-core development machine (`python -m
    benchmarks.decision_time`; target 20 us). The buffers make an instance non-reentrant:
    give each thread its own.
    """

    def __init__(
        self,
        layers: Sequence[tuple[np.ndarray, np.ndarray]],
        activation: str,
        normalization: ObsNormalization | None = None,
    ) -> None:
        """`layers` are (weight, bias) pairs, weight laid out (in, out) for `x @ weight`.

        Every layer but the last is followed by `activation`; the last gives the logits.
        Raises PolicyError if the shapes do not chain or the activation is unknown.
        """
        if activation not in ACTIVATIONS:
            raise PolicyError(f"unknown activation {activation!r}, expected one of {ACTIVATIONS}")
        if not layers:
            raise PolicyError("a policy needs at least the action layer")
        weights = [
            (np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
            for w, b in layers
        ]
        width = weights[0][0].shape[0] if weights[0][0].ndim == 2 else -1
        for i, (weight, bias) in enumerate(weights):
            if weight.ndim != 2 or weight.shape[0] != width or bias.shape != weight.shape[1:]:
                raise PolicyError(
                    f"layer {i}: weight {weight.shape} and bias {bias.shape} do not map "
                    f"the previous layer's {width} outputs to one output per bias entry"
                )
            width = weight.shape[1]
        self.layers: tuple[tuple[np.ndarray, np.ndarray], ...] = tuple(weights)
        """(weight (in, out), bias (out,)) per layer, float32, the action layer last."""
        self.activation = activation
        self.normalization = normalization
        self.n_features: int = weights[0][0].shape[0]
        """Length of the observation vector."""
        self.n_actions: int = width
        """Number of logits: k_max + 1, or 2 * offset_max + 1 for a residual policy."""

        self._relu = activation == "relu"
        self._zero = np.zeros((), dtype=np.float32)
        self._hidden = tuple((w, b, np.empty(b.shape, np.float32)) for w, b in weights[:-1])
        self._head = (*weights[-1], np.empty(width, np.float32))
        self._normed = None
        if normalization is not None:
            mean = np.asarray(normalization.mean, dtype=np.float32)
            var = np.asarray(normalization.var, dtype=np.float64)
            if mean.shape != (self.n_features,) or var.shape != (self.n_features,):
                raise PolicyError(
                    f"normalisation mean {mean.shape} and var {var.shape} do not match "
                    f"{self.n_features} features"
                )
            self._mean = mean
            self._std = np.sqrt(var + normalization.epsilon).astype(np.float32)
            self._clip_hi = np.float32(normalization.clip)
            self._clip_lo = np.float32(-normalization.clip)
            self._normed = np.empty(self.n_features, np.float32)

    def _forward(self, vector: np.ndarray) -> np.ndarray:
        # The returned array is the reused logits buffer.
        x = vector if vector.dtype == np.float32 else vector.astype(np.float32)
        normed = self._normed
        if normed is not None:
            np.subtract(x, self._mean, out=normed)
            np.divide(normed, self._std, out=normed)
            np.minimum(normed, self._clip_hi, out=normed)
            np.maximum(normed, self._clip_lo, out=normed)
            x = normed
        relu = self._relu
        for weight, bias, out in self._hidden:
            np.dot(x, weight, out=out)
            np.add(out, bias, out=out)
            if relu:
                np.maximum(out, self._zero, out=out)
            else:
                np.tanh(out, out=out)
            x = out
        weight, bias, logits = self._head
        np.dot(x, weight, out=logits)
        np.add(logits, bias, out=logits)
        return logits

    def logits(self, vector: np.ndarray) -> np.ndarray:
        """The action logits (k = 0..k_max) for one observation vector, as a new array."""
        return self._forward(vector).copy()

    def act(self, vector: np.ndarray) -> int:
        """The deterministic action: the k with the largest logit (the first on ties)."""
        return int(self._forward(vector).argmax())


def load_policy(
    path: Path | str,
    *,
    schema_version: int | None = None,
    feature_names: Sequence[str] | None = None,
    k_max: int | None = None,
) -> tuple[NumpyPolicy, dict[str, Any]]:
    """Load an exported policy from its directory (or its policy.json) and check it.

    Every expectation given is compared with the artifact. Returns the policy and the parsed
    metadata. Raises PolicyError naming the file and the problem when a file is missing or
    unreadable, a tensor is missing or misshapen, or an expectation is not met (showing the
    expected and the found value).
    """
    path = Path(path)
    meta_path = path / METADATA_FILE if path.suffix != ".json" else path
    weights_path = meta_path.with_name(WEIGHTS_FILE)
    if not meta_path.is_file():
        raise PolicyError(f"{meta_path}: no such file", ARTIFACT_MISSING)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PolicyError(f"{meta_path}: unreadable JSON: {e}") from e
    if not isinstance(meta, dict):
        raise PolicyError(f"{meta_path}: expected a JSON object, found {type(meta).__name__}")
    _check_metadata(meta_path, meta)

    expected = {"schema_version": schema_version, "k_max": k_max}
    for key, value in expected.items():
        if value is not None and meta[key] != value:
            raise PolicyError(
                f"{meta_path}: {key} mismatch: expected {value}, found {meta[key]}",
                ARTIFACT_MISMATCH,
            )
    if feature_names is not None and tuple(feature_names) != tuple(meta["feature_names"]):
        raise PolicyError(
            f"{meta_path}: feature_names mismatch: "
            f"{_names_difference(feature_names, meta['feature_names'])}",
            ARTIFACT_MISMATCH,
        )

    if not weights_path.is_file():
        raise PolicyError(f"{weights_path}: no such file", ARTIFACT_MISSING)
    try:
        tensors = load_file(weights_path)
    except Exception as e:
        # The Rust reader raises SafetensorError, but dtype conversion can raise others.
        raise PolicyError(f"{weights_path}: unreadable safetensors: {e}") from e
    policy = _build_policy(weights_path, meta, tensors)
    return policy, meta


def _check_metadata(meta_path: Path, meta: dict[str, Any]) -> None:
    def fail(problem: str, reason: str = ARTIFACT_CORRUPT) -> PolicyError:
        return PolicyError(f"{meta_path}: {problem}", reason)

    if meta.get("format") != POLICY_FORMAT:
        raise fail(
            f"format mismatch: expected {POLICY_FORMAT!r}, found {meta.get('format')!r}",
            ARTIFACT_MISMATCH,
        )
    if meta.get("activation") not in ACTIVATIONS:
        raise fail(
            f"unknown activation {meta.get('activation')!r}, expected one of {ACTIVATIONS}",
            ARTIFACT_MISMATCH,
        )
    for key in ("schema_version", "k_max"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"{key} must be an integer >= 0, found {value!r}")
    mode = meta.get("action_mode", ABSOLUTE)
    if mode not in ACTION_MODES:
        raise fail(
            f"unknown action_mode {mode!r}, expected one of {ACTION_MODES}", ARTIFACT_MISMATCH
        )
    if mode == RESIDUAL:
        value = meta.get("offset_max")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise fail(f"a residual policy needs an integer offset_max >= 1, found {value!r}")
    for key in ("feature_names", "layers"):
        value = meta.get(key)
        if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            raise fail(f"{key} must be a non-empty list of strings, found {value!r}")
    n = len(meta["feature_names"])

    obs_range = meta.get("obs_range")
    if not isinstance(obs_range, dict):
        raise fail(f"obs_range must be an object with low and high, found {obs_range!r}")
    low, high = _vector(obs_range.get("low"), n), _vector(obs_range.get("high"), n)
    if low is None or high is None or not (low <= high).all():
        raise fail(f"obs_range must hold {n} finite low <= high values")

    norm = meta.get("obs_normalization")
    if norm is not None:
        if not isinstance(norm, dict):
            raise fail(f"obs_normalization must be an object or null, found {norm!r}")
        mean, var = _vector(norm.get("mean"), n), _vector(norm.get("var"), n)
        clip, eps = _number(norm.get("clip")), _number(norm.get("epsilon"))
        if (
            mean is None
            or var is None
            or (var < 0).any()
            or clip is None
            or clip <= 0
            or eps is None
            or eps < 0
        ):
            raise fail(
                f"obs_normalization needs {n} means and variances >= 0, clip > 0 and epsilon >= 0"
            )


def _build_policy(
    weights_path: Path, meta: dict[str, Any], tensors: Mapping[str, np.ndarray]
) -> NumpyPolicy:
    def fail(problem: str) -> PolicyError:
        return PolicyError(f"{weights_path}: {problem}")

    names = meta["layers"]
    wanted = {f"{name}.{part}" for name in names for part in ("weight", "bias")}
    missing, extra = sorted(wanted - tensors.keys()), sorted(tensors.keys() - wanted)
    if missing or extra:
        raise fail(f"tensors do not match the layers: missing {missing}, unexpected {extra}")
    for key, tensor in tensors.items():
        if tensor.dtype != np.float32:
            raise fail(f"tensor {key} is {tensor.dtype}, expected float32")
        if not np.isfinite(tensor).all():
            raise fail(f"tensor {key} holds NaN or infinite values")

    n_features, n_actions = len(meta["feature_names"]), action_count(meta)
    width = n_features
    for i, name in enumerate(names):
        weight, bias = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
        out = n_actions if i == len(names) - 1 else weight.shape[0]
        if weight.shape != (out, width) or bias.shape != (out,):
            raise fail(
                f"layer {name}: expected weight ({out}, {width}) and bias ({out},), "
                f"found {weight.shape} and {bias.shape}"
            )
        width = out

    norm = meta["obs_normalization"]
    normalization = None
    if norm is not None:
        normalization = ObsNormalization(
            mean=np.asarray(norm["mean"], dtype=np.float64),
            var=np.asarray(norm["var"], dtype=np.float64),
            clip=float(norm["clip"]),
            epsilon=float(norm["epsilon"]),
        )
    # Stored as torch's Linear (out, in); transposed once so inference computes x @ W.
    layers = [(tensors[f"{n}.weight"].T, tensors[f"{n}.bias"]) for n in names]
    return NumpyPolicy(layers, meta["activation"], normalization)


def _number(value: Any) -> float | None:
    """`value` as a finite float, or None if it is not a finite JSON number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if np.isfinite(value) else None


def _vector(value: Any, n: int) -> np.ndarray | None:
    """`value` as a float64 array of n finite numbers, or None if it is not one."""
    if not (isinstance(value, list) and len(value) == n):
        return None
    numbers = [_number(v) for v in value]
    return None if None in numbers else np.array(numbers, dtype=np.float64)


def _names_difference(expected: Sequence[str], found: Sequence[str]) -> str:
    """Where two feature lists part, readably: the lengths and the first differing entry."""
    expected, found = list(expected), list(found)
    for i, (a, b) in enumerate(zip(expected, found, strict=False)):
        if a != b:
            return (
                f"expected {len(expected)} names, found {len(found)}; "
                f"at index {i} expected {a!r}, found {b!r}"
            )
    longer, extra = ("expected", expected) if len(expected) > len(found) else ("found", found)
    tail = extra[min(len(expected), len(found)) :]
    return f"expected {len(expected)} names, found {len(found)}; {longer} has extra {tail}"


class PPOController:
    """Chooses k with an exported PPO policy: the deterministic action on the feature vector.

    A residual policy offsets the k of `base` (see the module docstring), which this
    controller then drives: it passes `reset` and `observe` on, so the base's state is the
    same as if it were deciding alone. Unguarded: it trusts every observation and the policy.
    Serving uses `agents.guarded.GuardedController`, which wraps the same policy with
    fallbacks.
    """

    name = "ppo"

    def __init__(
        self, policy: NumpyPolicy, metadata: Mapping[str, Any], base: Controller | None = None
    ) -> None:
        """Raises PolicyError (artifact_mismatch) for a residual policy without a `base`."""
        self.policy = policy
        self.metadata = metadata
        """The artifact's policy.json, e.g. for its engine and training-config hash."""
        self.residual = is_residual(metadata)
        """Whether the policy's actions are offsets to `base`'s k."""
        if self.residual and base is None:
            raise PolicyError(
                "a residual policy needs the base controller whose k it offsets",
                ARTIFACT_MISMATCH,
            )
        self.base = base if self.residual else None
        """The controller a residual policy offsets (None for an absolute policy)."""
        self._offset_max = metadata.get("offset_max", 0)
        self._k_max = metadata["k_max"]

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        schema_version: int | None = None,
        feature_names: Sequence[str] | None = None,
        k_max: int | None = None,
        base: Controller | None = None,
    ) -> PPOController:
        """A controller for the artifact at `path`, checked as `load_policy` checks it.

        `base` is required by residual policies and ignored by absolute ones.
        """
        policy, metadata = load_policy(
            path, schema_version=schema_version, feature_names=feature_names, k_max=k_max
        )
        return cls(policy, metadata, base)

    def reset(self) -> None:
        """An absolute policy is a function of the observation alone; reset a residual's base."""
        if self.base is not None:
            self.base.reset()

    def decide(self, obs: Observation) -> Decision:
        """The policy's deterministic k for the observation's feature vector."""
        action = self.policy.act(obs.vector)
        if self.base is None:
            return Decision(action)
        return Decision(residual_k(self.base.decide(obs).k, action, self._offset_max, self._k_max))

    def observe(self, record: StepRecord) -> None:
        """Pass the step to a residual policy's base; the policy itself reads observations."""
        if self.base is not None:
            self.base.observe(record)
