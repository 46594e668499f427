"""Build the small TARGET / DRAFT causal-LM pair that the CPU vLLM engine serves.

`python -m training.make_lm` does, from one seed and without any download:

1. Corpus: the Python standard library's own ``*.py`` sources (found through
   ``sysconfig.get_paths()["stdlib"]``, sorted, test suites / idlelib / lib2to3 / encodings tables /
   site-packages skipped). Every ``holdout_every``-th file is held out for evaluation.
2. Tokenizer: a byte-level BPE (``tokenizers``: ByteLevel pre-tokenizer and decoder) with the
   special tokens ``<pad>``=0, ``<s>``=1, ``</s>``=2, ``<unk>``=3; ``<s>`` is prepended on
   encoding. It is saved as a ``PreTrainedTokenizerFast`` so ``AutoTokenizer`` and vLLM load it.
3. Models: two tiny ``LlamaForCausalLM`` (target ~5M, draft ~1.4M parameters, head_dim 64, tied
   embeddings) sharing that tokenizer, trained with plain torch (AdamW, warmup + cosine schedule)
   for next-token prediction on random windows of the training stream.
4. Acceptance: the target greedily continues held-out prompts; on those continuations (teacher
   forced) we count how often the draft's greedy next token equals the target's -- the per-token
   acceptance rate greedy speculative decoding sees -- and the expected accepted length for k
   proposals.
5. Output: ``<out_dir>/target`` and ``<out_dir>/draft``, each a self-contained Hugging Face
   checkpoint (config.json, generation_config.json, bfloat16 model.safetensors, tokenizer.json,
   tokenizer_config.json).

The command exits with status 1 (after writing) if the acceptance rate is below
``--min-acceptance``.
"""

import os

# OpenMP reads this once, when torch loads. With the default busy-waiting worker threads a
# training step on this 2-core machine gets ~7x slower as soon as another busy process wants a
# core (measured ~9 s vs ~1.3 s per target step, 2 threads either way). It does not change results.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json
import math
import random
import sys
import sysconfig
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from envs.traces.corpus import stdlib_sources
from training.cli import parse_config

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


@dataclass
class MakeLMArgs:
    """Arguments of ``python -m training.make_lm`` (each field is a ``--flag``)."""

    seed: int = 0
    """Seed of every random choice (torch, numpy, random): the same seed gives the same models."""
    out_dir: str = "checkpoints/lm"
    """Output folder; the models go to <out_dir>/target and <out_dir>/draft."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary size, special tokens included."""
    holdout_every: int = 20
    """Hold out every N-th stdlib file (in sorted order) for evaluation."""
    seq_len: int = 256
    """Training window length in tokens (<s> + seq_len-1 corpus tokens)."""
    batch_size: int = 16
    """Windows per optimizer step."""
    target_hidden: int = 256
    """Target hidden size."""
    target_layers: int = 6
    """Target decoder layers."""
    target_heads: int = 4
    """Target attention heads (head_dim = hidden / heads; vLLM CPU wants 32/64/128)."""
    target_intermediate: int = 512
    """Target MLP intermediate size."""
    target_steps: int = 1100
    """Optimizer steps for the target."""
    target_lr: float = 3e-3
    """Peak learning rate of the target."""
    draft_hidden: int = 128
    """Draft hidden size."""
    draft_layers: int = 4
    """Draft decoder layers."""
    draft_heads: int = 2
    """Draft attention heads (head_dim = hidden / heads)."""
    draft_intermediate: int = 384
    """Draft MLP intermediate size."""
    draft_steps: int = 600
    """Optimizer steps for the draft."""
    draft_lr: float = 3e-3
    """Peak learning rate of the draft."""
    warmup_steps: int = 100
    """Linear warmup steps before the cosine decay."""
    min_lr_ratio: float = 0.1
    """The cosine schedule decays to peak_lr * min_lr_ratio."""
    weight_decay: float = 0.1
    """AdamW weight decay (not applied to norms)."""
    grad_clip: float = 1.0
    """Gradient-norm clip."""
    bf16_autocast: bool = True
    """Train under CPU bfloat16 autocast (about 1.5x faster here); master weights stay float32."""
    threads: int = 2
    """torch.set_num_threads."""
    eval_windows: int = 64
    """Held-out windows of seq_len tokens for the held-out loss."""
    accept_prompts: int = 64
    """Held-out prompts for the acceptance measurement."""
    accept_prompt_len: int = 64
    """Prompt length in tokens (<s> included)."""
    accept_gen_len: int = 64
    """Tokens the target generates greedily per prompt."""
    accept_k: int = 4
    """Proposal length k for the expected-accepted-length figure."""
    min_acceptance: float = 0.40
    """Exit with status 1 if the draft's greedy acceptance rate is below this."""
    save_dtype: str = "bfloat16"
    """dtype of the saved safetensors weights: bfloat16 or float16."""
    log_every: int = 100
    """Print a loss line every N steps (a tqdm bar also shows it)."""


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None = None) -> MakeLMArgs:
    return parse_config(MakeLMArgs, argv, "python -m training.make_lm", __doc__.split("\n\n")[0])


# --------------------------------------------------------------------------------------------
# Corpus


def split_files(files: Sequence[Path], holdout_every: int) -> tuple[list[Path], list[Path]]:
    """Deterministic (train, held-out) split: every ``holdout_every``-th file is held out."""
    offset = holdout_every // 2
    held = [f for i, f in enumerate(files) if i % holdout_every == offset]
    train = [f for i, f in enumerate(files) if i % holdout_every != offset]
    return train, held


def read_texts(files: Iterable[Path]) -> list[str]:
    return [Path(f).read_text(encoding="utf-8", errors="replace") for f in files]


# --------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE over ``texts`` with <pad>/<s>/</s>/<unk> as ids 0-3; prepends <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [PAD_ID, BOS_ID, EOS_ID, UNK_ID]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)]
    )
    return tok


def wrap_tokenizer(tok, model_max_length: int = 2048):
    """A transformers fast tokenizer around a ``tokenizers.Tokenizer``."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def save_tokenizer(hf_tok, folder: str | Path) -> None:
    folder = Path(folder)
    hf_tok.save_pretrained(folder)
    # transformers 5 writes its new class name; the old one loads in v4 and v5 alike.
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.setdefault("add_bos_token", True)
    cfg.setdefault("add_eos_token", False)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def encode_stream(tok, texts: Sequence[str]) -> np.ndarray:
    """All texts as one int32 token stream, each document followed by </s> (no <s>)."""
    parts = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        parts.append(np.asarray(enc.ids, dtype=np.int32))
        parts.append(np.asarray([EOS_ID], dtype=np.int32))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def sample_windows(stream: np.ndarray, batch: int, seq_len: int, gen: torch.Generator):
    """``batch`` random windows, each ``<s>`` + ``seq_len - 1`` consecutive stream tokens."""
    n = len(stream) - (seq_len - 1)
    starts = torch.randint(0, n, (batch,), generator=gen).numpy()
    return _windows_at(stream, starts, seq_len)


def fixed_windows(stream: np.ndarray, count: int, seq_len: int) -> torch.Tensor:
    """``count`` evenly spaced windows (deterministic, for evaluation)."""
    n = len(stream) - (seq_len - 1)
    starts = np.linspace(0, n - 1, num=count).astype(np.int64)
    return _windows_at(stream, starts, seq_len)


def _windows_at(stream: np.ndarray, starts: np.ndarray, seq_len: int) -> torch.Tensor:
    idx = starts[:, None] + np.arange(seq_len - 1)[None, :]
    body = torch.from_numpy(stream[idx].astype(np.int64))
    bos = torch.full((len(starts), 1), BOS_ID, dtype=torch.int64)
    return torch.cat([bos, body], dim=1)


# --------------------------------------------------------------------------------------------
# Models


def make_config(
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_position_embeddings: int = 2048,
    dtype: str = "bfloat16",
):
    from transformers import LlamaConfig

    if hidden % heads:
        raise ValueError(f"hidden {hidden} not divisible by heads {heads}")
    head_dim = hidden // heads
    if head_dim % 16:
        raise ValueError(f"head_dim {head_dim} must be a multiple of 16 for vLLM CPU attention")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=head_dim,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.02,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
        dtype=dtype,
        architectures=["LlamaForCausalLM"],
    )


def build_model(config):
    from transformers import LlamaForCausalLM

    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    return model.float()


def count_params(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, total: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup to ``peak`` then cosine decay to ``peak * min_ratio`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
    )


def train_model(
    model,
    stream: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    warmup: int,
    min_lr_ratio: float,
    weight_decay: float,
    grad_clip: float,
    seed: int,
    bf16_autocast: bool = False,
    name: str = "model",
    log_every: int = 100,
    progress: bool = True,
) -> float:
    """Next-token training on random windows of ``stream``; returns the mean loss of the last
    ``min(50, steps)`` steps."""
    gen = torch.Generator().manual_seed(seed)
    opt = make_optimizer(model, lr, weight_decay)
    model.train()
    recent: list[float] = []
    t_log, step_log = time.time(), 0
    # disable=None: a bar on a terminal, none when the output is piped (the log lines remain).
    bar = tqdm(
        range(steps),
        desc=f"train {name}",
        disable=None if progress else True,
        mininterval=2.0,
        file=sys.stdout,
    )
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup, min_lr_ratio)
        batch = sample_windows(stream, batch_size, seq_len, gen)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
            loss = lm_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        value = float(loss.detach())
        recent = [*recent[-49:], value]
        bar.set_postfix(loss=f"{value:.3f}", lr=f"{opt.param_groups[0]['lr']:.2e}")
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            now = time.time()
            tqdm.write(
                f"[{name}] step {step + 1}/{steps} loss {value:.4f} "
                f"(avg50 {sum(recent) / len(recent):.4f}) "
                f"{(now - t_log) / (step + 1 - step_log):.2f} s/step",
                file=sys.stdout,
            )
            t_log, step_log = now, step + 1
    bar.close()
    model.eval()
    return sum(recent) / max(1, len(recent))


@torch.no_grad()
def eval_loss(model, windows: torch.Tensor, batch_size: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        total += float(lm_loss(model, chunk)) * chunk.size(0)
        count += chunk.size(0)
    return total / max(1, count)


def round_to_dtype(model, dtype: torch.dtype):
    """Round the weights through ``dtype`` (as they will be saved) but keep float32 compute."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(p.dtype))
    return model


# --------------------------------------------------------------------------------------------
# Acceptance


@torch.no_grad()
def greedy_generate(model, prompts: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation (KV cache) of equal-length prompts ``[B, P]``; returns ``[B, G]``."""
    model.eval()
    out = model(input_ids=prompts, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[:, -1].argmax(-1)
    generated = [nxt]
    for _ in range(new_tokens - 1):
        out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1)
        generated.append(nxt)
    return torch.stack(generated, dim=1)


@torch.no_grad()
def acceptance(
    target,
    draft,
    prompts: torch.Tensor,
    new_tokens: int,
    ks: Sequence[int] = (1, 2, 4, 8),
    batch_size: int = 16,
) -> dict:
    """Greedy draft-vs-target agreement on the target's own greedy continuations.

    For every prompt the target greedily generates ``new_tokens`` tokens; then both models run
    teacher-forced over prompt + continuation and, at each continuation position, the draft's
    argmax is compared with the target's argmax. Returns ``rate`` (the fraction of equal tokens,
    the per-token acceptance of greedy speculative decoding) and, for each k in ``ks``,
    ``accepted_len[k]``: the mean number of draft tokens accepted when k are proposed from a
    continuation position (``tokens_per_step[k]`` adds the target's bonus token).
    """
    matches = []
    for i in range(0, len(prompts), batch_size):
        p = prompts[i : i + batch_size]
        cont = greedy_generate(target, p, new_tokens)
        full = torch.cat([p, cont], dim=1)
        lo, hi = p.size(1) - 1, full.size(1) - 1  # logits at lo..hi-1 predict the continuation
        t_next = target(input_ids=full).logits[:, lo:hi].argmax(-1)
        d_next = draft(input_ids=full).logits[:, lo:hi].argmax(-1)
        matches.append(t_next == d_next)
    m = torch.cat(matches, dim=0)  # [N, G] bool
    # run[:, j] = number of consecutive matches starting at position j
    run = torch.zeros(m.shape, dtype=torch.int64)
    carry = torch.zeros(m.size(0), dtype=torch.int64)
    for j in range(m.size(1) - 1, -1, -1):
        carry = torch.where(m[:, j], carry + 1, torch.zeros_like(carry))
        run[:, j] = carry
    accepted = {}
    for k in ks:
        usable = max(1, m.size(1) - k + 1)  # starts whose k proposals all lie in the continuation
        accepted[k] = float(run[:, :usable].clamp(max=k).float().mean())
    return {
        "rate": float(m.float().mean()),
        "accepted_len": accepted,
        "tokens_per_step": {k: v + 1.0 for k, v in accepted.items()},
        "positions": int(m.numel()),
    }


# --------------------------------------------------------------------------------------------
# Saving


def save_model(model, folder: str | Path, dtype: str) -> None:
    from transformers import GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)
    model = model.to(torch_dtype)
    model.config.dtype = torch_dtype
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID
    )
    model.save_pretrained(folder)
    model.float()
    # transformers 5 writes "dtype"; older readers (and some tools) look for "torch_dtype".
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["torch_dtype"] = dtype
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def dir_size(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Main


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def run(args: MakeLMArgs) -> dict:
    t0 = time.time()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    if args.save_dtype not in ("bfloat16", "float16"):
        raise SystemExit("--save-dtype must be bfloat16 or float16")

    files = stdlib_sources()
    train_files, held_files = split_files(files, args.holdout_every)
    train_texts, held_texts = read_texts(train_files), read_texts(held_files)
    print(
        f"corpus: {len(files)} stdlib files under {sysconfig.get_paths()['stdlib']} "
        f"({len(train_files)} train / {len(held_files)} held out, "
        f"{sum(map(len, train_texts)) / 1e6:.1f}M / {sum(map(len, held_texts)) / 1e6:.2f}M chars)"
    )

    tok = train_tokenizer(train_texts, args.vocab_size)
    hf_tok = wrap_tokenizer(tok)
    vocab = tok.get_vocab_size()
    train_stream = encode_stream(tok, train_texts)
    held_stream = encode_stream(tok, held_texts)
    print(
        f"tokenizer: byte-level BPE, vocab {vocab}; {len(train_stream) / 1e6:.2f}M train tokens, "
        f"{len(held_stream) / 1e6:.3f}M held-out tokens "
        f"({sum(map(len, train_texts)) / len(train_stream):.2f} chars/token) "
        f"[{time.time() - t0:.0f}s]"
    )

    def new_model(hidden, layers, heads, inter):
        cfg = make_config(vocab, hidden, layers, heads, inter, dtype=args.save_dtype)
        return build_model(cfg)

    target = new_model(
        args.target_hidden, args.target_layers, args.target_heads, args.target_intermediate
    )
    draft = new_model(
        args.draft_hidden, args.draft_layers, args.draft_heads, args.draft_intermediate
    )
    print(f"target: {count_params(target):,} params; draft: {count_params(draft):,} params")

    common = dict(
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        warmup=args.warmup_steps,
        min_lr_ratio=args.min_lr_ratio,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        bf16_autocast=args.bf16_autocast,
        log_every=args.log_every,
    )
    t_train = time.time()
    target_train = train_model(
        target,
        train_stream,
        steps=args.target_steps,
        lr=args.target_lr,
        seed=args.seed + 1,
        name="target",
        **common,
    )
    t_target = time.time() - t_train
    t_train = time.time()
    draft_train = train_model(
        draft,
        train_stream,
        steps=args.draft_steps,
        lr=args.draft_lr,
        seed=args.seed + 2,
        name="draft",
        **common,
    )
    t_draft = time.time() - t_train

    # Evaluate the weights as they will be served (rounded to the saved dtype).
    save_dtype = getattr(torch, args.save_dtype)
    round_to_dtype(target, save_dtype)
    round_to_dtype(draft, save_dtype)
    windows = fixed_windows(held_stream, args.eval_windows, args.seq_len)
    target_held, draft_held = eval_loss(target, windows), eval_loss(draft, windows)
    prompts = fixed_windows(held_stream, args.accept_prompts, args.accept_prompt_len)
    ks = sorted({1, 2, args.accept_k, 8})
    acc = acceptance(target, draft, prompts, args.accept_gen_len, ks=ks)

    out = Path(args.out_dir)
    sizes = {}
    for name, model in (("target", target), ("draft", draft)):
        folder = out / name
        save_model(model, folder, args.save_dtype)
        save_tokenizer(hf_tok, folder)
        sizes[name] = dir_size(folder)
    total = dir_size(out)
    elapsed = time.time() - t0

    k = args.accept_k
    print("\n===== make_lm summary =====")
    print(f"seed {args.seed}; vocab {vocab}; seq_len {args.seq_len}; batch {args.batch_size}")
    print(
        f"target: {count_params(target):,} params, {args.target_steps} steps in {t_target:.0f}s, "
        f"train loss {target_train:.4f}, held-out loss {target_held:.4f}"
    )
    print(
        f"draft:  {count_params(draft):,} params, {args.draft_steps} steps in {t_draft:.0f}s, "
        f"train loss {draft_train:.4f}, held-out loss {draft_held:.4f}"
    )
    print(
        f"greedy acceptance (draft vs target, {len(prompts)} held-out prompts x "
        f"{args.accept_gen_len} target tokens): {acc['rate']:.3f}"
    )
    print(
        "expected accepted draft tokens per step: "
        + ", ".join(f"k={kk}: {v:.2f}" for kk, v in acc["accepted_len"].items())
        + f"  (k={k}: {acc['tokens_per_step'][k]:.2f} tokens/target step incl. bonus)"
    )
    print(
        f"output: {out}/target {_mb(sizes['target'])}, {out}/draft {_mb(sizes['draft'])}, "
        f"total {_mb(total)} ({args.save_dtype} safetensors)"
    )
    print(f"time: {elapsed / 60:.1f} min")
    return {
        "target_params": count_params(target),
        "draft_params": count_params(draft),
        "target_train_loss": target_train,
        "draft_train_loss": draft_train,
        "target_heldout_loss": target_held,
        "draft_heldout_loss": draft_held,
        "acceptance": acc,
        "sizes": sizes,
        "total_size": total,
        "seconds": elapsed,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    result = run(args)
    if result["acceptance"]["rate"] < args.min_acceptance:
        print(
            f"FAIL: acceptance {result['acceptance']['rate']:.3f} < {args.min_acceptance}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
