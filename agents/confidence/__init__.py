"""What each draft is worth before it is verified: per-slot features and their calibration.

- `ngram`: slot features of an ngram proposal, from the token ids (compiled);
- `calibrator`: P(slot j accepted | the slots before it accepted) from a slot's features, fitted
  offline on recorded tables and refined online, with survival and expected accepted drafts;
- `metrics`: AUC, calibration error and reliability of such probabilities.

The draft model's features (its probability of each token it proposed, and its entropy) are
captured where vLLM's proposer computes its logits, in `serving.draft_confidence`.
"""

from __future__ import annotations

from functools import cache

from agents.confidence.calibrator import Calibrator, CalibratorError
from agents.paths import CALIBRATION_DIR

SLOT_FEATURES = {
    "ngram": ("log_match", "log_occurrences", "agree"),
    "draft_model": ("log_odds", "entropy"),
}
"""The slot features each speculation method's engine provides, in column order."""


@cache
def shipped_calibrator(method: str, k_max: int) -> Calibrator | None:
    """The calibrator shipped for `method` (checkpoints/calibration/<method>.json), or None
    if there is none; raises CalibratorError for a file that does not fit. Read once per
    process: engines copy it (`StepControl.use_calibrator`), never change it."""
    path = CALIBRATION_DIR / f"{method}.json"
    if method not in SLOT_FEATURES or not path.is_file():
        return None
    calibrator = Calibrator.load(path, method=method, k_max=k_max)
    if calibrator.features != SLOT_FEATURES[method]:
        raise CalibratorError(
            f"calibrator {path} scores features {calibrator.features}, the engine provides "
            f"{SLOT_FEATURES[method]}"
        )
    return calibrator
