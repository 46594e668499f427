"""Parsing of single trace fields; errors are plain ValueErrors that loaders locate by line."""

from __future__ import annotations

import math


def parse_length(value: object, column: str, minimum: int = 1) -> int:
    """Parse a token count (an integer, or an integral float such as "12.0") >= minimum."""
    number: int | float | None = None
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = value
    if isinstance(number, float):
        number = int(number) if number.is_integer() else None
    if number is None or number < minimum:
        raise ValueError(f"{column!r} must be an integer >= {minimum}, got {value!r}")
    return number


def parse_number(value: object, column: str) -> float:
    """Parse a finite number (a timestamp), given as text or as a JSON number."""
    number: float | None = None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number):
        raise ValueError(f"{column!r} must be a finite number, got {value!r}")
    return number
