"""The GPU deployment cost models (gpu, roofline) and the presets that ship: pure numpy."""

from __future__ import annotations

import copy
import csv
import itertools
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from agents.cost import MIN_STEP_S, StepLoad
from agents.cost.gpu import GpuCost
from agents.cost.profile import ProfileError, load_profile, profile_path
from agents.cost.roofline import RooflineCost

GPU_PRESETS = ("a100-llama3-8b", "h100-llama2-7b")
PRESETS = (*GPU_PRESETS, "a100-llama3-8b-roofline")
SPECULATING = ("ngram", "draft_model")
ROOT = Path(__file__).resolve().parents[1]
LLAMA3_8B_CSV = ROOT.parent / "shared/gpu-profiles/vidur/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"
LLAMA3_8B_LAYERS = 32
"""num_hidden_layers of meta-llama/Meta-Llama-3-8B (its config.json)."""
README_MS = {1: 9.7, 64: 11.2, 512: 34.7}
"""../shared/gpu-profiles/README.md: A100, Llama 3 8B, summed medians over 32 layers."""


def preset_data(name: str) -> dict:
    return json.loads(profile_path(name).read_text())


def increasing(values, *, strictly: bool = True) -> bool:
    return all(b > a if strictly else b >= a for a, b in itertools.pairwise(values))


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("method", SPECULATING)
def test_presets_load_for_both_methods(name, method):
    profile = load_profile(name, method=method)
    assert profile.method == method and method in profile.methods
    assert profile.cost.kind == profile.kind in ("gpu", "roofline")
    assert "not a measurement" in profile.source
    assert {"max_num_seqs", "max_num_batched_tokens", "kv_cache_gib"} <= set(profile.engine)
    assert profile.engine["max_num_batched_tokens"] >= profile.engine["max_num_seqs"] >= 1
    assert set(profile.slo) == {"ttft_s", "tpot_s"}
    assert profile.cost.seconds(StepLoad.uniform(8, 2)) > MIN_STEP_S
    for section in ("gpu", "target", "draft"):
        assert profile.data["cost"][section]["source"]
    if profile.kind == "gpu":
        for name_ in profile.data["cost"]["layers"]["files"]:
            assert name_.startswith("../shared/gpu-profiles/vidur/")


def test_load_profile_refuses_a_method_the_preset_does_not_list(tmp_path):
    with pytest.raises(ProfileError, match="not 'eagle'"):
        load_profile("a100-llama3-8b", method="eagle")
    data = preset_data("a100-llama3-8b") | {"methods": ["ngram"]}
    path = tmp_path / "ngram-only.json"
    path.write_text(json.dumps(data))
    assert load_profile(path, method="ngram").method == "ngram"
    with pytest.raises(ProfileError, match="prices ngram engines, not 'draft_model'"):
        load_profile(path, method="draft_model")


def test_a100_llama3_layers_match_the_readme():
    cost = load_profile("a100-llama3-8b", method="ngram").cost
    for tokens, ms in README_MS.items():
        assert cost.layers_seconds(tokens) * 1e3 == pytest.approx(ms, rel=0.03), tokens


@pytest.mark.skipif(not LLAMA3_8B_CSV.is_file(), reason="../shared/gpu-profiles is absent")
def test_a100_llama3_layers_match_vidur_csv():
    # Summed here from the CSV's own columns: every per-operator median but the embedding's
    # runs once per layer.
    sums = defaultdict(list)
    with LLAMA3_8B_CSV.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["num_tensor_parallel_workers"] != "1":
                continue
            per_layer = sum(
                float(value)
                for column, value in row.items()
                if column.endswith(".median") and column != "time_stats.emb.median"
            )
            ms = LLAMA3_8B_LAYERS * per_layer + float(row["time_stats.emb.median"])
            sums[int(row["num_tokens"])].append(ms / 1e3)
    cost = load_profile("a100-llama3-8b", method="ngram").cost
    for tokens in (1, 8, 64, 128, 136, 264, 512, 1000, 2048, 4096, 8192):
        assert cost.layers_seconds(tokens) == pytest.approx(
            statistics.fmean(sums[tokens]), rel=0.01
        ), tokens
    # Past the table's last point the extension follows the measured compute-bound slope.
    assert cost.layers_seconds(16384) == pytest.approx(statistics.fmean(sums[16384]), rel=0.05)


def test_verification_nearly_free_at_small_batch_and_costly_at_large():
    cost = load_profile("a100-llama3-8b", method="ngram").cost
    small = [cost.seconds(StepLoad.uniform(8, k)) for k in (0, 4)]
    assert small[1] / small[0] < 1.15
    large = [cost.seconds(StepLoad.uniform(256, k)) for k in (0, 4)]
    assert large[1] / large[0] > 2.0


@pytest.mark.parametrize("name", PRESETS)
def test_attention_grows_with_context(name):
    cost = load_profile(name, method="ngram").cost
    contexts = (64, 256, 1024, 4096)
    attention = [cost.parts(StepLoad.uniform(32, 2, c))["attention"] for c in contexts]
    total = [cost.seconds(StepLoad.uniform(32, 2, c)) for c in contexts]
    assert increasing(attention), attention
    assert increasing(total), total
    chunk = [cost.parts(StepLoad(prefill=((512, cached),)))["attention"] for cached in (0, 2048)]
    assert chunk[1] > chunk[0] > 0


@pytest.mark.parametrize("name", PRESETS)
def test_draft_model_costs_more_than_ngram_and_more_with_draft_len(name):
    ngram = load_profile(name, method="ngram").cost
    draft = load_profile(name, method="draft_model").cost
    none = load_profile(name, method="none").cost

    def load(draft_len: int) -> StepLoad:
        return StepLoad(decode_context=(300,) * 16, verified=(2,) * 16, draft_len=draft_len)

    gaps = [draft.seconds(load(d)) - ngram.seconds(load(d)) for d in range(6)]
    # The first pass runs even at k = 0 (it keeps the draft's KV cache in step).
    assert gaps[0] == pytest.approx(gaps[1]) and gaps[0] > 0
    assert increasing(gaps[1:]), gaps
    assert none.seconds(load(0)) == ngram.seconds(load(0))


def test_gpu_and_roofline_presets_differ_only_in_the_decoder_layers():
    gpu = load_profile("a100-llama3-8b", method="draft_model").cost
    roofline = load_profile("a100-llama3-8b-roofline", method="draft_model").cost
    assert isinstance(gpu, GpuCost) and isinstance(roofline, RooflineCost)
    load = StepLoad(decode_context=(100, 700, 2000), verified=(0, 3, 4), prefill=((256, 64),))
    measured, modelled = gpu.parts(load), roofline.parts(load)
    assert measured.pop("layers") != modelled.pop("layers")
    assert measured == modelled


@pytest.mark.parametrize("method", SPECULATING)
def test_roofline_monotone_in_tokens_and_context(method):
    cost = load_profile("a100-llama3-8b-roofline", method=method).cost
    for context in (16, 512, 3000):
        grid = [
            [cost.seconds(StepLoad.uniform(batch, k, context)) for k in range(6)]
            for batch in (1, 2, 8, 31, 64, 100, 160, 256, 400)
        ]
        for row in grid:
            assert increasing(row, strictly=False), row
        for column in zip(*grid, strict=True):
            assert increasing(column), column
    for batch, k in ((1, 0), (64, 3), (256, 4)):
        by_context = [cost.seconds(StepLoad.uniform(batch, k, c)) for c in (0, 100, 1000, 8000)]
        assert increasing(by_context), by_context
    by_prompt = [cost.seconds(StepLoad(prefill=((p, 0),))) for p in (1, 64, 512, 2048, 8192)]
    assert increasing(by_prompt, strictly=False), by_prompt


def test_an_empty_step_costs_the_fixed_overhead():
    profile = load_profile("a100-llama3-8b", method="draft_model")
    assert profile.cost.seconds(StepLoad()) == profile.data["cost"]["step_overhead_s"]


def _drop(path: str):
    def mutate(params: dict) -> None:
        *parents, key = path.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        del node[key]

    return mutate


def _set(path: str, value):
    def mutate(params: dict) -> None:
        *parents, key = path.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[key] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (_drop("gpu.peak_tflops"), "cost.gpu.peak_tflops"),
        (_set("gpu.memory_bandwidth_gb_s", -2039), "cost.gpu.memory_bandwidth_gb_s"),
        (_set("gpu.peak_tflops", "fast"), "cost.gpu.peak_tflops"),
        (_drop("target.kv_heads"), "cost.target.kv_heads"),
        (_set("target.layers", 0), "cost.target.layers"),
        (_set("target.tied_embeddings", "no"), "cost.target.tied_embeddings"),
        (_drop("draft"), "cost.draft"),
        (_set("draft.head_dim", 64.5), "cost.draft.head_dim"),
        (_drop("step_overhead_s"), "cost.step_overhead_s"),
        (_set("step_overhead_s", -0.001), "cost.step_overhead_s"),
        (_drop("layers"), "cost.layers"),
        (_set("layers.num_tokens", []), "cost.layers.num_tokens"),
        (_set("layers.seconds", [0.01]), "cost.layers"),
        (_set("layers", {"num_tokens": [8, 4], "seconds": [0.01, 0.02]}), "cost.layers.num_tokens"),
    ],
)
def test_bad_params_raise_naming_the_field(mutate, field):
    params = copy.deepcopy(preset_data("a100-llama3-8b")["cost"])
    mutate(params)
    with pytest.raises(ValueError, match=re.escape(field)):
        GpuCost.from_params(params, "draft_model")


def test_ngram_needs_no_draft_and_profiles_name_the_bad_field(tmp_path):
    params = copy.deepcopy(preset_data("a100-llama3-8b")["cost"])
    del params["draft"]
    assert GpuCost.from_params(params, "ngram").deployment.draft is None
    with pytest.raises(ValueError, match="method 'eagle'"):
        GpuCost.from_params(params, "eagle")
    data = preset_data("a100-llama3-8b-roofline")
    data["cost"]["gpu"]["memory_bandwidth_gb_s"] = -1
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=re.escape("cost.gpu.memory_bandwidth_gb_s")):
        load_profile(path, method="ngram")
