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
The scan is one linear pass (a Z-function over the reversed tokens), compiled with numba
(`python -m benchmarks.confidence --cost` times it at 256 requests of 1024 tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
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


@cache
def _compiled_batch():
    from numba import njit

    scan = _compiled()

    def batch(tokens, lengths, rows, drafts, counts, min_n, max_n, cap, out):
        agree = np.zeros(drafts.shape[1], np.float64)
        for i in range(len(rows)):
            n = counts[i]
            if n == 0 or lengths[rows[i]] < 2:
                continue
            match, occurrences = scan(
                tokens[rows[i]], lengths[rows[i]], drafts[i], n, min_n, max_n, cap, agree
            )
            for j in range(n):
                out[i, j, 0] = np.log1p(match)
                out[i, j, 1] = np.log1p(occurrences)
                out[i, j, 2] = agree[j]

    return njit(cache=True)(batch)


class Contexts:
    """Each running request's token ids as int32 rows of one array, kept up to date by
    appending what is new at each step (converting a request's whole list every step cost
    30 us per 1024-token context, more than scoring it), and scored in one compiled call."""

    def __init__(self, k_max: int, min_n: int, max_n: int, width: int = 1024) -> None:
        self.k_max, self.min_n, self.max_n = k_max, min_n, max_n
        self._tokens = np.zeros((8, width), dtype=np.int32)
        self._lengths = np.zeros(8, dtype=np.int64)
        self._rows: dict[str, int] = {}
        self._free: list[int] = list(range(7, -1, -1))

    def _row(self, request_id: str, length: int) -> int:
        row = self._rows.get(request_id)
        if row is None:
            if not self._free:
                grown = len(self._lengths)
                self._tokens = np.concatenate([self._tokens, np.zeros_like(self._tokens)])
                self._lengths = np.concatenate([self._lengths, np.zeros(grown, np.int64)])
                self._free = list(range(2 * grown - 1, grown - 1, -1))
            row = self._rows[request_id] = self._free.pop()
            self._lengths[row] = 0
        if length > self._tokens.shape[1]:
            wider = np.zeros((len(self._lengths), 2 * length), dtype=np.int32)
            wider[:, : self._tokens.shape[1]] = self._tokens
            self._tokens = wider
        return row

    def score(self, requests: Sequence[tuple[str, Sequence[int], Sequence[int]]]) -> np.ndarray:
        """The slot features (len(requests), k_max, 3) of each (request id, its token ids,
        its drafts); a request's ids only grow between calls (its new ones are appended)."""
        rows = np.empty(len(requests), dtype=np.int64)
        drafts = np.zeros((len(requests), self.k_max), dtype=np.int32)
        counts = np.zeros(len(requests), dtype=np.int64)
        for i, (request_id, tokens, proposal) in enumerate(requests):
            total = len(tokens)
            row = rows[i] = self._row(request_id, total)
            known = self._lengths[row] if self._lengths[row] <= total else 0
            if total != known:
                self._tokens[row, known:total] = tokens[known:total]
                self._lengths[row] = total
            n = min(len(proposal), self.k_max)
            drafts[i, :n] = proposal[:n]
            counts[i] = n
        out = np.zeros((len(requests), self.k_max, len(FEATURES)), dtype=np.float32)
        if len(requests):
            _compiled_batch()(
                self._tokens, self._lengths, rows, drafts, counts, self.min_n, self.max_n,
                MATCH_CAP, out,
            )  # fmt: skip
        return out

    def forget(self, request_id: str) -> None:
        """Free the row of a request that left the engine."""
        row = self._rows.pop(request_id, None)
        if row is not None:
            self._free.append(row)


def _scan(tokens, n_tokens, drafts, n_drafts, min_n, max_n, cap, agree):
    """(match, occurrences) of the suffix of tokens[:n_tokens]; fills agree[:n_drafts].

    On the reversed tokens, the Z-function z[i] is the length of the longest common prefix
    of the whole and its suffix from i: the length of the match of the context's suffix that
    ends at original position n - 1 - i. One linear pass gives every earlier occurrence's
    match length (capped: only lengths up to `cap` are measured).
    """
    last = n_tokens - 1
    z = np.zeros(n_tokens, np.int64)
    left = right = 0  # [left, right): the rightmost window matching a prefix
    longest = 0
    for i in range(1, n_tokens):
        length = 0
        if i < right:
            length = min(right - i, z[i - left])
        while (
            length < cap
            and i + length < n_tokens
            and tokens[last - length] == tokens[last - i - length]
        ):
            length += 1
        z[i] = length
        if i + length > right:
            left, right = i, i + length
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
    for i in range(1, n_tokens):
        if z[i] < matched:
            continue
        end = last - i  # the occurrence ends here, before the suffix itself
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
