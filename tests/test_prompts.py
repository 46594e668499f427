"""Tests for envs.traces prompt synthesis, with a tiny BPE tokenizer trained on stdlib files."""

from __future__ import annotations

import sysconfig
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from envs.traces import Prompt, PromptFactory
from envs.traces.corpus import stdlib_files

SPECIALS = ["<|endoftext|>", "<s>"]
CORPUS_BYTES = 200_000
LENGTHS = (1, 2, 17, 500, 2000)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained on two stdlib files; it prepends <s> to encodings."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(stdlib / "textwrap.py"), str(stdlib / "json" / "decoder.py")], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    directory = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def special_ids(tokenizer: Tokenizer) -> set[int]:
    return {tokenizer.token_to_id(t) for t in SPECIALS}


def factory(tokenizer_dir: Path, seed: int = 0, **kwargs: object) -> PromptFactory:
    return PromptFactory(tokenizer_dir, seed=seed, corpus_bytes=CORPUS_BYTES, **kwargs)


@pytest.mark.parametrize("style", ["source", "shuffled", "random"])
def test_exact_lengths_without_special_ids(
    tokenizer_dir: Path, special_ids: set[int], style: str
) -> None:
    prompts = factory(tokenizer_dir)
    for n in LENGTHS:
        for _ in range(5):
            prompt = prompts.make(n, style)
            assert len(prompt.token_ids) == n
            assert prompt.style == style
            assert all(isinstance(i, int) for i in prompt.token_ids)
            assert not special_ids.intersection(prompt.token_ids)


def test_longer_than_corpus_still_exact(tokenizer_dir: Path) -> None:
    prompts = PromptFactory(tokenizer_dir, seed=0, corpus_bytes=1)
    assert len(prompts.corpus_files) == 1
    assert len(prompts.make(200_000, "source")) == 200_000


def test_mixed_styles_all_occur(tokenizer_dir: Path, special_ids: set[int]) -> None:
    prompts = factory(tokenizer_dir)
    made = [prompts.make(int(n)) for n in np.random.default_rng(0).integers(1, 300, 300)]
    counts = Counter(p.style for p in made)
    assert set(counts) == {"source", "shuffled", "random"}
    assert counts["source"] > counts["random"]  # default weights favour real source
    assert not any(special_ids.intersection(p.token_ids) for p in made)


def test_weights_select_styles(tokenizer_dir: Path) -> None:
    prompts = factory(tokenizer_dir, weights={"random": 2.0, "shuffled": 0.0})
    assert prompts.weights == {"source": 0.0, "shuffled": 0.0, "random": 1.0}
    assert {prompts.make(10).style for _ in range(20)} == {"random"}


@pytest.mark.parametrize(
    ("weights", "fragment"),
    [({"poetry": 1.0}, "poetry"), ({"source": 0.0}, "positive sum"), ({"random": -1}, ">= 0")],
)
def test_bad_weights(tokenizer_dir: Path, weights: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        factory(tokenizer_dir, weights=weights)


def test_deterministic_for_a_seed(tokenizer_dir: Path) -> None:
    def sample(seed: int) -> list[Prompt]:
        prompts = factory(tokenizer_dir, seed=seed)
        return [prompts.make(n) for n in (5, 50, 500) * 4]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    prompts = factory(tokenizer_dir)
    assert prompts.make(64, rng=np.random.default_rng(9)) == prompts.make(
        64, rng=np.random.default_rng(9)
    )


def test_random_ids_within_vocab(tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    ids = factory(tokenizer_dir).make(5000, "random").token_ids
    assert min(ids) >= 0
    assert max(ids) < tokenizer.get_vocab_size()
    assert len(set(ids)) > 400  # spread over the vocabulary


def test_source_is_a_real_passage(tokenizer_dir: Path, tokenizer: Tokenizer) -> None:
    prompts = factory(tokenizer_dir)
    corpus_text = "".join(Path(f).read_text(encoding="utf-8") for f in prompts.corpus_files)
    for _ in range(10):
        passage = tokenizer.decode(prompts.make(100, "source").token_ids)
        assert passage in corpus_text


def test_shuffled_permutes_the_lines_of_a_passage(tokenizer_dir: Path) -> None:
    prompts = factory(tokenizer_dir)
    source = prompts.make(400, "source", rng=np.random.default_rng(3)).token_ids
    shuffled = prompts.make(400, "shuffled", rng=np.random.default_rng(3)).token_ids
    assert shuffled != source
    assert sorted(shuffled) == sorted(source)


@pytest.mark.parametrize("n", [0, -5, 2.5, True])
def test_bad_length(tokenizer_dir: Path, n: object) -> None:
    with pytest.raises(ValueError, match=f"got {n}"):
        factory(tokenizer_dir).make(n)  # type: ignore[arg-type]


def test_unknown_style(tokenizer_dir: Path) -> None:
    with pytest.raises(ValueError, match="haiku"):
        factory(tokenizer_dir).make(10, "haiku")


def test_missing_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        PromptFactory(tmp_path, seed=0)


def test_fast(tokenizer_dir: Path) -> None:
    prompts = factory(tokenizer_dir)
    lengths = np.random.default_rng(0).integers(1, 2001, 1000).tolist()
    start = time.perf_counter()
    for n in lengths:
        prompts.make(n)
    assert time.perf_counter() - start < 1.0


def test_corpus_files_are_deterministic() -> None:
    files = stdlib_files(CORPUS_BYTES)
    assert files == stdlib_files(CORPUS_BYTES)
    assert files == sorted(files)
    assert sum(f.stat().st_size for f in files) >= CORPUS_BYTES
    assert not any("test" in f.parts for f in files)
