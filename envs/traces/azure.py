"""Loader for the Azure LLM inference traces (Splitwise, 2023)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from envs.traces.csvrows import csv_rows
from envs.traces.errors import TraceFormatError
from envs.traces.fields import parse_length
from envs.traces.request import Trace

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

# The files carry 7 fractional digits, which datetime.fromisoformat rejects before 3.11.
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2}(?:\.\d+)?)")


def parse_timestamp(text: str) -> tuple[int, float]:
    """Split "2023-11-16 18:15:46.6805900" into (day ordinal, seconds into that day)."""
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"'TIMESTAMP' must look like 2023-11-16 18:15:46.6805900, got {text!r}")
    day, hours, minutes, seconds = match.groups()
    try:
        ordinal = date.fromisoformat(day).toordinal()
    except ValueError:
        raise ValueError(f"'TIMESTAMP' has an invalid date: {text!r}") from None
    if int(hours) > 23 or int(minutes) > 59 or float(seconds) >= 61:
        raise ValueError(f"'TIMESTAMP' has an invalid time of day: {text!r}")
    return ordinal, int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def load_azure(path: str | Path) -> Trace:
    """Load an Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) as a Trace."""
    path = Path(path)
    rows: list[tuple[float, int, int]] = []
    first_day: int | None = None
    for line, (stamp, context, generated) in csv_rows(path, COLUMNS):
        try:
            day, seconds = parse_timestamp(stamp)
            row = (parse_length(context, COLUMNS[1]), parse_length(generated, COLUMNS[2]))
        except ValueError as e:
            raise TraceFormatError(path, line, str(e)) from None
        # Seconds relative to the first row's day keep sub-microsecond precision in a float.
        first_day = day if first_day is None else first_day
        rows.append(((day - first_day) * 86400 + seconds, *row))
    return Trace.from_rows(path.stem, str(path), rows)
