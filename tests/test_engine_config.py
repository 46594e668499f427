"""Engine configuration and model-directory checks: bad input fails before vLLM starts."""

from __future__ import annotations

import json
import shutil

import pytest

from agents.controller import check_k
from agents.paths import LM_DIR
from serving.config import EngineConfig, ModelDirError, project_relative, read_model_config
from serving.live_engine import LiveEngine


@pytest.fixture
def model_copy(tmp_path):
    """A writable copy of the shipped target model."""
    folder = tmp_path / "target"
    shutil.copytree(LM_DIR / "target", folder)
    return folder


def test_shipped_models_pass_the_checks():
    target = read_model_config(LM_DIR / "target")
    draft = read_model_config(LM_DIR / "draft")
    assert target["vocab_size"] == draft["vocab_size"]
    EngineConfig(method="draft_model").check_models()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "eagle"}, "method='eagle' is not one of ngram, draft_model, none"),
        ({"k_max": 0}, "k_max=0 is outside 1..16 for method 'ngram'"),
        ({"k_max": 17, "method": "draft_model"}, "k_max=17 is outside 1..16"),
        ({"method": "none", "k_max": 2}, "method='none' runs no speculation: k_max must be 0"),
        ({"max_num_seqs": 0}, "max_num_seqs=0 must be >= 1"),
        ({"max_num_seqs": 64, "max_num_batched_tokens": 32}, "max_num_batched_tokens=32 must be"),
        ({"ngram_min": 3, "ngram_max": 2}, "ngram_min=3 <= ngram_max=2"),
        ({"kv_cache_gib": 0}, "kv_cache_gib=0 must be >= 1"),
    ],
)
def test_bad_engine_config_names_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**fields)


def test_a_project_relative_model_path_reads_back_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recorded = [
        project_relative(EngineConfig().model),
        project_relative(EngineConfig().draft_model),
    ]
    assert recorded == ["checkpoints/lm/target", "checkpoints/lm/draft"]
    assert EngineConfig(model=recorded[0], draft_model=recorded[1]) == EngineConfig()
    assert EngineConfig(model="org/model-id").model == "org/model-id", "a model id is kept"


def test_missing_model_directory(tmp_path):
    with pytest.raises(ModelDirError, match=f"model directory {tmp_path / 'nope'} does not exist"):
        LiveEngine(EngineConfig(model=str(tmp_path / "nope")))


def test_corrupt_config_json(model_copy):
    (model_copy / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="config.json is not valid JSON"):
        LiveEngine(EngineConfig(model=str(model_copy)))


def test_config_without_vocab_size(model_copy):
    (model_copy / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelDirError, match="has no integer vocab_size"):
        read_model_config(model_copy)


def test_truncated_weights(model_copy):
    weights = next(model_copy.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelDirError, match=f"{weights.name} is not a readable safetensors file"):
        LiveEngine(EngineConfig(model=str(model_copy)))


def test_missing_weights_and_tokenizer(model_copy):
    (model_copy / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match="has no tokenizer.json"):
        read_model_config(model_copy)
    for weights in model_copy.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelDirError, match=r"has no \*.safetensors weights"):
        read_model_config(model_copy)


def test_draft_with_another_vocabulary(model_copy, tmp_path):
    draft = tmp_path / "draft"
    shutil.copytree(LM_DIR / "draft", draft)
    config = json.loads((draft / "config.json").read_text())
    config["vocab_size"] += 1
    (draft / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelDirError, match="draft vocab_size=.* differs from target vocab_size"):
        EngineConfig(
            model=str(model_copy), draft_model=str(draft), method="draft_model"
        ).check_models()


def test_max_model_len_beyond_the_model():
    limit = read_model_config(LM_DIR / "target")["max_position_embeddings"]
    with pytest.raises(ValueError, match=f"max_model_len={limit + 1} exceeds the model's"):
        EngineConfig(max_model_len=limit + 1).check_models()


def test_check_k():
    assert check_k(3, 4) == 3
    assert check_k(0, 4) == 0
    import numpy as np

    assert check_k(np.int64(2), 4) == 2
    with pytest.raises(ValueError, match="k=5 is outside 0..k_max=4"):
        check_k(5, 4)
    with pytest.raises(TypeError, match="k must be an integer, got True"):
        check_k(True, 4)
