"""Profile files: one cost model each, saying its kind and where its numbers come from.

Every profile lives under `checkpoints/profiles/` and is named by its file stem (or given by
path). Two families:

- measured (`table`, `fitted`): written by `python -m training.profile` for one model (a
  content hash of its files) and one speculation method; loading one for another model or
  method is refused.
- deployment (`gpu`, `roofline`): the cost of a named GPU deployment, built from published
  measurements and datasheet constants. They price any engine of the methods they list,
  whatever model it runs, because they name the deployment they price; they also carry the
  engine limits and SLOs typical of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.cost.fitted import LinearCost
from agents.cost.model import CostModel
from agents.cost.table import TableCost
from agents.paths import PROFILE_DIR

"""Where profiles ship; a bare name resolves to `<name>.json` here."""
METHODS = ("ngram", "draft_model", "none")
"""Speculation methods ("none": the engine does not speculate)."""
MEASURED_KINDS = ("table", "fitted")
DEPLOYMENT_KINDS = ("gpu", "roofline")
KINDS = MEASURED_KINDS + DEPLOYMENT_KINDS


class ProfileError(ValueError):
    """A profile is missing, unreadable, of an unknown kind, or made for another model or
    method."""


@dataclass(frozen=True)
class Profile:
    """The contents of one profile file, with its cost model built for one method."""

    name: str
    """The file stem, e.g. "ngram" or "a100-llama3-8b"."""
    kind: str
    """table, fitted, gpu or roofline."""
    source: str
    """Where the numbers come from."""
    method: str
    """The speculation method the cost model was built for."""
    cost: CostModel = field(repr=False)
    """The step cost model."""
    methods: tuple[str, ...] = ()
    """Methods the profile prices: the one measured, or those a deployment lists."""
    model: str | None = None
    """Measured kinds: the model directory, relative to the project."""
    model_id: str | None = None
    """Measured kinds: content hash of the model (and draft) files."""
    deployment: str | None = None
    """Deployment kinds: the GPU, model and parallelism priced."""
    engine: Mapping[str, Any] = field(default_factory=dict)
    """Deployment kinds: engine limits typical of the deployment (max_num_seqs,
    max_num_batched_tokens, kv_cache_gib), which the CPU engine takes in model time."""
    slo: Mapping[str, float] = field(default_factory=dict)
    """Deployment kinds: SLOs (ttft_s, tpot_s) that bind at the deployment's speed."""
    acceptance: float | None = None
    """Measured kinds: the mean acceptance measured while profiling."""
    data: Mapping[str, Any] = field(default_factory=dict, repr=False)
    """The whole file, as read."""

    @property
    def measured(self) -> bool:
        """Whether the numbers were measured on the engine itself (table, fitted)."""
        return self.kind in MEASURED_KINDS

    def describe(self) -> str:
        """One line for logs and tables: name, kind and what it prices."""
        what = self.deployment if self.deployment else f"{self.method} on {self.model}"
        return f"{self.name} ({self.kind}: {what})"


def profile_path(spec: str | Path) -> Path:
    """The file a profile spec names: an existing path, or a name under PROFILE_DIR."""
    path = Path(spec)
    if path.is_file():
        return path
    named = PROFILE_DIR / f"{spec}.json"
    if named.is_file() and path.name == str(spec):
        return named
    return path


def available_profiles() -> list[str]:
    """Names of the profiles that ship under PROFILE_DIR."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def build_cost(kind: str, params: Mapping[str, Any], method: str) -> CostModel:
    """The cost model of one kind from its parameters, for engines of `method`."""
    if kind == "fitted":
        return LinearCost.from_params(params)
    if kind == "table":
        return TableCost.from_params(params)
    if kind == "gpu":
        from agents.cost.gpu import GpuCost

        return GpuCost.from_params(params, method)
    if kind == "roofline":
        from agents.cost.roofline import RooflineCost

        return RooflineCost.from_params(params, method)
    raise ValueError(f"unknown cost model kind {kind!r}; expected one of {', '.join(KINDS)}")


def load_profile(
    spec: str | Path, *, model_id: str | None = None, method: str | None = None
) -> Profile:
    """Read a profile (a path or a shipped name) and build its cost model for `method`.

    A measured profile must have been made for `model_id` and `method` when they are given;
    a deployment profile must list `method`. Raises ProfileError naming the file and what
    is wrong.
    """
    path = profile_path(spec)
    if not path.is_file():
        shipped = ", ".join(available_profiles()) or "none"
        raise ProfileError(
            f"no profile {spec!r}: not a file, nor a name under {PROFILE_DIR.name}/ "
            f"(shipped: {shipped}); measure one with `python -m training.profile`"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"profile {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must hold a JSON object, not {type(data).__name__}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise ProfileError(f"profile {path} has kind {kind!r}; expected one of {', '.join(KINDS)}")
    required = ("source", "cost") + (
        ("model", "model_id", "method", "acceptance")
        if kind in MEASURED_KINDS
        else ("deployment", "methods", "engine", "slo")
    )
    missing = [name for name in required if name not in data]
    if missing:
        raise ProfileError(f"profile {path} ({kind}) lacks field(s) {', '.join(missing)}")

    if kind in MEASURED_KINDS:
        methods = (data["method"],)
        if data["method"] not in METHODS:
            raise ProfileError(f"profile {path} has method {data['method']!r}")
        if method is not None and method != data["method"]:
            raise ProfileError(
                f"profile {path} was made for method {data['method']!r}, not {method!r}"
            )
        if model_id is not None and data["model_id"] != model_id:
            raise ProfileError(
                f"profile {path} was made for model_id {data['model_id']!r} "
                f"({data['model']}), not {model_id!r}; re-profile with "
                "`python -m training.profile`"
            )
    else:
        methods = tuple(data["methods"])
        if method is not None and method not in methods:
            raise ProfileError(
                f"profile {path} prices {', '.join(methods)} engines, not {method!r}"
            )
    bound = method or methods[0]
    try:
        cost = build_cost(kind, data["cost"], bound)
        acceptance = data.get("acceptance")
        if acceptance is not None and not (
            isinstance(acceptance, int | float) and 0.0 <= acceptance <= 1.0
        ):
            raise ValueError(f"acceptance={acceptance!r} must lie in [0, 1]")
        slo = {key: float(value) for key, value in data.get("slo", {}).items()}
        if any(not (math.isfinite(v) and v > 0) for v in slo.values()):
            raise ValueError(f"slo={slo} must hold positive seconds")
    except (TypeError, ValueError, KeyError) as exc:
        raise ProfileError(f"profile {path} is malformed: {exc}") from None
    return Profile(
        name=path.stem,
        kind=kind,
        source=str(data["source"]),
        method=bound,
        cost=cost,
        methods=methods,
        model=data.get("model"),
        model_id=data.get("model_id"),
        deployment=data.get("deployment"),
        engine=dict(data.get("engine", {})),
        slo=slo,
        acceptance=None if acceptance is None else float(acceptance),
        data=data,
    )


def save_profile(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write a profile as indented JSON, creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
