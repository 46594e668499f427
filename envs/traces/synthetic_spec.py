"""Parsing of compact synthetic trace specs such as "synthetic:poisson?rate=2&duration=60"."""

from __future__ import annotations

from envs.traces.synthetic import PATTERN_PARAMS, SyntheticSpec

SYNTHETIC_PREFIX = "synthetic:"
INTEGER_PARAMS = frozenset({"seed", "input_max", "output_max"})


def _value(spec: str, key: str, text: str) -> int | float:
    try:
        return int(text) if key in INTEGER_PARAMS else float(text)
    except ValueError:
        kind = "an integer" if key in INTEGER_PARAMS else "a number"
        raise ValueError(f"{spec}: parameter {key!r} must be {kind}, got {text!r}") from None


def parse_synthetic(spec: str) -> SyntheticSpec:
    """Parse "synthetic:<pattern>?key=value&..." into a SyntheticSpec.

    Omitted parameters keep their defaults. An unknown pattern, a parameter that the pattern
    does not take, a repeated parameter or an invalid value raises ValueError naming it.
    """
    if not spec.startswith(SYNTHETIC_PREFIX):
        raise ValueError(f"synthetic trace spec must start with {SYNTHETIC_PREFIX!r}: {spec!r}")
    pattern, _, query = spec.removeprefix(SYNTHETIC_PREFIX).partition("?")
    if pattern not in PATTERN_PARAMS:
        raise ValueError(
            f"{spec}: unknown synthetic pattern {pattern!r}; expected one of {list(PATTERN_PARAMS)}"
        )
    allowed = SyntheticSpec(pattern=pattern).params()
    values: dict[str, int | float] = {}
    for item in filter(None, query.split("&")):
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"{spec}: expected key=value, got {item!r}")
        if key not in allowed:
            raise ValueError(
                f"{spec}: unknown parameter {key!r} for pattern {pattern!r}; "
                f"expected some of {list(allowed)}"
            )
        if key in values:
            raise ValueError(f"{spec}: parameter {key!r} given twice")
        values[key] = _value(spec, key, text)
    try:
        return SyntheticSpec(pattern=pattern, **values)
    except ValueError as e:
        raise ValueError(f"{spec}: {e}") from None
