"""The engine's configuration, checked before vLLM is touched."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from safetensors import safe_open

from agents.paths import LM_DIR, PROFILE_DIR, PROJECT_ROOT
from serving.model_id import model_id

Method = Literal["ngram", "draft_model", "none"]
METHODS: tuple[str, ...] = ("ngram", "draft_model", "none")


class ModelDirError(ValueError):
    """A model directory is missing, incomplete or unreadable."""


@dataclass(frozen=True)
class EngineConfig:
    """What engine to build: models, speculation method and batch limits."""

    model: str = str(LM_DIR / "target")
    """Target model directory (Hugging Face layout: config.json, safetensors, tokenizer); a
    relative path names the folder under the project's root when it has one (`project_path`)."""
    draft_model: str = str(LM_DIR / "draft")
    """Draft model directory, used when method is draft_model (relative paths as for model)."""
    method: Method = "ngram"
    """Speculation method: ngram (prompt lookup), draft_model, or none (no speculation)."""
    k_max: int = 4
    """The most draft tokens per request per step (vLLM's num_speculative_tokens)."""
    max_num_seqs: int = 32
    """Most requests running at once; further arrivals queue."""
    max_num_batched_tokens: int = 2048
    """Token budget of one step, shared by prefills, decodes and drafts."""
    max_model_len: int = 1024
    """Longest prompt plus output a request may have."""
    ngram_min: int = 2
    """ngram method: shortest prompt suffix to look up."""
    ngram_max: int = 4
    """ngram method: longest prompt suffix to look up."""
    kv_cache_gib: int = 1
    """KV-cache memory on the CPU (VLLM_CPU_KVCACHE_SPACE), in whole GiB."""
    dtype: str = "float32"
    """Compute dtype; float32 is fastest for the tiny CPU models."""
    enable_prefix_caching: bool = False
    """Off by default so replays of the same prompts cost the same every episode."""
    seed: int = 0
    """vLLM's sampling seed."""

    def __post_init__(self) -> None:
        # Run configs and artifacts record the models relative to the project
        # (`project_relative`): read back from any directory, they name the same folders.
        object.__setattr__(self, "model", project_path(self.model))
        object.__setattr__(self, "draft_model", project_path(self.draft_model))
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {', '.join(METHODS)}")
        if self.method == "none" and self.k_max != 0:
            raise ValueError(
                f"method='none' runs no speculation: k_max must be 0, got {self.k_max}"
            )
        if self.method != "none" and not 1 <= self.k_max <= 16:
            raise ValueError(f"k_max={self.k_max} is outside 1..16 for method {self.method!r}")
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= "
                f"max_num_seqs={self.max_num_seqs}"
            )
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min={self.ngram_min} <= ngram_max={self.ngram_max}")
        if isinstance(self.kv_cache_gib, bool) or not isinstance(self.kv_cache_gib, int):
            raise TypeError(f"kv_cache_gib={self.kv_cache_gib!r} must be a whole number of GiB")
        if self.kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib={self.kv_cache_gib} must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record of every field."""
        return asdict(self)

    def speculative_config(self) -> dict[str, Any] | None:
        """vLLM's speculative_config for this method, or None for no speculation."""
        if self.method == "none":
            return None
        spec: dict[str, Any] = {"method": self.method, "num_speculative_tokens": self.k_max}
        if self.method == "ngram":
            spec |= {"prompt_lookup_min": self.ngram_min, "prompt_lookup_max": self.ngram_max}
        else:
            spec["model"] = self.draft_model
        return spec

    def check_request(self, request_id: str, prompt_tokens: int, output_tokens: int) -> None:
        """Raise ValueError (TypeError for a non-int output length) for a request this engine
        cannot run: an empty id or prompt, no output, or more than max_model_len tokens."""
        if not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id must be a non-empty string, got {request_id!r}")
        if prompt_tokens == 0:
            raise ValueError(f"request {request_id!r}: the prompt is empty")
        if isinstance(output_tokens, bool) or not isinstance(output_tokens, int):
            raise TypeError(f"request {request_id!r}: output_tokens must be an int")
        if output_tokens < 1:
            raise ValueError(f"request {request_id!r}: output_tokens={output_tokens} must be >= 1")
        total = prompt_tokens + output_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"request {request_id!r}: prompt of {prompt_tokens} tokens plus "
                f"{output_tokens} output tokens = {total} exceeds "
                f"max_model_len={self.max_model_len}"
            )

    def model_id(self) -> str:
        """Content hash of the models this engine serves (and its draft, for draft_model)."""
        folders = [self.model] + ([self.draft_model] if self.method == "draft_model" else [])
        return model_id(*folders)

    def check_models(self) -> dict[str, Any]:
        """Check the model directories before vLLM loads them; return the target's config."""
        target = read_model_config(self.model)
        limit = target.get("max_position_embeddings")
        if isinstance(limit, int) and self.max_model_len > limit:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's "
                f"max_position_embeddings={limit} ({self.model})"
            )
        if self.method == "draft_model":
            draft = read_model_config(self.draft_model)
            if draft.get("vocab_size") != target.get("vocab_size"):
                raise ModelDirError(
                    f"draft vocab_size={draft.get('vocab_size')} ({self.draft_model}) differs "
                    f"from target vocab_size={target.get('vocab_size')} ({self.model})"
                )
        return target


def read_model_config(path: str | Path) -> dict[str, Any]:
    """Read a model directory's config.json, checking the files vLLM will need are there."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelDirError(f"model directory {folder} does not exist")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelDirError(f"model directory {folder} has no config.json")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{config_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("vocab_size"), int):
        raise ModelDirError(f"{config_file} has no integer vocab_size")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise ModelDirError(f"model directory {folder} has no *.safetensors weights")
    for file in weights:
        # Reading the header catches truncated or foreign files before vLLM starts loading.
        try:
            with safe_open(file, framework="numpy") as handle:
                handle.keys()
        except Exception as err:
            raise ModelDirError(f"{file} is not a readable safetensors file: {err}") from None
    if not (folder / "tokenizer.json").is_file():
        raise ModelDirError(f"model directory {folder} has no tokenizer.json")
    return config


def project_relative(path: str | Path) -> str:
    """A path as artifacts (policies, profiles) record it: relative to the project's root.

    A machine's absolute path means nothing on another machine or in another clone; a path
    that is not absolute (e.g. a Hugging Face model id) is kept as given.
    """
    if not os.path.isabs(path):
        return str(path)
    return Path(os.path.relpath(path, PROJECT_ROOT)).as_posix()


def project_path(path: str) -> str:
    """A recorded folder as a path on this machine, the inverse of `project_relative`.

    A relative path that names a folder under the project's root becomes that folder's
    absolute path, whatever the current directory; any other path (absolute, a Hugging Face
    model id, a folder the project's root does not have) is kept as given.
    """
    if os.path.isabs(path) or not (PROJECT_ROOT / path).is_dir():
        return path
    return os.path.normpath(PROJECT_ROOT / path)


def default_profile_path(method: str) -> Path:
    """Where the measured cost profile (kind table) of a speculation method lives."""
    return PROFILE_DIR / f"{method}.json"
