"""Where the project's files are: its root, the checkpoints beside the code, and the cache.

Every package reads its paths from here (the bottom layer), so none needs another's module
for a constant.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = PROJECT_ROOT / "checkpoints"
LM_DIR = CHECKPOINTS / "lm"
"""The small model pair: `target/` and `draft/`."""
PROFILE_DIR = CHECKPOINTS / "profiles"
"""Cost profiles, by name."""
CALIBRATION_DIR = CHECKPOINTS / "calibration"
"""Draft-slot calibrators, one per speculation method (`agents.confidence`)."""
SHIPPED_POLICY = CHECKPOINTS / "policies" / "ngram"
"""The trained policy shipped for the small model pair with ngram speculation."""
SHARED_TRACES = PROJECT_ROOT.parent / "shared" / "traces"
"""The real traces, beside the project (never copied into it)."""
CACHE_ENV = "TURBOSPEC_CACHE_DIR"
"""Environment variable that moves the cache."""


def cache_dir() -> Path:
    """Where recorded acceptance tables and engine limits are kept between runs: $TURBOSPEC_
    CACHE_DIR, else turbospec-rl/ under the user's cache directory ($XDG_CACHE_HOME or
    ~/.cache), outside the work tree so that every clone on a machine shares it."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "turbospec-rl"
