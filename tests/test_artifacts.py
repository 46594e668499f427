"""The shipped artifacts are portable: no machine's paths, and they load from anywhere."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

from agents.cost import load_profile
from agents.features import FeatureBuilder, FeatureConfig
from agents.guarded import GuardedController
from agents.paths import PROJECT_ROOT, SHIPPED_POLICY
from agents.policy import PPOController
from agents.registry import ControllerContext, build_controller, parse_controller
from serving.config import default_profile_path

CHECKPOINTS = PROJECT_ROOT / "checkpoints"


def _strings(value) -> Iterator[str]:
    """Every string in parsed JSON or YAML, keys included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list):
        yield from (text for item in value for text in _strings(item))
    elif isinstance(value, str):
        yield value


def test_no_shipped_json_or_yaml_holds_an_absolute_path():
    files = sorted(f for f in CHECKPOINTS.rglob("*") if f.suffix in (".json", ".yaml", ".yml"))
    assert CHECKPOINTS / "policies" / "ngram" / "policy.json" in files
    assert CHECKPOINTS / "profiles" / "ngram.json" in files
    for file in files:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
        # The tokenizers' vocabularies hold tokens of slashes alone ("/", "//"): not paths.
        paths = [s for s in _strings(data) if os.path.isabs(s) and s.strip("/")]
        assert not paths, f"{file.relative_to(PROJECT_ROOT)} holds absolute paths {paths[:3]}"


def test_the_shipped_policy_loads_from_a_copy_elsewhere(tmp_path, monkeypatch):
    copy = Path(shutil.copytree(SHIPPED_POLICY, tmp_path / "elsewhere" / "ngram"))
    monkeypatch.chdir(tmp_path)  # nothing may resolve against the project or the old cwd
    meta = json.loads((copy / "policy.json").read_text())
    assert meta["engine"]["model"] == "checkpoints/lm/target"
    # As serving builds it (serving.serving_scheduler): profile, features, then the controller.
    profile = load_profile(default_profile_path("ngram"), method="ngram")
    features = FeatureConfig(
        k_max=4, max_num_seqs=32, max_num_batched_tokens=2048, ttft_slo_s=1.0, tpot_slo_s=0.05
    )
    context = ControllerContext.from_features(features, profile)
    guarded = build_controller(parse_controller(f"guarded:{copy}", 4), context)
    assert isinstance(guarded, GuardedController)
    assert guarded.policy is not None, guarded.last_reason
    plain = build_controller(parse_controller(f"ppo:{copy}", 4), context)
    assert isinstance(plain, PPOController) and plain.residual
    obs = FeatureBuilder(features).build(0.0)
    assert guarded.decide(obs).k == plain.decide(obs).k
    assert guarded.active == "ppo"
