"""What an ngram proposal is worth before it is verified, from the token ids alone.

vLLM's ngram proposer (`vllm/v1/spec_decode/ngram_proposer.py`, 0.32) looks for the longest
suffix of a request's tokens, between prompt_lookup_min and prompt_lookup_max long, that
occurred earlier, takes its earliest such occurrence and proposes the tokens that followed
it. How far such a guess can be trusted shows in the context itself:

- `match`: the longest earlier match of the suffix, past prompt_lookup_max (up to
  `MATCH_CAP`): a suffix that repeats for 20 tokens is a copied passage, one of 2 a coincidence;
- `occurrences`: how often the matched n-gram occurred earlier;
- `agree[j]`: of those earlier occurrences with j + 1 tokens after them, the share whose next
  j + 1 tokens are the first j + 1 drafts (a frequency estimate in the spirit of suffix
  decoding: the drafts are what followed once; how often did it follow?).

`slot_features` turns them into one row per draft slot j, what the calibrator
(`agents.confidence.calibrator`) maps to P(slot j accepted | the slots before it accepted).
The scan is compiled with numba (linear in the context length), so 256 requests of 1024
tokens cost well under a millisecond (`python -m benchmarks.confidence --cost`).
"""

from __future__ import annotations

from functools import cache

import numpy as np

MATCH_CAP = 64
"""Matches are measured up to this length."""
FEATURES = ("log_match", "log_occurrences", "agree")
"""The columns of `slot_features`, per draft slot (`agents.confidence.SLOT_FEATURES`)."""


@cache
def _compiled():
    # numba is imported at the first use, not with this module: it fixes its thread count
    # when imported, and the engines set it (serving.threads) before they start.
    from numba import njit

    return njit(cache=True)(_scan)


def _scan(tokens, n_tokens, drafts, n_drafts, min_n, max_n, cap, agree):
    """(match, occurrences) of the suffix of tokens[:n_tokens]; fills agree[:n_drafts]."""
    last = n_tokens - 1
    longest = 0
    for end in range(last - 1, -1, -1):  # earlier occurrences end before the last token
        length = 0
        while length < cap and length <= end and tokens[end - length] == tokens[last - length]:
            length += 1
        if length > longest:
            longest = length
    matched = min(longest, max_n)
    for j in range(n_drafts):
        agree[j] = 0.0
    if matched < min_n:
        return longest, 0
    occurrences = 0
    seen = np.zeros(n_drafts, np.int64)
    hits = np.zeros(n_drafts, np.int64)
    for end in range(last - 1, matched - 2, -1):
        length = 0
        while length < matched and tokens[end - length] == tokens[last - length]:
            length += 1
        if length < matched:
            continue
        occurrences += 1
        following = True
        for j in range(n_drafts):
            if end + 1 + j > last:
                break
            seen[j] += 1
            if following and tokens[end + 1 + j] != drafts[j]:
                following = False
            if following:
                hits[j] += 1
    for j in range(n_drafts):
        agree[j] = hits[j] / seen[j] if seen[j] else 0.0
    return longest, occurrences


def slot_features(
    tokens: np.ndarray, drafts: np.ndarray, min_n: int, max_n: int, k_max: int
) -> np.ndarray:
    """Per draft slot j of `drafts` (the proposal for the context `tokens`), the row
    `FEATURES`: log1p(match), log1p(occurrences), agree[j]; shape (k_max, 3), rows past the
    proposal zero."""
    out = np.zeros((k_max, len(FEATURES)), dtype=np.float32)
    n_drafts = min(len(drafts), k_max)
    if n_drafts == 0 or len(tokens) < 2:
        return out
    agree = np.zeros(n_drafts, dtype=np.float64)
    match, occurrences = _compiled()(
        np.ascontiguousarray(tokens, dtype=np.int32),
        len(tokens),
        np.ascontiguousarray(drafts[:n_drafts], dtype=np.int32),
        n_drafts,
        min_n,
        max_n,
        MATCH_CAP,
        agree,
    )
    out[:n_drafts, 0] = np.log1p(match)
    out[:n_drafts, 1] = np.log1p(occurrences)
    out[:n_drafts, 2] = agree
    return out
