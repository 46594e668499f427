"""Write the GPU deployment presets: cost profiles that price a named GPU, model and draft.

    python -m training.gpu_presets [--gpu-profiles ../shared/gpu-profiles] [--out DIR]

Each preset is a model of a deployment built from measured parts, not a measurement of one.
The `gpu` presets take the target's decoder-layer timings from Vidur's public per-operator
CUDA profiles (read from --gpu-profiles, never copied into the project): per token count, the
median of every operator in a layer, summed, times the layers, plus the embedding once. The
rest of a step (LM head, attention over the KV cache, the draft model) is priced by roofline
from datasheet constants, as `agents.cost.roofline` describes; the `roofline` preset prices the
decoder layers that way too, so the two can be compared on the same deployment.

Every constant below carries its public source into the files written. Each preset also carries
the engine limits the CPU engine takes in model time, and interactive-serving SLOs. The files
go to checkpoints/profiles/<name>.json, overwriting; a table of predicted step times follows.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.cost.load import StepLoad
from agents.cost.profile import PROFILE_DIR, load_profile, save_profile
from agents.cost.roofline import Transformer
from agents.paths import PROJECT_ROOT
from envs.config import EnvConfig
from serving.config import EngineConfig, read_model_config

GPU_PROFILES = PROJECT_ROOT.parent / "shared" / "gpu-profiles"
"""Where the shared GPU timings live (../shared/gpu-profiles from the project root)."""
GPU_PROFILES_CITED = "../shared/gpu-profiles"
"""How the presets name that folder: relative to the project root."""

VIDUR = (
    "Vidur: A Large-Scale Simulation Framework for LLM Inference (Agrawal et al., MLSys 2024), "
    "repository microsoft/vidur at commit 7d47513, data/profiling/compute/, MIT licence "
    "(copyright Microsoft Corporation)"
)
LAYER_OPERATORS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
"""Vidur's operators that run once per layer (attention itself is not among them)."""
STEP_OPERATORS = ("emb",)
"""Vidur's operators that run once per step."""
SHAPE_COLUMNS = {
    "n_head": "heads",
    "n_kv_head": "kv_heads",
    "n_embd": "hidden",
    "n_expanded_embd": "intermediate",
}
"""Vidur's shape columns checked against the target's shape (its vocab_size is padded)."""
TABLE_MAX_TOKENS = 8192
"""Keep Vidur's measured token counts up to here; beyond, the table extends linearly."""

GPUS = {
    "a100": {
        "name": "NVIDIA A100 80GB SXM",
        "memory_bandwidth_gb_s": 2039,
        "peak_tflops": 312,
        "memory_gb": 80,
        "source": (
            "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-"
            "web.pdf), A100 80GB SXM column: GPU memory 80GB HBM2e, memory bandwidth 2,039 GB/s, "
            "BFLOAT16 Tensor Core 312 TFLOPS dense (624 with sparsity)"
        ),
    },
    "h100": {
        "name": "NVIDIA H100 SXM (80GB)",
        "memory_bandwidth_gb_s": 3350,
        "peak_tflops": 989,
        "memory_gb": 80,
        "source": (
            "NVIDIA H100 Tensor Core GPU datasheet (resources.nvidia.com/en-us-tensor-core/"
            "nvidia-tensor-core-gpu-datasheet), H100 SXM column: GPU memory 80GB, memory "
            "bandwidth 3.35 TB/s, BF16 Tensor Core 1,979 TFLOPS with sparsity, so 989 dense"
        ),
    },
}
"""Datasheet constants, at bf16 (the dtype the models are served in)."""

MODELS = {
    "meta-llama/Meta-Llama-3-8B": {
        "layers": 32,
        "hidden": 4096,
        "heads": 32,
        "kv_heads": 8,
        "head_dim": 128,
        "intermediate": 14336,
        "vocab": 128256,
        "tied_embeddings": False,
        "dtype_bytes": 2,
        "source": (
            "config.json of huggingface.co/meta-llama/Meta-Llama-3-8B (num_hidden_layers 32, "
            "hidden_size 4096, num_attention_heads 32, num_key_value_heads 8, "
            "intermediate_size 14336, vocab_size 128256, tie_word_embeddings false), as in "
            "Vidur's data/model_configs/meta-llama/Meta-Llama-3-8B.yml; served in bf16"
        ),
    },
    "meta-llama/Llama-2-7b-hf": {
        "layers": 32,
        "hidden": 4096,
        "heads": 32,
        "kv_heads": 32,
        "head_dim": 128,
        "intermediate": 11008,
        "vocab": 32000,
        "tied_embeddings": False,
        "dtype_bytes": 2,
        "source": (
            "config.json of huggingface.co/meta-llama/Llama-2-7b-hf (num_hidden_layers 32, "
            "hidden_size 4096, num_attention_heads 32 with as many key/value heads, "
            "intermediate_size 11008, vocab_size 32000, untied), as in Vidur's "
            "data/model_configs/meta-llama/Llama-2-7b-hf.yml (which pads the vocabulary to "
            "32768); served in bf16"
        ),
    },
    "meta-llama/Llama-3.2-1B": {
        "layers": 16,
        "hidden": 2048,
        "heads": 32,
        "kv_heads": 8,
        "head_dim": 64,
        "intermediate": 8192,
        "vocab": 128256,
        "tied_embeddings": True,
        "dtype_bytes": 2,
        "source": (
            "config.json of huggingface.co/meta-llama/Llama-3.2-1B (num_hidden_layers 16, "
            "hidden_size 2048, num_attention_heads 32, num_key_value_heads 8, head_dim 64, "
            "intermediate_size 8192, vocab_size 128256, tie_word_embeddings true: 1.24B "
            "parameters); it shares Llama 3's tokenizer, as a draft must; bf16"
        ),
    },
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": {
        "layers": 22,
        "hidden": 2048,
        "heads": 32,
        "kv_heads": 4,
        "head_dim": 64,
        "intermediate": 5632,
        "vocab": 32000,
        "tied_embeddings": False,
        "dtype_bytes": 2,
        "source": (
            "config.json of huggingface.co/TinyLlama/TinyLlama-1.1B-Chat-v1.0 "
            "(num_hidden_layers 22, hidden_size 2048, num_attention_heads 32, "
            "num_key_value_heads 4, intermediate_size 5632, vocab_size 32000, untied: 1.10B "
            "parameters); Llama 2's architecture and tokenizer, as a draft must; bf16"
        ),
    },
}
"""Model shapes (Llama family: gated SiLU MLP, RMSNorm, no biases)."""

VLLM_DEFAULTS = {
    "a100": {"max_num_seqs": 256, "max_num_batched_tokens": 2048},
    "h100": {"max_num_seqs": 1024, "max_num_batched_tokens": 8192},
}
VLLM_DEFAULTS_SOURCE = (
    "vLLM 0.32.0, vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults for "
    "UsageContext.OPENAI_API_SERVER: GPUs with >= 70 GiB whose name does not contain 'a100' "
    "(H100, H200) get max_num_seqs 1024 and max_num_batched_tokens 8192; other GPUs, the A100 "
    "80GB included, get 256 and 2048 (8192 tokens is the offline LLM class's default there)"
)
GPU_MEMORY_UTILIZATION = 0.92
"""vLLM 0.32.0's default share of GPU memory for weights, activations and KV cache
(vllm/config/cache.py, CacheConfig.gpu_memory_utilization)."""
HEADROOM_GIB = 1
"""KV-cache GiB the CPU engine gets beyond what its limits need (block rounding, lookahead)."""

STEP_OVERHEAD_S = 0.000664
STEP_OVERHEAD_SOURCE = (
    "Vidur's CPU-overhead profile of vLLM on A100 (microsoft/vidur commit 6d98aa8, "
    "data/profiling/a100/cpu_overheads.csv; not in ../shared), meta-llama/Llama-2-7b-hf, tensor "
    "parallel 1, smallest batch (8): medians of schedule 0.156 ms + prepare_inputs_e2e 0.337 ms + "
    "process_model_outputs 0.172 ms = 0.664 ms. The sampler (0.509 ms there) is left out because "
    "it includes the LM head, priced here by roofline. That engine is vLLM's first (V0) one, "
    "whose host time also grew with batch size (per-sequence Python bookkeeping); vLLM V1's "
    "persistent batch removes most of that growth and its async scheduling hides part of the "
    "rest behind the GPU, so a fixed cost of this size is an estimate, not a measurement. It is "
    "host time: the same on A100 and H100."
)
SLO = {"ttft_s": 0.5, "tpot_s": 0.030}
SLO_SOURCE = (
    "MLPerf Inference, mlcommons/inference loadgen/mlperf.conf: llama3_1-8b-interactive.Server "
    "ttft_latency = 500 ms and tpot_latency = 30 ms (99th percentiles), the interactive "
    "constraints for serving a Llama model of 7-8B (the llama3_1-8b server scenario allows "
    "2000 and 100 ms). Here they apply to each request"
)
NGRAM_NOTE = (
    "ngram engines have no draft model to price: proposals come from a CPU-side lookup of the "
    "request's last tokens in its own tokens, microseconds per request, not priced"
)


@dataclass(frozen=True)
class Preset:
    """One deployment to write a profile for."""

    name: str
    """The profile's name (file stem)."""
    kind: str
    """gpu (measured decoder layers) or roofline."""
    gpu: str
    """Key into GPUS and VLLM_DEFAULTS."""
    target: str
    """Key into MODELS: the served model."""
    draft: str
    """Key into MODELS: the draft model of draft_model engines."""
    vidur_csv: str | None = None
    """gpu kind: Vidur's mlp.csv of this GPU and target, relative to the GPU profiles folder."""


PRESETS = (
    Preset(
        "a100-llama3-8b",
        "gpu",
        "a100",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.2-1B",
        "vidur/a100/meta-llama/Meta-Llama-3-8B/mlp.csv",
    ),
    Preset(
        "h100-llama2-7b",
        "gpu",
        "h100",
        "meta-llama/Llama-2-7b-hf",
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "vidur/h100/meta-llama/Llama-2-7b-hf/mlp.csv",
    ),
    Preset(
        "a100-llama3-8b-roofline",
        "roofline",
        "a100",
        "meta-llama/Meta-Llama-3-8B",
        "meta-llama/Llama-3.2-1B",
    ),
)
METHODS = ("ngram", "draft_model", "none")
"""Methods every preset prices ("none": a target-only engine, the no-speculation baseline)."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def shape(model: str) -> Transformer:
    """A model's shape from MODELS."""
    fields = {key: value for key, value in MODELS[model].items() if key != "source"}
    return Transformer(name=model, **fields)


def layer_table(path: Path, model: Transformer, max_tokens: int) -> dict[str, list[float]]:
    """Seconds of `model`'s decoder layers and embedding against tokens computed, from a Vidur
    mlp.csv: tensor parallel 1, per-layer operator medians summed times the layers, plus the
    once-per-step operators; token counts measured twice are averaged."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point --gpu-profiles at the shared GPU timings "
            f"(default {GPU_PROFILES_CITED})"
        )
    totals: dict[int, list[float]] = defaultdict(list)
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if int(row["num_tensor_parallel_workers"]) != 1:
                continue
            for column, attribute in SHAPE_COLUMNS.items():
                if int(row[column]) != getattr(model, attribute):
                    raise ValueError(
                        f"{path}: {column}={row[column]} but {model.name} has "
                        f"{attribute}={getattr(model, attribute)}"
                    )
            per_layer = sum(float(row[f"time_stats.{op}.median"]) for op in LAYER_OPERATORS)
            per_step = sum(float(row[f"time_stats.{op}.median"]) for op in STEP_OPERATORS)
            totals[int(row["num_tokens"])].append((model.layers * per_layer + per_step) / 1e3)
    points = [(n, sum(t) / len(t)) for n, t in sorted(totals.items()) if n <= max_tokens]
    if not points:
        raise ValueError(f"{path} has no tensor-parallel-1 rows up to {max_tokens} tokens")
    return {
        "num_tokens": [n for n, _ in points],
        "seconds": [round(s, 7) for _, s in points],
    }


def kv_bytes_per_token(config: dict[str, Any], dtype: str) -> int:
    """KV-cache bytes per token of a Hugging Face Llama config at `dtype`."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    kv_heads = config.get("num_key_value_heads", heads)
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * DTYPE_BYTES[dtype]


def engine_limits(preset: Preset) -> tuple[dict[str, int], str]:
    """The engine section and how it was derived.

    max_num_seqs is vLLM's default for the GPU, capped by the requests of max_model_len
    tokens the GPU's KV cache holds beside the target's and the draft's weights (so the CPU
    engine, whose cache is ample, never runs a batch the GPU could not); the token budget is
    vLLM's default; kv_cache_gib holds max_num_seqs of the longest requests a replay makes
    (prompt and output clipped as EnvConfig clips them) for the CPU model pair: no more, since
    two engines of this size share the 24 GiB machine with everything else.
    """
    defaults = VLLM_DEFAULTS[preset.gpu]
    gpu = GPUS[preset.gpu]
    target, draft = shape(preset.target), shape(preset.draft)
    usable = gpu["memory_gb"] * 1e9 * GPU_MEMORY_UTILIZATION
    free = usable - (target.params + draft.params) * target.dtype_bytes
    gpu_tokens = int(free // (target.kv_bytes_per_token + draft.kv_bytes_per_token))

    cpu = EngineConfig()
    cpu_bytes = kv_bytes_per_token(read_model_config(cpu.model), cpu.dtype)
    cpu_bytes += kv_bytes_per_token(read_model_config(cpu.draft_model), cpu.dtype)
    max_num_seqs = min(defaults["max_num_seqs"], gpu_tokens // cpu.max_model_len)
    longest = EnvConfig.max_input_tokens + EnvConfig.max_output_tokens
    need_gib = max_num_seqs * longest * cpu_bytes / 2**30
    limits = {
        "max_num_seqs": max_num_seqs,
        "max_num_batched_tokens": defaults["max_num_batched_tokens"],
        "kv_cache_gib": math.ceil(need_gib) + HEADROOM_GIB,
    }
    derivation = (
        f"max_num_seqs = min(vLLM's default {defaults['max_num_seqs']}, GPU KV capacity "
        f"{gpu_tokens} tokens // max_model_len {cpu.max_model_len}) = {max_num_seqs}; the "
        f"capacity is {gpu['memory_gb']} GB x gpu_memory_utilization {GPU_MEMORY_UTILIZATION} "
        f"(vLLM 0.32.0's default) less the bf16 weights of target and draft "
        f"({(target.params + draft.params) / 1e9:.2f}B parameters), over their KV bytes per "
        f"token ({target.kv_bytes_per_token} + {draft.kv_bytes_per_token}); activations and "
        f"CUDA graphs are not subtracted. max_num_batched_tokens = vLLM's default. "
        f"kv_cache_gib = {max_num_seqs} requests x {longest} tokens (the longest prompt and "
        f"output a replay makes) x {cpu_bytes} "
        f"bytes (the CPU target and draft in {cpu.dtype}) = {need_gib:.2f} GiB, rounded up, "
        f"+ {HEADROOM_GIB} GiB headroom. Source of the defaults: {VLLM_DEFAULTS_SOURCE}"
    )
    return limits, derivation


def build(preset: Preset, gpu_profiles: Path) -> dict[str, Any]:
    """The profile file of one preset."""
    gpu = GPUS[preset.gpu]
    target = shape(preset.target)
    cost: dict[str, Any] = {
        "gpu": dict(gpu),
        "target": {"name": preset.target, **MODELS[preset.target]},
        "draft": {"name": preset.draft, **MODELS[preset.draft]},
        "step_overhead_s": STEP_OVERHEAD_S,
        "step_overhead_source": STEP_OVERHEAD_SOURCE,
    }
    if preset.kind == "gpu":
        cited = f"{GPU_PROFILES_CITED}/{preset.vidur_csv}"
        cost["layers"] = {
            "source": (
                f"{cited}: {VIDUR}. Tensor parallel 1; per token count, the medians of "
                f"{', '.join(LAYER_OPERATORS)} summed, times {target.layers} layers, plus "
                f"{', '.join(STEP_OPERATORS)} once; counts measured twice averaged; counts up "
                f"to {TABLE_MAX_TOKENS}. Written by python -m training.gpu_presets"
            ),
            "files": [cited],
            **layer_table(gpu_profiles / preset.vidur_csv, target, TABLE_MAX_TOKENS),
        }
        parts = (
            "A model of a deployment built from measured parts, not a measurement of one. "
            f"Decoder layers from Vidur's measured per-operator CUDA timings ({cited}; "
            f"{VIDUR}); LM head, attention and draft model by roofline from datasheet constants"
        )
    else:
        parts = (
            "A model of a deployment built from published constants, not a measurement of one. "
            "Every part by roofline from datasheet constants and the models' shapes"
        )
    limits, derivation = engine_limits(preset)
    return {
        "kind": preset.kind,
        "deployment": f"{gpu['name']}, {preset.target} in bf16, tensor parallel 1",
        "methods": list(METHODS),
        "source": (
            f"{parts}. Each constant names its public source beside it "
            "(cost.*.source, cost.step_overhead_source, sources)."
        ),
        "engine": limits,
        "slo": dict(SLO),
        "cost": cost,
        "sources": {
            "engine": derivation,
            "slo": SLO_SOURCE,
            "draft_model": (
                f"draft_model engines draft with {preset.draft} (cost.draft), priced by roofline"
            ),
            "ngram": NGRAM_NOTE,
            "none": "none engines run the target alone: no draft, nothing verified",
            "pricing": "agents/cost/roofline.py states the roofline rules every part follows",
        },
        "written_by": "python -m training.gpu_presets",
    }


def summary(name: str, batches=(1, 32, 128, 256), context: int = 512, k_max: int = 4) -> str:
    """Predicted step milliseconds of a written preset, per method, batch and k."""
    lines = [f"{name}: step ms, decoding requests at context {context}"]
    for method in ("ngram", "draft_model"):
        cost = load_profile(name, method=method).cost
        lines.append(f"  {method:<12}" + "".join(f"  k={k:<5}" for k in range(k_max + 1)))
        for batch in batches:
            times = [cost.seconds(StepLoad.uniform(batch, k, context)) for k in range(k_max + 1)]
            lines.append(f"  batch {batch:<6}" + "".join(f"  {t * 1e3:7.2f}" for t in times))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gpu-profiles",
        type=Path,
        default=GPU_PROFILES,
        help=f"folder of the shared GPU timings (default {GPU_PROFILES_CITED})",
    )
    parser.add_argument(
        "--out", type=Path, default=PROFILE_DIR, help="folder to write <preset>.json into"
    )
    args = parser.parse_args()
    # Build every preset before writing any, so a missing CSV leaves the old files whole.
    try:
        built = [(preset, build(preset, args.gpu_profiles)) for preset in PRESETS]
    except FileNotFoundError as err:
        parser.error(str(err))
    for preset, data in built:
        path = args.out / f"{preset.name}.json"
        save_profile(path, data)
        for method in METHODS:
            load_profile(path, method=method)
        print(f"wrote {path}")
        print(summary(str(path)))


if __name__ == "__main__":
    main()
