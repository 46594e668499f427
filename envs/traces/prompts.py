"""Synthetic prompts of an exact token length, mixing predictable and unpredictable content."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.traces.corpus import TokenCorpus, load_corpus

# source: a contiguous passage of stdlib source, which the models continue predictably;
# shuffled: the same kind of passage with its lines in random order, less predictable;
# random: uniformly random token ids, unpredictable.
STYLES = ("source", "shuffled", "random")
DEFAULT_WEIGHTS = {"source": 0.5, "shuffled": 0.25, "random": 0.25}
DEFAULT_CORPUS_BYTES = 1_000_000


@dataclass(frozen=True)
class Prompt:
    """Prompt token ids (no special tokens) and the style that produced them."""

    token_ids: list[int]
    style: str

    def __len__(self) -> int:
        return len(self.token_ids)


def _probabilities(weights: Mapping[str, float]) -> np.ndarray:
    unknown = set(weights) - set(STYLES)
    if unknown:
        raise ValueError(f"unknown prompt style(s) {sorted(unknown)}; expected some of {STYLES}")
    values = np.array([float(weights.get(s, 0.0)) for s in STYLES])
    if not (np.all(np.isfinite(values)) and np.all(values >= 0) and values.sum() > 0):
        raise ValueError(f"prompt style weights must be >= 0 with a positive sum, got {weights}")
    return values / values.sum()


class PromptFactory:
    """Makes prompts of exact token lengths for a tokenizer, from a seeded style mix.

    The corpus is tokenized once (and cached across factories); each prompt is then a slice,
    a line shuffle of a slice, or a random draw, so making one costs microseconds.
    """

    def __init__(
        self,
        tokenizer_dir: str | Path,
        seed: int = 0,
        weights: Mapping[str, float] | None = None,
        corpus_bytes: int = DEFAULT_CORPUS_BYTES,
    ) -> None:
        path = Path(tokenizer_dir)
        self._corpus: TokenCorpus = load_corpus(
            path if path.suffix == ".json" else path / "tokenizer.json", corpus_bytes
        )
        self._rng = np.random.default_rng(seed)
        self._probabilities = _probabilities(DEFAULT_WEIGHTS if weights is None else weights)

    @property
    def weights(self) -> dict[str, float]:
        """The normalized style mix."""
        return dict(zip(STYLES, self._probabilities.tolist(), strict=True))

    @property
    def corpus_files(self) -> tuple[str, ...]:
        """The stdlib files whose tokens make up the corpus, in corpus order."""
        return self._corpus.files

    def make(
        self, n_tokens: int, style: str | None = None, rng: np.random.Generator | None = None
    ) -> Prompt:
        """A prompt of exactly n_tokens ids in `style`, or in a style drawn from the mix.

        `rng` replaces the factory's own seeded generator for this call.
        """
        if isinstance(n_tokens, bool) or not isinstance(n_tokens, int | np.integer):
            raise ValueError(f"n_tokens must be an integer >= 1, got {n_tokens!r}")
        if n_tokens < 1:
            raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
        if style is not None and style not in STYLES:
            raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
        rng = self._rng if rng is None else rng
        if style is None:
            style = STYLES[rng.choice(len(STYLES), p=self._probabilities)]
        if style == "random":
            ids = self._corpus.random_ids[rng.integers(0, len(self._corpus.random_ids), n_tokens)]
        else:
            ids = self._passage(int(n_tokens), rng, shuffle_lines=style == "shuffled")
        return Prompt(token_ids=ids.tolist(), style=style)

    def _passage(self, n: int, rng: np.random.Generator, shuffle_lines: bool) -> np.ndarray:
        tokens = self._corpus.tokens
        # Positions wrap around so prompts longer than the corpus still have exact lengths.
        positions = (rng.integers(0, len(tokens)) + np.arange(n)) % len(tokens)
        passage = tokens[positions]
        if not shuffle_lines:
            return passage
        cuts = np.flatnonzero(self._corpus.ends_line[positions][:-1]) + 1
        lines = np.split(passage, cuts)
        return np.concatenate([lines[i] for i in rng.permutation(len(lines))])
