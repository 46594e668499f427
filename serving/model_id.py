"""A content hash naming the exact model an artifact (profile, policy) was made for."""

from __future__ import annotations

import hashlib
from pathlib import Path


def model_id(*folders: str | Path) -> str:
    """sha256 over config.json and the safetensors weights of each folder, 16 hex digits.

    Moving or copying a model keeps its id; retraining it changes the id.
    """
    digest = hashlib.sha256()
    for folder in folders:
        folder = Path(folder)
        for file in [folder / "config.json", *sorted(folder.glob("*.safetensors"))]:
            digest.update(file.name.encode())
            with file.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()[:16]
