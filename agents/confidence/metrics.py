"""How good a probability is at telling accepted draft slots from rejected ones."""

from __future__ import annotations

import numpy as np

BINS = 10
"""Equal-width bins of the calibration error and the reliability curve."""


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve: the chance that an accepted slot scores above a rejected
    one (ties count half); NaN without both kinds."""
    score = np.asarray(score, dtype=np.float64)
    label = np.asarray(label) > 0.5
    positives, negatives = int(label.sum()), int((~label).sum())
    if not positives or not negatives:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # Average ranks over ties.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def reliability(prob: np.ndarray, label: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width bin of predicted probability: its count, mean prediction and the
    accepted share."""
    prob = np.asarray(prob, dtype=np.float64)
    label = np.asarray(label, dtype=np.float64)
    index = np.minimum((prob * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "count": int(mask.sum()),
                    "predicted": float(prob[mask].mean()),
                    "observed": float(label[mask].mean()),
                }
            )
    return rows


def calibration_error(prob: np.ndarray, label: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: the count-weighted mean |predicted - observed| over bins."""
    rows = reliability(prob, label, bins)
    total = sum(r["count"] for r in rows)
    if not total:
        return float("nan")
    return sum(r["count"] * abs(r["predicted"] - r["observed"]) for r in rows) / total
