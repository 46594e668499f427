"""Loader for BurstGPT traces (Azure OpenAI GPT usage, Wang et al. 2024)."""

from __future__ import annotations

from pathlib import Path

from envs.traces.csvrows import csv_rows
from envs.traces.errors import TraceFormatError
from envs.traces.fields import parse_length, parse_number
from envs.traces.request import Trace

COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def load_burstgpt(path: str | Path) -> Trace:
    """Load a BurstGPT CSV as a Trace; failed requests (0 response tokens) are dropped.

    The number of dropped rows is kept in `Trace.dropped`.
    """
    path = Path(path)
    rows: list[tuple[float, int, int]] = []
    dropped = 0
    for line, (stamp, request, response) in csv_rows(path, COLUMNS):
        try:
            row = (
                parse_number(stamp, COLUMNS[0]),
                parse_length(request, COLUMNS[1]),
                parse_length(response, COLUMNS[2], minimum=0),
            )
        except ValueError as e:
            raise TraceFormatError(path, line, str(e)) from None
        if row[2] == 0:
            dropped += 1
        else:
            rows.append(row)
    if not rows:
        raise TraceFormatError(path, line + 1, f"all {dropped} requests failed (0 response tokens)")
    return Trace.from_rows(path.stem, str(path), rows, dropped=dropped)
