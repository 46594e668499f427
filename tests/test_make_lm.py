"""Fast checks of training.make_lm's pure parts, at toy sizes (no vLLM, a few seconds)."""

import dataclasses
import json
import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from envs.traces.corpus import stdlib_sources
from training import make_lm
from training.cli import field_docs

STDLIB = Path(sysconfig.get_paths()["stdlib"])


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return make_lm.read_texts([STDLIB / "bisect.py", STDLIB / "keyword.py", STDLIB / "abc.py"])


@pytest.fixture(scope="module")
def tok(texts):
    return make_lm.train_tokenizer(texts, vocab_size=300)


def tiny_model(vocab: int, seed: int = 0, layers: int = 1):
    torch.manual_seed(seed)
    cfg = make_lm.make_config(vocab, hidden=32, layers=layers, heads=2, intermediate=64)
    return make_lm.build_model(cfg)


def test_cli_defaults_and_help(capsys):
    assert make_lm.parse_args([]) == make_lm.MakeLMArgs()
    args = make_lm.parse_args(["--seed", "3", "--no-bf16-autocast", "--draft-lr", "0.01"])
    assert (args.seed, args.bf16_autocast, args.draft_lr) == (3, False, 0.01)
    assert args.out_dir == "checkpoints/lm"
    with pytest.raises(SystemExit):
        make_lm.parse_args(["--help"])
    out = capsys.readouterr().out
    docs = field_docs(make_lm.MakeLMArgs)
    for f in dataclasses.fields(make_lm.MakeLMArgs):
        assert docs.get(f.name), f"field {f.name} has no docstring"
        assert "--" + f.name.replace("_", "-") in out


def test_corpus_is_deterministic_and_split():
    files = stdlib_sources()
    assert files == sorted(files) and len(files) > 100
    for f in files:
        parts = set(f.relative_to(STDLIB).parts[:-1])
        assert not parts & {"test", "tests", "idlelib", "lib2to3", "site-packages"}
    train, held = make_lm.split_files(files, 20)
    assert held and not set(train) & set(held)
    assert len(train) + len(held) == len(files)
    assert make_lm.split_files(files, 20) == (train, held)


def test_tokenizer(tok, texts):
    assert tok.get_vocab_size() <= 300
    assert [tok.token_to_id(t) for t in make_lm.SPECIAL_TOKENS] == [0, 1, 2, 3]
    enc = tok.encode("def f(x):\n    return x  # é")
    assert enc.ids[0] == make_lm.BOS_ID
    assert tok.decode(enc.ids) == "def f(x):\n    return x  # é"
    stream = make_lm.encode_stream(tok, texts)
    assert stream.dtype == np.int32 and (stream == make_lm.EOS_ID).sum() == len(texts)
    w = make_lm.fixed_windows(stream, 4, 16)
    assert w.shape == (4, 16) and bool((w[:, 0] == make_lm.BOS_ID).all())


def test_config_rejects_bad_head_dim():
    with pytest.raises(ValueError):
        make_lm.make_config(300, hidden=40, layers=1, heads=4, intermediate=64)  # head_dim 10


def test_lr_schedule():
    peak = 1e-3
    assert make_lm.lr_at(0, 100, peak, 10, 0.1) == pytest.approx(1e-4)
    assert make_lm.lr_at(9, 100, peak, 10, 0.1) == pytest.approx(peak)
    assert make_lm.lr_at(100, 100, peak, 10, 0.1) == pytest.approx(1e-4)
    assert make_lm.lr_at(55, 100, peak, 10, 0.1) == pytest.approx(peak * 0.55)


def test_train_save_reload(tmp_path, tok, texts):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    stream = make_lm.encode_stream(tok, texts)
    model = tiny_model(tok.get_vocab_size())
    loss = make_lm.train_model(
        model, stream, steps=2, batch_size=2, seq_len=32, lr=1e-3, warmup=1, min_lr_ratio=0.1,
        weight_decay=0.1, grad_clip=1.0, seed=0, progress=False, log_every=0,
    )  # fmt: skip
    assert math.isfinite(loss)
    make_lm.round_to_dtype(model, torch.bfloat16)
    folder = tmp_path / "m"
    make_lm.save_model(model, folder, "bfloat16")
    make_lm.save_tokenizer(make_lm.wrap_tokenizer(tok), folder)

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["head_dim"] == 16
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    hf_tok = AutoTokenizer.from_pretrained(folder)
    assert (hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id) == (1, 2, 0)
    ids = hf_tok("x = 1\n").input_ids
    assert ids == tok.encode("x = 1\n").ids and ids[0] == 1
    assert hf_tok.decode(ids, skip_special_tokens=True) == "x = 1\n"

    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert reloaded.dtype == torch.float32
    batch = make_lm.fixed_windows(stream, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, model(batch).logits)


def test_acceptance(tok, texts):
    torch.set_num_threads(2)
    stream = make_lm.encode_stream(tok, texts)
    prompts = make_lm.fixed_windows(stream, 3, 8)
    target = tiny_model(tok.get_vocab_size(), seed=0).eval()
    same = make_lm.acceptance(target, target, prompts, new_tokens=6, ks=(1, 4))
    assert same["rate"] == 1.0 and same["positions"] == 18
    assert same["accepted_len"] == {1: 1.0, 4: 4.0}
    other = tiny_model(tok.get_vocab_size(), seed=1).eval()
    res = make_lm.acceptance(target, other, prompts, new_tokens=6, ks=(1, 4))
    assert 0.0 <= res["rate"] <= 1.0
    assert 0.0 <= res["accepted_len"][4] <= 4.0
    assert res["accepted_len"][1] == pytest.approx(res["rate"])
    assert res["tokens_per_step"][4] == pytest.approx(res["accepted_len"][4] + 1)
