"""Loader for Mooncake JSONL traces (Kimi serving, Qin et al. 2024)."""

from __future__ import annotations

import json
from pathlib import Path

from envs.traces.errors import TraceFormatError
from envs.traces.fields import parse_length, parse_number
from envs.traces.request import Trace

FIELDS = ("timestamp", "input_length", "output_length")


def _parse_line(text: str) -> tuple[float, int, int]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    missing = [f for f in FIELDS if f not in record]
    if missing:
        raise ValueError(f"missing field {', '.join(map(repr, missing))}")
    return (
        parse_number(record["timestamp"], "timestamp") / 1000.0,  # milliseconds
        parse_length(record["input_length"], "input_length"),
        parse_length(record["output_length"], "output_length"),
    )


def load_mooncake(path: str | Path) -> Trace:
    """Load a Mooncake JSONL file (timestamp in ms, input_length, output_length) as a Trace."""
    path = Path(path)
    rows: list[tuple[float, int, int]] = []
    line = 0
    with path.open(encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                rows.append(_parse_line(text))
            except ValueError as e:
                raise TraceFormatError(path, line, str(e)) from None
    if not rows:
        raise TraceFormatError(path, line + 1, "no data rows (empty file)")
    return Trace.from_rows(path.stem, str(path), rows)
