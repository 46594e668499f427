"""A tokenized corpus of Python standard library source, the text the models were trained on."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

# Left out of the models' corpus: test suites, generated tables and bundled third-party code
# are not the ordinary source the models learn from.
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "__pycache__",
        "encodings",
        "pydoc_data",
        "turtledemo",
        "ensurepip",
    }
)


def _kept_dir(name: str) -> bool:
    return name not in _SKIP_DIRS and not name.startswith("config-")


def _kept_file(name: str) -> bool:
    return name.endswith(".py") and not name.startswith("_sysconfigdata")  # generated per build


def stdlib_sources(root: str | Path | None = None) -> list[Path]:
    """The standard library's ordinary .py source files, sorted: the models' corpus."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(filter(_kept_dir, dirs))
        files += [Path(folder, n) for n in sorted(filter(_kept_file, names))]
    return sorted(files)


def stdlib_files(budget_bytes: int) -> list[Path]:
    """A deterministic subset of `stdlib_sources()` of about budget_bytes.

    Files are taken in the order of a hash of their relative path, which spreads the budget
    over the whole library instead of the alphabetically first modules.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_sources(root)

    def order(path: Path) -> str:
        return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()

    chosen, total = [], 0
    for path in sorted(files, key=order):
        if total >= budget_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    if not chosen:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return sorted(chosen)


@dataclass(frozen=True)
class TokenCorpus:
    """Token ids of the corpus files laid end to end, plus what prompt styles need."""

    tokens: np.ndarray  # int64 ids, special tokens removed
    ends_line: np.ndarray  # bool per position: the token contains a newline
    random_ids: np.ndarray  # ids safe to draw at random: the base vocabulary minus specials
    files: tuple[str, ...]


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared through the cache, so nobody may modify it
    return array


# _mtime_ns is only part of the cache key: a rewritten tokenizer file is tokenized afresh.
@lru_cache(maxsize=4)
def _load(tokenizer_json: str, _mtime_ns: int, budget_bytes: int) -> TokenCorpus:
    tokenizer = Tokenizer.from_file(tokenizer_json)
    special = np.array(
        sorted(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special), np.int64
    )
    files = stdlib_files(budget_bytes)
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    tokens = np.concatenate([np.asarray(e.ids, np.int64) for e in encodings])
    # Added tokens match literal text even without add_special_tokens, so filter them too.
    tokens = tokens[~np.isin(tokens, special)]
    present = np.unique(tokens)
    decoded = tokenizer.decode_batch([[i] for i in present.tolist()], skip_special_tokens=False)
    newline_ids = present[np.array(["\n" in d for d in decoded], bool)]
    base_vocab = np.array(sorted(tokenizer.get_vocab(with_added_tokens=False).values()), np.int64)
    return TokenCorpus(
        tokens=_read_only(tokens),
        ends_line=_read_only(np.isin(tokens, newline_ids)),
        random_ids=_read_only(base_vocab[~np.isin(base_vocab, special)]),
        files=tuple(str(f) for f in files),
    )


def load_corpus(tokenizer_json: str | Path, budget_bytes: int) -> TokenCorpus:
    """Tokenize about budget_bytes of stdlib source; cached per tokenizer file and budget."""
    if budget_bytes < 1:
        raise ValueError(f"corpus budget_bytes must be >= 1, got {budget_bytes}")
    path = Path(tokenizer_json).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return _load(str(path), path.stat().st_mtime_ns, budget_bytes)
